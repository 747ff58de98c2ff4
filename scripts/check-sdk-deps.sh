#!/usr/bin/env bash
# The SDK must not build the template engine: aegis-core's `transform`
# feature (which pulls in aegis-gotmpl, gtmpl and the YAML writer) is for
# the crates that store or serve secrets. Fails, naming the path, when a
# dependency of aegis-sdk turns it on.
set -euo pipefail
cd "$(dirname "$0")/.."

tree="$(cargo tree -p aegis-sdk -e normal,build --locked --prefix none)"
grep -q '^aegis-core ' <<<"$tree" || { echo "check-sdk-deps: error: cargo tree shows no aegis-core under aegis-sdk; is the workspace broken?" >&2; exit 1; }
if grep -Eq '^(aegis-gotmpl|gtmpl) ' <<<"$tree"; then
    echo "check-sdk-deps: error: aegis-sdk depends on the template engine; the path:" >&2
    cargo tree -p aegis-sdk -e normal,build --locked -i aegis-gotmpl >&2 || true
    echo "check-sdk-deps: depend on aegis-core without its 'transform' feature (the workspace default) in the crates the SDK uses" >&2
    exit 1
fi
echo "check-sdk-deps: aegis-sdk builds without aegis-gotmpl"
