#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests: Debian's postgresql package
# (installed with apt-get when missing), initdb and pg_ctl as the `postgres`
# user in a directory of its own, listening on 127.0.0.1 on a free port, with
# password (SCRAM) authentication for the role `aegis`.
#
#   scripts/postgres.sh start DIR   # prints the environment the tests read:
#                                   #   AEGIS_TEST_POSTGRES_URL, AEGIS_TEST_POSTGRES_PASSWORD_FILE
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

start() {
    local dir="$1" bin port password
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
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null ||
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
}

# Starts a stopped cluster again, on the port it had.
resume() {
    local dir="$1" bin port
    bin="$(bindir)" || die "no PostgreSQL binaries"
    port="$(cat "$dir/port")"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null ||
        { tail -20 "$dir/server.log" >&2; die "pg_ctl start failed"; }
}

stop() {
    local dir="$1" bin
    [ -d "$dir/data" ] || return 0
    bin="$(bindir)" || return 0
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
}

case "${1:-}" in
start) start "${2:?usage: postgres.sh start DIR}" ;;
stop) stop "${2:?usage: postgres.sh stop DIR}" ;;
kill) # an abrupt stop, as a crash or a lost node would be
    as_postgres "$(bindir)/pg_ctl" -D "${2:?usage: postgres.sh kill DIR}/data" -m immediate -w -t 30 stop >/dev/null ;;
resume) resume "${2:?usage: postgres.sh resume DIR}" ;;
*) die "usage: postgres.sh start|stop|kill|resume DIR" ;;
esac
