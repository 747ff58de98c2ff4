#!/usr/bin/env bash
# Produces the VSecM import test fixtures from VSecM's own Safe: builds VMware Secrets
# Manager's Safe from its source, starts it with a real SPIRE server and agent and a
# root key file (no Kubernetes), writes secrets through VSecM's API as VSecM's
# Sentinel does (POST /sentinel/v1/secrets, sent by `safe`), records what each
# workload fetches (GET /workload/v1/secrets, sent by VSecM's own Go SDK as the
# workload's SVID), and stops everything.
#
# Usage:
#   scripts/vsecm-fixtures.sh [--postgres] SOURCE OUTDIR
#       --postgres  run VSecM's Safe with VSECM_SAFE_BACKING_STORE=postgres against a
#               throw-away PostgreSQL (scripts/postgres.sh): the table "vsecm-secrets"
#               is created first (schema.sql), the `vsecm-safe` secret (VSecM's internal
#               config, naming the database) is written first so that VSecM connects,
#               and the rows VSecM wrote are exported instead of a data directory.
#       SOURCE  VSecM v0.28.1 source: the tarball (holding vsecm-v0.28.1/ with go.mod,
#               app/safe, core, lib) or that directory unpacked.
#       OUTDIR  created if missing; must be empty. Receives:
#                 data/<name>.age       VSecM's data directory (backups left out; file store)
#                 schema.sql            the table VSecM wrote to (--postgres)
#                 vsecm-secrets.copy    its rows (name, data), ordered by name, in
#                                       PostgreSQL's COPY text format (--postgres)
#                 root-key.txt          the root key VSecM used (three lines)
#                 expected-fetches.json what each workload fetched, and what was written
#
# The committed fixtures were made with:
#   scripts/vsecm-fixtures.sh vsecm-v0.28.1-safe-src.tar.gz crates/aegis/tests/fixtures/vsecm-0.28.1
#   scripts/vsecm-fixtures.sh --postgres vsecm-v0.28.1-safe-src.tar.gz crates/aegis/tests/fixtures/vsecm-0.28.1-postgres
#
# Needs root (workloads run under their own uids for SPIRE's unix attestor), Go, jq,
# setpriv, cargo. The VSecM binary is built by scripts/lib/vsecm.sh (cached in
# ${AEGIS_CACHE_DIR:-~/.cache/aegis}/vsecm-safe/, keyed by the hash of its sources and the
# Go version); SPIRE and VSecM's Go client come from scripts/build-spire.sh and
# scripts/build-vsecm-client.sh; PostgreSQL (--postgres) from scripts/postgres.sh.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

die() {
    echo "vsecm-fixtures: error: $*" >&2
    exit 1
}
log() { echo "vsecm-fixtures: $*" >&2; }
# shellcheck source=lib/vsecm.sh
source "$here/lib/vsecm.sh"

store=file
if [[ "${1:-}" == --postgres ]]; then
    store=postgres
    shift
