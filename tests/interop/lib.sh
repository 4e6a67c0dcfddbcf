# Shared helpers for wasmsec's own interop tests (sourced). Builds a
# namespace topology, runs strongSwan (charon with kernel-libipsec, so ESP
# is in user space through a TUN device) and wasmsec in it, and cleans up.
#
#   hosta 198.18.1.10 -- .1 gwa 198.18.0.1 == wan0 == 198.18.0.2 gwb .1 -- 198.18.2.10 hostb
#
# in namespaces $NSP-hosta, $NSP-gwa, ... ($NS_HOSTA, $NS_GWA, ...): the
# prefix is $WASMSEC_NS_PREFIX, by default the one below, so that xtask can
# run a suite beside another with a prefix of its own (xtask/src/suites.rs;
# nothing else in tests/interop/*lib.sh names a namespace).
#
# Everything lives in namespaces this file creates; nothing touches the
# root namespace's network or /etc.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$ROOT/tests/e2e/lib.sh"
source "$ROOT/tests/interop/wasmsec-conf.sh"
NSP=${WASMSEC_NS_PREFIX:-wsi}
NS_HOSTA=$NSP-hosta NS_GWA=$NSP-gwa NS_GWB=$NSP-gwb NS_HOSTB=$NSP-hostb NS_NAT=$NSP-nat
NS=("$NS_HOSTA" "$NS_GWA" "$NS_GWB" "$NS_HOSTB" "$NS_NAT")
WAN_A=198.18.0.1
WAN_B=198.18.0.2
LAN_A=198.18.1.0/24
LAN_B=198.18.2.0/24
HOST_A=198.18.1.10
HOST_B=198.18.2.10
ID_A=gwa.interop.test
ID_B=gwb.interop.test
PSK=${PSK:-wasmsec-interop-psk-$(date +%s)}
# Scripts re-exec themselves under `timeout` right after sourcing this file
# (WASMSEC_E2E_TIMEOUT unset): only the re-executed run needs a state dir,
# and only it reaches the EXIT trap that removes it.
STATE=
[ -n "${WASMSEC_E2E_TIMEOUT:-}" ] && STATE=$(mktemp -d /tmp/wasmsec-iop.XXXXXX)
PIDS=()

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

topo_down() {
    local ns pid
    for ns in "${NS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    sleep 0.3
    for ns in "${NS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    topo_down
    [ -n "$STATE" ] || return 0
    if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: state in $STATE"; else rm -rf "$STATE"; fi
}
trap cleanup EXIT

topo_up() {
    topo_down
    local ns i
    for ns in "${NS[@]}"; do ip netns add "$ns"; nsx "$ns" ip link set lo up; done
    ip link add name ${NSP}0a netns $NS_HOSTA type veth peer name ${NSP}0b netns $NS_GWA
    ip link add name ${NSP}1a netns $NS_GWA type veth peer name ${NSP}1b netns $NS_GWB
    ip link add name ${NSP}2a netns $NS_GWB type veth peer name ${NSP}2b netns $NS_HOSTB
    nsx $NS_HOSTA ip link set ${NSP}0a name eth0; nsx $NS_GWA ip link set ${NSP}0b name lan0
    nsx $NS_GWA ip link set ${NSP}1a name wan0;   nsx $NS_GWB ip link set ${NSP}1b name wan0
    nsx $NS_GWB ip link set ${NSP}2a name lan0;   nsx $NS_HOSTB ip link set ${NSP}2b name eth0
    nsx $NS_HOSTA ip addr add 198.18.1.10/24 dev eth0
    nsx $NS_GWA ip addr add 198.18.1.1/24 dev lan0
    nsx $NS_GWA ip addr add $WAN_A/24 dev wan0
    nsx $NS_GWB ip addr add $WAN_B/24 dev wan0
    nsx $NS_GWB ip addr add 198.18.2.1/24 dev lan0
    nsx $NS_HOSTB ip addr add 198.18.2.10/24 dev eth0
    for ns in "${NS[@]}"; do for i in $(nsx "$ns" ls /sys/class/net); do nsx "$ns" ip link set "$i" up; done; done
    nsx $NS_HOSTA ip route add default via 198.18.1.1
    nsx $NS_HOSTB ip route add default via 198.18.2.1
    for ns in $NS_GWA $NS_GWB; do
        nsx "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    done
}

