#!/usr/bin/env bash
# The scale curve of issue 20 (docs/BENCHMARKS.md, "The scale curve"): builds `aegis`
# and `aegis-bench` in release mode and runs `aegis-bench scale`, which starts its own
# Safes (`aegis server` on data sets it builds) and measures, for each secret count,
# the time to ready, resident memory, kept-alive fetch p99 and durable write p99, and
# for each idle watcher count, memory per watcher and the p99s with the watchers
# attached. One JSON line per point on standard output, the table as CSV in
# AEGIS_SCALE_OUT; then scripts/plot-scale.py draws it when matplotlib imports.
#
# Settings (environment):
#   AEGIS_SCALE_SECRETS          secret counts, comma-separated (1000,10000,100000,1000000); empty: none
#   AEGIS_SCALE_WATCHERS         idle watcher counts (1000,10000,100000); empty: none
#   AEGIS_SCALE_WATCHER_SECRETS  secrets of the data set the watcher runs use (10000)
#   AEGIS_SCALE_SIZE             bytes per value (1024)
#   AEGIS_SCALE_SECONDS          seconds of each fetch load and each write load (10)
#   AEGIS_SCALE_WORK_DIR         data sets, kept between runs (~/.cache/aegis/bench-scale;
#                                all four data sets take 4.5 GB of disk)
#   AEGIS_SCALE_OUT              the CSV (docs/scale.csv)
#   AEGIS_SCALE_PLOT             1 (default): draw the PNGs into docs/ after the run; 0: don't
#   AEGIS_SCALE_PYTHON           the Python that has matplotlib (~/.cache/aegis/plot-venv/bin/python
#                                when it exists, else python3)
#
# A quick run:
#   AEGIS_SCALE_SECRETS=1000,10000 AEGIS_SCALE_WATCHERS=1000 AEGIS_SCALE_SECONDS=3 \
#     AEGIS_SCALE_OUT=/tmp/scale.csv AEGIS_SCALE_PLOT=0 scripts/bench-scale.sh
#
# Watchers hold one descriptor each in the Safe and in the client: a watcher count
# above the descriptor limit (ulimit -Hn) is recorded as not run, with the reason.
# Not part of the test command (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
secrets="${AEGIS_SCALE_SECRETS-1000,10000,100000,1000000}"
watchers="${AEGIS_SCALE_WATCHERS-1000,10000,100000}"
watcher_secrets="${AEGIS_SCALE_WATCHER_SECRETS:-10000}"
size="${AEGIS_SCALE_SIZE:-1024}"
seconds="${AEGIS_SCALE_SECONDS:-10}"
work="${AEGIS_SCALE_WORK_DIR:-$cache/bench-scale}"
out="${AEGIS_SCALE_OUT:-docs/scale.csv}"
plot="${AEGIS_SCALE_PLOT:-1}"

for n in "$watcher_secrets" "$size" "$seconds"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-scale: '$n' must be a whole number above 0" >&2; exit 2; }
done
for list in "$secrets" "$watchers"; do
    [[ -z "$list" || "$list" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench-scale: '$list' must be comma-separated whole numbers" >&2; exit 2; }
done

# Each watcher is a descriptor in the Safe and one in aegis-bench: as many as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench-scale: descriptor limit $(ulimit -n) (hard $(ulimit -Hn)); building in release mode" >&2
cargo build --release --locked -q -p aegis -p aegis-bench
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"

args=(scale --work-dir "$work" --out "$out" --watcher-secrets "$watcher_secrets" --size "$size" --seconds "$seconds")
# An empty list is a 0: no run of that kind (the empty Safe's row is always measured).
args+=(--secrets "${secrets:-0}" --watchers "${watchers:-0}")
start=$(date +%s)
AEGIS_LOG=warn "$bin/aegis-bench" "${args[@]}"
echo "bench-scale: done in $(($(date +%s) - start)) s; the table is in $out" >&2

if [[ "$plot" == 1 ]]; then
    py="${AEGIS_SCALE_PYTHON:-}"
    if [[ -z "$py" ]]; then
        py=python3
        [[ -x "$cache/plot-venv/bin/python" ]] && py="$cache/plot-venv/bin/python"
    fi
    "$py" scripts/plot-scale.py "$out" --out-dir docs || echo "bench-scale: no plots drawn (see above)" >&2
fi
