#!/usr/bin/env bash
# A real single-node Kubernetes (v1.37.2) on this machine, to install the chart on and
# run pods: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (TLS and
# RBAC everywhere, a throwaway CA), containerd 2.x with runc, a kubelet, CNI bridge
# networking, kube-proxy (iptables) for Services, CoreDNS for cluster DNS, and the
# SPIFFE CSI driver on the node (registered with the kubelet) for SPIRE's agent socket.
# No registry: images are OCI archives imported with ctr (scripts/build-images.sh);
# pods use them with imagePullPolicy Never/IfNotPresent. Needs root.
#
#   scripts/node.sh start          start; prints the time to a Ready node and DNS
#   scripts/node.sh env            prints "export KUBECONFIG=... PATH=..." (kubectl, ctr)
#   scripts/node.sh import TAR...  imports OCI archives into the node's containerd
#   scripts/node.sh stop           stops everything and removes what the node left on the
#                                  machine: pods, mounts, network namespaces, the bridge,
#                                  iptables chains, cgroups, kernel settings it changed
#
# Binaries: scripts/build-node.sh and scripts/build-kube.sh (cached under
# ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}); runc, the CNI plugins, iptables and conntrack are
# Debian packages, installed with apt-get when missing. State, logs and sockets:
# AEGIS_NODE_DIR (default ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/node/run), wiped by start.
# Addresses: the bridge aegis0 carries 10.244.0.1 (node IP, API server on :26443, pod
# gateway); pods 10.244.0.0/24; Services 10.96.0.0/24 (DNS 10.96.0.10). Pod traffic
# towards the machine's external interface is dropped: nothing leaves the machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
PROC_NAME=node.sh
# shellcheck source=lib/proc.sh
source "$here/lib/proc.sh"

cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
K="${AEGIS_NODE_DIR:-$cache/node/run}"
NODE=aegis-node
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/24
DNS_IP=10.96.0.10
API_PORT=26443
BRIDGE=aegis0
S=$K/state
R=$K/run
L=$K/logs
CTRSOCK=$R/containerd.sock
FW_COMMENT="aegis-node: keep pod traffic on this machine"
DEB_PACKAGES="runc containernetworking-plugins iptables conntrack"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

need_root() { [[ "$(id -u)" == 0 ]] || die "a node needs root (kubelet, containerd, iptables, mounts); run as root"; }

# Debian packages the node runs: runc (runtime), CNI bridge/host-local/portmap/loopback,
# iptables (kube-proxy, kubelet), conntrack (kube-proxy's stale UDP entries).
need_packages() {
    local missing=() p
    for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing packages: ${missing[*]}; install them"
    log "installing Debian packages: ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed; install them"
}

bins() {
    NB="$("$here/build-node.sh" | tail -n1)" || die "scripts/build-node.sh failed"
    KB="${AEGIS_KUBE_BIN_DIR:-$("$here/build-kube.sh" | tail -n1)}" || die "scripts/build-kube.sh failed"
}

issue() { # NAME SUBJECT [SANs]
    local n=$1 subj=$2 san=${3:-} ext=$S/pki/$1.ext
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [[ -n "$san" ]]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$san"
        else echo "extendedKeyUsage=clientAuth"; fi
    } >"$ext"
    openssl ecparam -name prime256v1 -genkey -noout -out "$S/pki/$n.key" 2>/dev/null
    openssl req -new -key "$S/pki/$n.key" -subj "$subj" -out "$S/pki/$n.csr" 2>/dev/null
    openssl x509 -req -in "$S/pki/$n.csr" -CA "$S/pki/ca.crt" -CAkey "$S/pki/ca.key" -CAcreateserial \
        -days 30 -extfile "$ext" -out "$S/pki/$n.crt" 2>/dev/null
}

kubeconfig() { # NAME: $S/NAME.kubeconfig with the client certificate NAME
    cat >"$S/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: aegis-node
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$S/pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$S/pki/$1.crt", client-key: "$S/pki/$1.key"}
contexts:
- name: $1@aegis-node
  context: {cluster: aegis-node, user: $1}
current-context: $1@aegis-node
EOF
    chmod 600 "$S/$1.kubeconfig"
}

