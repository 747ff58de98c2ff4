#!/usr/bin/env bash
# Compares Aegis's Safe with VMware Secrets Manager's own Safe (v0.28.1, built from the
# source path given) side by side, the way scripts/bench-compare.sh compares two
# commits: the same loads in alternating rounds, each run against a fresh Safe, judged
# by the Safe's own CPU time per operation (utime + stime from /proc) and fsyncs per
# acknowledged write (a separate strace pass), with throughput, p99 and resident
# memory beside them. Prints the same table; the ratio is Aegis/VSecM.
#
#   scripts/bench-vsecm.sh VSECM_SRC [AEGIS_COMMIT]    (AEGIS_COMMIT defaults to HEAD)
#
# VSECM_SRC is VSecM's source tree or a .tar.gz of it (go.mod, app/safe, core, lib);
# its Safe is built with the Go module proxy into the cache (scripts/lib/vsecm.sh).
# Aegis is built in release mode as bench-compare.sh builds it (scripts/lib/bench.sh);
# the load generator is HEAD's `aegis-bench` for both Safes.
#
# Identities are real: one SPIRE server and agent (scripts/spire.sh) give both Safes
# the Safe's SPIFFE ID and give `aegis-bench` the Sentinel's (writes) or the workload
# `billing`'s (fetches), told apart by uid (10300 Aegis, 10301 VSecM, 10302 Sentinel,
# 10303 billing). Aegis runs as `aegis server` on the agent's Workload API; VSecM runs
# without Kubernetes (a root key file, the file backing store). Needs root, Go,
# setpriv, curl, python3 and strace.
#
# Loads (AEGIS_BENCH_LOADS): fetch (64 kept-alive connections), fetch-new (8 clients,
# a new mTLS connection per fetch), write-native (Aegis only: VSecM has no native PUT,
# so its column stays empty), write-vsecm (VSecM's upsert, POST /sentinel/v1/secrets,
# 32 writers of 1 KiB values). Other settings as bench-compare.sh: AEGIS_BENCH_ROUNDS
# (3), AEGIS_BENCH_SECONDS (8), AEGIS_BENCH_FSYNCS (1). No verdict: exits 0 when every
# run completed. A benchmark, not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
here="$(pwd)/scripts"

BENCH_NAME=bench-vsecm
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
die() { bench_die "$@"; }
log() { bench_log "$@"; }
# shellcheck source=lib/vsecm.sh
source scripts/lib/vsecm.sh

