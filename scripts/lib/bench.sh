# Shared by scripts/bench-compare.sh (two commits' Safes) and scripts/bench-vsecm.sh
# (Aegis's Safe and VSecM's): settings, release builds from `git archive`, the
# loads, measuring one Safe process (CPU ticks and RSS from /proc, fsyncs from an
# strace pass), the alternating rounds and the table of medians. Two sides, "base"
# and "head"; the table's ratio is head/base.
#
# Source it after setting BENCH_NAME (the name in messages) and defining
#   bench_run SIDE LOAD [TRACE]   one run of LOAD against a fresh Safe of SIDE, which
#                                 calls bench_measure; under strace when TRACE is set
#   bench_skip SIDE LOAD          true when SIDE cannot run LOAD (a row shows "–")
# shellcheck shell=bash

# bench_die MESSAGE [EXIT_CODE (1)]
bench_die() {
    echo "$BENCH_NAME: error: $1" >&2
    exit "${2:-1}"
}
bench_log() { echo "$BENCH_NAME: $*" >&2; }

# bench_settings DEFAULT_LOADS: reads AEGIS_BENCH_ROUNDS (3), AEGIS_BENCH_SECONDS (8),
# AEGIS_BENCH_MARGIN (10), AEGIS_BENCH_LOADS, AEGIS_BENCH_FSYNCS (1) and AEGIS_BENCH_WATCHERS (3000) into BENCH_*,
# checks the tools, and sets BENCH_CACHE, BENCH_RESULTS (removed on exit by
# bench_cleanup) and BENCH_TICKS.
bench_settings() {
    export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
    BENCH_CACHE="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/bench"
    BENCH_ROUNDS="${AEGIS_BENCH_ROUNDS:-3}"
    BENCH_SECS="${AEGIS_BENCH_SECONDS:-8}"
    BENCH_MARGIN="${AEGIS_BENCH_MARGIN:-10}"
    BENCH_LOADS="${AEGIS_BENCH_LOADS:-$1}"
    BENCH_FSYNCS="${AEGIS_BENCH_FSYNCS:-1}"
    # How many idle watchers the `watchers` load opens, and the flags a Safe needs to hold them all for one identity.
    BENCH_WATCHERS="${AEGIS_BENCH_WATCHERS:-3000}"
    local n tool
    for n in "$BENCH_ROUNDS" "$BENCH_SECS" "$BENCH_MARGIN" "$BENCH_WATCHERS"; do
        [[ "$n" =~ ^[1-9][0-9]*$ ]] ||
            bench_die "rounds, seconds, margin and watchers must be whole numbers above 0, not '$n'" 2
    done
    local room=$((BENCH_WATCHERS + 100))
    BENCH_WATCHERS_FLAGS="--max-connections-per-identity $room --max-watches $room --max-watches-per-identity $room"
    for tool in curl python3; do
        command -v "$tool" >/dev/null || bench_die "$tool is needed"
    done
    if [[ "$BENCH_FSYNCS" == 1 ]] && ! command -v strace >/dev/null; then
        bench_die "strace is needed for fsyncs per write (apt-get install strace), or set AEGIS_BENCH_FSYNCS=0"
    fi
    BENCH_RESULTS="$(mktemp)"
    BENCH_TICKS="$(getconf CLK_TCK)"
    SAFE_PID="" LAUNCHER=""
}

# Removes the results and stops a Safe a failed run left behind (call from the EXIT trap).
bench_cleanup() {
    rm -f "$BENCH_RESULTS"
    [[ -n "${SAFE_PID:-}" ]] && kill -TERM "$SAFE_PID" 2>/dev/null
    true
}

# bench_sha REV: the commit REV names, or exit 2.
bench_sha() { git rev-parse --verify --quiet "$1^{commit}" || bench_die "'$1' is not a commit here" 2; }

