#!/usr/bin/env bash
# Build the node side of a single-node Kubernetes (scripts/node.sh) from the Go module
# proxy, pinned, and cache the stripped binaries outside the clone:
#   kubelet, kube-scheduler, kube-proxy, kubectl   k8s.io/kubernetes (KUBE_VERSION)
#   containerd, containerd-shim-runc-v2, ctr       containerd 2.x (CONTAINERD_VERSION)
#   coredns                                        CoreDNS (COREDNS_VERSION), cluster DNS, with
#                                                  only the plugins node.sh's Corefile uses
#   spiffe-csi-driver                              SPIFFE CSI driver (SPIFFE_CSI_VERSION)
#   node-registrar                                 tools/node-registrar (registers the CSI driver)
#   pause                                          the pod sandbox, Kubernetes' own pause.c
#
#   scripts/build-node.sh             build (or reuse) the binaries; prints the bin dir
#   scripts/build-node.sh --print-dir print the bin dir without building
#
# Cold cost: the node's binaries share most of their packages with kube-apiserver, so
# this script first runs scripts/build-kube.sh keeping Go's build cache, builds in that
# same cache (${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/kube/gocache and gomodcache), then
# deletes the build cache. Run it before build-kube.sh (scripts/test.sh does).
# Layout: ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/node/<k8s version>/bin/. Idempotent:
# each group of binaries whose stamp (bin/.stamp-GROUP) names the pinned version is
# kept, the others are built.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
version="${KUBE_VERSION:-v1.37.2}"
containerd_version="${CONTAINERD_VERSION:-v2.4.2}"
coredns_version="${COREDNS_VERSION:-v1.15.0}"
csi_version="${SPIFFE_CSI_VERSION:-v0.2.6}"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
dir="$cache_root/node/$version"
bin="$dir/bin"
registrar_src="$here/../tools/node-registrar"
binaries=(kubelet kube-scheduler kube-proxy kubectl containerd containerd-shim-runc-v2 ctr coredns
    spiffe-csi-driver node-registrar pause)

GB_NAME=node
# shellcheck source=lib/gobuild.sh
source "$here/lib/gobuild.sh"
gb_args --print-dir "$bin" 2,20 "$@"

# CoreDNS's plugins built in: those of the Corefile in scripts/node.sh.
coredns_plugins="cache errors health kubernetes loop ready"

# stamp GROUP: what a group of binaries is built from (its pinned version or sources).
stamp() {
    case "$1" in
        kube) echo "kubernetes $version" ;;
        containerd) echo "containerd $containerd_version" ;;
        coredns) echo "coredns $coredns_version plugins $coredns_plugins" ;;
        csi) echo "spiffe-csi $csi_version" ;;
        registrar) cat "$registrar_src/go.mod" "$registrar_src/go.sum" "$registrar_src/main.go" | sha256sum | cut -d' ' -f1 ;;
        pause) echo "pause.c of kubernetes $version" ;;
    esac
}
declare -A group=([kube]="kubelet kube-scheduler kube-proxy kubectl" [containerd]="containerd containerd-shim-runc-v2 ctr"
    [coredns]=coredns [csi]=spiffe-csi-driver [registrar]=node-registrar [pause]=pause)

# cached GROUP: the group's binaries exist in bin and were built from what stamp names.
cached() {
    local b
    for b in ${group[$1]}; do [[ -x "$bin/$b" ]] || return 1; done
    [[ -f "$bin/.stamp-$1" && "$(cat "$bin/.stamp-$1")" == "$(stamp "$1")" ]]
}

cached_ok() {
    local g
    for g in "${!group[@]}"; do cached "$g" || return 1; done
}

# reuse GROUP: copies a cached group into the staging dir (true), or says it must be built.
reuse() {
    cached "$1" || return 1
    local b
    for b in ${group[$1]}; do cp "$bin/$b" "$GB_STAGING/$b"; done
    gb_log "reusing ${group[$1]} ($(stamp "$1"))"
}

gb_reuse_or_lock "$dir" "the node binaries ($version)" "$bin"
command -v gcc >/dev/null || gb_die "no C compiler: the pause binary is built from Kubernetes' pause.c; install gcc"
[[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/libc.a || -n "$(gcc -print-file-name=libc.a | grep /)" ]] ||
    gb_die "no static C library for the pause binary; install libc6-dev"

start=$(date +%s)
# kube-apiserver first, keeping Go's build cache for the builds below.
AEGIS_GO_KEEP_BUILD_CACHE=1 "$here/build-kube.sh" >/dev/null || gb_die "scripts/build-kube.sh failed"
gb_go_env "$cache_root/kube" 0 "Kubernetes $version needs the Go of the 'go' line of its go.mod"
gb_staging "$dir"
gb_log "building the node binaries into $bin with $(go version), in the Go caches of $cache_root/kube"

