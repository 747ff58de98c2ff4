#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests and the
# integration tests that start the real `aegis` binary over real mTLS.
#
# Build output is cached outside the clone (AEGIS_CACHE_DIR, default
# ~/.cache/aegis) so a second run is fast; nothing depends on the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

# HOME may be unset in CI; the cache then lives under the user's home from passwd.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
mkdir -p "$cache"
export AEGIS_CACHE_DIR="$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR=never
# Incremental compilation only helps edit-compile loops and doubles the cache on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

for tool in cargo rustc; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed; install Rust with rustup" >&2; exit 1; }
done
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

# curl (an HTTP/2 client built on nghttp2) checks the Safe's answers to oversized bodies;
# strace shows the order of the Safe's fsyncs (the audit trail's intent line before the commit).
missing=()
for tool in curl strace; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "== installing ${missing[*]} (Debian packages)"
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } || { echo "error: ${missing[*]} needed by the tests; install them" >&2; exit 1; }
fi

# First, as it takes two seconds: every path, link, setting, crate, flag and test the
# docs name exists (the script's own tests show it fails on a doc that names one that does not).
command -v python3 >/dev/null || { echo "error: python3 (>= 3.11) is needed by the doc check and schemathesis; install it" >&2; exit 1; }
echo "== doc check (scripts/check_docs.py and its tests)"
python3 scripts/test_check_docs.py
python3 scripts/check_docs.py

command -v go >/dev/null || { echo "error: the Go toolchain is needed to build SPIRE, Kubernetes, Helm, VSecM's Go client and the Go template reference (install Go >= 1.26.6)" >&2; exit 1; }

echo "== SPIRE (built once from the Go module proxy, cached in $cache/spire)"
AEGIS_SPIRE_BIN_DIR="$(scripts/build-spire.sh | tail -n1)"
export AEGIS_SPIRE_BIN_DIR
echo "   $AEGIS_SPIRE_BIN_DIR"
echo "== Kubernetes node (kubelet, kube-scheduler, kube-proxy, kubectl v1.37.2, containerd, CoreDNS, SPIFFE CSI driver; built with kube-apiserver in one Go build cache, cached in $cache/node)"
scripts/build-node.sh | tail -n1
echo "== Kubernetes (etcd, kube-apiserver, kube-controller-manager v1.37.2 from the Go module proxy, cached in $cache/kube)"
AEGIS_KUBE_BIN_DIR="$(scripts/build-kube.sh | tail -n1)"
export AEGIS_KUBE_BIN_DIR
echo "   $AEGIS_KUBE_BIN_DIR"
echo "== Helm (helm.sh/helm/v3 v3.22.0 from the Go module proxy, cached in $cache/helm)"
AEGIS_HELM_BIN="$(scripts/build-helm.sh | tail -n1)/helm"
export AEGIS_HELM_BIN
echo "   $AEGIS_HELM_BIN"
echo "== VSecM's Go client (github.com/spiffe/vsecm-sdk-go v0.5.1, cached in $cache/vsecm-client)"
scripts/build-vsecm-client.sh | tail -n1
echo "== Go's text/template, the reference of the differential template test (standard library only, cached in $cache/go-template)"
AEGIS_GO_TEMPLATE="$(scripts/build-go-template.sh | tail -n1)"
export AEGIS_GO_TEMPLATE
echo "   $AEGIS_GO_TEMPLATE"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo machete (unused dependencies; cargo-machete 0.9.2, cached in $cache/tools)"
[ -x "$cache/tools/bin/cargo-machete" ] || cargo install cargo-machete --version 0.9.2 --locked --root "$cache/tools"
"$cache/tools/bin/cargo-machete"
echo "== the SDK does not build the template engine (cargo tree)"
scripts/check-sdk-deps.sh
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== PostgreSQL for the PostgreSQL store's tests (Debian's postgresql, installed if missing; a throw-away cluster, scripts/postgres.sh)"
pg_dir="$(mktemp -d /tmp/aegis-test-pg.XXXXXX)"
chmod 0755 "$pg_dir"
stop_postgres() { scripts/postgres.sh stop "$pg_dir/cluster" || true; rm -rf "$pg_dir"; }
trap stop_postgres EXIT
pg_env="$(scripts/postgres.sh start "$pg_dir/cluster")"
while IFS='=' read -r key value; do export "$key=$value"; done <<<"$pg_env"
echo "   $AEGIS_TEST_POSTGRES_URL"
echo "== cargo test"
cargo test --workspace --locked -- --test-threads="${AEGIS_TEST_THREADS:-2}"
stop_postgres
trap - EXIT
# Each build of a test leaves a new binary (about 250 MB) in the cache; keep only the
# newest of each, so the cache does not grow by gigabytes a run.
find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -perm -u+x -regextype posix-extended \
    -regex '.*/[^./]+-[0-9a-f]{16}' -printf '%T@ %f\n' |
    sort -rn | awk '{ n = $2; sub(/-[0-9a-f]+$/, "", n); if (seen[n]++) print $2 }' |
    while read -r old; do rm -f "$CARGO_TARGET_DIR/debug/deps/$old" "$CARGO_TARGET_DIR/debug/deps/$old.d"; done
echo "== schemathesis (OpenAPI document vs a real Safe)"
scripts/schemathesis.sh
echo "== fuzzing (cargo-fuzz 0.13.2, cached in $cache/tools; ${AEGIS_FUZZ_SECONDS:-30} s per target)"
scripts/fuzz.sh "${AEGIS_FUZZ_SECONDS:-30}"
# Last: the node changes iptables and kernel settings while it runs (and restores them
# on stop), so it runs after the tests that use loopback ports.
echo "== end to end on a real single-node Kubernetes: image, SPIRE, helm install/upgrade/uninstall, examples (scripts/e2e-node.sh, needs root; the image from the debug binaries cargo test built, AEGIS_IMAGE_PROFILE=release for the Dockerfile's release build)"
AEGIS_IMAGE_PROFILE="${AEGIS_IMAGE_PROFILE:-debug}" scripts/e2e-node.sh
