#!/usr/bin/env bash
# Produces the VSecM import test fixtures from VSecM's own Safe: builds VMware Secrets
# Manager's Safe from its source, starts it with a real SPIRE server and agent and a
# root key file (no Kubernetes), writes secrets through VSecM's API as VSecM's
# Sentinel does (POST /sentinel/v1/secrets, sent by `safe`), records what each
# workload fetches (GET /workload/v1/secrets, sent by VSecM's own Go SDK as the
# workload's SVID), and stops everything.
#
# Usage:
#   scripts/vsecm-fixtures.sh SOURCE OUTDIR
#       SOURCE  VSecM v0.28.1 source: the tarball (holding vsecm-v0.28.1/ with go.mod,
#               app/safe, core, lib) or that directory unpacked.
#       OUTDIR  created if missing; must be empty. Receives:
#                 data/<name>.age       VSecM's data directory (backups left out)
#                 root-key.txt          the root key VSecM used (three lines)
#                 expected-fetches.json what each workload fetched, and what was written
#
# The committed fixtures (crates/aegis/tests/fixtures/vsecm-0.28.1/) were made with:
#   scripts/vsecm-fixtures.sh vsecm-v0.28.1-safe-src.tar.gz crates/aegis/tests/fixtures/vsecm-0.28.1
#
# Needs root (workloads run under their own uids for SPIRE's unix attestor), Go, jq,
# setpriv, cargo. The VSecM binary is built by scripts/lib/vsecm.sh (cached in
# ${AEGIS_CACHE_DIR:-~/.cache/aegis}/vsecm-safe/, keyed by the hash of its sources and the
# Go version); SPIRE and VSecM's Go client come from scripts/build-spire.sh and
# scripts/build-vsecm-client.sh.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

die() {
    echo "vsecm-fixtures: error: $*" >&2
    exit 1
}
log() { echo "vsecm-fixtures: $*" >&2; }
# shellcheck source=lib/vsecm.sh
source "$here/lib/vsecm.sh"

