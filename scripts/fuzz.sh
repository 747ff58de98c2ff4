#!/usr/bin/env bash
# Run every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for a bounded time
# and fail on any crash or property failure, naming the input that caused it.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]    default 30 s per target
#
# Environment:
#   AEGIS_FUZZ_TARGETS   space-separated targets to run (default: all of them)
#   AEGIS_FUZZ_MERGE=1   add what the run found to fuzz/corpus/<target> and
#                        minimise it with `cargo fuzz cmin` (for longer runs),
#                        keeping each under AEGIS_FUZZ_CORPUS_MAX_BYTES (64 KiB)
#   AEGIS_FUZZ_OUT       where crashing inputs and logs go
#                        (default: $CARGO_TARGET_DIR/fuzz-out or target/fuzz-out)
#
# The targets are built once, on the stable toolchain, without a sanitizer
# (`--sanitizer none`: safe Rust needs none, and AddressSanitizer would need
# RUSTC_BOOTSTRAP=1) and with debug assertions (overflow checks). The corpus
# kept in the repository is read, never written, unless AEGIS_FUZZ_MERGE=1:
# new inputs go to a scratch directory. See docs/SECURITY.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

secs="${1:-30}"
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || {
    echo "fuzz: error: SECONDS_PER_TARGET must be a whole number of seconds above 0, not '$secs'" >&2
    exit 2
}

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cargo_fuzz="$(scripts/build-fuzz-tools.sh | tail -n1)"
# Its own target dir: the instrumented build must not evict the normal one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}/fuzz"
export CARGO_INCREMENTAL=0
out="${AEGIS_FUZZ_OUT:-$(dirname "$CARGO_TARGET_DIR")/fuzz-out}"
flags=(--sanitizer none --debug-assertions)

all_targets() {
    sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^aegis-fuzz$'
}
read -r -a targets <<<"${AEGIS_FUZZ_TARGETS:-$(all_targets | tr '\n' ' ')}"
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz: error: no fuzz targets found in fuzz/Cargo.toml" >&2; exit 1; }

host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$host/release"

echo "fuzz: building ${#targets[@]} targets (cargo-fuzz $("$cargo_fuzz" --version | awk '{print $2}'), ${flags[*]})"
start=$(date +%s)
for t in "${targets[@]}"; do
    (cd fuzz && "$cargo_fuzz" fuzz build "${flags[@]}" "$t") || {
        echo "fuzz: error: building fuzz target '$t' failed (see above)" >&2
        exit 1
    }
done
echo "fuzz: built in $(($(date +%s) - start)) s"

# Runs target $1 for $secs seconds; prints one line of figures; fails on a
# crash, a property failure (a panic), a timeout or running out of memory.
run_one() {
    local t="$1" seeds="fuzz/corpus/$1" work="$scratch/$1" art="$out/$1/" log="$out/$1.log" rc=0
    mkdir -p "$seeds" "$work" "$art"
    "$bin_dir/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$art" "$work" "$seeds" >"$log" 2>&1 || rc=$?
    local runs corpus
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    corpus="$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -n1 | cut -d' ' -f2)"
    if [[ $rc -ne 0 ]]; then
        printf 'fuzz: %-22s %8s %12s %10s FAILED (exit %s)\n' "$t" "$secs" "${runs:-?}" "${corpus:-?}" "$rc"
        grep -E 'panicked at|^thread .* panicked|ERROR: libFuzzer|SUMMARY' -A2 "$log" | head -n 12 | sed 's/^/fuzz:   /'
        sed -n 's/^.*Test unit written to \(.*\)$/\1/p' "$log" | sed 's/^/fuzz:   crashing input: /'
        echo "fuzz:   full log: $log"
        return 1
    fi
    printf 'fuzz: %-22s %8s %12s %10s ok\n' "$t" "$secs" "${runs:-?}" "${corpus:-?}"
    if [[ "${AEGIS_FUZZ_MERGE:-0}" == 1 ]]; then
        cp -n "$work"/* "$seeds"/ 2>/dev/null || true
        (cd fuzz && "$cargo_fuzz" fuzz cmin "${flags[@]}" "$t" "corpus/$t" >"$log.cmin" 2>&1) || {
            echo "fuzz:   cmin failed for $t: see $log.cmin" >&2
            return 1
        }
        cap_corpus "$seeds"
        echo "fuzz:   corpus/$t minimised: $(find "$seeds" -type f | wc -l) files, $(cat "$seeds"/* | wc -c) bytes"
    fi
}

# Keeps a corpus kept in the repository small: the seed-* and regression-*
# inputs, then the smallest others while the total stays under
# AEGIS_FUZZ_CORPUS_MAX_BYTES (default 64 KiB).
cap_corpus() {
    local dir="$1" max="${AEGIS_FUZZ_CORPUS_MAX_BYTES:-65536}" total=0 size f
    for f in "$dir"/seed-* "$dir"/regression-*; do
        [[ -f "$f" ]] && total=$((total + $(stat -c %s "$f")))
    done
    while read -r size f; do
        if ((total + size <= max)); then
            total=$((total + size))
        else
            rm -f "$f"
        fi
    done < <(find "$dir" -type f ! -name 'seed-*' ! -name 'regression-*' -printf '%s %p\n' | sort -n)
}

scratch="$(mktemp -d "${TMPDIR:-/tmp}/aegis-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$out"
failed=()
printf 'fuzz: %-22s %8s %12s %10s %s\n' target seconds executions corpus result
for t in "${targets[@]}"; do
    run_one "$t" || failed+=("$t")
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: FAILED: ${failed[*]}; the crashing inputs are named above (reproduce: cd fuzz && $cargo_fuzz fuzz run ${flags[*]} TARGET INPUT)" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${secs} s each without a failure"
