#!/usr/bin/env bash
# Several Safes on one PostgreSQL database (release builds, a throw-away
# cluster from scripts/postgres.sh): durable writes/s with 32 writers spread
# over three Safes, fetches/s from one, propagation from an acknowledged write
# on A to a sidecar's file fed by C, and the start-up of a fourth Safe with
# SECRETS secrets in the database. A benchmark, not part of the test command.
#
#   scripts/bench-replicas.sh [SECRETS]      (default 100000 for the start-up)
#
# Prints a Markdown table for docs/BENCHMARKS.md. Needs root (the server runs as postgres).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
secrets="${1:-100000}"
seconds="${AEGIS_BENCH_SECONDS:-8}"
target="${AEGIS_BENCH_TARGET:-$HOME/.cache/aegis/target-scale}"
fail() { echo "bench-replicas: error: $*" >&2; exit 1; }

echo "== building release binaries into $target" >&2
(cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release --bin aegis --bin aegis-bench >&2)
aegis="$target/release/aegis"
bench="$target/release/aegis-bench"

work="$(mktemp -d /tmp/aegis-bench-replicas.XXXXXX)"
chmod 0755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$repo/scripts/postgres.sh" stop "$work/pg" || true
    rm -rf "$work"
}
trap cleanup EXIT

pg_env="$("$repo/scripts/postgres.sh" start "$work/pg")"
while IFS='=' read -r key value; do declare "$key=$value"; done <<<"$pg_env"
url="${AEGIS_TEST_POSTGRES_URL%/*}/bench"
PGPASSWORD="$(cat "$AEGIS_TEST_POSTGRES_PASSWORD_FILE")" "$AEGIS_TEST_POSTGRES_BIN/psql" -q \
    "$AEGIS_TEST_POSTGRES_URL" -c "CREATE DATABASE bench"
store=(--store-url "$url" --store-password-file "$AEGIS_TEST_POSTGRES_PASSWORD_FILE")

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_safe NAME: a dev Safe on the database; the first one's root key for the others.
start_safe() {
    local name="$1" dir="$work/$1" port health t0
    port="$(free_port)"
    health="$(free_port)"
    mkdir -p "$dir"
    [ "$name" = a ] || cp "$work/a/root.key" "$dir/root.key"
    t0="$(date +%s.%N)"
    AEGIS_LOG=warn "$aegis" dev --data-dir "$dir" --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$health" \
        "${store[@]}" >"$dir.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 1200); do
        if curl -sf "http://127.0.0.1:$health/readyz" >/dev/null 2>&1; then
            echo "$(date +%s.%N) $t0" | awk '{ printf "%.2f", $1 - $2 }' >"$dir.ready"
            return 0
        fi
        sleep 0.05
    done
    cat "$dir.log" >&2
    fail "Safe $name did not become ready"
}

for s in a b c; do start_safe "$s"; done
as() { (set -a; . "$work/$1/env"; set +a; shift; "$@"); }
rate() { python3 -c 'import json, sys; print(format(sum(json.load(open(f))["per_second"] for f in sys.argv[1:]), ",.0f"))' "$@"; }

echo "== writes: 32 writers over three Safes" >&2
for s in a b c; do
    as "$s" "$bench" write --writers 11 --seconds "$seconds" --size 1024 --prefix "bench-$s" >"$work/write-$s.json" 2>>"$work/bench.err" &
    pids+=($!)
done
wait "${pids[-1]}" "${pids[-2]}" "${pids[-3]}"
echo "== writes: 32 writers on one Safe" >&2
as a "$bench" write --writers 32 --seconds "$seconds" --size 1024 >"$work/write-one.json" 2>>"$work/bench.err"

echo "== fetches from one Safe" >&2
"$aegis" dev svid --workload bench-fetch --data-dir "$work/c" >"$work/fetch.env"
as a "$aegis" put bench-fetch --value '{"k":"v"}' >/dev/null
sleep 1
(set -a; . "$work/fetch.env"; set +a; "$bench" fetch --connections 16 --seconds "$seconds") >"$work/fetch.json" 2>>"$work/bench.err"

echo "== propagation: a write on A to a sidecar's file fed by C" >&2
(set -a; . "$work/fetch.env"; set +a; AEGIS_LOG=warn "$aegis" sidecar --path "$work/sidecar.json") 2>>"$work/bench.err" &
pids+=($!)
sleep 1
as a "$bench" propagation --file "$work/sidecar.json" --secret bench-fetch --updates 200 >"$work/propagation.json" 2>>"$work/bench.err"
prop="$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("%.1f / %.1f" % (d["p50_ms"], d["p99_ms"]))' "$work/propagation.json")"

echo "== start-up of a fourth Safe with $secrets secrets in the database" >&2
have="$(as a "$aegis" status -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)["secrets"])')"
if [ "$have" -lt "$secrets" ]; then
    as a "$bench" fill --secrets $((secrets - have)) --size 1024 --writers 16 >"$work/fill.json" 2>>"$work/bench.err"
fi
start_safe d
d_rss="$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/${pids[-1]}/status")"

cat <<EOF

$(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), commit $(git -C "$repo" rev-parse --short HEAD), PostgreSQL $("$AEGIS_TEST_POSTGRES_BIN/postgres" --version | awk '{print $3}') on the same machine, release build.

| measure | value |
|---|---|
| durable writes/s, 32 writers spread over three Safes (1 KiB) | $(rate "$work"/write-[abc].json) |
| durable writes/s, 32 writers on one Safe | $(rate "$work/write-one.json") |
| fetches/s from one Safe, 16 connections | $(rate "$work/fetch.json") |
| propagation p50 / p99, write acknowledged on A to a sidecar's file fed by C, 200 updates | $prop ms |
| start-up of a fourth Safe with $secrets secrets in the database (to ready) | $(cat "$work/d.ready") s, RSS $d_rss MiB |
EOF
