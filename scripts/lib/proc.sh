# Shared by scripts/spire.sh and scripts/kube.sh, which run servers as background
# processes for tests and for people: messages, free ports, waiting for a process
# to be ready, and stopping it. Source it after setting PROC_NAME (e.g. "spire.sh").
# shellcheck shell=bash

die() {
    echo "$PROC_NAME: error: $*" >&2
    exit 1
}
log() { echo "$PROC_NAME: $*" >&2; }

# A free TCP port on 127.0.0.1 in 10000-19999: below the ephemeral range and apart
# from the ports the Rust tests use.
free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((10000 + RANDOM % 10000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found"
}

# wait_for WHAT PID LOG TIMEOUT CMD...: polls CMD until it succeeds; dies with the end
# of LOG when process PID exits first or TIMEOUT seconds pass.
wait_for() {
    local what="$1" pid="$2" logf="$3" timeout="$4"
    shift 4
    local start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "---- $logf" >&2
            tail -n 50 "$logf" >&2 || true
            die "$what exited during start-up (log above: $logf)"
        fi
        if ((SECONDS - start > timeout)); then
            echo "---- $logf" >&2
            tail -n 50 "$logf" >&2 || true
            die "$what not ready after ${timeout}s (log above: $logf)"
        fi
        sleep 0.2
    done
}

# stop_pid PIDFILE: SIGTERM, up to 5 s to exit, then SIGKILL; removes PIDFILE.
stop_pid() {
    local pidfile="$1" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}
