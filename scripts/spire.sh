#!/usr/bin/env bash
# A local SPIRE deployment for tests and for trying Aegis with real SPIFFE identities,
# without Kubernetes: one spire-server and one spire-agent on unix sockets in DIR, the
# agent attested with a join token, workloads told apart by the unix workload attestor
# (by uid, or by binary path). See docs/SPIRE.md.
#
# Usage:
#   scripts/spire.sh start DIR [--trust-domain TD] [--svid-ttl DUR] [--ca-ttl DUR]
#                              [--port N] [--no-agent] [--bundle-endpoint-port N]
#       Writes the configs, starts the server, generates a join token, starts the
#       agent, waits until both are healthy and writes DIR/env (export lines:
#       SPIFFE_ENDPOINT_SOCKET, SPIRE_SERVER_SOCKET, SPIRE_AGENT_ID, ...).
#       Defaults: trust domain vsecm.com, SVID TTL 1h, CA TTL 24h, a free port.
#   scripts/spire.sh register DIR KIND [NAME] SELECTOR [-- EXTRA spire-server ARGS]
#       Creates a registration entry with VSecM's SPIFFE ID scheme, parented to the
#       agent, and prints the entry ID. KIND is safe, sentinel or workload (NAME is
#       the workload's name, for workload only). SELECTOR is uid:N, path:/bin/x or a
#       full unix:... selector. EXTRA goes to `spire-server entry create`, e.g.
#       -- -x509SVIDTTL 60 (seconds).
#   scripts/spire.sh server DIR ARGS...   spire-server ARGS -socketPath DIR/server/api.sock
#   scripts/spire.sh agent DIR ARGS...    spire-agent ARGS -socketPath <the Workload API socket>
#   scripts/spire.sh env DIR              prints DIR/env
#   scripts/spire.sh stop DIR             stops what start started (idempotent)
#
# SPIFFE IDs (n/ is the pod name in Kubernetes; here SPIRE_POD_NAME, default "local"):
#   safe      spiffe://TD/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/local
#   sentinel  spiffe://TD/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/local
#   workload  spiffe://TD/workload/NAME/ns/default/sa/NAME/n/local
#
# The binaries come from SPIRE_BIN_DIR, else from scripts/build-spire.sh (which
# builds them once into the cache). Logs: DIR/server.log, DIR/agent.log.
#
# Example:
#   d=$(mktemp -d); scripts/spire.sh start "$d" --svid-ttl 2m
#   scripts/spire.sh register "$d" safe uid:10001
#   scripts/spire.sh register "$d" sentinel uid:0
#   scripts/spire.sh register "$d" workload billing uid:10003 -- -x509SVIDTTL 60
#   . "$d/env"; ...; scripts/spire.sh stop "$d"
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

PROC_NAME=spire.sh
# shellcheck source=lib/proc.sh
source "$here/lib/proc.sh"

usage() {
    sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'
}

bin_dir() {
    if [[ -n "${SPIRE_BIN_DIR:-}" ]]; then
        echo "$SPIRE_BIN_DIR"
    else
        "$here/build-spire.sh" | tail -n1
    fi
}

# Reads KEY from DIR/env.
env_get() {
    local dir="$1" key="$2"
    [[ -f "$dir/env" ]] || die "$dir/env not found: run 'scripts/spire.sh start $dir' first"
    sed -n "s/^export $key='\\(.*\\)'\$/\\1/p" "$dir/env"
}

# Waits until `healthcheck` of BIN (spire-server or spire-agent) passes, or the
# process PID died, or TIMEOUT seconds passed.
wait_healthy() {
    local bin="$1" sock="$2" pid="$3" logf="$4" timeout="$5"
    wait_for "$(basename "$bin")" "$pid" "$logf" "$timeout" "$bin" healthcheck -socketPath "$sock"
}