# bench_build REV [with-bench]: builds the `aegis` and `safe` binaries (and with a
# second argument `aegis-bench`) of commit REV in release mode, from a `git archive`
# copy, into one target directory shared by all commits ($BENCH_CACHE/target; cargo's
# lock makes a concurrent build there wait); prints the bin dir.
bench_build() {
    local rev="$1" src="$BENCH_CACHE/src/$1" bin="$BENCH_CACHE/bin/$1"
    if [[ ! -x "$bin/aegis" || ! -x "$bin/safe" || (-n "${2:-}" && ! -x "$bin/aegis-bench") ]]; then
        rm -rf "$src" && mkdir -p "$src" "$bin"
        git archive "$rev" | tar -x -C "$src"
        # The archive's files carry the commit's time, older than the other commit's
        # build in the shared target directory: made new, so cargo rebuilds them.
        find "$src" -type f -exec touch {} +
        local pkgs=(-p aegis)
        [[ -n "${2:-}" ]] && pkgs+=(-p aegis-bench)
        bench_log "building ${rev:0:10} in release mode"
        (cd "$src" && CARGO_TARGET_DIR="$BENCH_CACHE/target" cargo build --release --locked -q "${pkgs[@]}") >&2 ||
            bench_die "building ${rev:0:10} failed (see above)"
        cp "$BENCH_CACHE/target/release/aegis" "$BENCH_CACHE/target/release/safe" "$bin/" || exit 1
        if [[ -n "${2:-}" ]]; then cp "$BENCH_CACHE/target/release/aegis-bench" "$bin/" || exit 1; fi
    fi
    echo "$bin"
}

bench_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
bench_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# A port nothing listens on now, below the kernel's range of ephemeral ports: a port the
# kernel picked from that range could be taken by one of the load's own client connections
# (3,000 of them for watchers) before the Safe binds it.
bench_free_port() {
    python3 - <<'EOF'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    port = random.randrange(10000, max(low, 10001))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port below the ephemeral range")
EOF
}

# bench_launch LOG TRACE CMD...: starts the Safe CMD in the background, output to LOG,
# under `strace -f -c` counting the syscalls that flush to disk into TRACE when TRACE
# is not empty; sets LAUNCHER. Call bench_attach once it is ready.
bench_launch() {
    local logf="$1" trace="$2"
    shift 2
    if [[ -n "$trace" ]]; then
        strace -f -qq -c -e trace=fsync,fdatasync,syncfs,sync -o "$trace" "$@" >"$logf" 2>&1 </dev/null &
    else
        "$@" >"$logf" 2>&1 </dev/null &
    fi
    LAUNCHER=$!
}

# bench_attach TRACE: sets SAFE_PID, the Safe's own process (strace's child when traced;
# `setpriv` and `env` exec, so the pid stays the Safe's).
bench_attach() {
    SAFE_PID="$LAUNCHER"
    [[ -n "$1" ]] && SAFE_PID="$(pgrep -P "$LAUNCHER" | head -1)"
    [[ -n "$SAFE_PID" ]] || bench_die "the Safe's process is gone"
}

bench_stop() {
    kill -TERM "$SAFE_PID" 2>/dev/null || true
    wait "$LAUNCHER" 2>/dev/null || true
    SAFE_PID=""
}

# bench_settle PID: waits (at most 20 s) until the Safe's CPU time stops growing, so
# work it does after acknowledging (a Safe that persists asynchronously) is counted.
bench_settle() {
    local prev now
    prev="$(bench_cpu_ticks "$1")"
    for _ in $(seq 1 80); do
        sleep 0.25
        now="$(bench_cpu_ticks "$1")"
        ((now - prev <= 1)) && return 0
        prev="$now"
    done
    bench_log "warning: the Safe was still busy 20 s after the load"
}