pki() {
    mkdir -p "$S/pki"
    chmod 700 "$S/pki"
    openssl ecparam -name prime256v1 -genkey -noout -out "$S/pki/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$S/pki/ca.key" -subj "/CN=aegis-node-ca" -days 30 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$S/pki/ca.crt" 2>/dev/null
    issue etcd "/CN=etcd" "IP:127.0.0.1"
    issue apiserver "/CN=kube-apiserver" "IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue etcd-client "/CN=kube-apiserver-etcd-client"
    issue apiserver-kubelet-client "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client"
    issue admin "/O=system:masters/CN=aegis-node-admin"
    issue controller-manager "/CN=system:kube-controller-manager"
    issue scheduler "/CN=system:kube-scheduler"
    issue proxy "/CN=system:kube-proxy"
    issue kubelet "/O=system:nodes/CN=system:node:$NODE"
    openssl ecparam -name prime256v1 -genkey -noout -out "$S/pki/sa.key" 2>/dev/null
    local n
    for n in admin controller-manager scheduler proxy kubelet; do kubeconfig $n; done
}

bg() { # NAME CMD...: in the background, log to $L/NAME.log, pid to $R/NAME.pid
    local n=$1
    shift
    nohup "$@" >"$L/$n.log" 2>&1 </dev/null &
    echo $! >"$R/$n.pid"
}

kc() { "$NB/kubectl" --kubeconfig "$S/admin.kubeconfig" "$@"; }
ctr_() { "$NB/ctr" --address "$CTRSOCK" -n k8s.io "$@"; }

host_net() {
    # The bridge exists before the API server: its address is the node IP, the API
    # server's advertise address (the "kubernetes" Service's endpoint for pods).
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local ext
    ext="$(ip route show default 2>/dev/null | awk '{print $5; exit}')"
    echo "$ext" >"$K/etc/external-interface"
    if [[ -n "$ext" ]] && ! iptables -C FORWARD -s 10.244.0.0/16 -o "$ext" -m comment --comment "$FW_COMMENT" -j DROP 2>/dev/null; then
        iptables -I FORWARD 1 -s 10.244.0.0/16 -o "$ext" -m comment --comment "$FW_COMMENT" -j DROP
    fi
    # Pod -> ClusterIP -> pod on the same bridge goes through kube-proxy's rules.
    modprobe br_netfilter 2>/dev/null || true
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.ipv4.ip_forward=1
    mkdir -p "$K/cni/net.d" "$K/cni/ipam"
    cat >"$K/cni/net.d/10-aegis-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "aegis-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$K/cni/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
    # The kubelet's resolv.conf for pods with dnsPolicy Default (CoreDNS itself):
    # no upstream, so no lookup ever leaves the machine.
    echo "nameserver 127.0.0.1" >"$K/etc/pod-resolv.conf"
}

write_configs() {
    cat >"$K/etc/containerd.toml" <<EOF
version = 3
root = "$K/containerd/root"
state = "$K/containerd/state"
[grpc]
  address = "$CTRSOCK"
[ttrpc]
  address = "$R/containerd-ttrpc.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "aegis.local/pause:latest"
[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE on some machines: never ask runc for an oom_score_adj below containerd's.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$K/cni/net.d"
    max_conf_num = 1
EOF
    local cgv1=false
    [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]] || cgv1=true
    cat >"$K/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# A cgroup v1 host: kubelet >= 1.35 refuses it unless this is false.
failCgroupV1: $([[ $cgv1 == true ]] && echo false || echo true)
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRSOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$S/pki/ca.crt"}
authorization: {mode: Webhook}
podLogsDir: "$S/pod-logs"
resolvConf: "$K/etc/pod-resolv.conf"
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
# Without CAP_SYS_RESOURCE a negative oom_score_adj cannot be set.
oomScoreAdj: 0
# Images cannot be pulled again: never garbage-collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
failSwapOn: false
serializeImagePulls: false
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
EOF
    cat >"$K/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$S/proxy.kubeconfig"}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:20256
