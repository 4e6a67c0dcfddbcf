#!/usr/bin/env bash
# IKE_SA_INIT floods from spoofed sources (198.18.64.0/18, only inside the
# test namespaces) against a wasmsec responder, twice: small requests at
# 4,000/s, then 8 KB requests (IP fragments, reassembled by the kernel) with
# every tenth one above the 10,000-byte IKE message limit. Each time COOKIE
# mode turns on, half-open SAs stay at the cookie threshold, oversized
# messages are dropped before the guest, the IKE guest's memory and the
# daemon's stay bounded, the guest never traps, and a real initiator
# establishes, repeatedly, during the flood.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 200 bash "$0" "$@"
RATE=${FLOOD_RATE:-4000}
SECS=${FLOOD_SECONDS:-20}

topo_up
# Answers to the spoofed sources go nowhere.
nsx wsi-gwb ip route add unreachable 198.18.64.0/18
A=$STATE/A B=$STATE/B
wasmsec_start wsi-gwb "$B" $WAN_B %any $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 none
rss() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$B/pid")/status"; }
status_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }

# flood_phase LABEL FLOOD_ARGS...: flood while a real initiator connects 8 times.
flood_phase() {
    local label=$1 before during ok_n=0 tries=8 rss0 rss1 i; shift
    rss0=$(rss)
    before=$(wasmsec_ctl "$B" status)
    ip netns exec wsi-gwa python3 "$ROOT/tests/interop/flood.py" $WAN_B 198.18 "$@" >"$STATE/flood.out" 2>&1 &
    local flood=$!
    sleep 2
    for i in $(seq $tries); do
        wasmsec_ctl "$A" initiate s2s >/dev/null
        if wasmsec_up "$A" 4 && ping_ok wsi-hosta $HOST_B 2; then ok_n=$((ok_n + 1)); fi
        wasmsec_ctl "$A" terminate s2s >/dev/null
        sleep 0.5
    done
    during=$(wasmsec_ctl "$B" status)
    wait $flood || true
    cat "$STATE/flood.out"
    rss1=$(rss)
    local cookies half rx oversize mem0 mem1 restarts
    cookies=$(status_field "$during" ike.cookies_sent); half=$(status_field "$during" ike.half_open)
    rx=$(status_field "$during" ike.rx); oversize=$(status_field "$during" esp.ike_oversize)
    mem0=$(status_field "$before" ike.guest_memory_peak); mem1=$(status_field "$during" ike.guest_memory_peak)
    restarts=$(status_field "$during" esp.guest_restarts)
    echo "$label: $ok_n/$tries legitimate initiations; B received $rx IKE datagrams, sent $cookies cookies,"
    echo "  held $half half-open SAs, dropped $oversize oversized; IKE guest memory $mem0 -> $mem1 bytes; RSS ${rss0} -> ${rss1} kB"
    check "$label: COOKIE mode turned on ($cookies cookies sent)" [ "$cookies" -gt 1000 ]
    check "$label: half-open IKE SAs stayed at the cookie threshold ($half <= 64)" [ "$half" -le 64 ]
    check "$label: the IKE guest's memory stayed bounded ($mem0 -> $mem1 bytes, limit 128 MiB)" \
        [ "$mem1" -le $((mem0 + 8 * 1048576)) -a "$mem1" -le $((16 * 1048576)) ]
    check "$label: the IKE guest never trapped ($restarts restarts)" [ "$restarts" -eq 0 ]
    check "$label: the responder's memory stayed bounded (${rss0} -> ${rss1} kB)" [ "$rss1" -lt $((rss0 + 30000)) ]
    check "$label: a legitimate initiator got through every time during the flood ($ok_n/$tries)" [ "$ok_n" -eq "$tries" ]
    FLOOD_OVERSIZE=$oversize
}

flood_phase "small requests" "$RATE" "$SECS"
flood_phase "8 KB requests, every tenth oversized" 600 15 8000 10
check "oversized IKE messages were dropped before the guest ($FLOOD_OVERSIZE)" [ "$FLOOD_OVERSIZE" -gt 100 ]
check "the daemon is still up" kill -0 "$(cat "$B/pid")"
finish
