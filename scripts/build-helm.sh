#!/usr/bin/env bash
# Build `helm` (Helm 3) from the Go module proxy, pinned to one release, and cache
# it outside the clone. The chart tests (crates/aegis/tests/system/helm_chart.rs) use it.
#
#   scripts/build-helm.sh             build (or reuse) the binary; prints the bin dir
#   scripts/build-helm.sh --print-dir print the bin dir without building
#
# Layout (under ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/helm/<version>/):
#   bin/helm                          the binary
#   gopath/, gomodcache/              Go's module cache for this build (kept: small)
# Go's build cache (gocache/) is deleted after a successful build.
#
# The last line on stdout is the bin dir; progress goes to stderr. Idempotent: when
# the binary exists and reports the pinned version, nothing is built. Override the
# version with HELM_VERSION (v3.22.0 is a release the Go module proxy serves).
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
dir="$cache_root/helm/$version"
bin="$dir/bin"

GB_NAME=helm
# shellcheck source=lib/gobuild.sh
source "$(dirname "$0")/lib/gobuild.sh"
gb_args --print-dir "$bin" 2,15 "$@"

# `helm version --template '{{.Version}}'` prints e.g. v3.22.0.
binary_version() {
    "$1" version --template '{{.Version}}' 2>/dev/null | head -n1 | tr -d '[:space:]'
}

cached_ok() {
    [[ -x "$bin/helm" ]] && [[ "$(binary_version "$bin/helm" || true)" == "$version" ]]
}

gb_reuse_or_lock "$dir" "helm $version" "$bin"
# A static binary: helm needs no cgo.
gb_go_env "$dir" 0 "need Go >= the 'go' line of helm $version's go.mod"
export GOFLAGS="-modcacherw -trimpath"
gb_staging "$dir"

gb_log "building helm $version with $(go version) into $bin"
start=$(date +%s)
gb_download helm.sh/helm/v3 "$version"
modfile="$(gb_modfile "$dir")"

# The ldflags of Helm's Makefile: the version, and the Kubernetes version `helm
# template` and `helm lint` assume (1.<minor of the client-go it pins>), which
# otherwise stays at an old default.
client_go="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$GB_SRC/go.mod" | head -n1)"
[[ -n "$client_go" ]] || gb_die "cannot read the k8s.io/client-go version from helm $version's go.mod"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done
gb_log "Kubernetes version assumed by helm template: 1.$client_go (k8s.io/client-go v0.$client_go)"
if ! (cd "$GB_SRC" && go build -mod=mod -modfile="$modfile" -ldflags "$ldflags" -o "$GB_STAGING/helm" ./cmd/helm); then
    gb_die "building helm $version failed (see the Go output above); if a module is refused by the proxy (403), pick another HELM_VERSION"
fi

got="$(binary_version "$GB_STAGING/helm" || true)"
[[ "$got" == "$version" ]] || gb_die "helm reports version '$got', expected $version"

gb_install "$bin"
gb_log "built helm $version in $(($(date +%s) - start))s: $bin"
echo "$bin"