# Kubernetes: the same generated module as build-kube.sh (release staging modules).
export GOFLAGS="-mod=mod -modcacherw"
gb_download k8s.io/kubernetes "$version"
kube_src="$GB_SRC"
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || gb_die "KUBE_VERSION '$version' is not of the form v1.MINOR.PATCH"
minor="${BASH_REMATCH[1]}"
work="$dir/work"
rm -rf "$work"
mkdir -p "$work"
{
    printf 'module aegis.local/kube-node-build\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$GB_GO" "$version"
    sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/k8s\.io/.*$#\1#p' "$kube_src/go.mod" |
        sort -u | while IFS= read -r m; do printf '\t%s => %s v0.%s\n' "$m" "$m" "${version#v1.}"; done
    echo ")"
} >"$work/go.mod"
printf '//go:build tools\n\n// Package tools pins the node commands.\npackage tools\n\nimport (\n' >"$work/tools.go"
for c in kubelet kube-scheduler kube-proxy kubectl; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c" >>"$work/tools.go"; done
echo ")" >>"$work/tools.go"
build_date="$(date -u -d "@${SOURCE_DATE_EPOCH:-$start}" +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
reuse kube || for c in kubelet kube-scheduler kube-proxy kubectl; do
    t=$(date +%s)
    (cd "$work" && go build -trimpath -tags tools -ldflags "$ldflags" -o "$GB_STAGING/$c" "k8s.io/kubernetes/cmd/$c") ||
        gb_die "building $c of Kubernetes $version failed (see the Go output above)"
    gb_log "built $c in $(($(date +%s) - t))s"
done

# release_build MODULE VERSION LDFLAGS TAGS OUT:PKG...: a release module's commands,
# built inside it with its own go.mod and go.sum (as its Makefile does).
release_build() {
    local mod="$1" ver="$2" ld="$3" tags="$4" name t
    shift 4
    gb_download "$mod" "$ver"
    name="$(basename "$mod")"
    local modfile
    modfile="$(gb_modfile "$dir/$name")"
    for op in "$@"; do
        t=$(date +%s)
        (cd "$GB_SRC" && go build -mod=mod -modfile="$modfile" -trimpath -tags "$tags" -ldflags "$ld" \
            -o "$GB_STAGING/${op%%:*}" "${op#*:}") || gb_die "building ${op%%:*} of $mod@$ver failed (see the Go output above)"
        gb_log "built ${op%%:*} in $(($(date +%s) - t))s"
    done
}
export GOFLAGS="-modcacherw"
reuse containerd || release_build github.com/containerd/containerd/v2 "$containerd_version" \
    "-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version" "no_btrfs no_devmapper no_zfs" \
    containerd:./cmd/containerd containerd-shim-runc-v2:./cmd/containerd-shim-runc-v2 ctr:./cmd/ctr
reuse csi || release_build github.com/spiffe/spiffe-csi "$csi_version" "-s -w" "" spiffe-csi-driver:./cmd/spiffe-csi-driver

# CoreDNS: its coremain with only the plugins the node's Corefile uses (CoreDNS's own
# main imports every plugin, cloud SDKs included: several times the build), in a
# generated module that requires the release, so its go.mod pins the dependencies.
build_coredns() {
    local w="$dir/coredns-work" p t
    t=$(date +%s)
    rm -rf "$w"
    mkdir -p "$w"
    printf 'module aegis.local/coredns-build\n\ngo 1.26\n\nrequire github.com/coredns/coredns %s\n' "$coredns_version" >"$w/go.mod"
    {
        printf '// Command coredns is CoreDNS with the plugins of scripts/node.sh'"'"'s Corefile.\npackage main\n\nimport (\n'
        for p in $coredns_plugins; do printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "$p"; done
        printf '\t"github.com/coredns/coredns/coremain"\n)\n\nfunc main() { coremain.Run() }\n'
    } >"$w/main.go"
    (cd "$w" && go build -mod=mod -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" \
        -o "$GB_STAGING/coredns" .) || gb_die "building CoreDNS $coredns_version failed (see the Go output above)"
    rm -rf "$w"
    gb_log "built coredns ($coredns_plugins) in $(($(date +%s) - t))s"
}
reuse coredns || build_coredns

reuse registrar || {
    (cd "$registrar_src" && GOFLAGS="-mod=readonly -modcacherw -buildvcs=false" go build -trimpath -ldflags "-s -w" \
        -o "$GB_STAGING/node-registrar" .) || gb_die "building tools/node-registrar failed (see the Go output above)"
    gb_log "built node-registrar"
}
# The sandbox ("pause") process, from the pinned Kubernetes source, static as upstream's.
reuse pause || {
    gcc -Os -Wall -static -DVERSION="$version" -o "$GB_STAGING/pause" "$kube_src/build/pause/linux/pause.c" ||
        gb_die "building pause from $kube_src/build/pause/linux/pause.c failed"
    strip "$GB_STAGING/pause" 2>/dev/null || true
}

for b in "${binaries[@]}"; do [[ -x "$GB_STAGING/$b" ]] || gb_die "the build did not produce $b"; done
[[ "$("$GB_STAGING/kubelet" --version | awk '{print $NF}')" == "$version" ]] || gb_die "kubelet does not report $version"
for g in "${!group[@]}"; do stamp "$g" >"$GB_STAGING/.stamp-$g"; done
rm -rf "$work"
gb_install "$bin"
gb_log "built the node binaries in $(($(date +%s) - start))s: $bin ($(du -sh "$bin" | cut -f1))"
echo "$bin"