# The same, but gwb sits behind a NAT router (nftables masquerade with
# random ports): gwb 198.19.0.2 -- 198.19.0.1 [nat] 198.18.0.3 == gwa.
NAT_OUT=198.18.0.3
WAN_B_NAT=198.19.0.2
topo_up_nat() {
    topo_up
    nsx $NS_GWA ip link del wan0
    ip link add name ${NSP}3a netns $NS_GWA type veth peer name ${NSP}3b netns $NS_NAT
    ip link add name ${NSP}4a netns $NS_NAT type veth peer name ${NSP}4b netns $NS_GWB
    nsx $NS_GWA ip link set ${NSP}3a name wan0; nsx $NS_NAT ip link set ${NSP}3b name out0
    nsx $NS_NAT ip link set ${NSP}4a name in0;  nsx $NS_GWB ip link set ${NSP}4b name wan0
    nsx $NS_GWA ip addr add $WAN_A/24 dev wan0
    nsx $NS_NAT ip addr add $NAT_OUT/24 dev out0
    nsx $NS_NAT ip addr add 198.19.0.1/24 dev in0
    nsx $NS_GWB ip addr add $WAN_B_NAT/24 dev wan0
    local x; for x in "$NS_GWA wan0" "$NS_NAT out0" "$NS_NAT in0" "$NS_GWB wan0"; do nsx ${x% *} ip link set ${x#* } up; done
    nsx $NS_GWB ip route add default via 198.19.0.1
    nsx $NS_NAT sysctl -qw net.ipv4.ip_forward=1
    nsx $NS_NAT nft -f - <<NFT
table ip nat {
  chain post { type nat hook postrouting priority 100; oifname "out0" masquerade random; }
}
NFT
}

# IPv6 inside the tunnel: the LANs' IPv6 halves (after topo_up).
LAN6_A=fd00:1::/64
LAN6_B=fd00:2::/64
HOST6_A=fd00:1::10
HOST6_B=fd00:2::10

# The IPv6 half of the LANs (no duplicate address detection: the
# addresses are usable at once), and forwarding on the gateways.
ipv6_lans() {
    nsx $NS_HOSTA ip -6 addr add $HOST6_A/64 dev eth0 nodad
    nsx $NS_GWA ip -6 addr add fd00:1::1/64 dev lan0 nodad
    nsx $NS_GWB ip -6 addr add fd00:2::1/64 dev lan0 nodad
    nsx $NS_HOSTB ip -6 addr add $HOST6_B/64 dev eth0 nodad
    nsx $NS_HOSTA ip -6 route add default via fd00:1::1
    nsx $NS_HOSTB ip -6 route add default via fd00:2::1
    local ns
    for ns in $NS_GWA $NS_GWB; do nsx "$ns" sysctl -qw net.ipv6.conf.all.forwarding=1; done
}

ping6_ok() { nsx "$1" ping -6 -n -c "${3:-5}" -i 0.2 -W 2 "$2" | grep -q " 0% packet loss"; }

# bring_up LABEL ROLE A B: with strongSwan's state in A and wasmsec's in B,
# the one whose ROLE (wasmsec's) is initiator initiates `s2s`; both must
# then hold the tunnel.
bring_up() {
    local label=$1 role=$2 a=$3 b=$4
    if [ "$role" = initiator ]; then
        wasmsec_ctl "$b" initiate s2s >/dev/null
    else
        sswan "$a" --initiate --child s2s --timeout 20 >"$a/initiate.out" 2>&1 || true
    fi
    check "$label: strongSwan has the tunnel up" sswan_up "$a" 20
    check "$label: wasmsec has the tunnel up" wasmsec_up "$b" 10
}

# cleanup_case: stop what a case started and remove its namespaces.
cleanup_case() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    PIDS=()
    topo_down
}

# decrypted_count PCAP ESP_SA FILTER: the packets tshark shows for FILTER in
# PCAP, decrypting ESP with the SAs of the file ESP_SA (wasmsec's
# `ike.esp_keylog` export, one Wireshark `esp_sa` table row a line).
decrypted_count() {
    local args=(-o esp.enable_encryption_decode:TRUE) line
    if [ -s "$2" ]; then
        while IFS= read -r line; do args+=(-o "uat:esp_sa:$line"); done <"$2"
    fi
    tshark -r "$1" "${args[@]}" -Y "$3" 2>/dev/null | wc -l
}

