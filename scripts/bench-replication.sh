#!/usr/bin/env bash
# Replication between Safes (issue 24; docs/REPLICATION.md), on one host, release build:
#
#   1. propagation: a write on source A to the file of a sidecar that watches replica
#      B (`aegis-bench propagation`, p50/p99 over AEGIS_BENCH_UPDATES), timed from the
#      write's acknowledgement and from its start; and, for reference, to a sidecar
#      of the same workload on A itself;
#   2. catch-up: B is killed (-9), A takes AEGIS_BENCH_CATCHUP new 1 KiB secrets, B is
#      started again: the time from B's start until it holds A's last change (and,
#      apart, the time until B is ready);
#   3. the cost on A's writes: 32 writers for AEGIS_BENCH_SECONDS against A with two
#      replicas attached (B and C following) and against A without replicas, in
#      alternating rounds (AEGIS_BENCH_ROUNDS): A's own CPU per write (from /proc)
#      and its throughput, medians; and how long B takes to hold A's last write after
#      the load ends.
#
#   scripts/bench-replication.sh [REV]       (REV defaults to HEAD)
#
# A is `aegis dev` (its dev CA issues the replicas' SVIDs: one trust domain, so no
# federation is needed on one host); B and C are `aegis server` with SVID files.
# A benchmark, not part of the test command. Prints one JSON line per measure and a
# table in Markdown at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-replication
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_settings "write-native"
updates="${AEGIS_BENCH_UPDATES:-1000}"
catchup="${AEGIS_BENCH_CATCHUP:-10000}"
sha="$(bench_sha "${1:-HEAD}")"
bin="$(bench_build "$sha" with-bench)" || exit 1
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
    bench_cleanup
}
trap cleanup EXIT

td=vsecm.com
a_id="spiffe://$td/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/vsecm-safe-0"
replica_id() { echo "spiffe://$td/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/replica-$1"; }
patterns='bench-*,fill-*,billing'

wait_ready() { # HEALTH_PORT LOG
    for _ in $(seq 1 300); do
        curl -sf -m 2 -o /dev/null "http://127.0.0.1:$1/readyz" && return 0
        sleep 0.1
    done
    bench_log "a Safe did not start; log:"
    tail -20 "$2" >&2
    exit 1
}

metric() { # HEALTH_PORT NAME: the first sample of NAME (0 when absent)
    curl -s -m 2 "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($1, n) == 1 { print $2; found = 1; exit } END { if (!found) print 0 }'
}

# start_a DIR [FLAGS...]: the source, a dev Safe; sets A_PID, A_PORT, A_HEALTH.
start_a() {
    local dir="$1"
    shift
    A_PORT="$(bench_free_port)"
    A_HEALTH="$(bench_free_port)"
    "$bin/aegis" dev --data-dir "$dir" --listen "127.0.0.1:$A_PORT" --health-listen "127.0.0.1:$A_HEALTH" "$@" \
        >"$dir.log" 2>&1 </dev/null &
    A_PID=$!
    pids+=("$A_PID")
    wait_ready "$A_HEALTH" "$dir.log"
    for _ in $(seq 1 50); do [[ -f "$dir/env" ]] && break; sleep 0.1; done
}

# start_replica NAME ADIR: `aegis server` replicating from A with an SVID of A's dev CA;
# sets R_PID and R_HEALTH. Its data stays in $work/NAME across starts.
start_replica() {
    local name="$1" adir="$2" svid port
    svid="$("$bin/aegis" dev --data-dir "$adir" svid --workload "replica-$name" --spiffe-id "$(replica_id "$name")")"
    port="$(bench_free_port)"
    R_HEALTH="$(bench_free_port)"
    mkdir -p "$work/$name"
    (
        eval "$svid"
        exec "$bin/aegis" server --svid-cert "$AEGIS_SVID_CERT" --svid-key "$AEGIS_SVID_KEY" \
            --svid-bundle "$AEGIS_SVID_BUNDLE" --root-key-file "$work/$name/root.key" \
            --data-dir "$work/$name/data" --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$R_HEALTH" \
            --replicate-from "$a_id=https://127.0.0.1:$A_PORT"
    ) >>"$work/$name.log" 2>&1 </dev/null &
    R_PID=$!
    pids+=("$R_PID")
    R_URL="https://127.0.0.1:$port"
}

as_admin() { (set -a && source "$1/env" && set +a && "${@:2}"); }

# caught_up HEALTH_OF_REPLICA: true when the replica holds A's last change.
caught_up() {
    local head applied
    head="$(metric "$A_HEALTH" aegis_replication_head_sequence)"
    applied="$(metric "$1" aegis_replication_applied_sequence)"
    [[ "$head" != 0 && "$applied" -ge "$head" ]]
}

wait_caught_up() { # HEALTH_OF_REPLICA LIMIT_S: prints the seconds it took
    local t0=$EPOCHREALTIME
    for _ in $(seq 1 $(($2 * 50))); do
        if caught_up "$1"; then
            python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$EPOCHREALTIME"
            return 0
        fi
        sleep 0.02
    done
    bench_die "the replica did not catch up within $2 s"
}

stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

rows="$work/rows.jsonl"
row() { echo "$1" | tee -a "$rows"; }

