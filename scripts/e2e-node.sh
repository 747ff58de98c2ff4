#!/usr/bin/env bash
# End to end on a real single-node Kubernetes (scripts/node.sh), as a user meets Aegis:
#   1. the node starts; the images (Aegis, SPIRE, busybox) are imported without a registry
#   2. SPIRE in the cluster: server (StatefulSet), agent (DaemonSet, k8s_psat node
#      attestation, k8s workload attestation against the kubelet), the SPIFFE CSI driver
#      on the node; the chart's identities registered with `spire-server entry create`
#      as docs/SPIRE.md documents for clusters without SPIRE's controller manager
#   3. `helm install` of charts/aegis: the Safe and the Sentinel Ready
#   4. examples/sidecar.yaml and examples/init-container.yaml read their secrets
#   5. `helm upgrade` turning k8s: secrets on; a k8s: secret becomes a Kubernetes Secret
#      that examples/k8s-secret-env.yaml's pod reads
#   6. the Safe's pod deleted: its StatefulSet brings it back with every secret
#   7. `helm uninstall`: nothing of the release is left
# Any failed step stops the run with "FAIL: <step>" and exit 1; the node is always
# stopped (scripts/node.sh stop), which fails if it leaves anything on the machine.
# Needs root. Set AEGIS_E2E_KEEP=1 to leave the node running for a look.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
NS=vsecm-system
TD=vsecm.com
t_start=$SECONDS

step() { echo "== e2e-node [$((SECONDS - t_start))s]: $*" >&2; }
fail() {
    echo "FAIL: $*" >&2
    diagnose >&2 || true
    exit 1
}
ok() { echo "ok: $*" >&2; }

diagnose() {
    echo "---- pods" && kubectl get pods -A -o wide 2>&1 | head -40
    echo "---- events" && kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -25
    local p
    for p in $(kubectl get pods -A --no-headers 2>/dev/null | awk '$4 != "Running" || $3 !~ /^([0-9]+)\/\1$/ {print $1 "/" $2}' | head -5); do
        echo "---- logs of $p" && kubectl -n "${p%%/*}" logs "${p#*/}" --all-containers --tail=20 2>&1
    done
}

[[ "$(id -u)" == 0 ]] || fail "the node needs root; run scripts/e2e-node.sh as root"

step "building (or reusing) helm, the node's binaries and the images"
helm_bin="${AEGIS_HELM_BIN:-$("$here/build-helm.sh" | tail -n1)/helm}"
[[ -x "$helm_bin" ]] || fail "helm not found ($helm_bin)"
helm() { "$helm_bin" "$@"; }
images="$("$here/build-images.sh" all | tail -n1)" || fail "scripts/build-images.sh all"
spire_version="$(basename "$("$here/build-spire.sh" --print-dir | xargs dirname)")"
busybox_ref="$(tar -xOf "$images/busybox.tar" index.json | sed -n 's/.*"io.containerd.image.name":"\([^"]*\)".*/\1/p')"
aegis_ref="$(tar -xOf "$images/aegis.tar" index.json | sed -n 's/.*"io.containerd.image.name":"\([^"]*\)".*/\1/p')"

cleanup() {
    local rc=$?
    if [[ "${AEGIS_E2E_KEEP:-0}" == 1 ]]; then
        echo "AEGIS_E2E_KEEP=1: the node is left running; scripts/node.sh stop stops it" >&2
    else
        "$here/node.sh" stop || { echo "FAIL: scripts/node.sh stop left something behind" >&2; rc=1; }
    fi
    exit "$rc"
}
trap cleanup EXIT

step "starting the node"
"$here/node.sh" start
eval "$("$here/node.sh" env)"
"$here/node.sh" import "$images/aegis.tar" "$images/spire.tar" "$images/busybox.tar"
ok "images imported: $(ctr images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

# --- SPIRE -------------------------------------------------------------------------
spire_manifests() {
    local agent_sockets
    agent_sockets="${AEGIS_NODE_DIR:-$cache/node/run}/spire-agent-sockets"
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: spire}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: spire-server, namespace: spire}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: spire-agent, namespace: spire}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: spire-bundle, namespace: spire}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: spire-server}
rules:
- {apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}
- {apiGroups: [""], resources: [pods, nodes], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: spire-server}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: spire-server}
subjects: [{kind: ServiceAccount, name: spire-server, namespace: spire}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: spire-bundle, namespace: spire}
rules:
- {apiGroups: [""], resources: [configmaps], resourceNames: [spire-bundle], verbs: [get, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: spire-bundle, namespace: spire}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: spire-bundle}
subjects: [{kind: ServiceAccount, name: spire-server, namespace: spire}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: spire-agent}
rules:
- {apiGroups: [""], resources: [pods, nodes], verbs: [get, list]}
- {apiGroups: [""], resources: [nodes/proxy], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: spire-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: spire-agent}
subjects: [{kind: ServiceAccount, name: spire-agent, namespace: spire}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: spire-server, namespace: spire}
data:
  server.conf: |
    server {
      bind_address = "0.0.0.0"
      bind_port = "8081"
      socket_path = "/tmp/spire-server/private/api.sock"
      trust_domain = "$TD"
      data_dir = "/run/spire/data"
      log_level = "INFO"
      ca_key_type = "ec-p256"
      default_x509_svid_ttl = "1h"
    }
    plugins {
      DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "/run/spire/data/datastore.sqlite3" } }
      NodeAttestor "k8s_psat" { plugin_data { clusters = { "aegis-node" = { service_account_allow_list = ["spire:spire-agent"] } } } }
      KeyManager "disk" { plugin_data { keys_path = "/run/spire/data/keys.json" } }
      Notifier "k8sbundle" { plugin_data { namespace = "spire" } }
    }
