#!/usr/bin/env bash
# Build `helm` (Helm 3) from the Go module proxy, pinned to one release, and cache
# it outside the clone. The chart tests (crates/aegis/tests/helm_chart.rs) use it.
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

die() {
    echo "build-helm: error: $*" >&2
    exit 1
}
log() { echo "build-helm: $*" >&2; }

case "${1:-}" in
    --print-dir)
        echo "$bin"
        exit 0
        ;;
    "") ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (use --print-dir or no argument)" ;;
esac

# `helm version --template '{{.Version}}'` prints e.g. v3.22.0.
binary_version() {
    "$1" version --template '{{.Version}}' 2>/dev/null | head -n1 | tr -d '[:space:]'
}

cached_ok() {
    [[ -x "$bin/helm" ]] && [[ "$(binary_version "$bin/helm" || true)" == "$version" ]]
}

if cached_ok; then
    log "using cached helm $version in $bin"
    echo "$bin"
    exit 0
fi

# One build at a time per version.
mkdir -p "$dir"
if command -v flock >/dev/null; then
    exec 9>"$dir/.lock"
    if ! flock -n 9; then
        log "another build of helm $version is running; waiting for it"
        flock 9
    fi
    if cached_ok; then
        log "using cached helm $version in $bin"
        echo "$bin"
        exit 0
    fi
fi

command -v go >/dev/null || die "the Go toolchain is not installed (need Go >= the 'go' line of helm $version's go.mod); install Go and re-run"

export GOPATH="$dir/gopath"
export GOMODCACHE="$dir/gomodcache"
export GOCACHE="$dir/gocache"
export GOTOOLCHAIN=local
# A static binary: helm needs no cgo.
export CGO_ENABLED=0
export GOFLAGS="-modcacherw -trimpath"

staging="$dir/bin.tmp.$$"
rm -rf "$staging"
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"

log "building helm $version with $(go version) into $bin"
start=$(date +%s)
# As in build-spire.sh: not `go install pkg@version` (the proxy reachable here
# refuses the version list it asks for); download the release module, checked
# against the checksum database, and build its command inside it with its own
# go.mod and go.sum.
if ! info="$(go mod download -json "helm.sh/helm/v3@$version")"; then
    echo "$info" >&2
    die "could not download helm.sh/helm/v3@$version from the Go module proxy (GOPROXY=$(go env GOPROXY)): see the Go output above"
fi
src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
[[ -n "$src" && -f "$src/go.mod" ]] || die "go mod download did not report a source dir for helm $version"
log "helm $version needs Go >= $(sed -n 's/^go //p' "$src/go.mod") (its go.mod)"

modfile="$dir/modfile"
rm -rf "$modfile"
mkdir -p "$modfile"
cp "$src/go.mod" "$modfile/go.mod"
cp "$src/go.sum" "$modfile/go.sum"
chmod u+w "$modfile/go.mod" "$modfile/go.sum"

# The ldflags of Helm's Makefile: the version, and the Kubernetes version `helm
# template` and `helm lint` assume (1.<minor of the client-go it pins>), which
# otherwise stays at an old default.
client_go="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$src/go.mod" | head -n1)"
[[ -n "$client_go" ]] || die "cannot read the k8s.io/client-go version from helm $version's go.mod"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$client_go"
done
log "Kubernetes version assumed by helm template: 1.$client_go (k8s.io/client-go v0.$client_go)"
if ! (cd "$src" && go build -mod=mod -modfile="$modfile/go.mod" -ldflags "$ldflags" -o "$staging/helm" ./cmd/helm); then
    die "building helm $version failed (see the Go output above); if a module is refused by the proxy (403), pick another HELM_VERSION"
fi

got="$(binary_version "$staging/helm" || true)"
[[ "$got" == "$version" ]] || die "helm reports version '$got', expected $version"

rm -rf "$bin"
mv "$staging" "$bin"
trap - EXIT
# Go's build cache is large and only useful for rebuilding this version.
rm -rf "$GOCACHE"
log "built helm $version in $(($(date +%s) - start))s: $bin"
echo "$bin"
