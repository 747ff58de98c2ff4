#!/usr/bin/env bash
# Compares the Safe of two commits under the same loads, in alternating rounds,
# by what does not depend on how busy the machine is: the Safe's own CPU time
# per operation (utime + stime from /proc) and fsyncs (fsync, fdatasync, syncfs,
# sync) per acknowledged write
# (strace, in a separate pass so it never skews the CPU figures). Throughput,
# p99 and resident memory are reported beside them, but noise decides those.
#
#   scripts/bench-compare.sh BASE [HEAD]      (HEAD defaults to the checkout's HEAD)
#
# Both commits are built in release mode from `git archive` copies into one
# target directory outside the clone ($AEGIS_CACHE_DIR/bench). The load
# generator is HEAD's `aegis-bench` for both, so only the Safe differs. Exits 1
# when HEAD's median CPU per operation is worse than BASE's by more than the
# margin on any load, 2 on bad usage. A benchmark, not part of the test command.
#
# Settings (environment): AEGIS_BENCH_ROUNDS (3), AEGIS_BENCH_SECONDS (8 per
# run), AEGIS_BENCH_MARGIN (10, percent), AEGIS_BENCH_LOADS (fetch fetch-new
# write-native write-vsecm), AEGIS_BENCH_FSYNCS (1: the strace pass; 0: skip).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/bench-compare.sh BASE [HEAD]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/bench"
rounds="${AEGIS_BENCH_ROUNDS:-3}"
secs="${AEGIS_BENCH_SECONDS:-8}"
margin="${AEGIS_BENCH_MARGIN:-10}"
loads="${AEGIS_BENCH_LOADS:-fetch fetch-new write-native write-vsecm}"
fsyncs="${AEGIS_BENCH_FSYNCS:-1}"
for n in "$rounds" "$secs" "$margin"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-compare: error: rounds, seconds and margin must be whole numbers above 0, not '$n'" >&2; exit 2; }
done
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-compare: error: $tool is needed" >&2; exit 1; }
done
if [[ "$fsyncs" == 1 ]] && ! command -v strace >/dev/null; then
    echo "bench-compare: error: strace is needed for fsyncs per write (apt-get install strace), or set AEGIS_BENCH_FSYNCS=0" >&2
    exit 1
fi
sha() { git rev-parse --verify --quiet "$1^{commit}" || { echo "bench-compare: error: '$1' is not a commit here" >&2; exit 2; }; }
base_sha="$(sha "$1")"
head_sha="$(sha "${2:-HEAD}")"

