#!/usr/bin/env bash
# IPv6 inside the tunnel: a real strongSwan (gwa) and wasmsec (gwb) with one
# CHILD SA whose traffic selectors hold an IPv4 and an IPv6 subnet on each
# side (IPv4 on the wire). Pings both ways in both families, bursts of IPv6
# pings, IPv6 UDP flows in bursts (one flow's packets share a batch and take
# the ESP guest's flow shortcut, each packet's own lengths still checked), tshark
# decrypting the ESP with wasmsec's keys and finding IPv6 inside, and no
# packet dropped at wasmsec for selectors or a bad inner packet.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"

# udp_flow NS_FROM NS_TO DST: one UDP flow of 2,000 datagrams of 300 bytes,
# sent in bursts of 50 (so that they share batches and take the ESP guest's
# flow shortcut, which echoes do not: their checksum differs in the bytes
# compared); prints how many arrived whole (their bytes as sent).
udp_flow() {
    local from=$1 to=$2 dst=$3 out=$STATE/udp-$1.out
    nsx "$to" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("::", 9000))
s.settimeout(5)
n = 0
try:
    while True:
        d = s.recv(2048)
        s.settimeout(1.5)
        n += d == bytes([d[0]]) * 300
except socket.timeout:
    pass
print(n)' >"$out" 2>&1 &
    local rx=$!
    sleep 0.3
    nsx "$from" python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(2000):
    s.sendto(bytes([i % 256]) * 300, (sys.argv[1], 9000))
    if i % 50 == 49:
        time.sleep(0.002)' "$dst"
    wait "$rx" || true
    cat "$out"
}


# out_packets DIR: the packets wasmsec's CHILD SAs have sent (their out_packets summed)
out_packets() {
    "$WASMSEC_BIN" list-sas --json --socket "$1/ctl.sock" \
        | python3 -c 'import json,sys; print(sum(c["out_packets"] for c in json.load(sys.stdin)["child_sas"]))'
}

# burst NS DST: 400 echo requests, 40 in flight at once; prints how many
# replies came back.
burst() {
    nsx "$1" ping -6 -n -q -c 400 -l 40 -i 0.002 -W 2 -s 200 "$2" 2>/dev/null \
        | sed -n 's/.* \([0-9]*\) received.*/\1/p'
}

