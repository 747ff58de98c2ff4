#!/usr/bin/env bash
# Build tools/vsecm-client (VSecM's own Go SDK, github.com/spiffe/vsecm-sdk-go v0.5.1,
# wrapped in a tiny CLI) with the local Go toolchain and the Go module proxy, and cache
# the binary outside the clone.
#
#   scripts/build-vsecm-client.sh              build (or reuse) the binary; prints its path
#   scripts/build-vsecm-client.sh --print-path print the binary's path without building
#
# Layout (under ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/vsecm-client/):
#   bin/vsecm-client                 the binary
#   bin/vsecm-client.source-hash     hash of the sources and Go version it was built from
#   gopath/, gomodcache/, gocache/   Go's caches for this build (never in the clone)
#
# The last line on stdout is the binary's path; progress goes to stderr. The build is
# skipped when the cached binary was built from the same sources (go.mod, go.sum,
# *.go) with the same Go version. Dependencies are exactly those in go.mod/go.sum
# (-mod=readonly): a missing or mismatching checksum fails the build.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../tools/vsecm-client"
cache_root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
dir="$cache_root/vsecm-client"
bin="$dir/bin/vsecm-client"
want_sdk="github.com/spiffe/vsecm-sdk-go v0.5.1"

GB_NAME=vsecm-client
# shellcheck source=lib/gobuild.sh
source "$here/lib/gobuild.sh"
gb_args --print-path "$bin" 2,17 "$@"

[[ -f "$src/go.mod" && -f "$src/go.sum" && -f "$src/main.go" ]] ||
    gb_die "the sources are missing: expected go.mod, go.sum and main.go in $src"
command -v go >/dev/null ||
    gb_die "the Go toolchain is not installed (need Go >= 1.23.2, the 'go' line of the SDK's go.mod); install Go and re-run"

src="$(cd "$src" && pwd)"
gb_local_build "$bin" "$src" "build-vsecm-client v1" go.mod go.sum
hash="$GB_HASH"

mkdir -p "$dir/bin"
gb_go_env "$dir" 0 "need Go >= 1.23.2, the 'go' line of the SDK's go.mod"
# -mod=readonly: go.mod and go.sum are the pins; never rewrite them. Every module is
# checked against go.sum, so the checksum database is not consulted.
export GOFLAGS="-mod=readonly -modcacherw -trimpath -buildvcs=false"

staging="$bin.tmp.$$"
trap 'rm -f "$staging"' EXIT
gb_log "building $src with $GB_GO_VERSION (first build downloads the SDK and its dependencies)"
start=$(date +%s)
if ! (cd "$src" && go build -o "$staging" .); then
    gb_die "go build of $src failed (see the Go output above). The client needs $want_sdk and its dependencies from the Go module proxy (GOPROXY=$(go env GOPROXY))."
fi
[[ -x "$staging" ]] || gb_die "go build did not produce $staging"
got="$("$staging" version)" || gb_die "the built client does not run: '$staging version' failed"
[[ "$got" == "$want_sdk" ]] || gb_die "the built client reports '$got', expected '$want_sdk'"
mv -f "$staging" "$bin"
trap - EXIT
echo "$hash" >"$bin.source-hash"
gb_log "built $bin ($got) in $(($(date +%s) - start))s"
echo "$bin"
