#!/usr/bin/env bash
# Rekeying between two wasmsec gateways: A rekeys the CHILD SA every 2 s
# and the IKE SA every 8 s, B rekeys the CHILD SA every 3 s too (so rekeys
# come from both ends and sometimes cross), while a 20 pps ping runs for
# 45 s; at least 20 CHILD and 5 IKE rekeys by A, no ping lost, exactly one
# IKE SA and one CHILD SA pair left, the CHILD SA under that IKE SA.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 150 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
WASMSEC_CHILD_EXTRA="rekey_time = 3" wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
WASMSEC_CONN_EXTRA="rekey_time = 8" WASMSEC_CHILD_EXTRA="rekey_time = 2" wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
check "tunnel up" wasmsec_up "$A" 15
ip netns exec wsi-hosta ping -n -i 0.05 -c 900 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 || true
sent=900
got=$(grep -c "bytes from" "$STATE/ping.out" || true)
rekeys=$(grep -c "rekeying CHILD_SA" "$A/wasmsec.log" || true)
ike_rekeys=$(grep -c "rekeying IKE_SA" "$A/wasmsec.log" || true)
echo "pings: $got/$sent, rekeys started by A: $rekeys CHILD, $ike_rekeys IKE"
check "at least 20 CHILD SA rekeys during the stream ($rekeys)" [ "$rekeys" -ge 20 ]
check "at least 5 IKE SA rekeys during the stream ($ike_rekeys)" [ "$ike_rekeys" -ge 5 ]
check "no ping lost across the rekeys ($got/$sent)" [ "$got" -eq "$sent" ]
one_pair() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["child_sas"]) == 1 else 1)'; }
check "A holds exactly one CHILD SA" one_pair "$A"
check "B holds exactly one CHILD SA" one_pair "$B"
one_ike() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["ike_sas"]) == 1 and s["ike"]["vault_secrets"] == 2 else 1)'; }
check "A holds one IKE SA and no stale keys (IKE SA keys and PSK)" one_ike "$A"
check "B holds one IKE SA and no stale keys" one_ike "$B"
# Each IKE SA rekey moved the CHILD SA to the successor (RFC 7296 section
# 2.8): the views name the IKE SA that holds it now.
child_of_ike() { wasmsec_ctl "$1" status | python3 -c 'import json,sys
s = json.load(sys.stdin)
sys.exit(0 if [c["ike_spi"] for c in s["child_sas"]] == [i["spi"] for i in s["ike_sas"]] else 1)'; }
check "A's CHILD SA names the IKE SA that holds it now" child_of_ike "$A"
check "B's too" child_of_ike "$B"
# Each rekey interns the peer for the new outbound SA and releases it
# with the old one: the data path's peer table stays at the one peer.
sleep 0.5
check "A's data path has one peer after the rekeys ($(stat "$A/stats.json" peers))" [ "$(stat "$A/stats.json" peers)" -eq 1 ]
check "B's data path has one peer after the rekeys ($(stat "$B/stats.json" peers))" [ "$(stat "$B/stats.json" peers)" -eq 1 ]
check "no replay or integrity drops at B" [ "$(stat "$B/stats.json" inbound_drops.replay)" -eq 0 -a "$(stat "$B/stats.json" inbound_drops.integrity_failed)" -eq 0 ]
finish
