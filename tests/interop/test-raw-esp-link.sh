#!/usr/bin/env bash
# Raw ESP through a packet socket (`[network] raw_esp_send = "link"`,
# issue #16) between two wasmsec gateways, and each way back to the IP
# socket:
#  - TCP (TUN offloads on: super-packets cut by the host) and pings pass;
#    the datagrams left through the packet socket (counted); tshark
#    decrypts the capture of A's WAN link with A's ESP keys and finds valid
#    IPv4 headers, the inner TCP segments, and each SA's sequence numbers
#    strictly increasing; each outer header has the TTL the IP layer
#    would give it (A's namespace's net.ipv4.ip_default_ttl, set to 77).
#  - The queueing priority: A's ESP with DSCP EF outside leaves with the
#    priority the IP layer gives that TOS (4), as A's netdev egress hook
#    counts, whichever socket sent it.
#  - The outer header's TOS: A copies the inner DSCP and ECN (the
#    defaults, `copy_dscp = "out"`, `copy_ecn = true`: RFC 4301 section
#    5.1.2.1, RFC 6040 normal mode); B, whose child says `copy_dscp =
#    "in"` and `copy_ecn = false` over its `[network]`'s "out" and true
#    (strongSwan's per-CHILD_SA options), leaves it 0.
#  - RFC 6040 decapsulation: with A's datagrams marked CE (and re-marked
#    CS1) on the way, B delivers ECT pings marked CE, with the outer DSCP
#    copied in, and drops Not-ECT ones (counted).
#  - With A's neighbour table flushed, A has no next hop for a moment: its
#    datagrams go through the IP socket (counted), whose ARP brings the
#    entry back, and then through the packet socket again; no ping lost.
#  - With the WAN MTU below a large ping's ESP datagram, the packet socket
#    refuses it and the IP layer sends it in fragments (counted); the pings
#    pass.
#  - The default, `raw_esp_send = "auto"` (A started again without the
#    option): the packet socket while nothing hooks A's output path; with an
#    nftables chain on the output hook, everything through the IP socket
#    within a second, and the chain's rule counts the ESP; with the chain
#    gone, the packet socket again.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 200 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
mkdir -p "$A" "$B"
link() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["esp_tx_link"], s["esp_tx_link_fallback"])' "$1/stats.json"; }
ping_ok_size() { nsx "$1" ping -n -c "$3" -s "$4" -i 0.2 -W 2 "$2" | grep -q " 0% packet loss"; }
# settle: the stats file is rewritten every 250 ms.
settle() { sleep 0.6; }

capture wsi-gwa "$STATE/wan.pcap"
nsx wsi-gwa sysctl -qw net.ipv4.ip_default_ttl=77
# The queueing priority of A's EF datagrams, where the qdisc would see it.
nsx wsi-gwa nft add table netdev wsprio
nsx wsi-gwa nft add chain netdev wsprio e '{ type filter hook egress device "wan0" priority 0; }'
nsx wsi-gwa nft add rule netdev wsprio e ip protocol esp ip dscp ef meta priority 0:4 counter
nsx wsi-gwa nft add rule netdev wsprio e ip protocol esp ip dscp ef counter
WASMSEC_NETWORK_EXTRA=$'raw_esp_send = "link"\ncopy_dscp = "out"\ncopy_ecn = true' \
    WASMSEC_CHILD_EXTRA=$'copy_dscp = "in"\ncopy_ecn = false' \
    wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
WASMSEC_NETWORK_EXTRA='raw_esp_send = "link"' WASMSEC_IKE_EXTRA="esp_keylog = \"$A/esp_sa\"" \
    wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