# Builds `aegis` (and with a second argument `aegis-bench`) of a commit; prints the bin dir.
build() {
    local rev="$1" src="$cache/src/$1" bin="$cache/bin/$1"
    if [[ ! -x "$bin/aegis" || ( -n "${2:-}" && ! -x "$bin/aegis-bench" ) ]]; then
        rm -rf "$src" && mkdir -p "$src" "$bin"
        git archive "$rev" | tar -x -C "$src"
        # The archive's files carry the commit's time, older than the other commit's
        # build in the shared target directory: made new, so cargo rebuilds them.
        find "$src" -type f -exec touch {} +
        local pkgs=(-p aegis)
        [[ -n "${2:-}" ]] && pkgs+=(-p aegis-bench)
        echo "bench-compare: building ${rev:0:10} in release mode" >&2
        (cd "$src" && CARGO_TARGET_DIR="$cache/target" cargo build --release --locked -q "${pkgs[@]}") >&2 ||
            { echo "bench-compare: error: building ${rev:0:10} failed (see above)" >&2; exit 1; }
        cp "$cache/target/release/aegis" "$bin/" || exit 1
        if [[ -n "${2:-}" ]]; then cp "$cache/target/release/aegis-bench" "$bin/" || exit 1; fi
    fi
    echo "$bin"
}
base_bin="$(build "$base_sha")" || exit 1
head_bin="$(build "$head_sha" with-bench)" || exit 1
bench="$head_bin/aegis-bench"
results="$(mktemp)"
SAFE_PID="" LAUNCHER=""
# A run that fails half-way leaves no Safe behind.
trap 'rm -f "$results"; [[ -n "$SAFE_PID" ]] && kill -TERM "$SAFE_PID" 2>/dev/null; true' EXIT
ticks="$(getconf CLK_TCK)"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# A port nothing listens on now (the kernel's choice).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts a dev Safe of $1 in $2 (optionally under strace writing to $3); sets SAFE_PID and PORTS.
start_safe() {
    local bin="$1" dir="$2" trace="${3:-}"
    local port health
    port="$(free_port)"
    health="$(free_port)"
    local cmd=("$bin/aegis" dev --data-dir "$dir/dev" --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$health")
    if [[ -n "$trace" ]]; then
        strace -f -qq -c -e trace=fsync,fdatasync,syncfs,sync -o "$trace" "${cmd[@]}" >"$dir/log" 2>&1 &
    else
        "${cmd[@]}" >"$dir/log" 2>&1 &
    fi
    local launcher=$!
    for _ in $(seq 1 200); do
        [[ -f "$dir/dev/env" ]] && curl -s -m 2 -o /dev/null "http://127.0.0.1:$health/readyz" && break
        sleep 0.1
    done
    curl -sf -m 2 -o /dev/null "http://127.0.0.1:$health/readyz" || { echo "bench-compare: error: the Safe of $bin did not start; log:" >&2; tail "$dir/log" >&2; exit 1; }
    SAFE_PID="$launcher"
    [[ -n "$trace" ]] && SAFE_PID="$(pgrep -P "$launcher" | head -1)"
    LAUNCHER="$launcher"
}

stop_safe() {
    kill -TERM "$SAFE_PID" 2>/dev/null || true
    wait "$LAUNCHER" 2>/dev/null || true
    SAFE_PID=""
}

# One run of load $3 against a fresh Safe of $2 (side $1); appends a JSON line to the results.
run() {
    local side="$1" bin="$2" load="$3" trace="${4:-}" dir
    dir="$(mktemp -d)"
    start_safe "$bin" "$dir" "$trace"
    local admin workload
    admin="$(sed -n 's/^export //p' "$dir/dev/env" | tr -d "'" | tr '\n' ' ')"
    env $admin "$bin/aegis" put billing --value "bench-value-of-64-bytes-0123456789abcdef0123456789abcdef" >/dev/null
    workload="$("$bin/aegis" dev svid --workload billing --data-dir "$dir/dev" | sed -n 's/^export //p' | tr -d "'" | tr '\n' ' ')"
    local args who
    case "$load" in
        fetch) who="$workload"; args=(fetch --connections 64 --seconds "$secs") ;;
        fetch-new) who="$workload"; args=(fetch --connections 8 --new-connection --seconds "$secs") ;;
        write-native) who="$admin"; args=(write --writers 32 --size 1024 --seconds "$secs" --api native) ;;
        write-vsecm) who="$admin"; args=(write --writers 32 --size 1024 --seconds "$secs" --api vsecm) ;;
        *) echo "bench-compare: error: unknown load '$load' (fetch, fetch-new, write-native, write-vsecm)" >&2; exit 2 ;;
    esac
    local before after report
    before="$(cpu_ticks "$SAFE_PID")"
    report="$(env $who "$bench" "${args[@]}")"
    after="$(cpu_ticks "$SAFE_PID")"
    local rss
    rss="$(rss_kb "$SAFE_PID")"
    stop_safe
    local fsync_count=""
    if [[ -n "$trace" ]]; then
        sleep 0.5
        fsync_count="$(awk '$NF == "fsync" || $NF == "fdatasync" || $NF == "syncfs" || $NF == "sync" { n += $4 } END { print n + 0 }' "$trace")"
    fi
    python3 - "$side" "$load" "$((after - before))" "$ticks" "$rss" "$fsync_count" "$report" >>"$results" <<'EOF'
