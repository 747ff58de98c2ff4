# Shared by scripts/vsecm-fixtures.sh and scripts/bench-vsecm.sh, which build and run
# VMware Secrets Manager's own Safe (v0.28.1) from a source path they are given: its
# source, its binary (cached outside the clone), a root key for it, and starting it
# without Kubernetes. VSecM's code never enters the repository. Source it after
# defining `die` and `log` (scripts/lib/proc.sh has them).
# shellcheck shell=bash

# vsecm_source ARG WORK: prints VSecM's source dir: ARG itself when it is a directory,
# else ARG unpacked (a .tar.gz holding vsecm-v0.28.1/ with go.mod, app/safe, core, lib)
# into WORK/src.
vsecm_source() {
    local arg="$1" work="$2" src
    if [[ -d "$arg" ]]; then
        src="$(cd "$arg" && pwd)"
    else
        [[ -f "$arg" ]] || die "$arg is neither a directory nor a file (give VSecM's source tree or tarball)"
        mkdir -p "$work/src"
        tar -xzf "$arg" -C "$work/src" || die "cannot unpack $arg (expected a .tar.gz of VSecM's source)"
        src="$(find "$work/src" -maxdepth 2 -name go.mod -printf '%h\n' | head -n1)"
        [[ -n "$src" ]] || die "$arg holds no go.mod"
    fi
    [[ -f "$src/go.mod" && -d "$src/app/safe/cmd" ]] || die "$src is not VSecM's source (no go.mod or app/safe/cmd)"
    grep -q '^module github.com/vmware-tanzu/secrets-manager' "$src/go.mod" ||
        die "$src/go.mod is not VSecM's module (github.com/vmware-tanzu/secrets-manager)"
    echo "$src"
}

# vsecm_build SRC: builds VSecM's Safe (./app/safe/cmd) and age-keygen (from the age
# module VSecM depends on: the root key's first two lines) of the source dir SRC, with
# the Go module proxy (GOFLAGS=-mod=mod, CGO_ENABLED=0, -trimpath), or reuses them;
# sets VSECM_SAFE_BIN and VSECM_AGE_KEYGEN. They are cached in
# ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/vsecm-safe/<hash>/, keyed by the hash of the
# sources and the Go version; Go's module cache is vsecm-safe/gomodcache/ there, and
# its build cache is deleted after a build.
vsecm_build() {
    local src="$1" root="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/vsecm-safe" go_version hash
    command -v go >/dev/null || die "the Go toolchain is needed to build VSecM's Safe; install Go"
    command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"
    go_version="$(GOTOOLCHAIN=local go version)"
    hash="$(
        {
            echo "$go_version"
            echo "vsecm-safe v1"
            cd "$src"
            find go.mod go.sum app core lib -type f 2>/dev/null | LC_ALL=C sort | while read -r f; do
                echo "== $f"
                cat -- "$f"
            done
        } | sha256sum | cut -d' ' -f1
    )"
    VSECM_SAFE_BIN="$root/$hash/vsecm-safe"
    VSECM_AGE_KEYGEN="$root/$hash/age-keygen"
    [[ -x "$VSECM_SAFE_BIN" && -x "$VSECM_AGE_KEYGEN" ]] && { log "using cached $VSECM_SAFE_BIN"; return 0; }
    log "building VSecM's Safe from $src with $go_version (a few minutes the first time)"
    mkdir -p "$root/$hash"
    local b
    for b in "$VSECM_SAFE_BIN:./app/safe/cmd" "$VSECM_AGE_KEYGEN:filippo.io/age/cmd/age-keygen"; do
        (cd "$src" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -modcacherw" GOPATH="$root/gopath" \
            GOMODCACHE="$root/gomodcache" GOCACHE="$root/gocache" go build -trimpath -o "${b%%:*}.tmp" "${b#*:}") ||
            die "go build ${b#*:} of VSecM's source failed (output above)"
        mv -f "${b%%:*}.tmp" "${b%%:*}"
    done
    rm -rf "$root/gocache"
}

# vsecm_root_key FILE: writes a fresh VSecM root key to FILE (age secret key, age
# public key, 64 hex characters: three lines), with VSECM_AGE_KEYGEN.
vsecm_root_key() {
    local out="$1" age secret_key public_key aes
    age="$("$VSECM_AGE_KEYGEN" 2>/dev/null)" || die "age-keygen failed"
    secret_key="$(grep '^AGE-SECRET-KEY-' <<<"$age")"
    public_key="$(sed -n 's/^# public key: //p' <<<"$age")"
    aes="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    (umask 077 && printf '%s\n%s\n%s\n' "$secret_key" "$public_key" "$aes" >"$out")
}

# vsecm_env KEY DATA PORT LIVE READY [STORE]: the environment VSecM's Safe runs with
# outside Kubernetes (one NAME=value a line): the root key file KEY (not "{}": then it
# never writes a Kubernetes Secret), the backing store STORE (file, the default, in
# DATA; or postgres, whose database VSecM learns from its `vsecm-safe` secret), the API
# on 127.0.0.1:PORT and its probes on :LIVE and :READY (it polls localhost:READY itself).
# SPIFFE_ENDPOINT_SOCKET and SPIFFE_TRUST_DOMAIN come from the caller's environment
# (scripts/spire.sh's env file).
vsecm_env() {
    printf '%s\n' \
        "SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET" "SPIFFE_TRUST_DOMAIN=${SPIFFE_TRUST_DOMAIN:-vsecm.com}" \
        "VSECM_ROOT_KEY_PATH=$1" \
        VSECM_ROOT_KEY_INPUT_MODE_MANUAL=false VSECM_SAFE_ROOT_KEY_STORE=k8s \
        "VSECM_SAFE_BACKING_STORE=${6:-file}" "VSECM_SAFE_DATA_PATH=$2" \
        "VSECM_SAFE_TLS_PORT=127.0.0.1:$3" \
        "VSECM_PROBE_LIVENESS_PORT=:$4" "VSECM_PROBE_READINESS_PORT=:$5" \
        VSECM_LOG_LEVEL=3
}