cmd_start() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: spire.sh start DIR [options]"
    shift
    local td="vsecm.com" svid_ttl="1h" ca_ttl="24h" port="" agent=1 bundle_port=""
    while (($#)); do
        case "$1" in
            --trust-domain) td="$2"; shift 2 ;;
            --svid-ttl) svid_ttl="$2"; shift 2 ;;
            --ca-ttl) ca_ttl="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --no-agent) agent=0; shift ;;
            --bundle-endpoint-port) bundle_port="$2"; shift 2 ;;
            *) die "start: unknown option '$1'" ;;
        esac
    done
    [[ -n "$port" ]] || port="$(free_port)"
    local bin
    bin="$(bin_dir)" || die "could not build or find the SPIRE binaries (scripts/build-spire.sh failed)"
    [[ -x "$bin/spire-server" && -x "$bin/spire-agent" ]] ||
        die "spire-server/spire-agent not found in $bin: run scripts/build-spire.sh"

    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [[ ! -f "$dir/server.pid" ]] || ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null ||
        die "a SPIRE server from $dir is already running (spire.sh stop $dir)"
    # Workloads run under other uids: they must reach the agent socket through DIR.
    chmod 0755 "$dir"
    mkdir -p "$dir/server/data" "$dir/agent/data" "$dir/agent/public"
    chmod 0700 "$dir/server" "$dir/agent/data"
    chmod 0755 "$dir/agent" "$dir/agent/public"
    local server_sock="$dir/server/api.sock"
    local agent_sock="$dir/agent/public/api.sock"
    ((${#agent_sock} < 100)) || die "socket path too long for a unix socket: $agent_sock (use a shorter DIR)"

    # SPIFFE federation: the server publishes its bundle (https_spiffe profile) for
    # the servers that federate with it (`spire-server federation create`).
    local federation=""
    if [[ -n "$bundle_port" ]]; then
        federation="federation {
        bundle_endpoint {
            address = \"127.0.0.1\"
            port = $bundle_port
        }
    }"
    fi
    cat >"$dir/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$port"
    socket_path = "$server_sock"
    trust_domain = "$td"
    data_dir = "$dir/server/data"
    log_level = "DEBUG"
    ca_key_type = "ec-p256"
    ca_ttl = "$ca_ttl"
    default_x509_svid_ttl = "$svid_ttl"
    $federation
    ca_subject {
        country = ["US"]
        organization = ["Aegis SPIRE harness"]
        common_name = ""
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$dir/server/data/datastore.sqlite3"
        }
    }
    KeyManager "memory" {
        plugin_data {}
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
EOF
    : >"$dir/server.log"
    "$bin/spire-server" run -config "$dir/server.conf" >>"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
    wait_healthy "$bin/spire-server" "$server_sock" "$(cat "$dir/server.pid")" "$dir/server.log" 60
    log "spire-server up (trust domain $td, port $port, SVID TTL $svid_ttl)"

    "$bin/spire-server" bundle show -socketPath "$server_sock" >"$dir/bundle.pem"
    local agent_id=""
    if ((agent)); then
        local token
        token="$("$bin/spire-server" token generate -ttl 600 -socketPath "$server_sock" | sed -n 's/^Token: //p')"
        [[ -n "$token" ]] || die "spire-server token generate printed no token"
        agent_id="spiffe://$td/spire/agent/join_token/$token"
        cat >"$dir/agent.conf" <<EOF
agent {
    data_dir = "$dir/agent/data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "$port"
    socket_path = "$agent_sock"
    trust_bundle_path = "$dir/bundle.pem"
    trust_domain = "$td"
    join_token = "$token"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {
            # Adds unix:path:/sha256 selectors (needs to read the caller's binary).
            discover_workload_path = true
        }
    }
}
EOF
        : >"$dir/agent.log"
        "$bin/spire-agent" run -config "$dir/agent.conf" >>"$dir/agent.log" 2>&1 </dev/null &
        echo $! >"$dir/agent.pid"
        wait_healthy "$bin/spire-agent" "$agent_sock" "$(cat "$dir/agent.pid")" "$dir/agent.log" 60
        # The socket itself: any local uid may ask for its identity.
        chmod 0777 "$agent_sock" 2>/dev/null || true
        log "spire-agent up as $agent_id"
    fi

    cat >"$dir/env" <<EOF
export SPIFFE_TRUST_DOMAIN='$td'
export SPIRE_SERVER_SOCKET='$server_sock'
export SPIRE_SERVER_PORT='$port'
export SPIRE_BUNDLE_ENDPOINT_PORT='$bundle_port'
export SPIRE_BUNDLE='$dir/bundle.pem'
export SPIRE_BIN_DIR='$bin'
export SPIRE_AGENT_ID='$agent_id'
export SPIFFE_ENDPOINT_SOCKET='$( ((agent)) && echo "unix://$agent_sock")'
EOF
    cat "$dir/env"
}

