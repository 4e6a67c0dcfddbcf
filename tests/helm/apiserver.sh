# Sourced by the Helm tests: a throwaway etcd (Debian etcd-server) and
# kube-apiserver on loopback, with a bearer-token kubeconfig. There is no
# scheduler, controller or kubelet: objects are validated, admitted and
# stored, never run.
APISERVER_PORT=16443 ETCD_PORT=22379 ETCD_PEER_PORT=22380

# apiserver_start STATE_DIR BINARY: sets KUBECONFIG; the caller's trap
# runs apiserver_stop.
apiserver_start() {
    local d=$1 bin=$2 token
    mkdir -p "$d/etcd" "$d/certs"
    if ss -Hltn | grep -qE ":($APISERVER_PORT|$ETCD_PORT|$ETCD_PEER_PORT) "; then
        echo "ports $APISERVER_PORT/$ETCD_PORT/$ETCD_PEER_PORT are in use"; return 1
    fi
    openssl genrsa -out "$d/certs/sa.key" 2048 2>/dev/null
    token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    echo "$token,ci-admin,ci-admin,system:masters" > "$d/tokens.csv"
    etcd --data-dir "$d/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        >"$d/etcd.log" 2>&1 &
    echo $! > "$d/etcd.pid"
    "$bin" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
        --secure-port=$APISERVER_PORT --insecure-port=0 --cert-dir="$d/certs" --token-auth-file="$d/tokens.csv" \
        --authorization-mode=RBAC --service-account-key-file="$d/certs/sa.key" \
        --service-account-signing-key-file="$d/certs/sa.key" --service-account-issuer=https://kubernetes.default.svc \
        --service-cluster-ip-range=10.96.0.0/24 --endpoint-reconciler-type=none \
        --enable-priority-and-fairness=false >"$d/apiserver.log" 2>&1 &
    echo $! > "$d/apiserver.pid"
    local mask; mask=$(umask); umask 077
    cat > "$d/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: ci, cluster: {server: "https://127.0.0.1:$APISERVER_PORT", insecure-skip-tls-verify: true}}]
users: [{name: ci, user: {token: $token}}]
contexts: [{name: ci, context: {cluster: ci, user: ci, namespace: default}}]
current-context: ci
KC
    umask "$mask"
    export KUBECONFIG=$d/kubeconfig
    local i
    for i in $(seq 1 90); do
        kill -0 "$(cat "$d/apiserver.pid")" 2>/dev/null || { echo "kube-apiserver exited"; tail -20 "$d/apiserver.log"; return 1; }
        if "$KUBECTL" get --raw=/readyz >/dev/null 2>&1; then echo "kube-apiserver ready after ${i}s"; return 0; fi
        sleep 1
    done
    echo "kube-apiserver not ready after 90 s"; tail -20 "$d/apiserver.log"; return 1
}

apiserver_stop() { # STATE_DIR: only the processes apiserver_start started
    local d=$1 p
    for p in apiserver etcd; do
        [ -f "$d/$p.pid" ] && kill "$(cat "$d/$p.pid")" 2>/dev/null
        rm -f "$d/$p.pid"
    done
    sleep 1
}
