#!/usr/bin/env bash
# A local Kubernetes API server to try Aegis against, without a real cluster: etcd,
# kube-apiserver and kube-controller-manager (v1.37.2, scripts/build-kube.sh) on
# free loopback ports, TLS everywhere with a throwaway CA, RBAC, ServiceAccount
# tokens (TokenRequest API), and an admin kubeconfig. No kubelet: pods never run,
# but Secrets, ServiceAccounts, Roles and namespaces work. See docs/KUBERNETES.md.
#
# Usage:
#   scripts/kube.sh start DIR [--port N]   start; writes DIR/env and DIR/admin.kubeconfig
#   scripts/kube.sh env DIR                prints DIR/env (export KUBECONFIG=...)
#   scripts/kube.sh stop DIR               stops what start started (idempotent)
#
# The binaries come from AEGIS_KUBE_BIN_DIR, else from scripts/build-kube.sh (which
# builds them once into the cache). Needs openssl (installed with apt-get when
# missing and running as root). Logs: DIR/etcd.log, DIR/kube-apiserver.log,
# DIR/kube-controller-manager.log.
#
# Example:
#   d=$(mktemp -d); scripts/kube.sh start "$d"; . "$d/env"
#   kubectl get ns     # if you have kubectl
#   scripts/kube.sh stop "$d"
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

PROC_NAME=kube.sh
# shellcheck source=lib/proc.sh
source "$here/lib/proc.sh"

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

bin_dir() {
    if [[ -n "${AEGIS_KUBE_BIN_DIR:-}" ]]; then
        echo "$AEGIS_KUBE_BIN_DIR"
    else
        "$here/build-kube.sh" | tail -n1
    fi
}

need_openssl() {
    command -v openssl >/dev/null && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing openssl (Debian package)"
        { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; } || die "could not install openssl with apt-get; install it"
        return 0
    fi
    die "openssl is needed to make the cluster's certificates; install it (e.g. apt-get install openssl)"
}

# issue NAME SUBJECT [server]: NAME.key/NAME.crt signed by ca, for client auth
# (and server auth on 127.0.0.1/localhost when "server").
issue() {
    local name="$1" subj="$2" server="${3:-}"
    local ext="$dir/pki/$name.ext"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [[ -n "$server" ]]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=IP:127.0.0.1,DNS:localhost"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$ext"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/$name.key" 2>/dev/null
    openssl req -new -key "$dir/pki/$name.key" -subj "$subj" -out "$dir/pki/$name.csr" 2>/dev/null
    openssl x509 -req -in "$dir/pki/$name.csr" -CA "$dir/pki/ca.crt" -CAkey "$dir/pki/ca.key" \
        -CAcreateserial -days 30 -extfile "$ext" -out "$dir/pki/$name.crt" 2>/dev/null
}

pki() {
    mkdir -p "$dir/pki"
    chmod 0700 "$dir/pki"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$dir/pki/ca.key" -subj "/CN=aegis-local-kubernetes-ca" -days 30 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$dir/pki/ca.crt" 2>/dev/null
    issue etcd "/CN=etcd" server
    issue apiserver "/CN=kube-apiserver" server
    issue etcd-client "/CN=kube-apiserver-etcd-client"
    issue admin "/O=system:masters/CN=aegis-local-admin"
    # ServiceAccount token signing key (ES256).
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/sa.key" 2>/dev/null
}

# Waits until the process in PIDFILE answers CHECK, or dies, or TIMEOUT seconds pass.
readyz() {
    local out
    out="$(openssl s_client -quiet -connect "127.0.0.1:$port" -CAfile "$dir/pki/ca.crt" \
        -cert "$dir/pki/admin.crt" -key "$dir/pki/admin.key" -verify_return_error 2>/dev/null \
        <<<$'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')" || return 1
    [[ "$out" == "HTTP/1.1 200"* ]]
}