metricsBindAddress: 127.0.0.1:20249
nodePortAddresses: ["$NODE_IP/32"]
oomScoreAdj: 0
iptables: {localhostNodePorts: false, masqueradeAll: false}
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# The kernel settings the kubelet and this script change, restored by stop.
save_sysctls() {
    [[ -f "$K/etc/sysctl.saved" ]] && return 0
    sysctl vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys \
        kernel.keys.root_maxbytes net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables 2>/dev/null >"$K/etc/sysctl.saved.tmp" || true
    mv "$K/etc/sysctl.saved.tmp" "$K/etc/sysctl.saved"
}

# CoreDNS for cluster.local names only (no forwarder: nothing resolves off the machine).
coredns_manifest() {
    cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "aegis-node:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "aegis-node:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "aegis-node:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health 127.0.0.1:8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      # Port 53 as a non-root user without file capabilities (the image has none).
      securityContext:
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
      containers:
      - name: coredns
        image: aegis.local/coredns:latest
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: csi.spiffe.io}
spec: {attachRequired: false, podInfoOnMount: true, fsGroupPolicy: None, volumeLifecycleModes: [Ephemeral]}
EOF
}

until_ok() { # WHAT TIMEOUT CMD...
    local what=$1 t=$2 start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - start < t)) || die "$what not ready after ${t}s (logs: $L)"
        sleep 0.3
    done
    log "$what ready after $((SECONDS - start))s"
}

running() { [[ -f "$R/$1.pid" ]] && kill -0 "$(cat "$R/$1.pid")" 2>/dev/null; }

cmd_import() {
    [[ -S "$CTRSOCK" ]] || die "the node is not running (scripts/node.sh start)"
    NB="$("$here/build-node.sh" --print-dir)"
    local f
    for f in "$@"; do
        [[ -f "$f" ]] || die "image archive $f not found (scripts/build-images.sh builds them)"
        ctr_ images import "$f" >/dev/null 2>"$L/ctr-import.log" || { cat "$L/ctr-import.log" >&2; die "ctr images import $f failed"; }
    done
}

