#!/usr/bin/env bash
# The IKE guest traps with a tunnel to strongSwan up and traffic flowing
# (`wasmsec ctl fault ike`: its next call runs past its deadline, a real
# wasm trap). The host replaces it from the checkpoints of its IKE SAs:
# no established SA is lost, the next CHILD and IKE SA rekeys with
# strongSwan succeed, and at most 2 of 900 pings (20 pps) are lost. Once
# with strongSwan rekeying (CHILD every 8 s, IKE every 20 s), once with
# wasmsec rekeying on the same schedule.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"

MAX_LOSS=2
PINGS=900

one_of_each() { # DIR
    wasmsec_ctl "$1" status | python3 -c 'import json,sys
s=json.load(sys.stdin)
sys.exit(0 if len(s["ike_sas"]) == 1 and len(s["child_sas"]) == 1 else 1)'
}
sswan_sas() { # DIR: "IKE_SAs CHILD_SAs"
    sswan "$1" --list-sas --raw 2>/dev/null | python3 -c 'import re,sys
t=sys.stdin.read()
print(len(re.findall(r"state=ESTABLISHED", t)), len(re.findall(r"state=INSTALLED", t)))'
}
# after_fault LOG PATTERN: lines matching PATTERN after the replacement.
after_fault() { sed -n '/IKE guest replaced/,$p' "$1" | grep -c "$2" || true; }

run_case() { # who rekeys: strongswan | wasmsec
    local who=$1 A=$STATE/$1/A B=$STATE/$1/B got lost
    topo_up
    mkdir -p "$A" "$B"
    if [ "$who" = strongswan ]; then
        SSWAN_CONN_EXTRA="    rekey_time = 20s" SSWAN_CHILD_EXTRA="      rekey_time = 8s" \
            sswan_start wsi-gwa "$A" initiator $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B
        WASMSEC_CONTROL_EXTRA="fault_injection = true" \
            wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
        sswan "$A" --initiate --child s2s --timeout 20 >"$A/initiate.out" 2>&1 || true
    else
        sswan_start wsi-gwa "$A" responder $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B
        WASMSEC_CONTROL_EXTRA="fault_injection = true" WASMSEC_CONN_EXTRA="rekey_time = 20" \
            WASMSEC_CHILD_EXTRA="rekey_time = 8" \
            wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 start
    fi
    check "$who rekeys: tunnel up at wasmsec" wasmsec_up "$B" 20
    check "$who rekeys: tunnel up at strongSwan" sswan_up "$A" 10
    nsx wsi-hosta ping -n -i 0.05 -c $PINGS -W 1 $HOST_B >"$STATE/$who-ping.out" 2>&1 &
    local ping=$!
    sleep 5
    check "$who rekeys: fault injected into the IKE guest" wasmsec_ctl "$B" fault ike
    local i; for i in $(seq 50); do grep -q "IKE guest replaced" "$B/wasmsec.log" && break; sleep 0.1; done
    grep -E "IKE guest (trapped|replaced)" "$B/wasmsec.log" | sed 's/^/    /'
    check "$who rekeys: the guest trapped and was replaced with its IKE SA" \
        grep -q "IKE guest replaced; its IKE SAs carry on ike_sas=1" "$B/wasmsec.log"
    wait "$ping" || true
    got=$(grep -c "bytes from" "$STATE/$who-ping.out" || true)
    lost=$((PINGS - got))
    local child ike restarts
    child=$(after_fault "$B/wasmsec.log" "CHILD_SA s2s installed")
    ike=$(after_fault "$B/wasmsec.log" "rekeyed: now")
    restarts=$(stat "$B/stats.json" guest_restarts)
    echo "$who rekeys: pings $got/$PINGS; after the replacement $child CHILD SAs and $ike IKE SA rekeys; $restarts restart(s)"
    check "$who rekeys: at most $MAX_LOSS pings lost ($lost)" [ "$lost" -le "$MAX_LOSS" ]
    check "$who rekeys: CHILD SAs rekeyed after the replacement ($child)" [ "$child" -ge 3 ]
    check "$who rekeys: the IKE SA rekeyed after the replacement ($ike)" [ "$ike" -ge 1 ]
    check "$who rekeys: one guest replacement ($restarts)" [ "$restarts" -eq 1 ]
    check "$who rekeys: nobody started over (no new IKE_SA_INIT)" \
        [ "$(sed -n '/IKE guest replaced/,$p' "$B/wasmsec.log" | grep -c 'IKE_SA_INIT' || true)" -eq 0 ]
    check "$who rekeys: wasmsec ends with one IKE SA and one CHILD SA" one_of_each "$B"
    check "$who rekeys: strongSwan ends with one IKE SA and one CHILD SA" [ "$(sswan_sas "$A")" = "1 1" ]
}

run_case strongswan
run_case wasmsec
finish
