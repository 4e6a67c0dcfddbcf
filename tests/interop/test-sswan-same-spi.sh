#!/usr/bin/env bash
# xtask: beside the interop suites (namespaces wss-*)
# Two strongSwan peers choose the same SPI for the CHILD SAs' halves that
# wasmsec sends on (#16, SA scale). Each peer picks its inbound SPIs on its
# own, so on a PoP with thousands of peers two pick the same one now and
# then (at 100,000 SAs, a couple an hour under rekeys). Both strongSwans
# here may only allocate one SPI (charon.spi_min = spi_max), which forces
# it:
#
#   wss-pa 198.18.0.1 (10.0.1.1) --\
#                                   br0 198.18.0.2 wss-gw (wasmsec, 10.1.0.1)
#   wss-pb 198.18.0.3 (10.0.2.1) --/
#
#  1. Both peers bring their tunnel up; wasmsec holds two CHILD SAs with
#     the same outbound SPI, and no install failed.
#  2. Both peers' pings to 10.1.0.1 are answered: wasmsec seals the replies
#     of each under the one SPI and sends each to its own peer (capture).
#  3. Peer b's IKE SA is deleted: peer a's tunnel keeps working.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 180 bash "$0" "$@"
NS=(wss-gw wss-pa wss-pb)
GW=198.18.0.2
SPI=c0c0c0c1

topo_down
for ns in "${NS[@]}"; do ip netns add "$ns"; nsx "$ns" ip link set lo up; done
nsx wss-gw ip link add br0 type bridge
nsx wss-gw ip addr add $GW/24 dev br0
nsx wss-gw ip link set br0 up
nsx wss-gw ip addr add 10.1.0.1/32 dev lo
for p in a b; do
    wan=198.18.0.1 lan=10.0.1.1; [ $p = b ] && wan=198.18.0.3 lan=10.0.2.1
    ip link add name wss-w$p netns wss-gw type veth peer name wan0 netns wss-p$p
    nsx wss-gw ip link set wss-w$p master br0 up
    nsx wss-p$p ip addr add $wan/24 dev wan0
    nsx wss-p$p ip link set wan0 up
    # strongSwan's user-space ESP routes the tunnel from an address of its
    # own inside the local selector.
    nsx wss-p$p ip addr add $lan/32 dev lo
done

A=$STATE/pa B=$STATE/pb W=$STATE/gw
mkdir -p "$W"
(umask 077; printf '%s' "$PSK" >"$W/psk")
W_SOURCE=10.1.0.1 W_LISTEN=$GW W_SOCKET=$W/ctl.sock W_DIR=$W W_NAME=a W_LOCAL=$GW W_REMOTE=198.18.0.1 \
    W_LID=gw.spi.test W_RID=pa.spi.test W_IKE=aes256gcm16-prfsha256-x25519 W_ESP=aes256gcm16 \
    W_LTS='["10.1.0.0/24"]' W_RTS='["10.0.1.0/24"]' wasmsec_conf "$W/wasmsec.toml"
wasmsec_connection b $GW 198.18.0.3 gw.spi.test pb.spi.test '["10.1.0.0/24"]' '["10.0.2.0/24"]' none >>"$W/wasmsec.toml"
ip netns exec wss-gw "$WASMSEC_BIN" run --config "$W/wasmsec.toml" --stats-file "$W/stats.json" >"$W/wasmsec.log" 2>&1 </dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$W/ctl.sock" ] && break; sleep 0.1; done

SSWAN_CHARON_EXTRA="  spi_min = 0x$SPI
  spi_max = 0x$SPI" sswan_start wss-pa "$A" initiator 198.18.0.1 $GW pa.spi.test gw.spi.test 10.0.1.0/24 10.1.0.0/24
SSWAN_CHARON_EXTRA="  spi_min = 0x$SPI
  spi_max = 0x$SPI" sswan_start wss-pb "$B" initiator 198.18.0.3 $GW pb.spi.test gw.spi.test 10.0.2.0/24 10.1.0.0/24