cmd_start() {
    dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: kube.sh start DIR [--port N]"
    shift
    port=""
    while (($#)); do
        case "$1" in
            --port) port="$2"; shift 2 ;;
            *) die "start: unknown option '$1'" ;;
        esac
    done
    need_openssl
    local bin
    bin="$(bin_dir)" || die "could not build or find the Kubernetes binaries (scripts/build-kube.sh failed)"
    for b in etcd kube-apiserver kube-controller-manager; do
        [[ -x "$bin/$b" ]] || die "$b not found in $bin: run scripts/build-kube.sh"
    done
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    [[ ! -f "$dir/kube-apiserver.pid" ]] || ! kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null ||
        die "a cluster from $dir is already running (kube.sh stop $dir)"
    [[ -n "$port" ]] || port="$(free_port)"
    local etcd_port peer_port cm_port
    etcd_port="$(free_port)"
    peer_port="$(free_port)"
    cm_port="$(free_port)"
    pki
    local p="$dir/pki"

    "$bin/etcd" --name=aegis-local --data-dir="$dir/etcd-data" \
        --listen-client-urls="https://127.0.0.1:$etcd_port" --advertise-client-urls="https://127.0.0.1:$etcd_port" \
        --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
        --initial-cluster="aegis-local=http://127.0.0.1:$peer_port" \
        --cert-file="$p/etcd.crt" --key-file="$p/etcd.key" --trusted-ca-file="$p/ca.crt" --client-cert-auth=true \
        --log-level=warn >"$dir/etcd.log" 2>&1 </dev/null &
    echo $! >"$dir/etcd.pid"

    "$bin/kube-apiserver" --etcd-servers="https://127.0.0.1:$etcd_port" \
        --etcd-cafile="$p/ca.crt" --etcd-certfile="$p/etcd-client.crt" --etcd-keyfile="$p/etcd-client.key" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
        --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/ca.crt" \
        --cert-dir="$dir/apiserver-certs" --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$p/sa.key" --service-account-signing-key-file="$p/sa.key" \
        --service-cluster-ip-range=10.96.0.0/24 --endpoint-reconciler-type=none --v=1 \
        >"$dir/kube-apiserver.log" 2>&1 </dev/null &
    echo $! >"$dir/kube-apiserver.pid"

    cat >"$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: aegis-local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $p/ca.crt
users:
- name: admin
  user:
    client-certificate: $p/admin.crt
    client-key: $p/admin.key
contexts:
- name: admin@aegis-local
  context:
    cluster: aegis-local
    user: admin
current-context: admin@aegis-local
EOF
    chmod 0600 "$dir/admin.kubeconfig"
    local start=$SECONDS
    wait_for kube-apiserver "$(cat "$dir/kube-apiserver.pid")" "$dir/kube-apiserver.log" 60 readyz
    log "kube-apiserver ready on https://127.0.0.1:$port after $((SECONDS - start))s"

    "$bin/kube-controller-manager" --kubeconfig="$dir/admin.kubeconfig" \
        --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
        --use-service-account-credentials=true \
        --controllers=serviceaccount-controller,serviceaccount-token-controller,namespace-controller,clusterrole-aggregation-controller \
        --leader-elect=false --bind-address=127.0.0.1 --secure-port="$cm_port" --cert-dir="$dir/controller-manager-certs" \
        --v=1 >"$dir/kube-controller-manager.log" 2>&1 </dev/null &
    echo $! >"$dir/kube-controller-manager.pid"

    cat >"$dir/env" <<EOF
export KUBECONFIG='$dir/admin.kubeconfig'
export AEGIS_KUBE_SERVER='https://127.0.0.1:$port'
export AEGIS_KUBE_CA_FILE='$p/ca.crt'
EOF
    log "controller manager started; . $dir/env to use it; scripts/kube.sh stop $dir to stop"
    echo "$dir/env"
}

cmd_stop() {
    dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: kube.sh stop DIR"
    # The API server before etcd.
    stop_pid "$dir/kube-apiserver.pid"
    stop_pid "$dir/kube-controller-manager.pid"
    stop_pid "$dir/etcd.pid"
}

cmd_env() {
    dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: kube.sh env DIR"
    [[ -f "$dir/env" ]] || die "$dir/env not found: run 'scripts/kube.sh start $dir' first"
    cat "$dir/env"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    env) shift; cmd_env "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