[[ $# -eq 2 ]] || die "usage: scripts/vsecm-fixtures.sh SOURCE(tarball or dir) OUTDIR"
source_arg="$1"
out="$2"
[[ "$(id -u)" == 0 ]] || die "run as root: workloads run under their own uids (SPIRE's unix attestor tells them apart by uid)"
for c in go jq setpriv cargo sha256sum; do
    command -v "$c" >/dev/null || die "'$c' is needed and not installed"
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
[[ -z "$(ls -A "$out")" ]] || die "$out is not empty: give an empty or new directory"

work="$(mktemp -d /tmp/vsecm-fx.XXXXXX)"
chmod 0755 "$work"
spire_dir="$work/spire"
safe_pid=""
cleanup() {
    if [[ -n "$safe_pid" ]] && kill -0 "$safe_pid" 2>/dev/null; then
        kill -TERM "$safe_pid" 2>/dev/null || true
        wait "$safe_pid" 2>/dev/null || true
    fi
    "$here/spire.sh" stop "$spire_dir" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# ---- VSecM's source and binary
src="$(vsecm_source "$source_arg" "$work")"
vsecm_build "$src"
go_version="$(GOTOOLCHAIN=local go version)"

# ---- The other tools
log "building the Sentinel command (safe) and VSecM's Go client"
cargo build -q --manifest-path "$repo/Cargo.toml" -p aegis --bin safe || die "cargo build of safe failed"
target="$(cargo metadata -q --no-deps --format-version 1 --manifest-path "$repo/Cargo.toml" | jq -r .target_directory)"
client="$("$here/build-vsecm-client.sh" | tail -n1)"
mkdir -p "$work/bin"
cp "$VSECM_SAFE_BIN" "$work/bin/vsecm-safe"
cp "$target/debug/safe" "$work/bin/safe"
cp "$client" "$work/bin/vsecm-client"
chmod 0755 "$work/bin" "$work/bin"/*

# ---- SPIRE and identities (by uid)
uid_safe=10200
uid_sentinel=10201
# workload name -> uid; "nobody-here" has no secret (its fetch is recorded as null).
workloads=(billing inventory orders shipping payments legacy reports nobody-here)
"$here/spire.sh" start "$spire_dir" >/dev/null
# shellcheck disable=SC1091
. "$spire_dir/env"
"$here/spire.sh" register "$spire_dir" safe "uid:$uid_safe" >/dev/null
"$here/spire.sh" register "$spire_dir" sentinel "uid:$uid_sentinel" >/dev/null
i=0
for w in "${workloads[@]}"; do
    "$here/spire.sh" register "$spire_dir" workload "$w" "uid:$((10210 + i))" >/dev/null
    i=$((i + 1))
done

# ---- Root key and VSecM's Safe
vsecm_root_key "$work/root-key.txt"
chown "$uid_safe" "$work/root-key.txt"
chmod 0400 "$work/root-key.txt"
mkdir "$work/data"
chown "$uid_safe" "$work/data"
chmod 0700 "$work/data"

port=$((20000 + RANDOM % 5000))
live=$((port + 1))
ready=$((port + 2))
mapfile -t vsecm_vars < <(vsecm_env "$work/root-key.txt" "$work/data" "$port" "$live" "$ready")
setpriv --reuid="$uid_safe" --regid="$uid_safe" --clear-groups env -i PATH=/usr/bin:/bin "${vsecm_vars[@]}" \
    "$work/bin/vsecm-safe" >"$work/vsecm-safe.log" 2>&1 </dev/null &
safe_pid=$!
log "VSecM's Safe started (pid $safe_pid, port $port); waiting for readiness"
for _ in $(seq 1 300); do
    kill -0 "$safe_pid" 2>/dev/null || { tail -n 40 "$work/vsecm-safe.log" >&2; die "VSecM's Safe exited (log above)"; }
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { tail -n 40 "$work/vsecm-safe.log" >&2; die "VSecM's Safe does not listen on $port after 30 s"; }

client_env=(
    PATH=/usr/bin:/bin
    SPIFFE_ENDPOINT_SOCKET="$SPIFFE_ENDPOINT_SOCKET"
    SPIFFE_TRUST_DOMAIN="$SPIFFE_TRUST_DOMAIN"
    VSECM_SAFE_ENDPOINT_URL="https://127.0.0.1:$port/"
    AEGIS_SAFE_URL="https://127.0.0.1:$port"
)

# `safe` as VSecM's Sentinel: the upsert body VSecM's Sentinel sends.
sentinel() {
    local outp
    for _ in $(seq 1 100); do
        if outp="$(setpriv --reuid="$uid_sentinel" --regid="$uid_sentinel" --clear-groups \
            env -i "${client_env[@]}" "$work/bin/safe" "$@" 2>"$work/safe.err")"; then
            log "safe $1 $2: $outp"
            return 0
        fi
        # The Safe may still be loading its root key: retry briefly.
        sleep 0.2
    done
    tail -n 40 "$work/vsecm-safe.log" "$work/safe.err" >&2
    die "safe $1 $2 failed: $outp"
}

json_value='{"username":"admin","password":"VSecMRocks","port":5432}'
unicode_value=$'Grüße, 世界 🚀\nsecond line\n\ttabbed "quoted" \\ backslash'
sentinel -w billing -s "$json_value"
sentinel -w inventory -s "$json_value" -t '{"USER":"{{.username}}","PASS":"{{.password}}"}' -f yaml
sentinel -w orders -w shipping -s "$unicode_value"
sentinel -w payments -n default -n payments -s '{"card":"4111","cvv":"123"}' \
    -t '{"CARD":"{{.card}}"}' -f json -N 2024-01-01T00:00:00Z -E 2099-12-31T23:59:59Z
sentinel -w legacy -s 'first version' -f raw
sleep 1.1 # so that legacy's created and updated differ by at least a second
sentinel -w legacy -s 'second version' -f raw
sentinel -w reports -s '{"bucket":"r","region":"eu"}' -t 'bucket={{.bucket}} region={{.region}}' -f raw
sentinel -w k8s:db-credentials -n apps -n default -s '{"user":"db","pass":"s3cr3t"}' \
    -t '{"USERNAME":"{{.user}}","PASSWORD":"{{.pass}}"}'
sentinel -w raw:cache-config -s 'maxmemory 2gb'
written=(billing inventory orders shipping payments legacy reports k8s:db-credentials raw:cache-config)

# VSecM persists asynchronously: wait for every file, then for the writes to settle.
for _ in $(seq 1 300); do
    missing=0
    for n in "${written[@]}"; do [[ -s "$work/data/$n.age" ]] || missing=1; done
    ((missing == 0)) && break
    sleep 0.1
done
for n in "${written[@]}"; do [[ -s "$work/data/$n.age" ]] || die "VSecM did not write $n.age within 30 s"; done
sleep 1

# ---- What each workload fetches, with VSecM's own SDK
fetches="{}"
i=0
for w in "${workloads[@]}"; do
    uid=$((10210 + i))
    i=$((i + 1))
    rc=0
    got="$(setpriv --reuid="$uid" --regid="$uid" --clear-groups env -i "${client_env[@]}" \
        "$work/bin/vsecm-client" fetch -json 2>"$work/fetch.err")" || rc=$?
    case "$rc" in
        0) fetches="$(jq -c --arg w "$w" --argjson v "$got" '. + {($w): $v}' <<<"$fetches")" ;;
        3) fetches="$(jq -c --arg w "$w" '. + {($w): null}' <<<"$fetches")" ;;
        *) cat "$work/fetch.err" >&2; die "fetch as $w failed (exit $rc)" ;;
    esac
done

# ---- Stop and copy out
kill -TERM "$safe_pid"
wait "$safe_pid" 2>/dev/null || true
safe_pid=""
"$here/spire.sh" stop "$spire_dir"

mkdir -p "$out/data"
for n in "${written[@]}"; do cp "$work/data/$n.age" "$out/data/"; done
cp "$work/root-key.txt" "$out/root-key.txt"
chmod 0644 "$out/root-key.txt" "$out/data"/*.age
jq -n --argjson f "$fetches" --arg go "$go_version" \
    --argjson w "$(printf '%s\n' "${written[@]}" | jq -R . | jq -s .)" \
    '{vsecm_version: "0.28.1", produced_with: "scripts/vsecm-fixtures.sh", go: $go,
      written: $w, fetches: $f}' >"$out/expected-fetches.json"
log "wrote $out (${#written[@]} secrets, ${#workloads[@]} workload fetches)"