# 1 and 2: propagation to a sidecar on B, then catch-up after a cut.
adir="$work/a"
start_a "$adir" --replicate-to "$(replica_id b),$(replica_id c)" --replicate "$patterns"
as_admin "$adir" "$bin/aegis" put billing --value '{"v":"seed"}' >/dev/null
start_replica b "$adir"
b_pid="$R_PID" b_health="$R_HEALTH" b_url="$R_URL"
wait_ready "$b_health" "$work/b.log"
wait_caught_up "$b_health" 30 >/dev/null
sidecar_env="$("$bin/aegis" dev --data-dir "$adir" svid --workload billing)"
# The same workload's sidecar on each side: on B (replicated) and, for reference, on A itself.
for side in b a; do
    url="$b_url"
    [[ "$side" == a ]] && url="https://127.0.0.1:$A_PORT"
    (
        eval "$sidecar_env"
        export AEGIS_SAFE_URL="$url"
        exec "$bin/aegis" sidecar --path "$work/billing-$side.json"
    ) >"$work/sidecar-$side.log" 2>&1 </dev/null &
    pids+=("$!")
    for _ in $(seq 1 100); do [[ -s "$work/billing-$side.json" ]] && break; sleep 0.1; done
done
for run in "b ack" "b start" "a start"; do
    read -r side from <<<"$run"
    flags=()
    [[ "$from" == start ]] && flags=(--from-start)
    bench_log "propagation: $updates updates on A, watched by a sidecar on ${side^^}, timed from the write's $from"
    report="$(as_admin "$adir" "$bin/aegis-bench" propagation --updates "$updates" --file "$work/billing-$side.json" \
        --secret billing "${flags[@]}")"
    row "$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r.update(measure="propagation", sidecar_on=sys.argv[2], timed_from=sys.argv[3]); print(json.dumps(r))' "$report" "$side" "$from")"
done

bench_log "catch-up: B killed, $catchup secrets written on A, B started again"
kill -KILL "$b_pid"
wait "$b_pid" 2>/dev/null || true
as_admin "$adir" "$bin/aegis-bench" fill --secrets "$catchup" --writers 8 --size 1024 >/dev/null
t0=$EPOCHREALTIME
start_replica b "$adir"
b_pid="$R_PID"
wait_ready "$R_HEALTH" "$work/b.log"
ready="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$EPOCHREALTIME")"
rest="$(wait_caught_up "$R_HEALTH" 600)"
row "{\"measure\": \"catch-up\", \"changes\": $catchup, \"ready_s\": $ready, \"caught_up_after_ready_s\": $rest}"
stop_all

# 3: A's CPU per write, with and without two replicas attached.
for round in $(seq 1 "$BENCH_ROUNDS"); do
    if ((round % 2)); then order="attached alone"; else order="alone attached"; fi
    for side in $order; do
        dir="$work/w-$round-$side"
        rm -rf "$work/b" "$work/c"
        if [[ "$side" == attached ]]; then
            start_a "$dir" --replicate-to "$(replica_id b),$(replica_id c)" --replicate "$patterns"
            start_replica b "$dir"
            rb="$R_HEALTH"
            start_replica c "$dir"
            wait_ready "$rb" "$work/b.log"
            wait_ready "$R_HEALTH" "$work/c.log"
        else
            start_a "$dir"
        fi
        bench_log "round $round, writes, A $side"
        before="$(bench_cpu_ticks "$A_PID")"
        report="$(as_admin "$dir" "$bin/aegis-bench" write --writers 32 --size 1024 --seconds "$BENCH_SECS" --api native)"
        behind=null
        [[ "$side" == attached ]] && behind="$(wait_caught_up "$rb" 120)"
        bench_settle "$A_PID"
        after="$(bench_cpu_ticks "$A_PID")"
        row "$(python3 - "$side" "$((after - before))" "$BENCH_TICKS" "$report" "$behind" <<'EOF'
import json, sys
side, cpu, ticks, report, behind = sys.argv[1:]
r = json.loads(report)
ops = max(r["ok"], 1)
print(json.dumps({"measure": "writes", "a": side, "ops": r["ok"], "errors": r["errors"], "per_second": r["per_second"],
                  "p99_ms": r["p99_ms"], "a_cpu_us_per_write": int(cpu) / int(ticks) * 1e6 / ops,
                  "b_caught_up_after_load_s": None if behind == "null" else float(behind)}))
EOF
)"
        stop_all
    done
done

python3 - "$rows" "$sha" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n| measure ({sys.argv[2][:10]}) | figure |\n|---|---|")
for r in rows:
    if r["measure"] == "propagation":
        start = "start of the write" if r["timed_from"] == "start" else "write acknowledged"
        where = "replica B" if r["sidecar_on"] == "b" else "A itself (no replication, for reference)"
        print(f"| {start} on A → file of a sidecar on {where} ({r['ok']} updates, {r['errors']} missed) | p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms |")
    if r["measure"] == "catch-up":
        print(f"| catch-up of {r['changes']:,} changes after a cut | B ready in {r['ready_s']:.2f} s, then caught up in {r['caught_up_after_ready_s']:.2f} s |")
for side in ("alone", "attached"):
    w = [r for r in rows if r["measure"] == "writes" and r["a"] == side]
    if not w:
        continue
    cpu = statistics.median(r["a_cpu_us_per_write"] for r in w)
    rate = statistics.median(r["per_second"] for r in w)
    extra = ""
    if side == "attached":
        extra = f"; B holds A's last write {statistics.median(r['b_caught_up_after_load_s'] for r in w):.2f} s after the load"
    print(f"| A's writes, {'two replicas attached' if side == 'attached' else 'no replicas'} (median of {len(w)}) | {cpu:.0f} µs CPU a write, {rate:,.0f} writes/s{extra} |")
EOF