---
apiVersion: v1
kind: ConfigMap
metadata: {name: spire-agent, namespace: spire}
data:
  agent.conf: |
    agent {
      data_dir = "/run/spire"
      log_level = "INFO"
      server_address = "spire-server.spire.svc.cluster.local"
      server_port = "8081"
      socket_path = "/run/spire/agent-sockets/spire-agent.sock"
      trust_bundle_path = "/run/spire/bundle/bundle.crt"
      trust_domain = "$TD"
    }
    plugins {
      NodeAttestor "k8s_psat" { plugin_data { cluster = "aegis-node" } }
      KeyManager "memory" { plugin_data {} }
      # The kubelet serves on the node's IP with a self-signed certificate.
      WorkloadAttestor "k8s" { plugin_data { node_name_env = "MY_NODE_IP" skip_kubelet_verification = true } }
    }
---
apiVersion: v1
kind: Service
metadata: {name: spire-server, namespace: spire}
spec:
  selector: {app: spire-server}
  ports: [{name: grpc, port: 8081, targetPort: 8081}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: spire-server, namespace: spire}
spec:
  replicas: 1
  serviceName: spire-server
  selector: {matchLabels: {app: spire-server}}
  template:
    metadata: {labels: {app: spire-server}}
    spec:
      serviceAccountName: spire-server
      containers:
      - name: spire-server
        image: aegis.local/spire:$spire_version
        imagePullPolicy: Never
        command: [spire-server, run, -config, /run/spire/config/server.conf]
        ports: [{containerPort: 8081}]
        readinessProbe:
          exec: {command: [spire-server, healthcheck, -socketPath, /tmp/spire-server/private/api.sock]}
          periodSeconds: 2
        volumeMounts:
        - {name: config, mountPath: /run/spire/config, readOnly: true}
        - {name: data, mountPath: /run/spire/data}
      volumes:
      - {name: config, configMap: {name: spire-server}}
      - {name: data, emptyDir: {}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: spire-agent, namespace: spire}
spec:
  selector: {matchLabels: {app: spire-agent}}
  template:
    metadata: {labels: {app: spire-agent}}
    spec:
      serviceAccountName: spire-agent
      # Workload attestation maps a caller's PID to its pod: the node's PID namespace.
      hostPID: true
      containers:
      - name: spire-agent
        image: aegis.local/spire:$spire_version
        imagePullPolicy: Never
        command: [spire-agent, run, -config, /run/spire/config/agent.conf]
        env:
        - name: MY_NODE_IP
          valueFrom: {fieldRef: {fieldPath: status.hostIP}}
        readinessProbe:
          exec: {command: [spire-agent, healthcheck, -socketPath, /run/spire/agent-sockets/spire-agent.sock]}
          periodSeconds: 2
        volumeMounts:
        - {name: config, mountPath: /run/spire/config, readOnly: true}
        - {name: bundle, mountPath: /run/spire/bundle, readOnly: true}
        - {name: sockets, mountPath: /run/spire/agent-sockets}
        - {name: token, mountPath: /var/run/secrets/tokens}
      volumes:
      - {name: config, configMap: {name: spire-agent}}
      - {name: bundle, configMap: {name: spire-bundle}}
      # The SPIFFE CSI driver on the node mounts this directory into pods.
      - {name: sockets, hostPath: {path: "$agent_sockets", type: DirectoryOrCreate}}
      - name: token
        projected: {sources: [{serviceAccountToken: {path: spire-agent, expirationSeconds: 7200, audience: spire-server}}]}