import json, sys
side, load, cpu, ticks, rss, fsyncs, report = sys.argv[1:]
r = json.loads(report)
ops = max(r["ok"], 1)
row = {"side": side, "load": load, "ops": r["ok"], "errors": r["errors"], "per_second": r["per_second"],
       "p99_ms": r["p99_ms"], "rss_mb": int(rss) / 1024, "traced": bool(fsyncs)}
if fsyncs:
    row["fsyncs_per_op"] = int(fsyncs) / ops
else:
    row["cpu_us_per_op"] = int(cpu) / int(ticks) * 1e6 / ops
print(json.dumps(row))
EOF
    rm -rf "$dir"
}

echo "bench-compare: BASE ${base_sha:0:10}, HEAD ${head_sha:0:10}; $rounds alternating rounds of $secs s per load" >&2
for round in $(seq 1 "$rounds"); do
    for load in $loads; do
        # Alternate which side goes first, so a drift in the machine's speed hits both alike.
        if (( round % 2 )); then order="base head"; else order="head base"; fi
        for side in $order; do
            bin="$base_bin"; [[ "$side" == head ]] && bin="$head_bin"
            echo "bench-compare: round $round, $load, $side" >&2
            run "$side" "$bin" "$load"
        done
    done
done
if [[ "$fsyncs" == 1 ]]; then
    for load in $loads; do
        [[ "$load" == write-* ]] || continue
        for side in base head; do
            bin="$base_bin"; [[ "$side" == head ]] && bin="$head_bin"
            echo "bench-compare: fsyncs, $load, $side" >&2
            trace="$(mktemp)"
            run "$side" "$bin" "$load" "$trace"
            rm -f "$trace"
        done
    done
fi

python3 - "$results" "$margin" "${base_sha:0:10}" "${head_sha:0:10}" <<'EOF'
import json, statistics, sys
path, margin, base, head = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(path) if l.strip()]
def med(load, side, key):
    # Runs under strace count fsyncs only: their speed and memory are strace's too.
    v = [r[key] for r in rows if r["load"] == load and r["side"] == side and key in r
         and (key == "fsyncs_per_op" or not r["traced"])]
    return statistics.median(v) if v else None
loads = list(dict.fromkeys(r["load"] for r in rows))
print(f"| load | CPU µs/op BASE {base} | HEAD {head} | HEAD/BASE | fsyncs/write BASE | HEAD | ops/s BASE | HEAD | p99 ms BASE | HEAD | RSS MB BASE | HEAD |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
worse = []
fmt = lambda v, d=1: "–" if v is None else f"{v:,.{d}f}"
for load in loads:
    cb, ch = med(load, "base", "cpu_us_per_op"), med(load, "head", "cpu_us_per_op")
    ratio = ch / cb if cb and ch else None
    if ratio is not None and ratio > 1 + margin / 100:
        worse.append(f"{load}: HEAD uses {ratio:.2f}x BASE's CPU per operation")
    errors = sum(r["errors"] for r in rows if r["load"] == load)
    print(f"| {load}{' (' + str(errors) + ' errors)' if errors else ''} | {fmt(cb)} | {fmt(ch)} | {fmt(ratio, 2)} "
          f"| {fmt(med(load, 'base', 'fsyncs_per_op'), 2)} | {fmt(med(load, 'head', 'fsyncs_per_op'), 2)} "
          f"| {fmt(med(load, 'base', 'per_second'), 0)} | {fmt(med(load, 'head', 'per_second'), 0)} "
          f"| {fmt(med(load, 'base', 'p99_ms'), 2)} | {fmt(med(load, 'head', 'p99_ms'), 2)} "
          f"| {fmt(med(load, 'base', 'rss_mb'))} | {fmt(med(load, 'head', 'rss_mb'))} |")
if worse:
    print(f"\nHEAD is worse than BASE by more than {margin:g} % of CPU per operation:", *worse, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"\nNo load uses more than {margin:g} % more CPU per operation on HEAD (medians of the rounds).")
EOF