cmd_start() {
    need_root
    if running kube-apiserver; then die "a node is already running (scripts/node.sh stop)"; fi
    ! grep -q " $S/" /proc/self/mountinfo || die "mounts are left under $S: run scripts/node.sh stop first"
    need_packages
    command -v openssl >/dev/null || die "openssl is needed for the node's certificates; install it"
    bins
    local images
    images="$("$here/build-images.sh" node | tail -n1)" || die "scripts/build-images.sh node failed"
    local t0=$SECONDS
    rm -rf "$S" "$K/cni" "$K/containerd/state"
    mkdir -p "$K/etc" "$R" "$L" "$S"
    save_sysctls
    pki
    host_net
    write_configs

    # containerd starts its shim from PATH: this build's, not another containerd's.
    bg containerd env PATH="$NB:$PATH" "$NB/containerd" --config "$K/etc/containerd.toml"
    bg etcd "$KB/etcd" --name=aegis-node --data-dir="$S/etcd" \
        --listen-client-urls=https://127.0.0.1:22379 --advertise-client-urls=https://127.0.0.1:22379 \
        --listen-peer-urls=http://127.0.0.1:22380 --initial-advertise-peer-urls=http://127.0.0.1:22380 \
        --initial-cluster=aegis-node=http://127.0.0.1:22380 --listen-metrics-urls=http://127.0.0.1:22381 \
        --cert-file="$S/pki/etcd.crt" --key-file="$S/pki/etcd.key" --trusted-ca-file="$S/pki/ca.crt" \
        --client-cert-auth=true --log-level=warn
    bg kube-apiserver "$KB/kube-apiserver" --etcd-servers=https://127.0.0.1:22379 \
        --etcd-cafile="$S/pki/ca.crt" --etcd-certfile="$S/pki/etcd-client.crt" --etcd-keyfile="$S/pki/etcd-client.key" \
        --bind-address=$NODE_IP --advertise-address=$NODE_IP --secure-port=$API_PORT \
        --tls-cert-file="$S/pki/apiserver.crt" --tls-private-key-file="$S/pki/apiserver.key" \
        --client-ca-file="$S/pki/ca.crt" --cert-dir="$S/apiserver-certs" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --kubelet-client-certificate="$S/pki/apiserver-kubelet-client.crt" --kubelet-client-key="$S/pki/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$S/pki/sa.key" --service-account-signing-key-file="$S/pki/sa.key" \
        --service-cluster-ip-range=$SVC_CIDR --allow-privileged=true --v=1
    until_ok kube-apiserver 120 kc get --raw /readyz
    # The API server's client certificate for kubelets (logs, exec) may use them.
    kc create clusterrolebinding aegis-node:apiserver-kubelet --clusterrole=system:kubelet-api-admin \
        --group=kubeadm:cluster-admins >/dev/null
    bg kube-controller-manager "$KB/kube-controller-manager" --kubeconfig="$S/controller-manager.kubeconfig" \
        --service-account-private-key-file="$S/pki/sa.key" --root-ca-file="$S/pki/ca.crt" \
        --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1 \
        --cert-dir="$S/controller-manager-certs" --secure-port=20257 --v=1
    bg kube-scheduler "$NB/kube-scheduler" --kubeconfig="$S/scheduler.kubeconfig" --leader-elect=false \
        --bind-address=127.0.0.1 --secure-port=20259 --v=1
    until_ok containerd 60 ctr_ version
    local f
    cmd_import "$images"/pause.tar "$images"/coredns.tar
    mkdir -p "$S/kubelet/plugins/csi.spiffe.io" "$S/kubelet/plugins_registry" "$S/pod-logs" "$K/spire-agent-sockets"
    bg kubelet "$NB/kubelet" --config="$K/etc/kubelet.yaml" --kubeconfig="$S/kubelet.kubeconfig" \
        --root-dir="$S/kubelet" --cert-dir="$S/kubelet/pki" --hostname-override=$NODE --node-ip=$NODE_IP --v=1
    bg kube-proxy "$NB/kube-proxy" --config="$K/etc/kube-proxy.yaml" --v=1
    # The SPIFFE CSI driver on the node: it mounts SPIRE's agent socket directory (a
    # hostPath of the agent's DaemonSet, $K/spire-agent-sockets) into pods that ask.
    bg spiffe-csi-driver "$NB/spiffe-csi-driver" -node-id "$NODE" \
        -csi-socket-path "$S/kubelet/plugins/csi.spiffe.io/csi.sock" -workload-api-socket-dir "$K/spire-agent-sockets"
    bg node-registrar "$NB/node-registrar" -name csi.spiffe.io -csi-socket "$S/kubelet/plugins/csi.spiffe.io/csi.sock" \
        -registry-dir "$S/kubelet/plugins_registry"
    until_ok "node $NODE Ready" 180 sh -c "'$NB/kubectl' --kubeconfig '$S/admin.kubeconfig' get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
    until_ok "default ServiceAccount" 60 kc -n default get serviceaccount default
    coredns_manifest | kc apply -f - >/dev/null
    until_ok "CSI driver csi.spiffe.io registered" 60 sh -c "'$NB/kubectl' --kubeconfig '$S/admin.kubeconfig' get csinode $NODE -o jsonpath='{.spec.drivers[*].name}' | grep -qw csi.spiffe.io"
    kc -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null || die "CoreDNS did not become available (kubectl -n kube-system describe pods)"
    log "node up in $((SECONDS - t0))s; $(cmd_env)"
}

cmd_env() {
    NB="$("$here/build-node.sh" --print-dir)"
    echo "export KUBECONFIG='$S/admin.kubeconfig' PATH='$NB:'\"\$PATH\" CONTAINERD_ADDRESS='$CTRSOCK' CONTAINERD_NAMESPACE=k8s.io"
}

# Containers the node's containerd runs: killed and deleted (the kubelet is stopped first).
stop_containers() {
    [[ -S "$CTRSOCK" && -x "$NB/ctr" ]] || return 0
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ tasks ls -q 2>/dev/null); do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            ctr_ tasks delete -f "$c" >/dev/null 2>&1 && break
            sleep 0.3
        done
    done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
}

