#!/usr/bin/env bash
# xtask: beside the interop suites (lib.sh's namespaces, under the prefix xtask gives this lane)
# The IKE guest traps with a tunnel to strongSwan up and traffic flowing
# (`wasmsec ctl fault ike`: its next call runs past its deadline, a real
# wasm trap). The host replaces it from the checkpoints of its IKE SAs:
# no established SA is lost, the next CHILD and IKE SA rekeys with
# strongSwan succeed, and at most 2 of 900 pings (20 pps) are lost. Once
# with strongSwan rekeying (CHILD every 8 s, IKE every 20 s), once with
# wasmsec rekeying on the same schedule; there the first two replacements
# trap as well (`fault ike 3`), and the third carries on. Then five traps
# in a row: after three failed replacements the next starts without the
# checkpoints, and the `start` connection is initiated again at once.
# Each replacement destroys the secrets its predecessor lost: the vault
# ends with the PSK and the IKE SA's keys.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"

MAX_LOSS=2
PINGS=900

one_of_each() { # DIR
    wasmsec_ctl "$1" status | python3 -c 'import json,sys
s=json.load(sys.stdin)
sys.exit(0 if len(s["ike_sas"]) == 1 and len(s["child_sas"]) == 1 else 1)'
}
# vault_holds DIR N: within 10 s, the vault holds N secrets (between
# rekeys: the PSK and the one IKE SA's keys). What a replacement's
# predecessor lost (an IKE SA not restored, a setup's DH value) is
# destroyed with the replacement; before 2026-12-06 it stayed.
vault_holds() {
    local n
    for _ in $(seq 50); do
        n=$(wasmsec_ctl "$1" status | python3 -c 'import json,sys; print(json.load(sys.stdin)["ike"]["vault_secrets"])')
        [ "$n" -eq "$2" ] && return 0
        sleep 0.2
    done
    echo "    the vault holds $n secrets, not $2"
    return 1
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
            sswan_start $NS_GWA "$A" initiator $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B
        WASMSEC_CONTROL_EXTRA="fault_injection = true" \
            wasmsec_start $NS_GWB "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
        sswan "$A" --initiate --child s2s --timeout 20 >"$A/initiate.out" 2>&1 || true
    else
        sswan_start $NS_GWA "$A" responder $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B
        WASMSEC_CONTROL_EXTRA="fault_injection = true" WASMSEC_CONN_EXTRA="rekey_time = 20" \
            WASMSEC_CHILD_EXTRA="rekey_time = 8" \
            wasmsec_start $NS_GWB "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 start
    fi
    check "$who rekeys: tunnel up at wasmsec" wasmsec_up "$B" 20
    check "$who rekeys: tunnel up at strongSwan" sswan_up "$A" 10
    nsx $NS_HOSTA ping -n -i 0.05 -c $PINGS -W 1 $HOST_B >"$STATE/$who-ping.out" 2>&1 &
    local ping=$!
    sleep 5
    # wasmsec rekeying: the replacement's first two tries trap too.
    local faults=1; [ "$who" = wasmsec ] && faults=3
    check "$who rekeys: $faults fault(s) injected into the IKE guest" wasmsec_ctl "$B" fault ike $faults
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
    check "$who rekeys: $faults guest replacement(s) counted ($restarts)" [ "$restarts" -eq $faults ]
    check "$who rekeys: $((faults - 1)) replacement(s) failed, were tried again, and the daemon ran on" \
        [ "$(grep -c "the IKE guest's replacement failed: trying again" "$B/wasmsec.log" || true)" -eq $((faults - 1)) ]
    check "$who rekeys: nobody started over (no new IKE_SA_INIT)" \
        [ "$(sed -n '/IKE guest replaced/,$p' "$B/wasmsec.log" | grep -c 'IKE_SA_INIT' || true)" -eq 0 ]
    check "$who rekeys: wasmsec ends with one IKE SA and one CHILD SA" one_of_each "$B"
    check "$who rekeys: the vault holds the PSK and the IKE SA's keys, nothing the traps lost" vault_holds "$B" 2
    check "$who rekeys: strongSwan ends with one IKE SA and one CHILD SA" [ "$(sswan_sas "$A")" = "1 1" ]
    if [ "$who" = wasmsec ]; then start_over "$A" "$B"; fi
}

# Five traps in a row (wasmsec initiates, `start`): the replacement fails
# three times from the checkpoints, the fourth goes without them and traps
# as well, the fifth comes up without them and initiates again.
start_over() { # A B
    local A=$1 B=$2 ike_before restarts
    ike_before=$(wasmsec_ctl "$B" status | python3 -c 'import json,sys; print(json.load(sys.stdin)["ike_sas"][0]["spi"])')
    check "start over: 5 faults injected into the IKE guest" wasmsec_ctl "$B" fault ike 5
    for _ in $(seq 200); do grep -q "IKE guest replaced without its checkpoints" "$B/wasmsec.log" && break; sleep 0.1; done
    check "start over: after 3 failed replacements the checkpoints are dropped" \
        grep -q "replacements keep failing: the next starts without its checkpoints" "$B/wasmsec.log"
    check "start over: the guest is replaced without them" grep -q "IKE guest replaced without its checkpoints" "$B/wasmsec.log"
    restarts=$(stat "$B/stats.json" guest_restarts)
    check "start over: 8 guest replacements counted in all ($restarts)" [ "$restarts" -eq 8 ]
    local up=1
    for _ in $(seq 100); do
        wasmsec_ctl "$B" status | python3 -c 'import json,sys
s=json.load(sys.stdin); sys.exit(0 if any(i["spi"] != sys.argv[1] for i in s["ike_sas"]) else 1)' "$ike_before" && { up=0; break; }
        sleep 0.2
    done
    check "start over: the start connection is initiated again, a new IKE SA is up" [ "$up" -eq 0 ]
    check "start over: the old SAs left the view: one IKE SA, one CHILD SA" one_of_each "$B"
    check "start over: list-conns counts them so too" bash -c "'$WASMSEC_BIN' list-conns --json --socket '$B/ctl.sock' |
        python3 -c 'import json,sys; c=json.load(sys.stdin)[\"connections\"]; sys.exit(0 if [(x[\"ike_sas\"], x[\"child_sas\"]) for x in c] == [(1, 1)] else 1)'"
    check "start over: the old IKE SA's keys left the vault: the PSK and the new IKE SA's remain" vault_holds "$B" 2
    check "start over: the old SAs were deleted from the data path" \
        grep -q "none of its predecessor's SAs: they are deleted ike_sas=1 child_sas=1" "$B/wasmsec.log"
    check "start over: pings pass the new tunnel" ping_ok $NS_HOSTA $HOST_B 10
    for _ in $(seq 50); do [ "$(sswan_sas "$A")" = "1 1" ] && break; sleep 0.2; done
    check "start over: strongSwan replaced the old IKE SA (INITIAL_CONTACT): one IKE SA, one CHILD SA" \
        [ "$(sswan_sas "$A")" = "1 1" ]
    check "start over: the daemon still runs" kill -0 "$(cat "$B/pid")"
}

run_case strongswan
run_case wasmsec
finish
