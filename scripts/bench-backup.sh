#!/usr/bin/env bash
# Backup and restore of N secrets of SIZE bytes (default 100,000 x 1 KiB), with
# release builds: the time and peak memory of a backup, a check and a restore
# (the Safe's and the CLI's), and the Safe's fetch and write rates alone and
# while backups run back to back. A benchmark, not part of the test command.
#
#   scripts/bench-backup.sh [SECRETS] [SIZE]
#
# Prints a Markdown table for docs/BENCHMARKS.md. Needs GNU time (/usr/bin/time).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
secrets="${1:-100000}"
size="${2:-1024}"
seconds="${AEGIS_BENCH_SECONDS:-8}"
target="${AEGIS_BENCH_TARGET:-$HOME/.cache/aegis/target-scale}"
fail() { echo "bench-backup: error: $*" >&2; exit 1; }
[ -x /usr/bin/time ] || fail "GNU time is needed (apt-get install time)"

echo "== building release binaries into $target" >&2
(cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release --bin aegis --bin aegis-bench >&2)
aegis="$target/release/aegis"
bench="$target/release/aegis-bench"

work="$(mktemp -d /tmp/aegis-bench-backup.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_safe DIR: a dev Safe in DIR; sets $safe_pid and $health.
start_safe() {
    local dir="$1" port
    port="$(free_port)"
    health="$(free_port)"
    AEGIS_LOG=warn "$aegis" dev --data-dir "$dir" --listen "127.0.0.1:$port" \
        --health-listen "127.0.0.1:$health" >"$dir.log" 2>&1 &
    safe_pid=$!
    pids+=("$safe_pid")
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$health/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$dir.log" >&2
    fail "the Safe in $dir did not become ready"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# Resets the peak RSS of a process (root, or the process's owner).
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# timed VAR CMD...: runs CMD under GNU time; VAR_s (seconds) and VAR_kib (max RSS).
timed() {
    local var="$1"
    shift
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/out" 2>"$work/err" || {
        cat "$work/err" >&2
        fail "$* failed"
    }
    read -r s k <"$work/time"
    printf -v "${var}_s" '%s' "$s"
    printf -v "${var}_kib" '%s' "$k"
}

rate() { python3 -c 'import json, sys; print(format(json.load(open(sys.argv[1]))["per_second"], ",.0f"))' "$1"; }

mkdir -p "$work/a"
start_safe "$work/a"
a_pid="$safe_pid"
set -a
# shellcheck disable=SC1091
. "$work/a/env"
set +a
echo "== filling $secrets secrets of $size bytes" >&2
"$bench" fill --secrets "$secrets" --size "$size" --writers 8 >"$work/fill.json"
"$aegis" dev svid --workload bench-fetch --data-dir "$work/a" >"$work/fetch.env"
"$aegis" put bench-fetch --value '{"k":"v"}' >/dev/null
filled_kib="$(rss_kib "$a_pid")"

echo "== one backup" >&2
reset_peak "$a_pid"
base_kib="$(rss_kib "$a_pid")"
timed backup "$aegis" backup --out "$work/b.backup"
backup_peak_kib="$(hwm_kib "$a_pid")"
bytes="$(stat -c %s "$work/b.backup")"
timed verify "$aegis" backup verify "$work/b.backup"

echo "== restore into a new Safe with the same root key" >&2
mkdir -p "$work/r"
cp "$work/a/root.key" "$work/r/root.key"
start_safe "$work/r"
r_pid="$safe_pid"
(
    set -a
    . "$work/r/env"
    set +a
    reset_peak "$r_pid"
    echo "$(rss_kib "$r_pid")" >"$work/r.before"
    timed restore "$aegis" restore --in "$work/b.backup"
    echo "$restore_s $restore_kib" >"$work/r.time"
)
read -r restore_s restore_kib <"$work/r.time"
restore_peak_kib="$(hwm_kib "$r_pid")"
restored_kib="$(rss_kib "$r_pid")"

# The Safe's fetch and write rates: alone, then with backups back to back.
loads() {
    (set -a; . "$work/fetch.env"; set +a; "$bench" fetch --connections 16 --seconds "$seconds") >"$work/fetch-$1.json" 2>>"$work/bench.err"
    "$bench" write --writers 16 --seconds "$seconds" --size "$size" >"$work/write-$1.json" 2>>"$work/bench.err"
}
echo "== loads alone" >&2
loads alone
echo "== loads while backups run back to back" >&2
(
    while :; do "$aegis" backup --out - >/dev/null 2>>"$work/loop.err" || exit 0; done
) &
loop=$!
pids+=("$loop")
loads during
kill "$loop" 2>/dev/null || true
wait "$loop" 2>/dev/null || true
backups_during="$(grep -c '^backup:' "$work/loop.err" || true)"


cat <<EOF

$(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), commit $(git -C "$repo" rev-parse --short HEAD), $secrets secrets x $size bytes, release build.

| measure | value |
|---|---|
| backup file | $(mib $((bytes / 1024))) MiB ($bytes bytes) |
| backup: time | ${backup_s} s |
| backup: Safe's peak RSS over its RSS before (filled: $(mib "$filled_kib") MiB) | +$(mib $((backup_peak_kib - base_kib))) MiB |
| backup: CLI's peak RSS | $(mib "$backup_kib") MiB |
| check on the Safe (\`aegis backup verify\`): time | ${verify_s} s |
| restore into an empty Safe: time | ${restore_s} s |
| restore: Safe's peak RSS / RSS after | $(mib "$restore_peak_kib") / $(mib "$restored_kib") MiB (empty: $(mib "$(cat "$work/r.before")") MiB) |
| restore: CLI's peak RSS | $(mib "$restore_kib") MiB |
| fetches/s, 16 connections: alone / while backups run back to back | $(rate "$work/fetch-alone.json") / $(rate "$work/fetch-during.json") |
| writes/s, 16 writers: alone / while backups run back to back | $(rate "$work/write-alone.json") / $(rate "$work/write-during.json") |
| backups completed during the two loads | $backups_during |
EOF
