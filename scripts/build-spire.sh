#!/usr/bin/env bash
# Build spire-server and spire-agent from the Go module proxy, pinned to one SPIRE
# release, and cache them outside the clone.
#
#   scripts/build-spire.sh            build (or reuse) the binaries; prints the bin dir
#   scripts/build-spire.sh --print-dir print the bin dir without building
#
# Layout (everything under ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/spire/<version>/):
#   bin/spire-server, bin/spire-agent   the binaries
#   gopath/, gomodcache/, gocache/      Go's caches for this build (never in the clone)
#
# The last line on stdout is the bin dir; progress goes to stderr. Idempotent: when
# both binaries exist and report the pinned version, nothing is built. Override the
# version with SPIRE_VERSION (see docs/SPIRE.md for why this one is pinned).
set -euo pipefail

version="${SPIRE_VERSION:-v1.15.3}"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
dir="$cache_root/spire/$version"
bin="$dir/bin"

die() {
    echo "build-spire: error: $*" >&2
    exit 1
}
log() { echo "build-spire: $*" >&2; }

case "${1:-}" in
    --print-dir)
        echo "$bin"
        exit 0
        ;;
    "") ;;
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (use --print-dir or no argument)" ;;
esac

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

if cached_ok; then
    log "using cached SPIRE $(binary_version "$bin/spire-server") in $bin"
    echo "$bin"
    exit 0
fi

# One build at a time per version (e.g. test.sh and a test binary both asking).
mkdir -p "$dir"
if command -v flock >/dev/null; then
    exec 9>"$dir/.lock"
    if ! flock -n 9; then
        log "another build of SPIRE $version is running; waiting for it"
        flock 9
    fi
    if cached_ok; then
        log "using cached SPIRE $(binary_version "$bin/spire-server") in $bin"
        echo "$bin"
        exit 0
    fi
fi

command -v go >/dev/null || die "the Go toolchain is not installed (need Go >= the 'go' line of SPIRE $version's go.mod); install Go and re-run"
command -v gcc >/dev/null || command -v cc >/dev/null ||
    die "no C compiler: SPIRE's server needs cgo (sqlite3); install gcc"

mkdir -p "$dir"
export GOPATH="$dir/gopath"
export GOMODCACHE="$dir/gomodcache"
export GOCACHE="$dir/gocache"
# Build with the installed toolchain only: never fetch another one.
export GOTOOLCHAIN=local
export CGO_ENABLED=1
export GOFLAGS="-modcacherw -trimpath"
# GOPROXY/GOSUMDB are taken from the environment (default: the Go module proxy).

staging="$dir/bin.tmp.$$"
rm -rf "$staging"
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"

log "building SPIRE $version with $(go version) into $bin (this takes several minutes on a fresh cache)"
start=$(date +%s)
# Not `go install pkg@version`: that also asks the proxy for the module's version
# list (to look for a deprecation notice), which the proxy reachable here refuses
# (403). Instead download the release module itself (checked against the checksum
# database) and build its commands inside it with a copy of its own go.mod and
# go.sum (`-modfile`), the way SPIRE's Makefile does: exactly the dependency versions
# the release pins, except for the replace directives below.
if ! info="$(go mod download -json "github.com/spiffe/spire@$version")"; then
    echo "$info" >&2
    die "could not download github.com/spiffe/spire@$version from the Go module proxy (GOPROXY=$(go env GOPROXY)): see the Go output above"
fi
src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
hash="$(sed -n 's/^[[:space:]]*"Hash": "\(.*\)",\{0,1\}$/\1/p' <<<"$info" | head -n1)"
[[ -n "$src" && -f "$src/go.mod" ]] || die "go mod download did not report a source dir for SPIRE $version"
gomod_go="$(sed -n 's/^go //p' "$src/go.mod")"
log "SPIRE $version needs Go >= $gomod_go (its go.mod), commit ${hash:-unknown}"

# Replace directives, one "module => module version" per line. The proxy reachable
# here does not serve github.com/Keyfactor/ejbca-go-client-sdk v1.1.0 (403); v1.0.2
# is served and SPIRE's EJBCA UpstreamAuthority plugin (the only importer, unused by
# Aegis) compiles against it. See docs/SPIRE.md.
replaces="${SPIRE_GO_REPLACES-github.com/Keyfactor/ejbca-go-client-sdk => github.com/Keyfactor/ejbca-go-client-sdk v1.0.2}"
modfile="$dir/modfile"
rm -rf "$modfile"
mkdir -p "$modfile"
cp "$src/go.mod" "$modfile/go.mod"
cp "$src/go.sum" "$modfile/go.sum"
chmod u+w "$modfile/go.mod" "$modfile/go.sum"
while IFS= read -r r; do
    [[ -n "${r// /}" ]] || continue
    log "replace $r"
    printf 'replace %s\n' "$r" >>"$modfile/go.mod"
done <<<"$replaces"

ldflags="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=$want"
[[ -n "$hash" ]] && ldflags+=" -X github.com/spiffe/spire/pkg/common/version.githash=$hash"
for b in spire-server spire-agent; do
    log "go build ./cmd/$b"
    if ! (cd "$src" && go build -mod=mod -modfile="$modfile/go.mod" -ldflags "$ldflags" -o "$staging/$b" "./cmd/$b"); then
        die "building $b of SPIRE $version failed (see the Go output above). If a module is refused by the proxy (403), add a replace to an available version via SPIRE_GO_REPLACES; if the Go toolchain is older than $gomod_go, upgrade Go or set SPIRE_VERSION to an older release."
    fi
done

for b in spire-server spire-agent; do
    [[ -x "$staging/$b" ]] || die "go build did not produce $b"
    got="$(binary_version "$staging/$b" || true)"
    [[ "$got" == "$want"* ]] || die "$b reports version '$got', expected $want"
done

rm -rf "$bin"
mv "$staging" "$bin"
trap - EXIT
log "built SPIRE $(binary_version "$bin/spire-server") in $(($(date +%s) - start))s: $bin"
echo "$bin"