cmd_stop() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: spire.sh stop DIR"
    stop_pid "$dir/agent.pid"
    stop_pid "$dir/server.pid"
}

spiffe_id_for() {
    local td="$1" kind="$2" name="$3" pod="${SPIRE_POD_NAME:-local}"
    case "$kind" in
        safe) echo "spiffe://$td/workload/vsecm-safe/ns/vsecm-system/sa/vsecm-safe/n/$pod" ;;
        sentinel) echo "spiffe://$td/workload/vsecm-sentinel/ns/vsecm-system/sa/vsecm-sentinel/n/$pod" ;;
        workload) echo "spiffe://$td/workload/$name/ns/default/sa/$name/n/$pod" ;;
        *) die "register: KIND must be safe, sentinel or workload, not '$kind'" ;;
    esac
}

cmd_register() {
    local dir="${1:-}" kind="${2:-}"
    [[ -n "$dir" && -n "$kind" ]] || die "usage: spire.sh register DIR KIND [NAME] SELECTOR [-- ARGS]"
    shift 2
    local name=""
    if [[ "$kind" == workload ]]; then
        name="${1:-}"
        [[ -n "$name" ]] || die "register: a workload needs a NAME"
        shift
    fi
    local sel="${1:-}"
    [[ -n "$sel" ]] || die "register: a SELECTOR is needed (uid:N, path:/bin/x or unix:...)"
    shift
    [[ "${1:-}" != "--" ]] || shift
    case "$sel" in
        unix:*) ;;
        uid:* | gid:* | path:* | sha256:* | user:* | group:*) sel="unix:$sel" ;;
        *) die "register: unknown selector '$sel'" ;;
    esac
    local td parent bin id out
    td="$(env_get "$dir" SPIFFE_TRUST_DOMAIN)"
    parent="$(env_get "$dir" SPIRE_AGENT_ID)"
    bin="$(env_get "$dir" SPIRE_BIN_DIR)"
    [[ -n "$parent" ]] || die "register: this deployment has no agent"
    id="$(spiffe_id_for "$td" "$kind" "$name")"
    out="$("$bin/spire-server" entry create -socketPath "$(env_get "$dir" SPIRE_SERVER_SOCKET)" \
        -parentID "$parent" -spiffeID "$id" -selector "$sel" "$@")" ||
        die "spire-server entry create failed for $id ($sel)"
    log "registered $id for $sel"
    sed -n 's/^Entry ID[[:space:]]*:[[:space:]]*//p' <<<"$out"
}

cmd_server() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: spire.sh server DIR ARGS..."
    shift
    exec "$(env_get "$dir" SPIRE_BIN_DIR)/spire-server" "$@" -socketPath "$(env_get "$dir" SPIRE_SERVER_SOCKET)"
}

cmd_agent() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: spire.sh agent DIR ARGS..."
    shift
    local ep
    ep="$(env_get "$dir" SPIFFE_ENDPOINT_SOCKET)"
    exec "$(env_get "$dir" SPIRE_BIN_DIR)/spire-agent" "$@" -socketPath "${ep#unix://}"
}

sub="${1:-}"
[[ $# -gt 0 ]] && shift
case "$sub" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    register) cmd_register "$@" ;;
    server) cmd_server "$@" ;;
    agent) cmd_agent "$@" ;;
    env) cat "${1:?usage: spire.sh env DIR}/env" ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command '$sub' (see scripts/spire.sh --help)" ;;
esac
