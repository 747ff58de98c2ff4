#!/usr/bin/env bash
# Compares the Safe of two commits under the same loads, in alternating rounds,
# by what does not depend on how busy the machine is: the Safe's own CPU time
# per operation (utime + stime from /proc) and fsyncs per acknowledged write
# (strace, in a separate pass so it never skews the CPU figures). Throughput,
# p99 and resident memory are reported beside them, but noise decides those.
#
#   scripts/bench-compare.sh BASE [HEAD]      (HEAD defaults to the checkout's HEAD)
#
# Both commits are built in release mode from `git archive` copies into one
# target directory outside the clone ($AEGIS_CACHE_DIR/bench). The load
# generator is HEAD's `aegis-bench` for both, so only the Safe differs. Exits 1
# when HEAD's median CPU per operation (or memory per watcher) is worse than
# BASE's by more than the margin on any load, 2 on bad usage. A benchmark, not
# part of the test command.
#
# Settings (environment): AEGIS_BENCH_ROUNDS (3), AEGIS_BENCH_SECONDS (8 per
# run), AEGIS_BENCH_MARGIN (10, percent), AEGIS_BENCH_LOADS (fetch fetch-new
# write-native write-vsecm fill: 10,000 distinct 1 KiB secrets into an empty Safe;
# watchers, not by default: AEGIS_BENCH_WATCHERS (3000) idle watch connections, memory per watcher),
# AEGIS_BENCH_FSYNCS (1: the strace pass; 0: skip), AEGIS_BENCH_BASE_FLAGS and
# AEGIS_BENCH_HEAD_FLAGS (extra flags of each side's `aegis dev`, split on spaces: the
# same commit twice with different settings, e.g. the audit trail's own cost with
# AEGIS_BENCH_BASE_FLAGS="--audit-file off" scripts/bench-compare.sh HEAD HEAD).
# The shared parts (builds, loads, measuring, table) are in scripts/lib/bench.sh;
# scripts/bench-vsecm.sh compares Aegis's Safe with VSecM's the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_NAME=bench-compare
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh

usage() { echo "usage: scripts/bench-compare.sh BASE [HEAD]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
bench_settings "fetch fetch-new write-native write-vsecm fill"
trap bench_cleanup EXIT
base_sha="$(bench_sha "$1")"
head_sha="$(bench_sha "${2:-HEAD}")"
base_bin="$(bench_build "$base_sha")" || exit 1
head_bin="$(bench_build "$head_sha" with-bench)" || exit 1
bench="$head_bin/aegis-bench"

bench_skip() { false; }

# Starts a dev Safe of bin dir $1 in $2 (optionally under strace writing to $3) with the extra flags $4.
start_safe() {
    local bin="$1" dir="$2" trace="${3:-}" flags=()
    read -r -a flags <<<"${4:-}"
    local port health
    port="$(bench_free_port)"
    health="$(bench_free_port)"
    bench_launch "$dir/log" "$trace" \
        "$bin/aegis" dev --data-dir "$dir/dev" --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$health" "${flags[@]}"
    for _ in $(seq 1 200); do
        [[ -f "$dir/dev/env" ]] && curl -s -m 2 -o /dev/null "http://127.0.0.1:$health/readyz" && break
        sleep 0.1
    done
    curl -sf -m 2 -o /dev/null "http://127.0.0.1:$health/readyz" || { echo "bench-compare: error: the Safe of $bin did not start; log:" >&2; tail "$dir/log" >&2; exit 1; }
    bench_attach "$trace"
}

# One run of load $2 against a fresh dev Safe of side $1; appends a row to the results.
bench_run() {
    local side="$1" load="$2" trace="${3:-}" bin="$base_bin" flags="${AEGIS_BENCH_BASE_FLAGS:-}" dir
    [[ "$side" == head ]] && bin="$head_bin" flags="${AEGIS_BENCH_HEAD_FLAGS:-}"
    dir="$(mktemp -d)"
    # Idle watchers wait longer than the default request deadline, all under one identity.
    [[ "$load" == watchers ]] && flags="$flags $BENCH_WATCHERS_FLAGS --request-timeout-ms 600000"
    start_safe "$bin" "$dir" "$trace" "$flags"
    local admin workload who
    admin="$(sed -n 's/^export //p' "$dir/dev/env" | tr -d "'" | tr '\n' ' ')"
    env $admin "$bin/aegis" put billing --value "$BENCH_SEED_VALUE" >/dev/null
    workload="$("$bin/aegis" dev svid --workload billing --data-dir "$dir/dev" | sed -n 's/^export //p' | tr -d "'" | tr '\n' ' ')"
    bench_load_args "$load"
    who="$admin"; [[ "$BENCH_ROLE" == workload ]] && who="$workload"
    if [[ "$load" == watchers ]]; then
        admin_file() { sed -n "s/^export AEGIS_SVID_$1=//p" "$dir/dev/env" | tr -d "'"; }
        BENCH_ARGS+=(--safe-pid "$SAFE_PID" --idle-seconds "$BENCH_SECS" --admin-cert "$(admin_file CERT)"
            --admin-key "$(admin_file KEY)" --admin-bundle "$(admin_file BUNDLE)")
    fi
    bench_measure "$side" "$load" "$trace" env $who "$bench" "${BENCH_ARGS[@]}"
    rm -rf "$dir"
}

bench_log "BASE ${base_sha:0:10} ${AEGIS_BENCH_BASE_FLAGS:-}, HEAD ${head_sha:0:10} ${AEGIS_BENCH_HEAD_FLAGS:-}; $BENCH_ROUNDS alternating rounds of $BENCH_SECS s per load"
bench_rounds
bench_table BASE "${base_sha:0:10}${AEGIS_BENCH_BASE_FLAGS:+ ($AEGIS_BENCH_BASE_FLAGS)}" HEAD "${head_sha:0:10}${AEGIS_BENCH_HEAD_FLAGS:+ ($AEGIS_BENCH_HEAD_FLAGS)}" "$BENCH_MARGIN"
