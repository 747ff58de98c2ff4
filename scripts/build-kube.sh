#!/usr/bin/env bash
# Build etcd, kube-apiserver and kube-controller-manager from the Go module proxy,
# pinned, and cache the stripped binaries outside the clone (for the tests that run a
# real Kubernetes API server; see docs/KUBERNETES.md).
#
#   scripts/build-kube.sh             build (or reuse) the binaries; prints the bin dir
#   scripts/build-kube.sh --print-dir print the bin dir without building
#
# Layout (under ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/kube/):
#   <k8s version>/bin/{etcd,kube-apiserver,kube-controller-manager}  the binaries
#   gomodcache/   Go's module cache (~1 GB; kept, so a version bump downloads little;
#                 set AEGIS_KUBE_KEEP_MODCACHE=0 to delete it after a build)
#   gocache/      Go's build cache (~4 GB), deleted after a successful build
#
# The last line on stdout is the bin dir; progress goes to stderr. Idempotent: when
# the three binaries exist and report the pinned versions, nothing is built.
# Override the versions with KUBE_VERSION (k8s.io/kubernetes tag) and ETCD_VERSION.
set -euo pipefail

version="${KUBE_VERSION:-v1.37.2}"
etcd_version="${ETCD_VERSION:-v3.6.16}"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
root="$cache_root/kube"
dir="$root/$version"
bin="$dir/bin"

GB_NAME=kube
# shellcheck source=lib/gobuild.sh
source "$(dirname "$0")/lib/gobuild.sh"
gb_args --print-dir "$bin" 2,17 "$@"

[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || gb_die "KUBE_VERSION '$version' is not of the form v1.MINOR.PATCH"
minor="${BASH_REMATCH[1]}"
# k8s.io/kubernetes v1.X.Y <-> staging modules (k8s.io/api, ...) v0.X.Y.
staging_version="v0.${version#v1.}"

binary_version() {
    # "Kubernetes v1.37.2" / "etcd Version: 3.6.16": the version is the last word
    # of the first line.
    "$1" --version 2>&1 | head -n1 | awk '{print $NF}'
}

cached_ok() {
    local b
    for b in kube-apiserver kube-controller-manager; do
        [[ -x "$bin/$b" ]] || return 1
        [[ "$(binary_version "$bin/$b" || true)" == "$version" ]] || return 1
    done
    [[ -x "$bin/etcd" ]] || return 1
    [[ "$(binary_version "$bin/etcd" || true)" == "${etcd_version#v}" ]] || return 1
}

gb_reuse_or_lock "$dir" "Kubernetes $version and etcd $etcd_version" "$bin"
gb_go_env "$root" 0 "Kubernetes $version needs the Go of the 'go' line of its go.mod, e.g. Go 1.26.8"
# Static binaries (no cgo), as upstream releases them. -mod=mod: the generated
# modules below have no go.sum; Go fills it in from the proxy, verified against the
# checksum database.
export GOFLAGS="-mod=mod -modcacherw"

gb_staging "$dir"
staging="$GB_STAGING"
work="$dir/work"
rm -rf "$work"
mkdir -p "$work/kube" "$work/etcd"

gb_log "building Kubernetes $version and etcd $etcd_version with $(go version) into $bin (about 11 minutes and 3 GB of memory on 2 cores with empty caches)"
start=$(date +%s)

# Kubernetes: a module that requires k8s.io/kubernetes and maps each staging module
# (k8s.io/api, k8s.io/client-go, ...), which k8s.io/kubernetes requires as v0.0.0
# and replaces with ./staging/src/k8s.io/X, to its published version. The list is
# taken from k8s.io/kubernetes's own go.mod, so it follows the release.
gb_download k8s.io/kubernetes "$version"
src="$GB_SRC"
gomod_go="$GB_GO"
staging_mods="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/k8s\.io/.*$#\1#p' "$src/go.mod" | sort -u)"
[[ -n "$staging_mods" ]] || gb_die "found no 'k8s.io/X => ./staging/src/k8s.io/X' replace lines in $src/go.mod"
gb_log "$(wc -l <<<"$staging_mods") staging modules mapped to $staging_version"
{
    echo "module aegis.local/kube-build"
    echo
    echo "go $gomod_go"
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    echo "replace ("
    while IFS= read -r m; do
        echo "	$m => $m $staging_version"
    done <<<"$staging_mods"
    echo ")"
} >"$work/kube/go.mod"
cat >"$work/kube/tools.go" <<'EOF'
//go:build tools

// Package tools pins the Kubernetes commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
EOF

build_date="$(date -u -d "@${SOURCE_DATE_EPOCH:-$start}" +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
for b in kube-apiserver kube-controller-manager; do
    gb_log "go build k8s.io/kubernetes/cmd/$b"
    if ! (cd "$work/kube" && go build -trimpath -tags tools -ldflags "$ldflags" -o "$staging/$b" "k8s.io/kubernetes/cmd/$b"); then
        gb_die "building $b of Kubernetes $version failed (see the Go output above). If a module is refused by the proxy, check GOPROXY; if Go is older than $gomod_go, upgrade Go or set KUBE_VERSION to an older release."
    fi
done

# etcd: a three-line main around etcdmain.Main, the body of etcd's own main.
cat >"$work/etcd/go.mod" <<EOF
module aegis.local/etcd-build

go $gomod_go

require go.etcd.io/etcd/server/v3 $etcd_version
EOF
cat >"$work/etcd/main.go" <<'EOF'
// Command etcd is etcd's server, built from its published module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
gb_log "go build go.etcd.io/etcd/server/v3/etcdmain@$etcd_version"
if ! (cd "$work/etcd" && go build -trimpath -ldflags "-s -w" -o "$staging/etcd" .); then
    gb_die "building etcd $etcd_version failed (see the Go output above)"
fi

for b in kube-apiserver kube-controller-manager; do
    [[ -x "$staging/$b" ]] || gb_die "go build did not produce $b"
    got="$(binary_version "$staging/$b" || true)"
    [[ "$got" == "$version" ]] || gb_die "$b reports version '$got', expected $version"
done
got="$(binary_version "$staging/etcd" || true)"
[[ "$got" == "${etcd_version#v}" ]] || gb_die "etcd reports version '$got', expected ${etcd_version#v}"

gb_install "$bin"
rm -rf "$work"
if [[ "${AEGIS_KUBE_KEEP_MODCACHE:-1}" == 0 ]]; then
    gb_log "deleting Go's module cache ($GOMODCACHE)"
    go clean -modcache >/dev/null 2>&1 || true
    rm -rf "$GOMODCACHE"
fi
gb_log "built Kubernetes $version and etcd $etcd_version in $(($(date +%s) - start))s: $bin ($(du -sh "$bin" | cut -f1))"
echo "$bin"