# capture NS FILE: tcpdump on wan0 (its PID in CAP_PID).
capture() {
    ip netns exec "$1" tcpdump -i wan0 -n -U --immediate-mode -w "$2" 2>"$2.log" 9>&- &
    CAP_PID=$!
    PIDS+=($CAP_PID)
    local i; for i in $(seq 50); do grep -q "listening on" "$2.log" 2>/dev/null && break; sleep 0.1; done
}
capture_stop() { sleep 0.5; kill -INT "$CAP_PID" 2>/dev/null || true; wait "$CAP_PID" 2>/dev/null || true; }

# ---- strongSwan --------------------------------------------------------------

# sswan_start NS DIR ROLE(initiator|responder) LOCAL_ADDR REMOTE_ADDR LID RID LTS RTS [IKE_PROPOSALS ESP_PROPOSALS]
# SSWAN_CONN_EXTRA, SSWAN_CHILD_EXTRA: more swanctl.conf lines for the connection and its child;
# SSWAN_CHARON_EXTRA: more strongswan.conf lines in the charon section.
sswan_start() {
    local ns=$1 d=$2 role=$3 laddr=$4 raddr=$5 lid=$6 rid=$7 lts=$8 rts=$9
    local ike=${10:-aes256gcm16-prfsha256-x25519} esp=${11:-aes256gcm16}
    mkdir -p "$d/run" "$d/swanctl"
    [ "$role" = responder ] && raddr=%any
    cat >"$d/strongswan.conf" <<CONF
charon {
  load_modular = no
  load = $(cat "$ROOT/tests/interop/strongswan-plugins")
  install_routes = yes
  retransmit_tries = 3
  retransmit_timeout = 2.0
  make_before_break = yes
${SSWAN_CHARON_EXTRA:-}
  syslog { }
  filelog { main { path = $d/charon.log
    append = no
    flush_line = yes
    default = 1
    ike = ${SSWAN_LOG_IKE:-2} } }
  plugins { vici { socket = unix://$d/charon.vici } }
}
CONF
    cat >"$d/swanctl/swanctl.conf" <<CONF
connections {
  s2s {
    version = 2
    local_addrs = $laddr
    remote_addrs = $raddr
    proposals = $ike
    mobike = no
${SSWAN_CONN_EXTRA:-}
    local { auth = psk
      id = $lid }
    remote { auth = psk
      id = $rid }
    children { s2s {
      local_ts = $lts
      remote_ts = $rts
      esp_proposals = $esp
${SSWAN_CHILD_EXTRA:-}
      start_action = none } }
  }
}
secrets { ike-1 { id-1 = $lid
  id-2 = $rid
  secret = "$PSK" } }
CONF
    ip netns exec "$ns" sh -c 'mount --bind "$1" /run && exec env STRONGSWAN_CONF="$2" /usr/lib/ipsec/charon' \
        sh "$d/run" "$d/strongswan.conf" >"$d/charon.stdout" 2>&1 9>&- &
    PIDS+=($!)
    local i; for i in $(seq 100); do [ -S "$d/charon.vici" ] && break; sleep 0.1; done
    [ -S "$d/charon.vici" ] || { tail "$d/charon.stdout" "$d/charon.log"; return 1; }
    swanctl --load-all --noprompt --file "$d/swanctl/swanctl.conf" --uri "unix://$d/charon.vici" >"$d/load.out" 2>&1
}

sswan() { local d=$1 cmd=$2; shift 2; swanctl "$cmd" --uri "unix://$d/charon.vici" "$@"; }

sswan_up() { # DIR TIMEOUT
    local i; for i in $(seq $(($2 * 5))); do
        sswan "$1" --list-sas --raw 2>/dev/null | grep -q 'state=ESTABLISHED.*state=INSTALLED' && return 0
        sleep 0.2
    done
    return 1
}

# ---- wasmsec -------------------------------------------------------------------

# wasmsec_start NS DIR LOCAL_ADDR REMOTE_ADDR LID RID LTS RTS LAN_GW [START_ACTION] [IKE] [ESP]
wasmsec_start() {
    local ns=$1 d=$2 laddr=$3 raddr=$4 lid=$5 rid=$6 lts=$7 rts=$8 gw=$9
    local start=${10:-none} ike=${11:-aes256gcm16-prfsha256-x25519} esp=${12:-aes256gcm16}
    mkdir -p "$d"
    (umask 077; printf '%s' "$PSK" >"$d/psk")
    # 0.0.0.0: listen on every address, the connection with any local one.
    W_SOURCE=$gw W_LISTEN=$laddr W_SOCKET=$d/ctl.sock W_DIR=$d W_LOCAL=${laddr/#0.0.0.0/} W_REMOTE=$raddr \
        W_LID=$lid W_RID=$rid W_IKE=$ike W_ESP=$esp W_LTS="[\"$lts\"]" W_RTS="[\"$rts\"]" W_START=$start \
        W_CONTROL_EXTRA=${WASMSEC_CONTROL_EXTRA:-} W_CONN_EXTRA=${WASMSEC_CONN_EXTRA:-} \
        W_NETWORK_EXTRA=${WASMSEC_NETWORK_EXTRA:-} \
        W_CHILD_EXTRA=${WASMSEC_CHILD_EXTRA:-} W_IKE_EXTRA=${WASMSEC_IKE_EXTRA:-} wasmsec_conf "$d/wasmsec.toml"
    # More [[connection]] sections after the first (benchmarks at scale).
    if [ -n "${WASMSEC_MORE_CONNECTIONS:-}" ]; then cat "$WASMSEC_MORE_CONNECTIONS" >>"$d/wasmsec.toml"; fi
    ip netns exec "$ns" "$WASMSEC_BIN" run --config "$d/wasmsec.toml" --stats-file "$d/stats.json" >"$d/wasmsec.log" 2>&1 </dev/null &
    PIDS+=($!)
    echo $! >"$d/pid"
    local i; for i in $(seq 100); do [ -S "$d/ctl.sock" ] && return 0; sleep 0.1; done
    cat "$d/wasmsec.log"; return 1
}

wasmsec_ctl() { local d=$1; shift; "$WASMSEC_BIN" ctl --socket "$d/ctl.sock" "$@"; }

wasmsec_up() { # DIR TIMEOUT
    local i; for i in $(seq $(($2 * 5))); do
        wasmsec_ctl "$1" status 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["child_sas"] else 1)' 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# The handshake load generator (tests/ikeload) in gwa: its initiators
# use the addresses of IKELOAD_SOURCES (a local route there, one address
# each) with identities iN.IKELOAD_ID and ask for IKELOAD_TS <-> LAN_B;
# gwb routes the sources back. After topo_up.
IKELOAD_SOURCES=198.19.0.0/18
IKELOAD_ID=load.bench.test
IKELOAD_TS=10.98.0.0/16
ikeload_topology() {
    nsx $NS_GWA ip route add local $IKELOAD_SOURCES dev lo
    nsx $NS_GWB ip route add $IKELOAD_SOURCES via $WAN_A
    (umask 077; printf '%s' "$PSK" >"$STATE/psk")
}
# ikeload_run LABEL PID ARGS...: one generator run against the responder
# on WAN_B (process PID, for its CPU time); its report line on stdout, its
# messages in $STATE/LABEL.err. Fails when the generator completed nothing.
ikeload_run() {
    local label=$1 pid=$2; shift 2
    nsx $NS_GWA "${IKELOAD:-$ROOT/target/release/wasmsec-ikeload}" --psk-file "$STATE/psk" \
        --server $WAN_B --sources $IKELOAD_SOURCES --id $IKELOAD_ID --remote-id $ID_B \
        --local-ts $IKELOAD_TS --remote-ts $LAN_B --responder-pid "$pid" --label "$label" "$@" \
        2>"$STATE/$label.err"
}

ping_ok() { nsx "$1" ping -n -c "${3:-5}" -i 0.2 -W 2 "$2" | grep -q " 0% packet loss"; }

# count PCAP FILTER
count() { tcpdump -nn -r "$1" "$2" 2>/dev/null | wc -l; }