# bench_load_args LOAD: sets BENCH_ARGS (aegis-bench's arguments for LOAD) and
# BENCH_ROLE (workload or admin: whose identity runs it).
bench_load_args() {
    case "$1" in
        fetch) BENCH_ROLE=workload BENCH_ARGS=(fetch --connections 64 --seconds "$BENCH_SECS") ;;
        fetch-new) BENCH_ROLE=workload BENCH_ARGS=(fetch --connections 8 --new-connection --seconds "$BENCH_SECS") ;;
        write-native) BENCH_ROLE=admin BENCH_ARGS=(write --writers 32 --size 1024 --seconds "$BENCH_SECS" --api native) ;;
        write-vsecm) BENCH_ROLE=admin BENCH_ARGS=(write --writers 32 --size 1024 --seconds "$BENCH_SECS" --api vsecm) ;;
        # An empty Safe filled with 10,000 distinct 1 KiB secrets by 8 writers (no --seconds: it ends when full).
        fill) BENCH_ROLE=admin BENCH_ARGS=(fill --secrets 10000 --writers 8 --size 1024) ;;
        # Idle watch connections of the workload (the Safe's memory per watcher; CPU per watcher is its
        # handshake, its watch and telling it of one change). scripts/bench-compare.sh only: its
        # bench_run starts the Safe with BENCH_WATCHERS_FLAGS and adds --safe-pid and the admin's files.
        watchers) BENCH_ROLE=workload BENCH_ARGS=(watchers --count "$BENCH_WATCHERS") ;;
        *) bench_die "unknown load '$1' (fetch, fetch-new, write-native, write-vsecm, fill, watchers)" 2 ;;
    esac
}

# The value every run seeds for the workload `billing` before the load.
BENCH_SEED_VALUE="bench-value-of-64-bytes-0123456789abcdef0123456789abcdef"

# bench_measure SIDE LOAD TRACE CMD...: runs the load generator CMD (its report on
# stdout) against the running Safe SAFE_PID, then stops the Safe and appends a row
# to the results: CPU per operation, or (when TRACE is set) fsyncs per operation.
bench_measure() {
    local side="$1" load="$2" trace="$3"
    shift 3
    local before after report rss fsync_count=""
    before="$(bench_cpu_ticks "$SAFE_PID")"
    report="$("$@")" || bench_die "the load generator failed ($side, $load)"
    bench_settle "$SAFE_PID"
    after="$(bench_cpu_ticks "$SAFE_PID")"
    rss="$(bench_rss_kb "$SAFE_PID")"
    bench_stop
    if [[ -n "$trace" ]]; then
        sleep 0.5
        fsync_count="$(awk '$NF ~ /^(fsync|fdatasync|syncfs|sync)$/ { n += $4 } END { print n + 0 }' "$trace")"
    fi
    python3 - "$side" "$load" "$((after - before))" "$BENCH_TICKS" "$rss" "$fsync_count" "$report" >>"$BENCH_RESULTS" <<'EOF'
import json, sys
side, load, cpu, ticks, rss, fsyncs, report = sys.argv[1:]
r = json.loads(report)
if "per_watcher_kb" in r:
    # The watchers load: one operation is one watcher; its memory is the figure to watch.
    r = {"ok": r["notified"], "errors": r["watchers"] - r["notified"], "per_second": None, "p99_ms": None,
         "kb_per_watcher": r["per_watcher_kb"]}
ops = max(r["ok"], 1)
row = {"side": side, "load": load, "ops": r["ok"], "errors": r["errors"], "per_second": r["per_second"],
       "p99_ms": r["p99_ms"], "rss_mb": int(rss) / 1024, "traced": fsyncs != ""}
if "kb_per_watcher" in r:
    row["kb_per_watcher"] = r["kb_per_watcher"]
if fsyncs != "":
    row["fsyncs_per_op"] = int(fsyncs) / ops
else:
    row["cpu_us_per_op"] = int(cpu) / int(ticks) * 1e6 / ops
print(json.dumps(row))
EOF
}

