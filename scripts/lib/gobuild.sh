# Shared by scripts/build-*.sh, which build pinned tools (Go programs from the Go
# module proxy, cargo-fuzz from crates.io) into a cache outside the clone. Source it
# after setting GB_NAME (the name in messages, e.g. "spire"); the script defines
# `cached_ok` (true when the cached binaries are the pinned version) before calling
# gb_reuse_or_lock.
# shellcheck shell=bash

gb_die() {
    echo "build-$GB_NAME: error: $*" >&2
    exit 1
}
gb_log() { echo "build-$GB_NAME: $*" >&2; }

# gb_args FLAG VALUE HELP_LINES [ARG]: `FLAG` prints VALUE and exits, `-h`/`--help`
# prints the script's header comment (HELP_LINES, e.g. 2,15), nothing else is accepted.
gb_args() {
    local flag="$1" value="$2" help="$3"
    case "${4:-}" in
        "$flag")
            echo "$value"
            exit 0
            ;;
        "") ;;
        -h | --help)
            sed -n "${help}p" "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) gb_die "unknown argument '$4' (use $flag or no argument)" ;;
    esac
}

# gb_reuse_or_lock DIR WHAT OUT: prints OUT and exits when `cached_ok` holds; else takes
# the build lock of DIR (one build at a time, e.g. test.sh and a test binary both
# asking), looks again once the lock is held, and returns to build.
gb_reuse_or_lock() {
    local dir="$1" what="$2" out="$3"
    if cached_ok; then
        gb_log "using cached $what in $out"
        echo "$out"
        exit 0
    fi
    mkdir -p "$dir"
    command -v flock >/dev/null || return 0
    exec 9>"$dir/.lock"
    if ! flock -n 9; then
        gb_log "another build of $what is running; waiting for it"
        flock 9
    fi
    if cached_ok; then
        gb_log "using cached $what in $out"
        echo "$out"
        exit 0
    fi
}

# gb_go_env CACHE CGO NEEDS: Go's caches under CACHE, cgo on (1) or off (0), and the
# installed toolchain only (never a downloaded one). NEEDS says which Go is needed.
# GOPROXY and GOSUMDB come from the environment (default: the Go module proxy).
gb_go_env() {
    command -v go >/dev/null || gb_die "the Go toolchain is not installed ($3); install Go and re-run"
    export GOPATH="$1/gopath" GOMODCACHE="$1/gomodcache" GOCACHE="$1/gocache"
    export GOTOOLCHAIN=local CGO_ENABLED="$2"
}

# gb_download MODULE VERSION: downloads a release module, checked against the checksum
# database, and sets GB_SRC (its source dir), GB_HASH (its hash) and GB_GO (its `go`
# line). Not `go install pkg@version`: that also asks the proxy for the module's
# version list (for a deprecation notice), which the proxy reachable here refuses.
gb_download() {
    local info
    if ! info="$(go mod download -json "$1@$2")"; then
        echo "$info" >&2
        gb_die "could not download $1@$2 from the Go module proxy (GOPROXY=$(go env GOPROXY)): see the Go output above"
    fi
    GB_SRC="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
    GB_HASH="$(sed -n 's/^[[:space:]]*"Hash": "\(.*\)",\{0,1\}$/\1/p' <<<"$info" | head -n1)"
    [[ -n "$GB_SRC" && -f "$GB_SRC/go.mod" ]] || gb_die "go mod download did not report a source dir for $1@$2"
    GB_GO="$(sed -n 's/^go //p' "$GB_SRC/go.mod")"
    gb_log "$1@$2 needs Go >= $GB_GO (its go.mod)"
}

# gb_modfile DIR: a writable copy of GB_SRC's go.mod and go.sum in DIR/modfile (for
# `go build -modfile`, so the release's own pins are used); prints the go.mod path.
gb_modfile() {
    local m="$1/modfile"
    rm -rf "$m"
    mkdir -p "$m"
    cp "$GB_SRC/go.mod" "$GB_SRC/go.sum" "$m/"
    chmod u+w "$m/go.mod" "$m/go.sum"
    echo "$m/go.mod"
}

# gb_staging DIR: a fresh staging dir for the binaries in GB_STAGING (removed if the
# script fails); gb_install moves it into place. Call it directly, not in $(...).
gb_staging() {
    GB_STAGING="$1/bin.tmp.$$"
    rm -rf "$GB_STAGING"
    mkdir -p "$GB_STAGING"
    trap 'rm -rf "$GB_STAGING"' EXIT
}

# gb_install BIN: replaces BIN with the staged binaries and deletes Go's build cache,
# which is large and only useful for rebuilding the same version, unless
# AEGIS_GO_KEEP_BUILD_CACHE=1 (scripts/build-node.sh builds the node's binaries in
# the cache kube-apiserver's build left, then deletes it).
gb_install() {
    rm -rf "$1"
    mv "$GB_STAGING" "$1"
    trap - EXIT
    [[ "${AEGIS_GO_KEEP_BUILD_CACHE:-0}" == 1 ]] && return 0
    gb_log "deleting Go's build cache ($(du -sh "$GOCACHE" 2>/dev/null | cut -f1) in $GOCACHE)"
    go clean -cache >/dev/null 2>&1 || true
    rm -rf "$GOCACHE"
}

# gb_local_build BIN SRC TAG FILE...: for a Go program built from sources in the clone,
# sets GB_HASH to the hash of the Go version, TAG and the sources (the FILEs that exist
# and SRC's *.go, sorted) and GB_GO_VERSION; prints BIN and exits when BIN was built
# from the same hash.
gb_local_build() {
    local bin="$1" src="$2" tag="$3"
    shift 3
    command -v sha256sum >/dev/null || gb_die "sha256sum not found (coreutils)"
    GB_GO_VERSION="$(GOTOOLCHAIN=local go version)" || gb_die "'go version' failed"
    GB_HASH="$(
        {
            echo "$GB_GO_VERSION"
            echo "$tag"
            cd "$src"
            for f in "$@" $(ls -- *.go | LC_ALL=C sort); do
                echo "== $f"
                cat -- "$f"
            done
        } | sha256sum | cut -d' ' -f1
    )"
    if [[ -x "$bin" && -f "$bin.source-hash" && "$(cat "$bin.source-hash")" == "$GB_HASH" ]]; then
        gb_log "using cached $bin (sources unchanged)"
        echo "$bin"
        exit 0
    fi
}
