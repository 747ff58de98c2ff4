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

GB_NAME=fuzz-tools
# shellcheck source=lib/gobuild.sh
source "$(dirname "$0")/lib/gobuild.sh"
gb_args --print-path "$bin" 2,15 "$@"

# `cargo-fuzz --version` prints e.g. "cargo-fuzz 0.13.2".
cached_ok() {
    [[ -x "$bin" ]] && [[ "$("$bin" --version 2>/dev/null | awk '{print $2}')" == "$version" ]]
}

gb_reuse_or_lock "$root" "cargo-fuzz $version" "$bin"
command -v cargo >/dev/null || gb_die "cargo is not installed; install a Rust toolchain (rustup.rs) and re-run"

# Its own target dir, removed afterwards: the build is only needed once.
build_dir="$(mktemp -d "${TMPDIR:-/tmp}/cargo-fuzz-build.XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT
gb_log "installing cargo-fuzz $version into $root"
start=$(date +%s)
if ! CARGO_TARGET_DIR="$build_dir" cargo install --locked cargo-fuzz --version "$version" --root "$root" >&2; then
    gb_die "cargo install cargo-fuzz $version failed (see cargo's output above); check access to crates.io or pick another CARGO_FUZZ_VERSION"
fi
cached_ok || gb_die "installed cargo-fuzz does not report version $version"
gb_log "installed cargo-fuzz $version in $(($(date +%s) - start))s"
echo "$bin"