# bench_rounds: BENCH_ROUNDS rounds of every load on both sides, alternating which
# side goes first so a drift in the machine's speed hits both alike; then, unless
# AEGIS_BENCH_FSYNCS=0, one strace pass of each write load per side.
bench_rounds() {
    local round load side order trace
    for round in $(seq 1 "$BENCH_ROUNDS"); do
        for load in $BENCH_LOADS; do
            if ((round % 2)); then order="base head"; else order="head base"; fi
            for side in $order; do
                bench_skip "$side" "$load" && continue
                bench_log "round $round, $load, $side"
                bench_run "$side" "$load" ""
            done
        done
    done
    [[ "$BENCH_FSYNCS" == 1 ]] || return 0
    for load in $BENCH_LOADS; do
        [[ "$load" == write-* ]] || continue
        for side in base head; do
            bench_skip "$side" "$load" && continue
            bench_log "fsyncs, $load, $side"
            trace="$(mktemp)"
            bench_run "$side" "$load" "$trace"
            rm -f "$trace"
        done
    done
}

# bench_table BASE_NAME BASE_ID HEAD_NAME HEAD_ID [MARGIN]: prints the table of medians
# (Markdown); with MARGIN, exits 1 when head's CPU per operation (or memory per
# watcher) is worse than base's by more than MARGIN percent on any load.
bench_table() {
    python3 - "$BENCH_RESULTS" "$@" <<'EOF'
import json, statistics, sys
path, B, bid, H, hid = sys.argv[1:6]
margin = float(sys.argv[6]) if len(sys.argv) > 6 else None
rows = [json.loads(l) for l in open(path) if l.strip()]
def med(load, side, key):
    # Runs under strace count fsyncs only: their speed and memory are strace's too.
    v = [r[key] for r in rows if r["load"] == load and r["side"] == side and r.get(key) is not None
         and (key == "fsyncs_per_op" or not r["traced"])]
    return statistics.median(v) if v else None
loads = list(dict.fromkeys(r["load"] for r in rows))
print(f"| load | CPU µs/op {B} {bid} | {H} {hid} | {H}/{B} | fsyncs/write {B} | {H} | ops/s {B} | {H} "
      f"| p99 ms {B} | {H} | RSS MB {B} | {H} | KB/watcher {B} | {H} |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
worse = []
fmt = lambda v, d=1: "–" if v is None else f"{v:,.{d}f}"
for load in loads:
    cb, ch = med(load, "base", "cpu_us_per_op"), med(load, "head", "cpu_us_per_op")
    ratio = ch / cb if cb and ch else None
    if margin is not None and ratio is not None and ratio > 1 + margin / 100:
        worse.append(f"{load}: {H} uses {ratio:.2f}x {B}'s CPU per operation")
    kb, kh = med(load, "base", "kb_per_watcher"), med(load, "head", "kb_per_watcher")
    if margin is not None and kb and kh and kh / kb > 1 + margin / 100:
        worse.append(f"{load}: {H} uses {kh / kb:.2f}x {B}'s memory per watcher")
    errors = sum(r["errors"] for r in rows if r["load"] == load)
    print(f"| {load}{' (' + str(errors) + ' errors)' if errors else ''} | {fmt(cb)} | {fmt(ch)} | {fmt(ratio, 2)} "
          f"| {fmt(med(load, 'base', 'fsyncs_per_op'), 2)} | {fmt(med(load, 'head', 'fsyncs_per_op'), 2)} "
          f"| {fmt(med(load, 'base', 'per_second'), 0)} | {fmt(med(load, 'head', 'per_second'), 0)} "
          f"| {fmt(med(load, 'base', 'p99_ms'), 2)} | {fmt(med(load, 'head', 'p99_ms'), 2)} "
          f"| {fmt(med(load, 'base', 'rss_mb'))} | {fmt(med(load, 'head', 'rss_mb'))} "
          f"| {fmt(med(load, 'base', 'kb_per_watcher'))} | {fmt(med(load, 'head', 'kb_per_watcher'))} |")
if margin is None:
    sys.exit(0)
if worse:
    print(f"\n{H} is worse than {B} by more than {margin:g} %:", *worse, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"\nNo load uses more than {margin:g} % more CPU per operation (or memory per watcher) on {H} (medians of the rounds).")
EOF
}
