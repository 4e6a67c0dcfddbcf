#!/usr/bin/env bash
# An IKE_SA_INIT flood from spoofed sources (198.18.64.0/18, only inside the
# test namespaces) against a wasmsec responder: COOKIE mode turns on, the
# half-open count and the daemon's memory stay bounded, and a real
# initiator still establishes, repeatedly, during the flood.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 150 bash "$0" "$@"
RATE=${FLOOD_RATE:-4000}
SECS=${FLOOD_SECONDS:-20}

topo_up
# Answers to the spoofed sources go nowhere.
nsx wsi-gwb ip route add unreachable 198.18.64.0/18
A=$STATE/A B=$STATE/B
wasmsec_start wsi-gwb "$B" $WAN_B %any $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 none
rss() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$B/pid")/status"; }
rss0=$(rss)
ip netns exec wsi-gwa python3 "$ROOT/tests/interop/flood.py" $WAN_B 198.18 "$RATE" "$SECS" >"$STATE/flood.out" 2>&1 &
FLOOD=$!
sleep 2
ok_n=0
tries=8
for i in $(seq $tries); do
    wasmsec_ctl "$A" initiate s2s >/dev/null
    if wasmsec_up "$A" 4 && ping_ok wsi-hosta $HOST_B 2; then ok_n=$((ok_n + 1)); fi
    wasmsec_ctl "$A" terminate s2s >/dev/null
    sleep 0.5
done
during=$(wasmsec_ctl "$B" status)
wait $FLOOD || true
cat "$STATE/flood.out"
rss1=$(rss)
echo "legitimate initiations during the flood: $ok_n/$tries succeeded"
echo "responder RSS: ${rss0} kB before, ${rss1} kB after"
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ike"][sys.argv[2]])' "$during" "$1"; }
cookies=$(field cookies_sent); half=$(field half_open); rx=$(field rx)
echo "during the flood B had received $rx IKE datagrams, sent $cookies cookies, held $half half-open SAs"
check "COOKIE mode turned on ($cookies cookies sent)" [ "$cookies" -gt 1000 ]
check "half-open IKE SAs stayed at the cookie threshold ($half <= 64)" [ "$half" -le 64 ]
check "the responder's memory stayed bounded (${rss0} -> ${rss1} kB)" [ "$rss1" -lt $((rss0 + 30000)) ]
check "a legitimate initiator got through every time during the flood ($ok_n/$tries)" [ "$ok_n" -eq "$tries" ]
check "the daemon is still up" kill -0 "$(cat "$B/pid")"
finish