run_case() { # ROLE_OF_WASMSEC
    local role=$1 label="wasmsec $1, IPv4 + IPv6 inside"
    topo_up
    ipv6_lans
    local A=$STATE/$role/A B=$STATE/$role/B
    mkdir -p "$A" "$B"
    # Each of gwb's GSO datagrams cut before the capture (362 of about 800
    # echoes from hostb were found once without).
    gso_cut wsi-gwb
    capture wsi-gwa "$STATE/$role.pcap"
    sswan_start wsi-gwa "$A" "$([ "$role" = initiator ] && echo responder || echo initiator)" \
        $WAN_A $WAN_B $ID_A $ID_B "$LAN_A,$LAN6_A" "$LAN_B,$LAN6_B"
    WASMSEC_IKE_EXTRA="esp_keylog = \"$B/esp_sa\"" \
        wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A "$LAN_B\", \"$LAN6_B" "$LAN_A\", \"$LAN6_A" \
        '["198.18.2.1", "fd00:2::1"]'
    bring_up "$label" "$role" "$A" "$B"
    check "$label: strongSwan's CHILD SA holds both families on each side" \
        bash -c "swanctl --list-sas --uri unix://$A/charon.vici | grep -q '$LAN6_A' \
            && swanctl --list-sas --uri unix://$A/charon.vici | grep -q '$LAN6_B'"
    check "$label: wasmsec routes the far IPv6 subnet into its TUN device, from its IPv6 source" \
        bash -c "ip netns exec wsi-gwb ip -6 route show $LAN6_A | grep -q 'dev wsec.* src fd00:2::1'"
    check "$label: and the far IPv4 subnet from its IPv4 source" \
        bash -c "ip netns exec wsi-gwb ip route show $LAN_A | grep -q 'dev wsec.* src 198.18.2.1'"
    check "$label: gwb itself reaches hosta over IPv6 through the tunnel" ping6_ok wsi-gwb $HOST6_A
    check "$label: ping hosta -> hostb, IPv4" ping_ok wsi-hosta $HOST_B
    check "$label: ping6 hosta -> hostb" ping6_ok wsi-hosta $HOST6_B
    check "$label: ping6 hostb -> hosta" ping6_ok wsi-hostb $HOST6_A
    local got
    got=$(burst wsi-hosta $HOST6_B)
    check "$label: a burst of 400 IPv6 echoes hosta -> hostb, 40 in flight: >= 390 answered (${got:-0})" \
        [ "${got:-0}" -ge 390 ]
    got=$(burst wsi-hostb $HOST6_A)
    check "$label: a burst of 400 IPv6 echoes hostb -> hosta, 40 in flight: >= 390 answered (${got:-0})" \
        [ "${got:-0}" -ge 390 ]
    got=$(udp_flow wsi-hosta wsi-hostb $HOST6_B)
    check "$label: one UDP flow of 2,000 datagrams hosta -> hostb, in bursts: >= 1,900 arrived whole (${got:-0})" \
        [ "${got:-0}" -ge 1900 ]
    # That way strongSwan's libipsec opens them in user space, where a
    # loaded machine can lose some: what wasmsec sealed and sent is
    # counted apart, so that a shortfall says whose it is.
    local sent_before sent
    sent_before=$(out_packets "$B")
    got=$(udp_flow wsi-hostb wsi-hosta $HOST6_A)
    sent=$(($(out_packets "$B") - sent_before))
    check "$label: wasmsec sealed and sent the 2,000 datagrams hostb -> hosta (its CHILD SA's out_packets grew by $sent)" \
        [ "$sent" -ge 2000 ]
    check "$label: one UDP flow of 2,000 datagrams hostb -> hosta, in bursts: >= 1,900 arrived whole (${got:-0})" \
        [ "${got:-0}" -ge 1900 ]
    capture_stop
    # TCP over IPv6 through the TUN device's offloads (TSO6 super-packets
    # cut at wasmsec, its writes coalesced): a 3-second iperf3 run each way.
    nsx wsi-hostb iperf3 -s -1 -D -B $HOST6_B -p 5201 --logfile "$STATE/iperf3-s.log"
    sleep 0.3
    local mbit
    mbit=$(nsx wsi-hosta iperf3 -6 -c $HOST6_B -p 5201 -t 3 -J 2>/dev/null \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))' \
        2>/dev/null || echo 0)
    check "$label: TCP over IPv6 hosta -> hostb, 3 s of iperf3: > 50 Mbit/s received (${mbit:-0})" [ "${mbit:-0}" -gt 50 ]
    nsx wsi-hosta iperf3 -s -1 -D -B $HOST6_A -p 5202 --logfile "$STATE/iperf3-s2.log"
    sleep 0.3
    mbit=$(nsx wsi-hostb iperf3 -6 -c $HOST6_A -p 5202 -t 3 -J 2>/dev/null \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))' \
        2>/dev/null || echo 0)
    check "$label: TCP over IPv6 hostb -> hosta, 3 s of iperf3: > 50 Mbit/s received (${mbit:-0})" [ "${mbit:-0}" -gt 50 ]
    local pcap=$STATE/$role.pcap clear
    clear=$(count "$pcap" "ip6 and (net $LAN6_A or net $LAN6_B)")
    check "$label: no LAN IPv6 packet in the clear on the wire ($clear)" [ "$clear" -eq 0 ]
    # tshark decrypts the ESP with wasmsec's keys and finds the IPv6 pings.
    local from_a from_b
    from_a=$(decrypted_count "$pcap" "$B/esp_sa" "esp && icmpv6 && ipv6.src == $HOST6_A")
    from_b=$(decrypted_count "$pcap" "$B/esp_sa" "esp && icmpv6 && ipv6.src == $HOST6_B")
    check "$label: tshark finds IPv6 inside the ESP both ways ($from_a from hosta, $from_b from hostb)" \
        [ "$from_a" -ge 400 -a "$from_b" -ge 400 ]
    local f=$B/stats.json
    sleep 1.5 # the stats file is written every second
    check "$label: wasmsec dropped nothing for selectors ($(stat "$f" inbound_drops.selector_mismatch))" \
        [ "$(stat "$f" inbound_drops.selector_mismatch)" -eq 0 ]
    check "$label: wasmsec found no malformed inner packet ($(stat "$f" inbound_drops.malformed))" \
        [ "$(stat "$f" inbound_drops.malformed)" -eq 0 ]
    check "$label: wasmsec wrote the bursts to its TUN device (>= 2,700 packets: $(stat "$f" tun_tx_packets))" \
        [ "$(stat "$f" tun_tx_packets)" -ge 2700 ]
    cleanup_case
}

run_case initiator
run_case responder
finish