EOF
}

step "SPIRE server and agent in the cluster"
spire_manifests | kubectl apply -f - >/dev/null
kubectl -n spire rollout status statefulset/spire-server --timeout=180s >/dev/null || fail "the SPIRE server did not become Ready"
kubectl -n spire rollout status daemonset/spire-agent --timeout=180s >/dev/null || fail "the SPIRE agent did not become Ready"
ok "SPIRE server and agent Ready"

# The chart's identities, registered as docs/SPIRE.md documents without the controller manager.
entry() {
    kubectl -n spire exec spire-server-0 -- spire-server entry create -socketPath /tmp/spire-server/private/api.sock "$@" >/dev/null ||
        fail "spire-server entry create $*"
}
entry -node -spiffeID "spiffe://$TD/k8s-nodes" -selector k8s_psat:cluster:aegis-node
register() { # NAME-IN-ID NAMESPACE SERVICEACCOUNT
    entry -parentID "spiffe://$TD/k8s-nodes" -spiffeID "spiffe://$TD/workload/$1/ns/$2/sa/$3/n/$1" \
        -selector "k8s:ns:$2" -selector "k8s:sa:$3"
}
register vsecm-safe "$NS" vsecm-safe
register vsecm-sentinel "$NS" vsecm-sentinel
register example default example
register example-init default example-init
ok "registration entries created"

# --- the chart ---------------------------------------------------------------------
# The Safe's data: a hostPath PersistentVolume (the node has no StorageClass).
pv_dir="${AEGIS_NODE_DIR:-$cache/node/run}/state/pv/aegis-safe"
mkdir -p "$pv_dir"
chown 65532:65532 "$pv_dir"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: aegis-safe-data}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$pv_dir", type: Directory}
EOF

step "helm install charts/aegis"
t=$SECONDS
helm install aegis "$repo/charts/aegis" -n "$NS" --create-namespace --set image.pullPolicy=Never \
    --set spire.clusterSPIFFEIDs.enabled=false --wait --timeout 5m >/dev/null || fail "helm install --wait"
kubectl -n "$NS" wait --for=condition=Ready pod -l app.kubernetes.io/component=safe --timeout=60s >/dev/null || fail "Safe not Ready"
kubectl -n "$NS" wait --for=condition=Ready pod -l app.kubernetes.io/component=sentinel --timeout=60s >/dev/null || fail "Sentinel not Ready"
ok "helm install: Safe and Sentinel Ready in $((SECONDS - t))s"

sentinel() { kubectl -n "$NS" exec deploy/vsecm-sentinel -- safe "$@"; }
sentinel -w example -s '{"username":"admin","password":"e2e-sidecar"}' >/dev/null || fail "safe -w example"
sentinel -w example-init -s '{"username":"admin","password":"e2e-init"}' >/dev/null || fail "safe -w example-init"
ok "secrets written through the Sentinel"

# An example as a user applies it, without its ClusterSPIFFEID (no controller manager:
# registered above) and with the locally built busybox.
example() {
    awk 'BEGIN { RS = "\n---\n"; ORS = "\n---\n" } !/kind: ClusterSPIFFEID/' "$repo/examples/$1" |
        sed "s#docker.io/library/busybox:1.37#$busybox_ref#; s#image: aegis:0.1.0#image: $aegis_ref#" |
        kubectl apply -f - >/dev/null || fail "kubectl apply examples/$1"
}
# until_eq WHAT TIMEOUT WANT CMD...: CMD's output becomes WANT within TIMEOUT seconds.
until_eq() {
    local what=$1 timeout=$2 want=$3 start=$SECONDS got=""
    shift 3
    until got="$("$@" 2>/dev/null)" && [[ "$got" == "$want" ]]; do
        ((SECONDS - start < timeout)) || fail "$what: expected '$want', got '$got'"
        sleep 1
    done
    ok "$what"
}

step "workloads from examples/ read their secrets"
example sidecar.yaml
example init-container.yaml
kubectl -n default rollout status deployment/example --timeout=180s >/dev/null || fail "examples/sidecar.yaml not Ready"
kubectl -n default rollout status deployment/example-init --timeout=180s >/dev/null || fail "examples/init-container.yaml not Ready"
until_eq "sidecar wrote the secret" 60 '{"username":"admin","password":"e2e-sidecar"}' \
    kubectl -n default exec deploy/example -c app -- cat /opt/vsecm/secrets.json
until_eq "init container wrote the secret" 60 '{"username":"admin","password":"e2e-init"}' \
    kubectl -n default exec deploy/example-init -c app -- cat /opt/vsecm/secrets.json
