#!/usr/bin/env bash
# Build tools/go-template (Go's own text/template, the reference for Aegis's
# differential template test) with the local Go toolchain. Standard library only:
# nothing is downloaded. The binary is cached outside the clone.
#
#   scripts/build-go-template.sh              build (or reuse) the binary; prints its path
#   scripts/build-go-template.sh --print-path print the binary's path without building
#
# Layout (under ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/go-template/):
#   bin/go-template               the binary
#   bin/go-template.source-hash   hash of the sources and Go version it was built from
#   gocache/                      Go's build cache (deleted after a build)
#
# The last line on stdout is the binary's path; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../tools/go-template"
dir="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/go-template"
bin="$dir/bin/go-template"

GB_NAME=go-template
# shellcheck source=lib/gobuild.sh
source "$here/lib/gobuild.sh"
gb_args --print-path "$bin" 2,14 "$@"

[[ -f "$src/go.mod" && -f "$src/main.go" ]] || gb_die "the sources are missing: expected go.mod and main.go in $src"
command -v go >/dev/null || gb_die "the Go toolchain is not installed (need Go >= 1.22); install Go and re-run"

src="$(cd "$src" && pwd)"
gb_local_build "$bin" "$src" "build-go-template v1" go.mod
hash="$GB_HASH"

mkdir -p "$dir/bin"
gb_go_env "$dir" 0 "need Go >= 1.22"
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false" GOPROXY=off
staging="$bin.tmp.$$"
trap 'rm -f "$staging"' EXIT
gb_log "building $src with $GB_GO_VERSION"
(cd "$src" && go build -o "$staging" .) || gb_die "go build of $src failed (see the Go output above)"
mv -f "$staging" "$bin"
trap - EXIT
echo "$hash" >"$bin.source-hash"
go clean -cache >/dev/null 2>&1 || true
rm -rf "$GOCACHE"
gb_log "built $bin"
echo "$bin"
