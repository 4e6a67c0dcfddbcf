#!/usr/bin/env bash
# A gateway that listens on every address (`network.listen` left at its
# default, 0.0.0.0, as the Helm chart leaves it too) and has two on its WAN
# link. Its IKE messages must name the address each one arrived at: NAT
# detection (RFC 7296 section 2.23) hashes it, and with 0.0.0.0 in its
# place both ends saw a NAT that is not there and moved the tunnel to ESP
# in UDP with keepalives. And its answers and its ESP must leave from that
# address, or a peer that initiated to the second one would hear them from
# the first. And IKE sent to a broadcast address, which such a socket
# hears too, is dropped and counted, not answered.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 180 bash "$0" "$@"
WAN_B2=198.18.0.4

topo_up
nsx wsi-gwb ip addr add $WAN_B2/24 dev wan0   # a secondary address
A=$STATE/A B=$STATE/B
wasmsec_start wsi-gwb "$B" 0.0.0.0 $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none

# ike_sa DIR: our address, the peer's, and NAT in front of us and of the peer.
ike_sa() {
    wasmsec_ctl "$1" status | python3 -c '
import json, sys
for i in json.load(sys.stdin)["ike_sas"]:
    print(i["local"], i["remote"], "nat_local=%s" % i["nat_local"], "nat_remote=%s" % i["nat_remote"])'
}
no_nat() { [[ "$1" == *"nat_local=False nat_remote=False" ]]; }

# A initiates to each of B's addresses in turn (restarted in between: its
# INITIAL_CONTACT replaces the first IKE SA at B), the last time with
# `encap = true`, so that IKE moves to UDP 4500 after IKE_SA_INIT and B's
# data path hands its messages over with the address they came to.
for round in "$WAN_B 500" "$WAN_B2 500" "$WAN_B2 4500"; do
    to=${round% *} port=${round#* } tag="to $round"
    pcap=$STATE/wan-$to-$port.pcap
    capture wsi-gwa "$pcap"
    extra=; [ "$port" = 4500 ] && extra="encap = true"
    WASMSEC_CONN_EXTRA=$extra wasmsec_start wsi-gwa "$A" $WAN_A $to $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
    check "$tag: A brought the tunnel up" wasmsec_up "$A" 15
    # B's one IKE SA (A's first one replaced after the restart).
    for _ in $(seq 50); do
        at_b=$(ike_sa "$B")
        [ "$(wc -l <<<"$at_b")" -eq 1 ] && [[ "$at_b" == "$to:$port $WAN_A:$port "* ]] && break
        sleep 0.2
    done
    at_a=$(ike_sa "$A")
    check "$tag: B holds one IKE SA, on the address and port A sent to, not 0.0.0.0 ($at_b)" \
        bash -c "[[ '$at_b' == '$to:$port $WAN_A:$port '* ]]"
    check "$tag: ping hosta -> hostb" ping_ok wsi-hosta $HOST_B
    check "$tag: ping hostb -> hosta" ping_ok wsi-hostb $HOST_A
    capture_stop
    if [ "$port" = 500 ]; then
        from_to=$(count "$pcap" "udp src port 500 and src host $to")
        from_other=$(count "$pcap" "udp src port 500 and src net 198.18.0.0/24 and not src host $to and not src host $WAN_A")
        check "$tag: B detected no NAT ($at_b)" no_nat "$at_b"
        check "$tag: A detected no NAT ($at_a)" no_nat "$at_a"
        check "$tag: B's IKE answers came from $to ($from_to) and from no other address of B ($from_other)" \
            [ "$from_to" -ge 2 -a "$from_other" -eq 0 ]
        raw=$(count "$pcap" 'ip proto 50') udp=$(count "$pcap" 'udp port 4500')
        check "$tag: no NAT-T: raw ESP ($raw packets), nothing on UDP 4500 ($udp)" [ "$raw" -ge 20 -a "$udp" -eq 0 ]
        esp="ip proto 50"
    else
        ike=$(count "$pcap" "udp src port 4500 and src host $to and udp[8:4] = 0")
        check "$tag: B's IKE answers on UDP 4500 came from $to ($ike)" [ "$ike" -ge 1 ]
        esp="udp src port 4500 and udp[8:4] != 0"
    fi
    # B's ESP leaves from the CHILD SA's address, not the route's source.
    esp_to=$(count "$pcap" "$esp and src host $to") esp_other=$(count "$pcap" "$esp and src net 198.18.0.0/24 and not src host $to and not src host $WAN_A")
    check "$tag: B's ESP came from $to ($esp_to) and from no other address of B ($esp_other)" \
        [ "$esp_to" -ge 10 -a "$esp_other" -eq 0 ]
    kill -TERM "$(cat "$A/pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$A/pid")" 2>/dev/null || break; sleep 0.1; done
    rm -f "$A/ctl.sock"
done

# IKE sent to a broadcast address reaches a socket on every address; no
# peer sends there and no answer could leave from it: B drops it before
# its guest and counts it, on port 500 and on 4500. A request to B's own
# address, sent with them, is answered.
b_stat() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))' "$B/stats.json" "$1"; }
got=$(nsx wsi-gwa python3 "$ROOT/tests/interop/ike-to-broadcast.py" wan0 $WAN_B 198.18.0.255)
check "broadcast: B answered only the request to its own address ($got)" \
    bash -c "[[ '$got' == '{\"answered\": [4]}' ]]"
for _ in $(seq 20); do [ "$(b_stat ike_not_unicast)" -ge 2 ] && [ "$(b_stat rx_not_unicast)" -ge 1 ] && break; sleep 0.25; done
check "broadcast: B counted the two on port 500 ($(b_stat ike_not_unicast)) and the one on 4500 ($(b_stat rx_not_unicast))" \
    bash -c "[ $(b_stat ike_not_unicast) -eq 2 ] && [ $(b_stat rx_not_unicast) -eq 1 ]"
finish