# iptables chains kube-proxy and the kubelet made (KUBE-*), and those of CNI (CNI-*).
clean_iptables() {
    local ipt t r c ext
    ext="$(cat "$K/etc/external-interface" 2>/dev/null || true)"
    while [[ -n "$ext" ]] && iptables -D FORWARD -s 10.244.0.0/16 -o "$ext" -m comment --comment "$FW_COMMENT" -j DROP 2>/dev/null; do :; done
    for ipt in iptables ip6tables; do
        command -v $ipt >/dev/null || continue
        for t in filter nat mangle raw; do
            { $ipt -t $t -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)-' || true; } |
                { grep -vE '^-A (KUBE|CNI)-' || true; } | sed 's/^-A/-D/' | while read -r r; do eval "$ipt -t $t $r" 2>/dev/null || true; done
            for c in $($ipt -t $t -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/{print $2}'); do $ipt -t $t -F "$c" 2>/dev/null || true; done
            for c in $($ipt -t $t -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/{print $2}'); do $ipt -t $t -X "$c" 2>/dev/null || true; done
        done
    done
}

cmd_stop() {
    need_root
    local t0=$SECONDS m p
    NB="$("$here/build-node.sh" --print-dir)"
    for p in node-registrar spiffe-csi-driver kube-proxy kubelet kube-scheduler kube-controller-manager; do stop_pid "$R/$p.pid"; done
    stop_containers
    stop_pid "$R/kube-apiserver.pid"
    stop_pid "$R/etcd.pid"
    stop_pid "$R/containerd.pid"
    # Shims whose containerd is gone (their containers were deleted above).
    for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRSOCK" || true); do kill -KILL "$p" 2>/dev/null || true; done
    # Mounts under the node's directory (deepest first), pod network namespaces, the bridge.
    for m in $(awk -v k="$K/" 'index($5, k) == 1 {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null || true; done
    for m in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns del "$m" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    clean_iptables
    # The kubelet's cgroups (cgroupfs driver), deepest first.
    for m in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [[ -d "$m" ]] && { find "$m" -depth -type d -exec rmdir {} \; 2>/dev/null || true; }
    done
    if [[ -f "$K/etc/sysctl.saved" ]]; then
        sed 's/ = /=/' "$K/etc/sysctl.saved" | while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done
        rm -f "$K/etc/sysctl.saved"
    fi
    rm -rf "$K/cni/ipam" "$K/containerd/state" "$K/spire-agent-sockets"
    rm -f "$R"/*.sock
    # Paths the kubelet, containerd and libcni use whatever their root directories are.
    find /var/log/containers -maxdepth 1 -lname "$K/*" -delete 2>/dev/null || true
    find /var/lib/cni/results -maxdepth 1 \( -name 'aegis-node-*' -o -name 'cni-loopback-*' \) -delete 2>/dev/null || true
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    rmdir /var/log/containers /var/lib/cni/results /var/lib/cni /var/lib/kubelet/device-plugins /var/lib/kubelet \
        /run/containerd/fifo /run/containerd/s /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd 2>/dev/null || true
    # /run/netns: iproute2 and containerd bind-mount it onto itself; undo that once empty.
    if [[ -d /run/netns && -z "$(ls -A /run/netns)" ]]; then
        while mountpoint -q /run/netns; do umount /run/netns || break; done
        rmdir /run/netns 2>/dev/null || true
    fi
    leftovers
    log "stopped in $((SECONDS - t0))s"
}

# Fails loudly if stop left anything behind.
leftovers() {
    local left=()
    grep -q " $K/" /proc/self/mountinfo && left+=("mounts under $K")
    ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
    [[ -n "$(ip netns list 2>/dev/null | awk '/^cni-/')" ]] && left+=("network namespaces cni-*")
    iptables-save 2>/dev/null | grep -qE 'KUBE-|CNI-|aegis-node' && left+=("iptables rules")
    [[ -n "$(ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null)" ]] && left+=("kubepods cgroups")
    pgrep -f "$K/|$CTRSOCK" >/dev/null && left+=("processes: $(pgrep -f "$K/|$CTRSOCK" | tr '\n' ' ')")
    ((${#left[@]} == 0)) || die "stop left: ${left[*]}"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    import) shift; cmd_import "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
