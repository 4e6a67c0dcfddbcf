#!/usr/bin/env bash
# Two wasmsec gateways with B behind a NAT (masquerade, random ports):
# NAT detection moves IKE and ESP to UDP 4500, B sends keepalives, the NAT
# mapping is flushed mid-transfer and traffic resumes within two keepalive
# intervals without operator action, and B killed with SIGKILL and
# restarted brings the tunnel back (INITIAL_CONTACT replaces the stale SAs).
# A capture shows the keepalives and nothing unencrypted.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"
KA=2   # keepalive interval, seconds

topo_up_nat
A=$STATE/A B=$STATE/B
capture wsi-gwa "$STATE/outside.pcap"; CAP_OUT=$CAP_PID
ip netns exec wsi-gwb tcpdump -i wan0 -n -U --immediate-mode -w "$STATE/inside.pcap" 2>"$STATE/inside.log" 9>&- &
CAP_IN=$!; PIDS+=($CAP_IN); sleep 1
WASMSEC_CONN_EXTRA="dpd_delay = 5" wasmsec_start wsi-gwa "$A" $WAN_A %any $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 none
WASMSEC_CONN_EXTRA=$'keepalive = 2\ndpd_delay = 2' wasmsec_start wsi-gwb "$B" $WAN_B_NAT $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 start
check "B (behind the NAT) brought the tunnel up" wasmsec_up "$B" 15
check "A has the tunnel up" wasmsec_up "$A" 5
peer=$(wasmsec_ctl "$A" status | python3 -c 'import json,sys; c=json.load(sys.stdin)["child_sas"][0]; print(c["peer"], c["encap"])')
check "A sees B at the NAT's outside address, UDP-encapsulated ($peer)" bash -c "[[ '$peer' == $NAT_OUT:*' True' ]]"
check "ping hosta -> hostb across the NAT" ping_ok wsi-hosta $HOST_B
check "ping hostb -> hosta across the NAT" ping_ok wsi-hostb $HOST_A

# Flush the NAT's mappings in the middle of a ping stream (5 pings/s for 14 s).
ip netns exec wsi-hosta ping -n -D -i 0.2 -c 70 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 &
PING=$!
sleep 3
nsx wsi-nat conntrack -F >/dev/null 2>&1
echo "NAT conntrack flushed at $(date +%s.%N)" >"$STATE/flush.at"
wait $PING || true
sent=70
got=$(grep -c "bytes from" "$STATE/ping.out" || true)
lost=$((sent - got))
# At 5 pings/s, two keepalive intervals are 2*KA*5 pings.
check "traffic resumed after the NAT flush ($got/$sent replies, $lost lost; allowed $((2 * KA * 5)))" [ "$lost" -le $((2 * KA * 5)) ]
tail_ok() { local q; for q in $(seq 46 70); do grep -q "icmp_seq=$q " "$STATE/ping.out" || return 1; done; }
check "every ping of the stream's last 5 s got through" tail_ok

# SIGKILL B, start it again: it initiates anew and A replaces the stale SAs.
kill -KILL "$(cat "$B/pid")"
sleep 1
WASMSEC_CONN_EXTRA=$'keepalive = 2\ndpd_delay = 2' wasmsec_start wsi-gwb "$B" $WAN_B_NAT $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 start
check "restarted B has the tunnel up again" wasmsec_up "$B" 15
check "ping hosta -> hostb after B's restart" ping_ok wsi-hosta $HOST_B
check "ping hostb -> hosta after B's restart" ping_ok wsi-hostb $HOST_A
n_ike=$(wasmsec_ctl "$A" status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ike_sas"]))')
check "A holds exactly one IKE SA for B (the stale one replaced): $n_ike" [ "$n_ike" -eq 1 ]

sleep $((KA + 1))
kill -INT $CAP_IN $CAP_OUT 2>/dev/null || true; wait $CAP_IN $CAP_OUT 2>/dev/null || true
ka_in=$(count "$STATE/inside.pcap" "src host $WAN_B_NAT and udp dst port 4500 and udp[4:2] = 9 and udp[8] = 0xff")
ka_out=$(count "$STATE/outside.pcap" "src host $NAT_OUT and udp and udp[4:2] = 9 and udp[8] = 0xff")
check "keepalives (1-byte 0xFF on 4500) from B inside ($ka_in) and outside ($ka_out) the NAT" [ "$ka_in" -ge 3 -a "$ka_out" -ge 3 ]
clear_out=$(count "$STATE/outside.pcap" "icmp and (net $LAN_A or net $LAN_B)")
clear_in=$(count "$STATE/inside.pcap" "icmp and (net $LAN_A or net $LAN_B)")
check "no cleartext LAN packet on either side of the NAT ($clear_in inside, $clear_out outside)" [ "$clear_out" -eq 0 -a "$clear_in" -eq 0 ]
raw=$(count "$STATE/outside.pcap" "ip proto 50")
check "no raw ESP across the NAT ($raw)" [ "$raw" -eq 0 ]
finish
