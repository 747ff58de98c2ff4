#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests: Debian's postgresql package
# (installed with apt-get when missing), initdb and pg_ctl as the `postgres`
# user in a directory of its own, listening on 127.0.0.1 on a free port, with
# password (SCRAM) authentication for the role `aegis`.
#
#   scripts/postgres.sh start DIR [--tls]
#                                   # prints the environment the tests read:
#                                   #   AEGIS_TEST_POSTGRES_URL, AEGIS_TEST_POSTGRES_PASSWORD_FILE
#                                   # --tls: TLS only (hostssl), with a server certificate for
#                                   #   127.0.0.1 from a CA made here (openssl); also prints
#                                   #   AEGIS_TEST_POSTGRES_CA_FILE
#   scripts/postgres.sh stop DIR    # (kill DIR: an immediate stop; resume DIR: start it again)
set -euo pipefail

die() { echo "postgres.sh: error: $*" >&2; exit 1; }

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

install_postgres() {
    bindir >/dev/null && return 0
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
        die "PostgreSQL's server binaries are needed; install Debian's postgresql package"
    echo "postgres.sh: installing Debian's postgresql package" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } ||
        die "apt-get install postgresql failed; install it"
    bindir >/dev/null || die "postgresql is installed but no initdb was found under /usr/lib/postgresql"
}

# as_postgres CMD...: the server refuses to run as root.
as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# tls DIR: a CA and a server certificate for 127.0.0.1 and localhost in DIR/tls;
# prints the server options that turn TLS on.
tls() {
    local dir="$1" t="$1/tls"
    command -v openssl >/dev/null || die "--tls needs openssl (Debian's openssl package)"
    mkdir -p "$t"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=aegis test database CA" \
        -keyout "$t/ca.key" -out "$t/ca.pem" >/dev/null 2>&1 || die "openssl could not make the test CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$t/server.key" -out "$t/server.csr" >/dev/null 2>&1 || die "openssl could not make the server key"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$t/san.ext"
    openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial -days 2 \
        -extfile "$t/san.ext" -out "$t/server.pem" >/dev/null 2>&1 || die "openssl could not sign the server certificate"
    rm -f "$t/ca.key" "$t/server.csr"
    chmod 0600 "$t/server.key"
    chmod 0644 "$t/ca.pem" "$t/server.pem"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$t"
    chmod 0755 "$t"
    echo "-c ssl=on -c ssl_cert_file=$t/server.pem -c ssl_key_file=$t/server.key"
}

start() {
    local dir="$1" with_tls="${2:-}" bin port password opts=""
    install_postgres
    bin="$(bindir)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "the postgres user is missing (it comes with Debian's postgresql package)"
        chown postgres: "$dir"
    fi
    chmod 0700 "$dir"
    password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s\n' "$password" >"$dir/superuser-password"
    chmod 0600 "$dir/superuser-password"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/superuser-password"
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --pwfile="$dir/superuser-password" -E UTF8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    case "$with_tls" in
    "") ;;
    --tls)
        opts="$(tls "$dir")"
        # TCP connections without TLS are refused.
        sed -i 's/^host /hostssl /' "$dir/data/pg_hba.conf"
        ;;
    *) die "unknown option $with_tls (usage: postgres.sh start DIR [--tls])" ;;
    esac
    printf '%s\n' "$opts" >"$dir/opts"
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on $opts" start >/dev/null ||
        { cat "$dir/server.log" >&2; die "pg_ctl start failed"; }
    # The tests' role: may create the databases each test uses; its password in a file.
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password"
    chmod 0600 "$dir/password"
    as_postgres psql -q -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE aegis LOGIN CREATEDB PASSWORD '$(cat "$dir/password")'" >/dev/null ||
        die "could not create the role aegis"
    echo "$port" >"$dir/port"
    echo "AEGIS_TEST_POSTGRES_URL=postgres://aegis@127.0.0.1:$port/postgres"
    echo "AEGIS_TEST_POSTGRES_PASSWORD_FILE=$dir/password"
    echo "AEGIS_TEST_POSTGRES_BIN=$bin"
    echo "AEGIS_TEST_POSTGRES_DIR=$dir"
    [ -z "$opts" ] || echo "AEGIS_TEST_POSTGRES_CA_FILE=$dir/tls/ca.pem"
}

# Starts a stopped cluster again, on the port it had.
resume() {
    local dir="$1" bin port opts
    bin="$(bindir)" || die "no PostgreSQL binaries"
    port="$(cat "$dir/port")"
    opts="$(cat "$dir/opts" 2>/dev/null || true)"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 $opts" start >/dev/null ||
        { tail -20 "$dir/server.log" >&2; die "pg_ctl start failed"; }
}

stop() {
    local dir="$1" bin
    [ -d "$dir/data" ] || return 0
    bin="$(bindir)" || return 0
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

case "${1:-}" in
start) start "${2:?usage: postgres.sh start DIR [--tls]}" "${3:-}" ;;
stop) stop "${2:?usage: postgres.sh stop DIR}" ;;
kill) # an abrupt stop, as a crash or a lost node would be
    as_postgres "$(bindir)/pg_ctl" -D "${2:?usage: postgres.sh kill DIR}/data" -m immediate -w -t 30 stop >/dev/null ;;
resume) resume "${2:?usage: postgres.sh resume DIR}" ;;
*) die "usage: postgres.sh start|stop|kill|resume DIR" ;;
esac
