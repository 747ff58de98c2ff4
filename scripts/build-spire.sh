#!/usr/bin/env bash
# Build spire-server and spire-agent from the Go module proxy, pinned to one SPIRE
# release, and cache them outside the clone.
#
#   scripts/build-spire.sh            build (or reuse) the binaries; prints the bin dir
#   scripts/build-spire.sh --print-dir print the bin dir without building
#
# Layout (everything under ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/spire/<version>/):
#   bin/spire-server, bin/spire-agent   the binaries
#   gopath/, gomodcache/                Go's module cache for this build (never in the clone)
# Go's build cache (gocache/) is deleted after a successful build.
#
# The last line on stdout is the bin dir; progress goes to stderr. Idempotent: when
# both binaries exist and report the pinned version, nothing is built. Override the
# version with SPIRE_VERSION (see docs/SPIRE.md for why this one is pinned).
set -euo pipefail

version="${SPIRE_VERSION:-v1.15.3}"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
dir="$cache_root/spire/$version"
bin="$dir/bin"

GB_NAME=spire
# shellcheck source=lib/gobuild.sh
source "$(dirname "$0")/lib/gobuild.sh"
gb_args --print-dir "$bin" 2,15 "$@"

# "v1.15.3" -> "1.15.3": what `spire-server --version` prints.
want="${version#v}"

binary_version() {
    # SPIRE prints its version on stderr; accept either stream.
    "$1" --version 2>&1 | head -n1 | tr -d '[:space:]'
}

cached_ok() {
    local b
    for b in spire-server spire-agent; do
        [[ -x "$bin/$b" ]] || return 1
        [[ "$(binary_version "$bin/$b" || true)" == "$want"* ]] || return 1
    done
}

gb_reuse_or_lock "$dir" "SPIRE $version" "$bin"
command -v gcc >/dev/null || command -v cc >/dev/null ||
    gb_die "no C compiler: SPIRE's server needs cgo (sqlite3); install gcc"
gb_go_env "$dir" 1 "need Go >= the 'go' line of SPIRE $version's go.mod"
export GOFLAGS="-modcacherw -trimpath"
gb_staging "$dir"

gb_log "building SPIRE $version with $(go version) into $bin (this takes several minutes on a fresh cache)"
start=$(date +%s)
# The release module's commands are built inside it with a copy of its own go.mod
# and go.sum (`-modfile`), the way SPIRE's Makefile does: exactly the dependency
# versions the release pins, except for the replace directives below.
gb_download github.com/spiffe/spire "$version"

# Replace directives, one "module => module version" per line. The proxy reachable
# here does not serve github.com/Keyfactor/ejbca-go-client-sdk v1.1.0 (403); v1.0.2
# is served and SPIRE's EJBCA UpstreamAuthority plugin (the only importer, unused by
# Aegis) compiles against it. See docs/SPIRE.md.
replaces="${SPIRE_GO_REPLACES-github.com/Keyfactor/ejbca-go-client-sdk => github.com/Keyfactor/ejbca-go-client-sdk v1.0.2}"
modfile="$(gb_modfile "$dir")"
while IFS= read -r r; do
    [[ -n "${r// /}" ]] || continue
    gb_log "replace $r"
    printf 'replace %s\n' "$r" >>"$modfile"
done <<<"$replaces"

ldflags="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=$want"
[[ -n "$GB_HASH" ]] && ldflags+=" -X github.com/spiffe/spire/pkg/common/version.githash=$GB_HASH"
for b in spire-server spire-agent; do
    gb_log "go build ./cmd/$b"
    if ! (cd "$GB_SRC" && go build -mod=mod -modfile="$modfile" -ldflags "$ldflags" -o "$GB_STAGING/$b" "./cmd/$b"); then
        gb_die "building $b of SPIRE $version failed (see the Go output above). If a module is refused by the proxy (403), add a replace to an available version via SPIRE_GO_REPLACES; if the Go toolchain is older than $GB_GO, upgrade Go or set SPIRE_VERSION to an older release."
    fi
done

for b in spire-server spire-agent; do
    [[ -x "$GB_STAGING/$b" ]] || gb_die "go build did not produce $b"
    got="$(binary_version "$GB_STAGING/$b" || true)"
    [[ "$got" == "$want"* ]] || gb_die "$b reports version '$got', expected $want"
done

gb_install "$bin"
gb_log "built SPIRE $(binary_version "$bin/spire-server") in $(($(date +%s) - start))s: $bin"
echo "$bin"
