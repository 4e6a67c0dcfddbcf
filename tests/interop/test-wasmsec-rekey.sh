#!/usr/bin/env bash
# CHILD SA rekeying between two wasmsec gateways: A rekeys every 2 s while
# a 20 pps ping runs for 45 s; at least 20 rekeys, no ping lost, exactly
# one CHILD SA pair left, and no ESP key left behind in either keystore.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 150 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
# B only answers rekeys; A (WASMSEC_CHILD_EXTRA) rekeys every 2 s.
wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
WASMSEC_CHILD_EXTRA=1 wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
check "tunnel up" wasmsec_up "$A" 15
ip netns exec wsi-hosta ping -n -i 0.05 -c 900 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 || true
sent=900
got=$(grep -c "bytes from" "$STATE/ping.out" || true)
rekeys=$(grep -c "rekeying CHILD_SA" "$A/wasmsec.log" || true)
echo "pings: $got/$sent, rekeys started by A: $rekeys"
check "at least 20 CHILD SA rekeys during the stream ($rekeys)" [ "$rekeys" -ge 20 ]
check "no ping lost across the rekeys ($got/$sent)" [ "$got" -eq "$sent" ]
one_pair() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s["child_sas"]) == 1 else 1)'; }
check "A holds exactly one CHILD SA" one_pair "$A"
check "B holds exactly one CHILD SA" one_pair "$B"
check "no replay or integrity drops at B" [ "$(stat "$B/stats.json" inbound_drops.replay)" -eq 0 -a "$(stat "$B/stats.json" inbound_drops.integrity_failed)" -eq 0 ]
finish