fi
[[ $# -eq 2 ]] || die "usage: scripts/vsecm-fixtures.sh [--postgres] SOURCE(tarball or dir) OUTDIR"
source_arg="$1"
out="$2"
[[ "$(id -u)" == 0 ]] || die "run as root: workloads run under their own uids (SPIRE's unix attestor tells them apart by uid)"
for c in go jq setpriv cargo sha256sum; do
    command -v "$c" >/dev/null || die "'$c' is needed and not installed"
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
[[ -z "$(ls -A "$out")" ]] || die "$out is not empty: give an empty or new directory"

work="$(mktemp -d /tmp/vsecm-fx.XXXXXX)"
chmod 0755 "$work"
spire_dir="$work/spire"
pg_dir="$work/pg"
safe_pid=""
cleanup() {
    if [[ -n "$safe_pid" ]] && kill -0 "$safe_pid" 2>/dev/null; then
        kill -TERM "$safe_pid" 2>/dev/null || true
        wait "$safe_pid" 2>/dev/null || true
    fi
    "$here/spire.sh" stop "$spire_dir" 2>/dev/null || true
    [[ "$store" != postgres ]] || "$here/postgres.sh" stop "$pg_dir" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---- VSecM's source and binary
src="$(vsecm_source "$source_arg" "$work")"
vsecm_build "$src"
go_version="$(GOTOOLCHAIN=local go version)"

# ---- The other tools
log "building the Sentinel command (safe) and VSecM's Go client"
cargo build -q --manifest-path "$repo/Cargo.toml" -p aegis --bin safe || die "cargo build of safe failed"
target="$(cargo metadata -q --no-deps --format-version 1 --manifest-path "$repo/Cargo.toml" | jq -r .target_directory)"
client="$("$here/build-vsecm-client.sh" | tail -n1)"
mkdir -p "$work/bin"
cp "$VSECM_SAFE_BIN" "$work/bin/vsecm-safe"
cp "$target/debug/safe" "$work/bin/safe"
cp "$client" "$work/bin/vsecm-client"
chmod 0755 "$work/bin" "$work/bin"/*

# ---- SPIRE and identities (by uid)
uid_safe=10200
uid_sentinel=10201
# workload name -> uid; "nobody-here" has no secret (its fetch is recorded as null).
workloads=(billing inventory orders shipping payments legacy reports nobody-here)
"$here/spire.sh" start "$spire_dir" >/dev/null
# shellcheck disable=SC1091
. "$spire_dir/env"
"$here/spire.sh" register "$spire_dir" safe "uid:$uid_safe" >/dev/null
"$here/spire.sh" register "$spire_dir" sentinel "uid:$uid_sentinel" >/dev/null
i=0
for w in "${workloads[@]}"; do
    "$here/spire.sh" register "$spire_dir" workload "$w" "uid:$((10210 + i))" >/dev/null
    i=$((i + 1))
done

# ---- Root key and VSecM's Safe
vsecm_root_key "$work/root-key.txt"
chown "$uid_safe" "$work/root-key.txt"
chmod 0400 "$work/root-key.txt"
mkdir "$work/data"
chown "$uid_safe" "$work/data"
chmod 0700 "$work/data"

# ---- PostgreSQL (--postgres): a database of its own and the table VSecM writes to.
# VSecM does not create the table. Its schema follows VSecM's own statements
# (app/safe/internal/state/io/postgres.go and secret/collection/io.go): it reads
# `SELECT name, data FROM "vsecm-secrets"` into two strings, and writes
# `INSERT ... (name, data) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET data = $2`,
# which needs a unique index on name.
table='"vsecm-secrets"'
schema="CREATE TABLE $table (name TEXT PRIMARY KEY, data TEXT NOT NULL);"
pg() { PGPASSWORD="$(cat "$pg_password_file")" "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
if [[ "$store" == postgres ]]; then
    pg_env="$("$here/postgres.sh" start "$pg_dir")" || die "scripts/postgres.sh start failed"
    pg_url="$(sed -n 's/^AEGIS_TEST_POSTGRES_URL=//p' <<<"$pg_env")"
    pg_password_file="$(sed -n 's/^AEGIS_TEST_POSTGRES_PASSWORD_FILE=//p' <<<"$pg_env")"
    pg_bin="$(sed -n 's/^AEGIS_TEST_POSTGRES_BIN=//p' <<<"$pg_env")"
    pg_url="${pg_url%/*}/vsecm"
    pg "${pg_url%/*}/postgres" -c "CREATE DATABASE vsecm"
    pg "$pg_url" -c "$schema"
    # lib/pq's URL form, with the password (VSecM takes no password file): it ends up in
    # the `vsecm-safe` secret, encrypted like every other row.
    pg_dsn="postgres://aegis:$(cat "$pg_password_file")@${pg_url#postgres://aegis@}?sslmode=disable"
    log "PostgreSQL for VSecM: ${pg_url}"
fi

port=$((20000 + RANDOM % 5000))
live=$((port + 1))
ready=$((port + 2))
mapfile -t vsecm_vars < <(vsecm_env "$work/root-key.txt" "$work/data" "$port" "$live" "$ready" "$store")
setpriv --reuid="$uid_safe" --regid="$uid_safe" --clear-groups env -i PATH=/usr/bin:/bin "${vsecm_vars[@]}" \
    "$work/bin/vsecm-safe" >"$work/vsecm-safe.log" 2>&1 </dev/null &
safe_pid=$!
log "VSecM's Safe started (pid $safe_pid, port $port); waiting for readiness"
for _ in $(seq 1 300); do
    kill -0 "$safe_pid" 2>/dev/null || { tail -n 40 "$work/vsecm-safe.log" >&2; die "VSecM's Safe exited (log above)"; }
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { tail -n 40 "$work/vsecm-safe.log" >&2; die "VSecM's Safe does not listen on $port after 30 s"; }

client_env=(
    PATH=/usr/bin:/bin
    SPIFFE_ENDPOINT_SOCKET="$SPIFFE_ENDPOINT_SOCKET"
    SPIFFE_TRUST_DOMAIN="$SPIFFE_TRUST_DOMAIN"
    VSECM_SAFE_ENDPOINT_URL="https://127.0.0.1:$port/"
    AEGIS_SAFE_URL="https://127.0.0.1:$port"
)

# `safe` as VSecM's Sentinel: the upsert body VSecM's Sentinel sends.
sentinel() {
    local outp
    for _ in $(seq 1 100); do
        if outp="$(setpriv --reuid="$uid_sentinel" --regid="$uid_sentinel" --clear-groups \
            env -i "${client_env[@]}" "$work/bin/safe" "$@" 2>"$work/safe.err")"; then
            log "safe $1 $2: $outp"
            return 0
        fi
        # The Safe may still be loading its root key: retry briefly.
        sleep 0.2
    done
    tail -n 40 "$work/vsecm-safe.log" "$work/safe.err" >&2
    die "safe $1 $2 failed: $outp"
}

# In postgres mode VSecM keeps secrets in memory and refuses other writes until it has
# read its internal config, the `vsecm-safe` secret ({"config": {"backingStore",
# "dataSourceName"}}, VSecMSafeInternalConfig), which it polls for every 5 s; then it
# connects and persists every secret, this one included, to the table.
rows() { pg "$pg_url" -At -c "SELECT name FROM $table ORDER BY name"; }
if [[ "$store" == postgres ]]; then
    sentinel -w vsecm-safe -s "$(jq -cn --arg dsn "$pg_dsn" '{config: {backingStore: "postgres", dataSourceName: $dsn}}')"
    for _ in $(seq 1 300); do
        grep -qx vsecm-safe <<<"$(rows)" && break
        sleep 0.1
    done
    grep -qx vsecm-safe <<<"$(rows)" || { tail -n 40 "$work/vsecm-safe.log" >&2; die "VSecM did not connect to PostgreSQL within 30 s (log above)"; }
    log "VSecM's Safe persists to PostgreSQL"
fi

json_value='{"username":"admin","password":"VSecMRocks","port":5432}'
unicode_value=$'Grüße, 世界 🚀\nsecond line\n\ttabbed "quoted" \\ backslash'
sentinel -w billing -s "$json_value"
sentinel -w inventory -s "$json_value" -t '{"USER":"{{.username}}","PASS":"{{.password}}"}' -f yaml
sentinel -w orders -w shipping -s "$unicode_value"
sentinel -w payments -n default -n payments -s '{"card":"4111","cvv":"123"}' \
    -t '{"CARD":"{{.card}}"}' -f json -N 2024-01-01T00:00:00Z -E 2099-12-31T23:59:59Z
sentinel -w legacy -s 'first version' -f raw
sleep 1.1 # so that legacy's created and updated differ by at least a second
sentinel -w legacy -s 'second version' -f raw
sentinel -w reports -s '{"bucket":"r","region":"eu"}' -t 'bucket={{.bucket}} region={{.region}}' -f raw
sentinel -w k8s:db-credentials -n apps -n default -s '{"user":"db","pass":"s3cr3t"}' \
    -t '{"USERNAME":"{{.user}}","PASSWORD":"{{.pass}}"}'
sentinel -w raw:cache-config -s 'maxmemory 2gb'
written=(billing inventory orders shipping payments legacy reports k8s:db-credentials raw:cache-config)
[[ "$store" == file ]] || written+=(vsecm-safe)

# VSecM persists asynchronously: wait for every file (row), then for the writes to settle.
stored() {
    if [[ "$store" == file ]]; then
        [[ -s "$work/data/$1.age" ]]
    else
        grep -qxF -- "$1" <<<"$stored_rows"
    fi
}
for _ in $(seq 1 300); do
    [[ "$store" == file ]] || stored_rows="$(rows)"
    missing=0
    for n in "${written[@]}"; do stored "$n" || missing=1; done
    ((missing == 0)) && break
    sleep 0.1
done
[[ "$store" == file ]] || stored_rows="$(rows)"
for n in "${written[@]}"; do stored "$n" || die "VSecM did not persist $n within 30 s ($store store)"; done
sleep 1

# ---- What each workload fetches, with VSecM's own SDK
fetches="{}"
i=0
for w in "${workloads[@]}"; do
    uid=$((10210 + i))
    i=$((i + 1))
    rc=0
    got="$(setpriv --reuid="$uid" --regid="$uid" --clear-groups env -i "${client_env[@]}" \
        "$work/bin/vsecm-client" fetch -json 2>"$work/fetch.err")" || rc=$?
    case "$rc" in
        0) fetches="$(jq -c --arg w "$w" --argjson v "$got" '. + {($w): $v}' <<<"$fetches")" ;;
        3) fetches="$(jq -c --arg w "$w" '. + {($w): null}' <<<"$fetches")" ;;
        *) cat "$work/fetch.err" >&2; die "fetch as $w failed (exit $rc)" ;;
    esac
done

# ---- Stop and copy out
kill -TERM "$safe_pid"
wait "$safe_pid" 2>/dev/null || true
safe_pid=""
"$here/spire.sh" stop "$spire_dir"

if [[ "$store" == file ]]; then
    mkdir -p "$out/data"
    for n in "${written[@]}"; do cp "$work/data/$n.age" "$out/data/"; done
    chmod 0644 "$out/data"/*.age
else
    # The rows exactly as VSecM wrote them; the database is stopped only afterwards.
    printf -- '-- The table VMware Secrets Manager v0.28.1 writes to (VSECM_SAFE_BACKING_STORE=postgres).\n%s\n' \
        "$schema" >"$out/schema.sql"
    pg "$pg_url" -c "COPY (SELECT name, data FROM $table ORDER BY name) TO STDOUT" >"$out/vsecm-secrets.copy"
    [[ "$(wc -l <"$out/vsecm-secrets.copy")" -eq "${#written[@]}" ]] ||
        die "the export holds $(wc -l <"$out/vsecm-secrets.copy") rows, not ${#written[@]}"
    "$here/postgres.sh" stop "$pg_dir"
fi
cp "$work/root-key.txt" "$out/root-key.txt"
chmod 0644 "$out/root-key.txt"
jq -n --argjson f "$fetches" --arg go "$go_version" --arg store "$store" \
    --argjson w "$(printf '%s\n' "${written[@]}" | jq -R . | jq -s .)" \
    '{vsecm_version: "0.28.1", produced_with: "scripts/vsecm-fixtures.sh", go: $go,
      backing_store: $store, written: $w, fetches: $f}' >"$out/expected-fetches.json"
log "wrote $out (${#written[@]} secrets, ${#workloads[@]} workload fetches)"
