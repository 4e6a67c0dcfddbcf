#!/usr/bin/env bash
# IKEv2 between two wasmsec gateways: the tunnel comes up by itself
# (start_action = start on A), pings pass both ways, without a NAT the
# CHILD SA uses raw ESP (IP protocol 50), and terminating the connection
# deletes the SAs on both sides; when both ends initiate at once, one IKE
# SA is left (the greater identity's).
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 200 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
capture wsi-gwa "$STATE/wan.pcap"
wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none aes256gcm16-prfsha384-ecp256 chacha20poly1305
wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start aes256gcm16-prfsha384-ecp256 chacha20poly1305
check "A brought the tunnel up at start" wasmsec_up "$A" 15
check "B has the tunnel up" wasmsec_up "$B" 5
check "ping hosta -> hostb" ping_ok wsi-hosta $HOST_B
check "ping hostb -> hosta" ping_ok wsi-hostb $HOST_A
capture_stop
raw=$(count "$STATE/wan.pcap" 'ip proto 50')
udp=$(count "$STATE/wan.pcap" 'udp port 4500')
clear=$(count "$STATE/wan.pcap" "icmp and (net $LAN_A or net $LAN_B)")
check "without NAT the CHILD SA uses raw ESP ($raw packets of protocol 50, $udp on UDP 4500)" [ "$raw" -ge 20 -a "$udp" -eq 0 ]
check "no cleartext LAN packet on the wire ($clear)" [ "$clear" -eq 0 ]
spis=$(wasmsec_ctl "$A" status | python3 -c 'import json,sys; c=json.load(sys.stdin)["child_sas"][0]; print(c["inbound_spi"], c["outbound_spi"])')
wire=$(tcpdump -nn -r "$STATE/wan.pcap" 'ip proto 50' 2>/dev/null | grep -oE 'spi=0x[0-9a-f]+' | sed 's/spi=0x//' | sort -u | paste -sd' ' -)
check "the SPIs on the wire are the negotiated ones (A: $spis; wire: $wire)" \
    bash -c "for s in $spis; do [[ ' $wire ' == *\" \$s \"* ]] || exit 1; done"
check "terminate via the control socket" wasmsec_ctl "$A" terminate s2s
sleep 1
gone() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if not s["child_sas"] and not s["ike_sas"] and s["ike"]["vault_secrets"] == 1 else 1)'; }
check "A deleted its SAs and keys (only the PSK is left)" gone "$A"
check "B deleted its SAs and keys on the peer's DELETE" gone "$B"
check "traffic no longer flows" bash -c "! ip netns exec wsi-hosta ping -n -c 2 -W 1 $HOST_B >/dev/null"

# Both ends initiate at once: two IKE SAs, each with a CHILD SA. A's
# identity (gwa...) is the lesser, so A deletes the one it initiated and
# B's stays; whichever order the two handshakes took, one IKE SA is left.
sas() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(len(s["ike_sas"]), len(s["child_sas"]))'; }
wasmsec_ctl "$A" initiate s2s &
ONE=$!
wasmsec_ctl "$B" initiate s2s
wait $ONE
for _ in $(seq 50); do
    [ "$(sas "$A")" = "1 1" ] && [ "$(sas "$B")" = "1 1" ] && grep -q "which the peer initiated: deleting it" "$A/wasmsec.log" && break
    sleep 0.2
done
check "both initiating at once: one IKE SA and one CHILD SA left on A ($(sas "$A")) and B ($(sas "$B"))" \
    [ "$(sas "$A") $(sas "$B")" = "1 1 1 1" ]
check "... A deleted its own as a duplicate of B's" grep -q "which the peer initiated: deleting it" "$A/wasmsec.log"
check "... B deleted none" bash -c "! grep -q 'duplicates IKE_SA' '$B/wasmsec.log'"
check "... the one left carries traffic" ping_ok wsi-hosta $HOST_B

# B initiates while A's IKE SA is up: A deletes its own once B's CHILD SA
# is up, and sends on B's as its DELETE is acknowledged (not 2 s later),
# so a ping stream through the replacement loses nothing.
wasmsec_ctl "$B" terminate s2s >/dev/null
for _ in $(seq 25); do [ "$(sas "$A") $(sas "$B")" = "0 0 0 0" ] && break; sleep 0.2; done
wasmsec_ctl "$A" initiate s2s >/dev/null
check "A's IKE SA up again" wasmsec_up "$A" 10
nsx wsi-hosta ping -n -i 0.05 -c 80 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 &
PING=$!
sleep 1
wasmsec_ctl "$B" initiate s2s >/dev/null
wait $PING || true
check "B's initiation replaced A's IKE SA: one each ($(sas "$A"), $(sas "$B")), A deleted 2 in all" \
    [ "$(sas "$A") $(sas "$B") $(grep -c 'which the peer initiated: deleting it' "$A/wasmsec.log")" = "1 1 1 1 2" ]
check "no ping lost across it ($(grep -c 'bytes from' "$STATE/ping.out" || true)/80)" grep -q " 0% packet loss" "$STATE/ping.out"
finish