ip netns exec wss-gw tcpdump -i br0 -n -U --immediate-mode -w "$STATE/wan.pcap" udp port 4500 2>"$STATE/cap.log" 9>&- &
CAP=$!; PIDS+=($CAP)
for _ in $(seq 50); do grep -q "listening on" "$STATE/cap.log" 2>/dev/null && break; sleep 0.1; done

for d in "$A" "$B"; do sswan "$d" --initiate --child s2s --timeout 20 >"$d/initiate.out" 2>&1 || true; done
check "peer a has its tunnel up" sswan_up "$A" 20
check "peer b has its tunnel up" sswan_up "$B" 20
# Each strongSwan chose the one SPI it may for its inbound SA.
for d in "$A" "$B"; do
    check "strongSwan in $(basename "$d") chose SPI $SPI" \
        sh -c "swanctl --list-sas --raw --uri unix://$d/charon.vici | grep -q 'spi-in=$SPI'"
done

sas() { "$WASMSEC_BIN" list-sas --json --socket "$W/ctl.sock"; }
read -r n same distinct < <(sas | python3 -c '
import json, sys
c = json.load(sys.stdin)["child_sas"]
print(len(c), sum(x["outbound_spi"] == sys.argv[1] for x in c), len({x["inbound_spi"] for x in c}))' "$SPI")
check "wasmsec holds 2 CHILD SAs ($n), both sending on SPI $SPI ($same), each with its own inbound SPI ($distinct)" \
    [ "$n" -eq 2 -a "$same" -eq 2 -a "$distinct" -eq 2 ]

# pings NS SOURCE: five pings from SOURCE to wasmsec's side, all answered.
pings() { nsx "$1" ping -n -c 5 -i 0.2 -W 2 -I "$2" 10.1.0.1 | grep -q " 0% packet loss"; }
check "peer a's pings through its tunnel are answered" pings wss-pa 10.0.1.1
check "peer b's pings through its tunnel are answered" pings wss-pb 10.0.2.1

failures=$(wasmsec_ctl "$W" status | python3 -c 'import json,sys; print(json.load(sys.stdin)["esp"]["sa_install_failures"])')
check "no SA install failed ($failures)" [ "$failures" -eq 0 ]

# The replies: ESP in UDP from wasmsec to each peer, all under the one SPI.
sleep 0.5; kill -INT $CAP 2>/dev/null || true; wait $CAP 2>/dev/null || true
to_a=$(tcpdump -nn -r "$STATE/wan.pcap" "src host $GW and dst host 198.18.0.1" 2>/dev/null | grep -c "spi=0x$SPI" || true)
to_b=$(tcpdump -nn -r "$STATE/wan.pcap" "src host $GW and dst host 198.18.0.3" 2>/dev/null | grep -c "spi=0x$SPI" || true)
other=$(tcpdump -nn -r "$STATE/wan.pcap" "src host $GW" 2>/dev/null | grep "ESP(spi=" | grep -vc "spi=0x$SPI" || true)
check "ESP to peer a ($to_a) and to peer b ($to_b) carries SPI $SPI, none another ($other)" \
    [ "$to_a" -ge 5 -a "$to_b" -ge 5 -a "$other" -eq 0 ]

# Peer b leaves: removing its CHILD SA's outbound half (the same SPI on
# the wire) leaves peer a's alone.
sswan "$B" --terminate --ike s2s --timeout 10 >"$B/terminate.out" 2>&1 || true
left() { [ "$(sas | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["child_sas"]))')" -eq 1 ]; }
wait_left() { for _ in $(seq 50); do left && return 0; sleep 0.2; done; return 1; }
check "after peer b's delete, wasmsec holds one CHILD SA" wait_left
check "peer a's pings are still answered" pings wss-pa 10.0.1.1
grep -q "already in use" "$W/wasmsec.log" && fail "an SPI was refused as in use: $(grep -m1 'already in use' "$W/wasmsec.log")"
finish
