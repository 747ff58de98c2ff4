#!/usr/bin/env bash
# The cost of policies (docs/POLICIES.md), for docs/BENCHMARKS.md:
#   1. one decision with 10 and with 10,000 policies, in process (aegis-bench policy);
#   2. kept-alive and new-connection fetches of a Safe with 10,000 policies against
#      the same commit with none, side by side in alternating rounds
#      (scripts/bench-compare.sh COMMIT COMMIT with the policy file on HEAD's side).
#
#   scripts/bench-policies.sh [COMMIT]        (default: the checkout's HEAD)
#
# A benchmark, not part of the test command. Settings: those of bench-compare.sh
# (AEGIS_BENCH_ROUNDS, AEGIS_BENCH_SECONDS, AEGIS_BENCH_MARGIN); AEGIS_BENCH_POLICIES
# (10000) policies in the file.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_NAME=bench-policies
# shellcheck source=lib/bench.sh
source scripts/lib/bench.sh
bench_settings "fetch fetch-new"
trap bench_cleanup EXIT
sha="$(bench_sha "${1:-HEAD}")"
bin="$(bench_build "$sha" with-bench)" || exit 1
n="${AEGIS_BENCH_POLICIES:-10000}"

echo "== one decision, in process"
for count in 10 "$n"; do
    "$bin/aegis-bench" policy --policies "$count"
done

echo "== fetches with $n policies (HEAD side) against none (BASE side), same build"
file="$(mktemp --suffix=.json)"
"$bin/aegis-bench" policy --policies "$n" --write-file "$file"
AEGIS_BENCH_LOADS="${AEGIS_BENCH_LOADS:-fetch fetch-new}" AEGIS_BENCH_FSYNCS=0 \
    AEGIS_BENCH_BASE_FLAGS="--policy-file=" AEGIS_BENCH_HEAD_FLAGS="--policy-file=$file" \
    scripts/bench-compare.sh "$sha" "$sha"
rm -f "$file"