usage() { echo "usage: scripts/bench-vsecm.sh VSECM_SRC [AEGIS_COMMIT]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
[[ "$(id -u)" == 0 ]] || die "run as root: the Safes and the load generator run under their own uids (SPIRE's unix attestor tells them apart by uid)"
for c in setpriv go pgrep; do
    command -v "$c" >/dev/null || die "'$c' is needed and not installed"
done
bench_settings "fetch fetch-new write-native write-vsecm"
uid_aegis=10300 uid_vsecm=10301 uid_sentinel=10302 uid_workload=10303

work="$(mktemp -d /tmp/aegis-bench-vsecm.XXXXXX)"
chmod 0755 "$work"
cleanup() {
    bench_cleanup
    "$here/spire.sh" stop "$work/spire" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---- Builds: VSecM's Safe, Aegis's Safe of AEGIS_COMMIT, HEAD's load generator
src="$(vsecm_source "$1" "$work")"
vsecm_build "$src"
aegis_sha="$(bench_sha "${2:-HEAD}")"
head_sha="$(bench_sha HEAD)"
# HEAD first: when AEGIS_COMMIT is HEAD, its build (with aegis-bench) serves both.
head_bin="$(bench_build "$head_sha" with-bench)" || exit 1
aegis_bin="$(bench_build "$aegis_sha")" || exit 1
# Other uids run them: copies in a directory they can read (the cache is root's).
mkdir -p "$work/bin"
cp "$VSECM_SAFE_BIN" "$work/bin/vsecm-safe"
cp "$aegis_bin/aegis" "$work/bin/aegis"
cp "$head_bin/aegis-bench" "$head_bin/safe" "$work/bin/"

# ---- SPIRE and the identities
"$here/spire.sh" start "$work/spire" >/dev/null
# shellcheck disable=SC1091
. "$work/spire/env"
cp "$SPIRE_BIN_DIR/spire-agent" "$work/bin/"
chmod 0755 "$work/bin" "$work/bin"/*
"$here/spire.sh" register "$work/spire" safe "uid:$uid_aegis" >/dev/null
"$here/spire.sh" register "$work/spire" safe "uid:$uid_vsecm" >/dev/null
"$here/spire.sh" register "$work/spire" sentinel "uid:$uid_sentinel" >/dev/null
"$here/spire.sh" register "$work/spire" workload billing "uid:$uid_workload" >/dev/null

# as_uid UID: sets AS, the command prefix that runs a program as UID with a clean
# environment (setpriv and env exec: the program keeps their pid).
as_uid() {
    AS=(setpriv --reuid="$1" --regid="$1" --clear-groups env -i PATH=/usr/bin:/bin)
}

# The agent hands out new entries after its next sync with the server (a few seconds).
for uid in "$uid_aegis" "$uid_vsecm" "$uid_sentinel" "$uid_workload"; do
    for _ in $(seq 1 180); do
        as_uid "$uid"
        "${AS[@]}" "$work/bin/spire-agent" api fetch x509 -timeout 5s \
            -socketPath "${SPIFFE_ENDPOINT_SOCKET#unix://}" 2>/dev/null | grep -q 'SPIFFE ID' && continue 2
        sleep 0.5
    done
    die "uid $uid got no SVID from the SPIRE agent within 90 s (see $work/spire/agent.log)"
done
log "SPIRE up; SVIDs for the two Safes, the Sentinel and the workload billing"

bench_skip() { [[ "$1" == base && "$2" == write-native ]]; }

# Starts Aegis's Safe (`aegis server`, identity from the agent) in $1, port $2.
start_aegis() {
    local dir="$1" port="$2" trace="$3" health
    health="$(bench_free_port)"
    as_uid "$uid_aegis"
    bench_launch "$dir/log" "$trace" "${AS[@]}" AEGIS_LOG=warn "$work/bin/aegis" server \
        --root-key-file "$dir/safe/root.key" --data-dir "$dir/safe/data" \
        --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$health" \
        --spiffe-endpoint-socket "$SPIFFE_ENDPOINT_SOCKET"
    wait_for "$dir" "Aegis's Safe did not become ready" curl -sf -m 2 -o /dev/null "http://127.0.0.1:$health/readyz"
}

# wait_for DIR WHAT PROBE...: polls PROBE for up to 60 s while the Safe just launched
# runs; otherwise shows its log (DIR/log) and stops with WHAT.
wait_for() {
    local dir="$1" what="$2"
    shift 2
    for _ in $(seq 1 600); do
        "$@" && return 0
        kill -0 "$LAUNCHER" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 30 "$dir/log" >&2
    die "$what (log above)"
}

# listening PORT: whether something accepts TCP connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts VSecM's Safe (root key file, file backing store) in $1, port $2.
start_vsecm() {
    local dir="$1" port="$2" trace="$3" vars
    vsecm_root_key "$dir/safe/root-key.txt"
    mkdir "$dir/safe/data"
    chown -R "$uid_vsecm" "$dir/safe"
    mapfile -t vars < <(vsecm_env "$dir/safe/root-key.txt" "$dir/safe/data" "$port" \
        "$(bench_free_port)" "$(bench_free_port)")
    as_uid "$uid_vsecm"
    bench_launch "$dir/log" "$trace" "${AS[@]}" "${vars[@]}" "$work/bin/vsecm-safe"
    wait_for "$dir" "VSecM's Safe does not listen on $port" listening "$port"
}

# One run of load $2 against a fresh Safe of side $1 (base: VSecM, head: Aegis).
bench_run() {
    local side="$1" load="$2" trace="${3:-}" dir port
    dir="$(mktemp -d "$work/run.XXXXXX")"
    chmod 0755 "$dir"
    mkdir "$dir/safe"
    port="$(bench_free_port)"
    if [[ "$side" == head ]]; then
        chown "$uid_aegis" "$dir/safe"
        start_aegis "$dir" "$port" "$trace"
    else
        start_vsecm "$dir" "$port" "$trace"
    fi
    bench_attach "$trace"
    local client=(SPIFFE_ENDPOINT_SOCKET="$SPIFFE_ENDPOINT_SOCKET" AEGIS_SAFE_URL="https://127.0.0.1:$port"
        VSECM_SAFE_ENDPOINT_URL="https://127.0.0.1:$port/")
    # The workload's secret, through VSecM's upsert as the Sentinel; retried while the
    # Safe loads its root key.
    local ok=""
    as_uid "$uid_sentinel"
    for _ in $(seq 1 150); do
        if "${AS[@]}" "${client[@]}" "$work/bin/safe" -w billing -s "$BENCH_SEED_VALUE" \
            >/dev/null 2>"$dir/seed.err"; then
            ok=1 && break
        fi
        sleep 0.2
    done
    [[ -n "$ok" ]] || { cat "$dir/seed.err" >&2; tail -n 30 "$dir/log" >&2; die "the seed write to the $side Safe failed"; }
    bench_load_args "$load"
    local uid="$uid_sentinel"
    [[ "$BENCH_ROLE" == workload ]] && uid="$uid_workload"
    as_uid "$uid"
    bench_measure "$side" "$load" "$trace" "${AS[@]}" "${client[@]}" "$work/bin/aegis-bench" "${BENCH_ARGS[@]}"
    rm -rf "$dir"
}

bench_log "VSecM's Safe from $1 (base) and Aegis ${aegis_sha:0:10} (head), load generator HEAD ${head_sha:0:10}; $BENCH_ROUNDS alternating rounds of $BENCH_SECS s per load"
bench_rounds
bench_table VSecM v0.28.1 Aegis "${aegis_sha:0:10}"
if [[ " $BENCH_LOADS " == *" write-native "* ]]; then
    echo
    echo "write-native: VSecM has no native PUT (only its upsert), so its columns are empty."
fi
