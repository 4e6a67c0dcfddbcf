#!/usr/bin/env bash
# Two wasmsec branch gateways, B and C, behind one NAT (one outside
# address, as branches behind a carrier's NAT are), each with its own
# identity and LAN, against gateway A, whose one connection takes any peer
# address and identity. Both tunnels come up and carry traffic: the second
# peer's INITIAL_CONTACT does not replace the first one's IKE SA (RFC 7296
# section 2.4 speaks of the SAs between the authenticated identities).
# Then B is killed with SIGKILL and started again: its INITIAL_CONTACT
# replaces its own stale IKE SA at A and leaves C's alone.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 180 bash "$0" "$@"
NS+=(wsi-gwc)
WAN_C=198.19.1.2
LAN_C=198.18.3.0/24
ID_C=gwc.interop.test

topo_up_nat   # makes wsi-gwc too (in NS), unconnected
# C: a second gateway behind the same NAT, its LAN one address on lo.
ip link add name wsi5a netns wsi-nat type veth peer name wsi5b netns wsi-gwc
nsx wsi-nat ip link set wsi5a name in1; nsx wsi-gwc ip link set wsi5b name wan0
nsx wsi-nat ip addr add 198.19.1.1/24 dev in1
nsx wsi-gwc ip addr add $WAN_C/24 dev wan0
nsx wsi-gwc ip addr add 198.18.3.1/32 dev lo
for i in "wsi-nat in1" "wsi-gwc wan0"; do nsx ${i% *} ip link set ${i#* } up; done
nsx wsi-gwc ip route add default via 198.19.1.1

A=$STATE/A B=$STATE/B C=$STATE/C
PEER_EXTRA=$'keepalive = 2\ndpd_delay = 2'
WASMSEC_CONN_EXTRA="dpd_delay = 5" wasmsec_start wsi-gwa "$A" $WAN_A %any $ID_A %any $LAN_A "$LAN_B\", \"$LAN_C" 198.18.1.1 none
WASMSEC_CONN_EXTRA=$PEER_EXTRA wasmsec_start wsi-gwb "$B" $WAN_B_NAT $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 start
WASMSEC_CONN_EXTRA=$PEER_EXTRA wasmsec_start wsi-gwc "$C" $WAN_C $WAN_A $ID_C $ID_A $LAN_C $LAN_A 198.18.3.1 start
check "B (behind the NAT) brought its tunnel up" wasmsec_up "$B" 15
check "C (behind the same NAT) brought its tunnel up" wasmsec_up "$C" 15

# A's IKE SAs, and the one (SPI and peer) of the peer that authenticated
# as $1, which its CHILD SA's remote selectors ($2) confirm.
ike_count() { wasmsec_ctl "$A" status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ike_sas"]))'; }
ike_of() {
    wasmsec_ctl "$A" status | python3 -c '
import json, sys
st = json.load(sys.stdin)
for i in st["ike_sas"]:
    if i["remote_id"] == sys.argv[1] and any(c["ike_spi"] == i["spi"] and sys.argv[2] in c["remote_ts"] for c in st["child_sas"]):
        print(i["spi"], i["remote"])' "$1" "$2"
}
two_ike() { local i; for i in $(seq 25); do [ "$(ike_count)" -eq 2 ] && return 0; sleep 0.2; done; return 1; }
check "A holds two IKE SAs, one for each peer" two_ike
sleep 1
check "A still holds both IKE SAs a second later (neither replaced the other): $(ike_count)" [ "$(ike_count)" -eq 2 ]
of_b=$(ike_of $ID_B "$LAN_B") of_c=$(ike_of $ID_C "$LAN_C")
check "A shows each peer's identity and sees both at the NAT's outside address (B: $of_b; C: $of_c)" \
    bash -c "[[ '$of_b' == *' $NAT_OUT:'* && '$of_c' == *' $NAT_OUT:'* ]]"
table=$("$WASMSEC_BIN" list-sas -s "$A/ctl.sock")
echo "$table"
ids_shown() { grep -q " $ID_B " <<<"$table" && grep -q " $ID_C " <<<"$table"; }
check "wasmsec list-sas at A shows both peers' identities" ids_shown
check "ping hosta -> hostb" ping_ok wsi-hosta $HOST_B
c_ping() { nsx wsi-gwc ping -n -c 5 -i 0.2 -W 2 -I 198.18.3.1 $HOST_A | grep -q " 0% packet loss"; }
check "ping C's LAN -> hosta" c_ping

# B restarts: its INITIAL_CONTACT, from the address C is at too.
kill -KILL "$(cat "$B/pid")"
sleep 1
WASMSEC_CONN_EXTRA=$PEER_EXTRA wasmsec_start wsi-gwb "$B" $WAN_B_NAT $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 start
check "restarted B has its tunnel up again" wasmsec_up "$B" 15
replaced() { local i; for i in $(seq 25); do grep -q "$ID_B sent INITIAL_CONTACT" "$A/wasmsec.log" && return 0; sleep 0.2; done; return 1; }
check "A replaced B's stale IKE SA on its INITIAL_CONTACT" replaced
check "ping hosta -> hostb after B's restart" ping_ok wsi-hosta $HOST_B
check "ping C's LAN -> hosta after B's restart" c_ping
check "A holds two IKE SAs again: $(ike_count)" [ "$(ike_count)" -eq 2 ]
now_c=$(ike_of $ID_C "$LAN_C")
check "C's IKE SA at A is the one from before ($of_c; now $now_c)" [ "$now_c" = "$of_c" ]
n=$(grep -c "sent INITIAL_CONTACT" "$A/wasmsec.log" || true)
check "A replaced IKE SAs on INITIAL_CONTACT once, B's only ($n)" [ "$n" -eq 1 ]
finish
