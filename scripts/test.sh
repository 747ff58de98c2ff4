#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the
# integration tests that start the real `aegis` binary over real mTLS.
#
# Build output is cached outside the clone (AEGIS_CACHE_DIR, default
# ~/.cache/aegis) so a second run is fast; nothing depends on the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
mkdir -p "$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR=never

for tool in cargo rustc; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed; install Rust with rustup" >&2; exit 1; }
done
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked -- --test-threads="${AEGIS_TEST_THREADS:-2}"