check "tunnel up" wasmsec_up "$A" 20
check "the daemon says raw ESP leaves by the packet socket" grep -q 'raw_esp_send=Link' "$A/wasmsec.log"
check "ping hosta -> hostb" ping_ok wsi-hosta $HOST_B 10
check "ping hostb -> hosta" ping_ok wsi-hostb $HOST_A 10
# DSCP EF with ECT(0): B's echo replies carry the same byte inside.
check "pings with DSCP EF and ECT(0) pass" bash -c "ip netns exec wsi-hosta ping -n -c 3 -i 0.2 -W 2 -Q 0xba $HOST_B | grep -q ' 0% packet loss'"
nsx wsi-hostb iperf3 -s -1 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5
mbit=$(nsx wsi-hosta iperf3 -c $HOST_B -n 20M -S 0xb8 -J 2>/dev/null | python3 -c 'import json,sys
try: print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception: print(0)')
capture_stop
settle
read -r a_link a_ip < <(link "$A")
read -r b_link b_ip < <(link "$B")
echo "TCP $mbit Mbit/s; A: $a_link datagrams by the packet socket, $a_ip by the IP socket; B: $b_link, $b_ip"
check "20 MB of TCP passed ($mbit Mbit/s)" [ "$mbit" -gt 0 ]
check "A sent through the packet socket ($a_link; $a_ip through the IP socket)" [ "$a_link" -gt 10000 -a "$a_ip" -lt 100 ]
check "B too, its ACKs and pings ($b_link)" [ "$b_link" -gt 100 ]
check "no send failed at A" [ "$(stat "$A/stats.json" tx_errors)" -eq 0 ]
read -r prio4 ef < <(nsx wsi-gwa nft list chain netdev wsprio e | grep -o 'packets [0-9]*' | awk '{print $2}' | xargs)
echo "A's ESP with DSCP EF outside: $ef, of them with queueing priority 4: $prio4"
check "A's EF datagrams leave with the IP layer's queueing priority for EF ($prio4 of $ef)" \
    [ "${ef:-0}" -ge 1000 -a "${prio4:-0}" -eq "${ef:-0}" ]

# What tshark makes of A's datagrams: IPv4 headers with valid checksums,
# ESP it decrypts with A's keys, each SA's sequence numbers increasing.
args=(-r "$STATE/wan.pcap" -o esp.enable_encryption_decode:TRUE -o ip.check_checksum:TRUE)
while IFS= read -r line; do args+=(-o "uat:esp_sa:$line"); done <"$A/esp_sa"
# Every occurrence of a field, comma-separated: the outer header's first,
# the decrypted inner one's last.
tshark "${args[@]}" -Y "esp" -T fields -e ip.src -e esp.spi -e esp.sequence -e ip.checksum.status \
    -e tcp.srcport -e icmp.type -e ip.dsfield -e ip.ttl -E occurrence=a -E aggregator=, >"$STATE/esp.tsv" 2>/dev/null
read -r n opened tcp mono bad tcp_ef tcp_out_ef a_echo a_echo_ef b_echo b_echo_zero ttl77 < <(python3 - "$STATE/esp.tsv" "$WAN_A" <<'PY'
import sys
last, mono, n, opened, tcp, bad, ttl77 = {}, 1, 0, 0, 0, 0, 0
tcp_ef = tcp_out_ef = a_echo = a_echo_ef = b_echo = b_echo_zero = 0
for line in open(sys.argv[1]):
    f = [v.split(",") for v in line.rstrip("\n").split("\t")] + [[""]] * 8
    src, spi, seq, csum, sport, icmp, ds = (v[0] for v in f[:7])
    inner_ds = f[6][-1]
    if not seq:
        continue
    outer_ds, inner_ds = int(ds or "0", 0), int(inner_ds or "0", 0)
    if src != sys.argv[2]:
        # B's, copy_dscp = "in": its echo replies carry DSCP EF inside.
        if icmp == "0" and inner_ds & 0xfc == 0xb8:
            b_echo += 1
            b_echo_zero += outer_ds == 0
        continue
    n += 1
    ttl77 += f[7][0] == "77"
    if spi in last and int(seq) <= last[spi]:
        mono = 0
    last[spi] = int(seq)
    bad += csum.strip() != "1"  # 1: good
    tcp += bool(sport)
    opened += bool(sport or icmp)
    if sport and inner_ds == 0xb8:
        tcp_ef += 1
        tcp_out_ef += outer_ds == 0xb8
    if icmp == "8" and inner_ds == 0xba:
        a_echo += 1
        a_echo_ef += outer_ds == 0xba
print(n, opened, tcp, mono, bad, tcp_ef, tcp_out_ef, a_echo, a_echo_ef, b_echo, b_echo_zero, ttl77)
PY
)
echo "tshark: $n ESP datagrams from A (the capture may miss some at this rate), $opened decrypted ($tcp TCP); sequence increasing: $mono; bad IPv4 checksums: $bad"
check "tshark decrypts every captured ESP datagram of A's ($opened of $n), the TCP among them ($tcp)" \
    [ "$n" -ge 1000 -a "$opened" -eq "$n" -a "$tcp" -ge 1000 ]
check "every IPv4 header we wrote has a valid checksum ($bad bad)" [ "$bad" -eq 0 ]
check "ESP sequence numbers strictly increase per SA" [ "$mono" -eq 1 ]
check "every outer header has the namespace's default TTL, 77 ($ttl77 of $n)" [ "$ttl77" -eq "$n" ]
echo "DSCP: A's TCP with EF inside $tcp_ef, EF outside $tcp_out_ef; A's echo requests with EF+ECT(0) inside $a_echo, the same outside $a_echo_ef; B's echo replies with EF inside $b_echo, 0 outside $b_echo_zero"
check "A copies the inner DSCP to the outer header ($tcp_out_ef of $tcp_ef TCP datagrams)" \
    [ "$tcp_ef" -ge 1000 -a "$tcp_out_ef" -eq "$tcp_ef" ]
check "... and the ECN field ($a_echo_ef of $a_echo echo requests with EF and ECT(0))" [ "$a_echo" -ge 1 -a "$a_echo_ef" -eq "$a_echo" ]
check "B, whose child says copy_dscp = \"in\" and copy_ecn = false over its [network], leaves the outer TOS 0 ($b_echo_zero of $b_echo echo replies)" \
    [ "$b_echo" -ge 1 -a "$b_echo_zero" -eq "$b_echo" ]

# RFC 6040 section 4.2: a router between the gateways (here B's own
# prerouting hook, before the raw socket) marks A's ESP datagrams CE and
# re-marks them CS1. Host B counts the echo requests that reach it marked
# CE, with CS1 (B copies the outer DSCP in).
nsx wsi-gwb nft add table ip wsecn
nsx wsi-gwb nft add chain ip wsecn pre '{ type filter hook prerouting priority -150; }'
nsx wsi-gwb nft add rule ip wsecn pre ip protocol esp ip ecn set ce
nsx wsi-gwb nft add rule ip wsecn pre ip protocol esp ip dscp set cs1
nsx wsi-hostb nft add table ip wsecn
nsx wsi-hostb nft add chain ip wsecn in '{ type filter hook input priority 0; }'
nsx wsi-hostb nft add rule ip wsecn in icmp type echo-request ip dscp cs1 ip ecn ce counter
ecn0=$(stat "$B/stats.json" rx_ecn_drops)
check "ECT(0) pings pass with the outer header marked CE" \
    bash -c "ip netns exec wsi-hosta ping -n -c 5 -i 0.2 -W 2 -Q 0x02 $HOST_B | grep -q ' 0% packet loss'"
ce=$(nsx wsi-hostb nft list chain ip wsecn in | grep -o 'packets [0-9]*' | awk '{print $2}')
check "... and reach host B marked CE, with the outer DSCP CS1 ($ce)" [ "${ce:-0}" -ge 5 ]
check "Not-ECT pings under a CE outer header are dropped" \
    bash -c "ip netns exec wsi-hosta ping -n -c 3 -i 0.2 -W 1 $HOST_B | grep -q ' 100% packet loss'"
settle
ecn1=$(stat "$B/stats.json" rx_ecn_drops)
check "... and counted at B ($((ecn1 - ecn0)))" [ "$((ecn1 - ecn0))" -eq 3 ]
nsx wsi-gwb nft delete table ip wsecn
check "pings pass again without the marks" ping_ok wsi-hosta $HOST_B 3

# No next hop for a moment: the neighbour table flushed.
read -r link0 ip0 < <(link "$A")
nsx wsi-gwa ip neigh flush dev wan0
sleep 1.1 # the next hop in use is asked again after a second
check "pings pass with A's neighbour table flushed" ping_ok wsi-hosta $HOST_B 20
settle
read -r link1 ip1 < <(link "$A")
echo "A after the flush: $((link1 - link0)) by the packet socket, $((ip1 - ip0)) by the IP socket"
# Pings leave every 200 ms, and a peer without a next hop is asked again
# after 100 ms: once ARP has answered, the next ping takes the packet socket.
check "without a next hop A sent through the IP socket, and only until ARP answered ($((ip1 - ip0)))" \
    [ "$((ip1 - ip0))" -ge 1 -a "$((ip1 - ip0))" -le 2 ]
check "... and, once the IP layer resolved it, through the packet socket again ($((link1 - link0)))" [ "$((link1 - link0))" -ge 10 ]
check "the kernel has the neighbour again" bash -c "ip -n wsi-gwa neigh show $WAN_B dev wan0 | grep -q lladdr"

# A datagram larger than the link's MTU: the packet socket refuses it,
# the IP layer fragments it (both ends of the WAN link at 1,280, so that
# the fragments of B's answers fit A's side too).
nsx wsi-gwa ip link set wan0 mtu 1280
nsx wsi-gwb ip link set wan0 mtu 1280
check "1,300-byte pings pass with the WAN MTU at 1,280" ping_ok_size wsi-hosta $HOST_B 5 1300
settle
read -r link2 ip2 < <(link "$A")
echo "A with MTU 1280: $((link2 - link1)) by the packet socket, $((ip2 - ip1)) by the IP socket"
check "the oversized datagrams went through the IP socket ($((ip2 - ip1)))" [ "$((ip2 - ip1))" -ge 5 ]
check "... and nothing failed to send" [ "$(stat "$A/stats.json" tx_errors)" -eq 0 ]
nsx wsi-gwa ip link set wan0 mtu 1500
nsx wsi-gwb ip link set wan0 mtu 1500
check "small pings still leave by the packet socket" ping_ok wsi-hosta $HOST_B 5
settle
read -r link3 _ < <(link "$A")
check "... counted ($((link3 - link2)))" [ "$((link3 - link2))" -ge 5 ]

# The default, "auto": A again, without raw_esp_send.
kill -TERM "$(cat "$A/pid")"
for _ in $(seq 50); do kill -0 "$(cat "$A/pid")" 2>/dev/null || break; sleep 0.1; done
A=$STATE/A-auto
wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
check "auto: tunnel up" wasmsec_up "$A" 20
check "auto: nothing hooks A's output path, so the packet socket" \
    grep -q 'raw ESP through the packet socket: nothing hooks the output path' "$A/wasmsec.log"
check "auto: pings pass" ping_ok wsi-hosta $HOST_B 5
settle
read -r link4 ip4 < <(link "$A")
check "auto: ... through the packet socket ($link4, $ip4 through the IP socket)" [ "$link4" -ge 5 ]
# An operator's rule on the output path must see our ESP.
nsx wsi-gwa nft add table ip wsout
nsx wsi-gwa nft add chain ip wsout out '{ type filter hook output priority 0; }'
nsx wsi-gwa nft add rule ip wsout out ip protocol esp counter
sleep 1.2 # looked at again once a second
check "auto: pings pass with an nftables output chain" ping_ok wsi-hosta $HOST_B 5
settle
read -r link5 ip5 < <(link "$A")
esp_seen=$(nsx wsi-gwa nft list chain ip wsout out | grep -o 'packets [0-9]*' | awk '{print $2}')
echo "auto with an output chain: $((link5 - link4)) by the packet socket, $((ip5 - ip4)) by the IP socket; the chain counted ${esp_seen:-0}"
check "auto: ... all through the IP socket ($((link5 - link4)) by the packet socket, $((ip5 - ip4)) by the IP socket)" \
    [ "$((link5 - link4))" -eq 0 -a "$((ip5 - ip4))" -ge 5 ]
check "auto: ... and the output chain's rule saw them (${esp_seen:-0})" [ "${esp_seen:-0}" -ge 5 ]
check "auto: A said why" grep -q 'raw ESP through the IP socket from now on.*reason=nftables chain ip wsout out on the output hook' "$A/wasmsec.log"
nsx wsi-gwa nft delete table ip wsout
sleep 1.2
check "auto: pings pass with the chain gone" ping_ok wsi-hosta $HOST_B 5
settle
read -r link6 ip6 < <(link "$A")
check "auto: ... through the packet socket again ($((link6 - link5)); $((ip6 - ip5)) by the IP socket)" \
    [ "$((link6 - link5))" -ge 5 -a "$((ip6 - ip5))" -le 1 ]
check "auto: A said so" grep -q 'raw ESP through the packet socket again' "$A/wasmsec.log"
finish
