#!/usr/bin/env bash
# The OpenAPI document against a real Safe: schemathesis generates requests
# from crates/aegis-server/openapi.yaml and sends them over mutual TLS to a
# dev Safe, once as the Sentinel and once as a workload. It fails on any
# server error, any answer that breaks the document (status code, content
# type, body schema), and any documented status code that neither run
# reached nor a named test provokes (scripts/schemathesis_coverage.py).
#
#   scripts/schemathesis.sh                # 50 examples per operation (the test command)
#   AEGIS_SCHEMATHESIS_EXAMPLES=500 scripts/schemathesis.sh   # a longer run
#
# Environment: AEGIS_CACHE_DIR (default ~/.cache/aegis; the virtualenv lives in
# schemathesis-venv there), CARGO_TARGET_DIR (the `aegis` binary is taken from
# its debug/ directory, built if missing), AEGIS_SCHEMATHESIS_EXAMPLES,
# AEGIS_SCHEMATHESIS_SEED, AEGIS_SCHEMATHESIS_KEEP=1 (keep the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

SCHEMATHESIS_VERSION=4.32.5
examples="${AEGIS_SCHEMATHESIS_EXAMPLES:-50}"
seed="${AEGIS_SCHEMATHESIS_SEED:-20261128}"

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
venv="$cache/schemathesis-venv"
st="$venv/bin/schemathesis"

fail() { echo "schemathesis.sh: error: $*" >&2; exit 1; }

# 1. schemathesis, pinned, in its own virtualenv.
if [ "$("$st" --version 2>/dev/null || true)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $venv"
    command -v python3 >/dev/null || fail "python3 is needed to install schemathesis; install Python 3.9 or later"
    python3 -m venv "$venv" ||
        fail "could not create a virtualenv in $venv; install Python's venv module (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
        fail "could not install schemathesis $SCHEMATHESIS_VERSION from PyPI (see pip's message above)"
    [ "$("$st" --version 2>/dev/null || true)" = "schemathesis, version $SCHEMATHESIS_VERSION" ] ||
        fail "schemathesis $SCHEMATHESIS_VERSION does not run from $venv after installing it"
fi

# 2. The aegis binary.
target="${CARGO_TARGET_DIR:-$cache/target}"
aegis="$target/debug/aegis"
if [ ! -x "$aegis" ]; then
    echo "== building aegis (cargo build -p aegis --bin aegis)"
    CARGO_TARGET_DIR="$target" cargo build --quiet --locked -p aegis --bin aegis || fail "could not build aegis"
fi

# 3. A dev Safe in a throw-away directory, stopped on exit.
work="$(mktemp -d "${TMPDIR:-/tmp}/aegis-schemathesis.XXXXXX")"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [ "${AEGIS_SCHEMATHESIS_KEEP:-0}" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
health="$(free_port)"
dev="$work/dev"
url="https://127.0.0.1:$port"
# A short request deadline bounds each watch long poll (one second under it).
# The Sentinel may reveal values (a policy: not a Safe's default), so that the
# answers of GET /v1/secrets/{name} are exercised too.
cat >"$work/policies.json" <<'JSON'
[{"name":"schemathesis-reveal","spiffe_ids":["spiffe://vsecm.com/workload/vsecm-sentinel/*"],"secrets":["*"],"actions":["reveal"]}]
JSON
AEGIS_REQUEST_TIMEOUT_MS=2000 AEGIS_LOG=info AEGIS_POLICY_FILE="$work/policies.json" "$aegis" dev --data-dir "$dev" \
    --listen "127.0.0.1:$port" --health-listen "127.0.0.1:$health" >"$work/safe.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$health/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/safe.log" >&2; fail "the dev Safe exited at start-up (its log is above)"; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$health/readyz" >/dev/null || { cat "$work/safe.log" >&2; fail "the dev Safe was not ready within 30 s"; }

# 4. schemathesis as the Sentinel, then as the workload. Every check runs but:
# - positive_data_acceptance: the Safe refuses with 400 some requests a schema
#   cannot rule out (a template that does not parse, expires_after before
#   not_before, a value its format cannot parse); the document says so;
# - use_after_free: a delete is soft by design (history and undelete still work);
# - ignored_auth: callers are authenticated by mTLS, not by an HTTP scheme.
run() {
    local who="$1" svid="$dev/svid/$1"
    echo "== schemathesis $SCHEMATHESIS_VERSION as $who: $examples examples per operation, seed $seed"
    (cd "$work" && SCHEMATHESIS_HOOKS="$repo/scripts/schemathesis_hooks.py" "$st" run \
        "$repo/crates/aegis-server/openapi.yaml" --url "$url" \
        --request-cert "$svid/svid.pem" --request-cert-key "$svid/svid.key" --tls-verify "$svid/bundle.pem" \
        --max-examples "$examples" --seed "$seed" --generation-database none --request-timeout 15 \
        --checks all --exclude-checks positive_data_acceptance,use_after_free,ignored_auth \
        --report har --report-har-path "$work/$who.har" --no-color --output-truncate false \
        >"$work/$who.txt" 2>&1)
}
workload=schemathesis-workload
status=0
run vsecm-sentinel || status=1
sed -n '/^Test Phases:/,$p' "$work/vsecm-sentinel.txt"
# The workload, and a secret for it written now (after the Sentinel's run,
# which may delete or rewrite any secret it finds), so its routes answer 200 too.
"$aegis" dev svid --workload "$workload" --data-dir "$dev" >/dev/null || fail "could not issue the workload's SVID"
(
    set -a
    # shellcheck disable=SC1091
    . "$dev/env"
    "$aegis" put "$workload" --value '{"user":"app","password":"s3cret"}' --template '{{.user}}' >/dev/null
) || fail "could not write the workload's secret through the dev Safe"
run "$workload" || status=1
sed -n '/^Test Phases:/,$p' "$work/$workload.txt"
if [ "$status" != 0 ]; then
    for who in vsecm-sentinel "$workload"; do
        echo "---- schemathesis as $who: failures"
        sed -n '/^=* FAILURES =*$/,/^=* SUMMARY =*$/p' "$work/$who.txt"
    done
    grep -E 'panicked|ERROR' "$work/safe.log" | head -20 || true
    fail "the Safe and crates/aegis-server/openapi.yaml disagree (failures above)"
fi

# 5. Every documented status code reached by a run or by a named test.
"$venv/bin/python" "$repo/scripts/schemathesis_coverage.py" "$repo/crates/aegis-server/openapi.yaml" "$repo" \
    "$work/vsecm-sentinel.har" "$work/$workload.har" ||
    fail "documented status codes that nothing reaches (above): provoke them, name a test in x-reached-by, or remove them"
if grep -q 'panicked' "$work/safe.log"; then
    grep 'panicked' "$work/safe.log" | head -5 >&2
    fail "the Safe panicked during the run"
fi
echo "schemathesis: the Safe and its OpenAPI document agree"
