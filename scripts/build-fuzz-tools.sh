#!/usr/bin/env bash
# Install cargo-fuzz (libFuzzer for Rust), pinned to one release, and cache it
# outside the clone. scripts/fuzz.sh uses it to build and run the fuzz targets
# of fuzz/.
#
#   scripts/build-fuzz-tools.sh              install (or reuse); prints the binary path
#   scripts/build-fuzz-tools.sh --print-path print the binary path without installing
#
# Layout: ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/tools/cargo-fuzz-<version>/bin/cargo-fuzz
#
# cargo-fuzz works on the stable toolchain with `--sanitizer none` (no -Z flag
# is then needed); AddressSanitizer needs RUSTC_BOOTSTRAP=1 (see docs/SECURITY.md,
# "Fuzzing"). The last line on stdout is the path of the binary; progress goes
# to stderr. Idempotent: when the binary exists and reports the pinned version,
# nothing is built. Override the version with CARGO_FUZZ_VERSION.
set -euo pipefail

version="${CARGO_FUZZ_VERSION:-0.13.2}"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
root="$cache_root/tools/cargo-fuzz-$version"
bin="$root/bin/cargo-fuzz"

die() {
    echo "build-fuzz-tools: error: $*" >&2
    exit 1
}
log() { echo "build-fuzz-tools: $*" >&2; }

case "${1:-}" in
    --print-path)
        echo "$bin"
        exit 0
        ;;
    "") ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (use --print-path or no argument)" ;;
esac

# `cargo-fuzz --version` prints e.g. "cargo-fuzz 0.13.2".
cached_ok() {
    [[ -x "$bin" ]] && [[ "$("$bin" --version 2>/dev/null | awk '{print $2}')" == "$version" ]]
}

if cached_ok; then
    log "using cached cargo-fuzz $version: $bin"
    echo "$bin"
    exit 0
fi

# One install at a time per version.
mkdir -p "$root"
if command -v flock >/dev/null; then
    exec 9>"$root/.lock"
    if ! flock -n 9; then
        log "another install of cargo-fuzz $version is running; waiting for it"
        flock 9
    fi
    if cached_ok; then
        log "using cached cargo-fuzz $version: $bin"
        echo "$bin"
        exit 0
    fi
fi

command -v cargo >/dev/null || die "cargo is not installed; install a Rust toolchain (rustup.rs) and re-run"

# Its own target dir, removed afterwards: the build is only needed once.
build_dir="$(mktemp -d "${TMPDIR:-/tmp}/cargo-fuzz-build.XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT
log "installing cargo-fuzz $version into $root"
start=$(date +%s)
if ! CARGO_TARGET_DIR="$build_dir" cargo install --locked cargo-fuzz --version "$version" --root "$root" >&2; then
    die "cargo install cargo-fuzz $version failed (see cargo's output above); check access to crates.io or pick another CARGO_FUZZ_VERSION"
fi
cached_ok || die "installed cargo-fuzz does not report version $version"
log "installed cargo-fuzz $version in $(($(date +%s) - start))s"
echo "$bin"