sentinel -w example -s '{"username":"admin","password":"e2e-sidecar-2"}' >/dev/null || fail "safe -w example (update)"
until_eq "sidecar followed the update" 60 '{"username":"admin","password":"e2e-sidecar-2"}' \
    kubectl -n default exec deploy/example -c app -- cat /opt/vsecm/secrets.json

step "helm upgrade: k8s: secrets on for namespace default"
helm upgrade aegis "$repo/charts/aegis" -n "$NS" --reuse-values --set k8sSecrets.enabled=true \
    --set 'k8sSecrets.namespaces={default}' --wait --timeout 5m >/dev/null || fail "helm upgrade --wait"
kubectl -n "$NS" rollout status statefulset/vsecm-safe --timeout=180s >/dev/null || fail "Safe not Ready after the upgrade"
sentinel -w k8s:example-db -n default -s '{"username":"app","password":"e2e-k8s"}' \
    -t '{"DB_USER":"{{.username}}","DB_PASS":"{{.password}}"}' >/dev/null || fail "safe -w k8s:example-db"
until_eq "k8s:example-db became the Secret default/example-db" 60 "app" \
    sh -c "kubectl -n default get secret example-db -o jsonpath='{.data.DB_USER}' | base64 -d"
example k8s-secret-env.yaml
kubectl -n default rollout status deployment/example-k8s --timeout=180s >/dev/null || fail "examples/k8s-secret-env.yaml not Ready"
until_eq "examples/k8s-secret-env.yaml's pod read the Secret" 60 "user=app" \
    kubectl -n default logs deploy/example-k8s --tail=1

step "the Safe's pod deleted: its StatefulSet brings it back with every secret"
before="$(sentinel -l 2>/dev/null | grep -oE '"name": *"[^"]+"' | sort | tr '\n' ' ')"
[[ "$before" == *example-init* && "$before" == *example-db* ]] || fail "safe -l before the restart lists: $before"
old_uid="$(kubectl -n "$NS" get pod vsecm-safe-0 -o jsonpath='{.metadata.uid}')"
kubectl -n "$NS" delete pod vsecm-safe-0 --wait=true --timeout=120s >/dev/null || fail "kubectl delete pod vsecm-safe-0"
until_eq "a new vsecm-safe-0 exists" 120 "new" \
    sh -c "u=\$(kubectl -n $NS get pod vsecm-safe-0 -o jsonpath='{.metadata.uid}') && [ -n \"\$u\" ] && [ \"\$u\" != '$old_uid' ] && echo new"
kubectl -n "$NS" wait --for=condition=Ready pod/vsecm-safe-0 --timeout=180s >/dev/null || fail "the new Safe pod not Ready"
until_eq "every secret back after the restart" 60 "$before" \
    sh -c "kubectl -n $NS exec deploy/vsecm-sentinel -- safe -l | grep -oE '\"name\": *\"[^\"]+\"' | sort | tr '\n' ' '"
sentinel -w example -s '{"username":"admin","password":"e2e-after-restart"}' >/dev/null || fail "safe -w after the restart"
until_eq "the sidecar follows the new Safe" 90 '{"username":"admin","password":"e2e-after-restart"}' \
    kubectl -n default exec deploy/example -c app -- cat /opt/vsecm/secrets.json

step "helm uninstall"
kubectl -n default delete deployment example example-init example-k8s --wait=true --timeout=120s >/dev/null || fail "deleting the examples"
helm uninstall aegis -n "$NS" --wait --timeout 3m >/dev/null || fail "helm uninstall --wait"
# helm waits for the objects it deleted, not for the pods their controllers remove.
kubectl -n "$NS" wait --for=delete pod -l app.kubernetes.io/instance=aegis --timeout=120s >/dev/null ||
    fail "the release's pods still exist 120 s after helm uninstall"
left="$(kubectl get all,serviceaccounts,roles,rolebindings,networkpolicies,poddisruptionbudgets,configmaps -n "$NS" \
    -l app.kubernetes.io/instance=aegis --no-headers 2>/dev/null)"
[[ -z "$left" ]] || fail "helm uninstall left: $left"
left="$(kubectl get clusterroles,clusterrolebindings -l app.kubernetes.io/instance=aegis --no-headers 2>/dev/null)"
[[ -z "$left" ]] || fail "helm uninstall left: $left"
ok "helm uninstall left nothing of the release (the Safe's PVC stays, as a StatefulSet's claims do)"
echo "PASS: e2e-node in $((SECONDS - t_start))s" >&2
