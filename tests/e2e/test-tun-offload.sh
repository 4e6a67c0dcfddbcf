#!/usr/bin/env bash
# xtask: beside the interop suites (the demo's wsdemo-* namespaces)
# TUN offloads and UDP GSO (issue #16): TCP through the demo tunnel with
# TSO and GSO on, then with the kernel's TUNSETOFFLOAD refused, then with
# UDP GSO failing.
#  - With offloads, gwa reads TCP super-packets (counted) and cuts them
#    itself; tshark decrypts the capture of the gateway link and finds every
#    inner TCP segment within the MTU with a valid checksum, and each SA's
#    ESP sequence numbers strictly increasing.
#  - gwb joins the TCP segments it opens into super-packets for its TUN
#    device (counted); host B's link, with TSO and checksum offload off,
#    sees them cut back into segments within the MTU with valid checksums.
#  - Refused (WASMSEC_TEST_REFUSE_TUN_OFFLOAD=1, as an old kernel or a
#    sandbox would), the daemon says so, reads packet by packet and the same
#    TCP transfer still completes.
#  - With UDP GSO failing with EIO (WASMSEC_TEST_UDP_GSO_EIO=1, what a
#    device without checksum offload answers), the daemon says so once and
#    sends datagram by datagram; the transfer completes.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"

DIR=$(mktemp -d /tmp/wasmsec-e2e-tso.XXXXXX)
IPERF=
cleanup() {
    [ -n "$IPERF" ] && kill "$IPERF" 2>/dev/null
    "$WASMSEC_BIN" demo --down >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT

stat_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# tcp_run: 20 MB of iperf3 TCP host A -> host B (a capture tshark decrypts
# in seconds); prints Mbit/s received.
# Extra arguments go to the iperf3 client.
tcp_run() {
    ip netns exec wsdemo-hostb iperf3 -s -1 >/dev/null 2>&1 &
    IPERF=$!
    sleep 0.5
    ip netns exec wsdemo-hosta iperf3 -c 198.18.2.10 -n 20M -J "$@" 2>/dev/null | python3 -c 'import json,sys
try: print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception: print(0)'
    wait "$IPERF" 2>/dev/null || true
    IPERF=
}

# 1. Offloads granted.
check "demo up with TUN offloads" "$WASMSEC_BIN" demo --manual --keep --dir "$DIR/on" --pings 2
# What the capture at gwa sees of gwa's GSO sends: each datagram cut.
gso_cut wsdemo-gwa
ip netns exec wsdemo-gwa tcpdump -i wan0 -n -U -w "$DIR/tso.pcap" udp port 4500 2>"$DIR/tcpdump.err" &
CAP=$!
# gwb joins what it opens into super-packets for its TUN device; the kernel
# forwards them to its LAN, where with TSO and checksum offload off they are
# cut in software before the capture point: what host B gets is seen.
ip netns exec wsdemo-gwb ethtool -K lan0 tso off tx off >/dev/null
ip netns exec wsdemo-gwb tcpdump -i lan0 -n -U -w "$DIR/lan.pcap" tcp and src host 198.18.1.10 2>"$DIR/tcpdump-lan.err" &
CAP_LAN=$!
for _ in $(seq 50); do grep -q "listening on" "$DIR/tcpdump.err" && grep -q "listening on" "$DIR/tcpdump-lan.err" && break; sleep 0.1; done
# DSCP AF41 on the inner segments: each UDP GSO send carries it to the
# outer headers (`[network] copy_dscp`, default "out").
mbit=$(tcp_run -S 0x88)
sleep 0.3; kill -INT "$CAP" "$CAP_LAN"; wait "$CAP" "$CAP_LAN" 2>/dev/null || true
echo "TCP through the tunnel with offloads: $mbit Mbit/s"
check "TCP passes with offloads ($mbit Mbit/s)" [ "$mbit" -gt 0 ]
sleep 1.2  # the stats file is rewritten every second
supers=$(stat_of "$DIR/on/gwa-stats.json" tun_rx_super)
segs=$(stat_of "$DIR/on/gwa-stats.json" tun_rx_packets)
echo "gwa: $supers TCP super-packets read, $segs packets after cutting"
check "gwa read TCP super-packets and cut them ($supers -> $segs)" [ "$supers" -gt 0 -a "$segs" -gt "$supers" ]
check "gwa sent with UDP GSO (no refusal logged)" bash -c "! grep -q 'UDP GSO refused' '$DIR/on/gwa.log'"
check "no offload header gwa could not follow" [ "$(stat_of "$DIR/on/gwa-stats.json" tun_rx_malformed)" -eq 0 ]
joined=$(stat_of "$DIR/on/gwb-stats.json" tun_tx_joined)
written=$(stat_of "$DIR/on/gwb-stats.json" tun_tx_packets)
echo "gwb: $written opened packets written to its TUN device, in $joined joined super-packets and single writes"
check "gwb joined opened TCP segments into super-packets ($joined for $written)" [ "$joined" -gt 0 -a "$written" -gt "$joined" ]
# What reached host B's link, cut again in software (the checksums too):
# each segment within the MTU, with a valid TCP checksum.
tshark -r "$DIR/lan.pcap" -o tcp.check_checksum:TRUE -T fields -e ip.len -e tcp.checksum.status \
    >"$DIR/lan.tsv" 2>/dev/null
read -r lan_n lan_big lan_bad < <(awk -F'\t' '{n++; if ($1 > 1500) big++; if ($2 != 1) bad++}
    END {print n+0, big+0, bad+0}' "$DIR/lan.tsv")
echo "host B's link: $lan_n segments from host A, $lan_big above 1500 bytes, $lan_bad bad TCP checksums"
check "the joined super-packets reached host B cut back into segments ($lan_n, $lan_big too big)" \
    [ "$lan_n" -ge 1000 -a "$lan_big" -eq 0 ]
check "... each with a valid TCP checksum ($lan_bad bad)" [ "$lan_bad" -eq 0 ]
# RFC 6040 decapsulation of ESP in UDP (the outer TOS from IP_RECVTOS):
# gwb's prerouting hook, standing in for a congested router, marks every
# datagram to 4500 CE. ECT(0) pings reach host B marked CE (its input
# hook counts them); Not-ECT pings are dropped and counted.
ip netns exec wsdemo-gwb nft add table ip wsecn
ip netns exec wsdemo-gwb nft add chain ip wsecn pre '{ type filter hook prerouting priority -150; }'
ip netns exec wsdemo-gwb nft add rule ip wsecn pre udp dport 4500 ip ecn set ce
ip netns exec wsdemo-hostb nft add table ip wsecn
ip netns exec wsdemo-hostb nft add chain ip wsecn in '{ type filter hook input priority 0; }'
ip netns exec wsdemo-hostb nft add rule ip wsecn in icmp type echo-request ip ecn ce counter
ecn0=$(stat_of "$DIR/on/gwb-stats.json" rx_ecn_drops)
check "ECT(0) pings pass under a CE outer header" \
    bash -c "ip netns exec wsdemo-hosta ping -n -c 5 -i 0.2 -W 2 -Q 0x02 198.18.2.10 | grep -q ' 0% packet loss'"
ce=$(ip netns exec wsdemo-hostb nft list chain ip wsecn in | grep -o 'packets [0-9]*' | awk '{print $2}')
check "... and reach host B marked CE ($ce)" [ "${ce:-0}" -ge 5 ]
check "Not-ECT pings under a CE outer header are dropped" \
    bash -c "ip netns exec wsdemo-hosta ping -n -c 3 -i 0.2 -W 1 198.18.2.10 | grep -q ' 100% packet loss'"
sleep 1.2
ecn1=$(stat_of "$DIR/on/gwb-stats.json" rx_ecn_drops)
check "... and counted at gwb ($((ecn1 - ecn0)))" [ "$((ecn1 - ecn0))" -eq 3 ]
"$WASMSEC_BIN" demo --down >/dev/null 2>&1

tshark_args=(-r "$DIR/tso.pcap" -o esp.enable_encryption_decode:TRUE -o tcp.check_checksum:TRUE)
while IFS= read -r line; do tshark_args+=(-o "uat:esp_sa:$line"); done < "$DIR/on/esp_sa"
tshark "${tshark_args[@]}" -Y 'esp && tcp && ip.src == 198.18.1.10' \
    -T fields -e esp.spi -e esp.sequence -e ip.len -e tcp.checksum.status -E occurrence=l >"$DIR/inner.tsv" 2>/dev/null
python3 - "$DIR/inner.tsv" >"$DIR/inner.txt" <<'PY'
import sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l.strip()]
last, mono, big, bad = {}, True, 0, 0
for spi, seq, iplen, status in rows:
    seq = int(seq)
    if spi in last and seq <= last[spi]:
        mono = False
    last[spi] = seq
    big += int(iplen) > 1400
    bad += status.strip() != "1"  # 1: good, 0: bad, 2: not verified
print(len(rows), int(mono), big, bad)
PY
read -r n mono big bad <"$DIR/inner.txt"
echo "tshark: $n inner TCP segments from host A decrypted; ESP seq increasing: $mono; above the MTU: $big; bad TCP checksums: $bad"
check "tshark decrypts the offloaded flow's segments ($n)" [ "$n" -ge 100 ]
check "ESP sequence numbers strictly increase per SA" [ "$mono" -eq 1 ]
check "every cut segment fits the TUN MTU ($big above)" [ "$big" -eq 0 ]
check "every cut segment has a valid TCP checksum ($bad bad)" [ "$bad" -eq 0 ]
# The same datagrams' outer headers: the inner DSCP copied (the data
# streams' AF41, and 0 for iperf3's control connection).
tshark "${tshark_args[@]}" -Y 'esp && tcp && ip.src == 198.18.1.10' -T fields -e ip.dsfield \
    -E occurrence=a -E aggregator=, 2>/dev/null >"$DIR/dscp.tsv"
read -r af41 copied all < <(python3 -c 'import sys
rows = [[int(v, 0) for v in l.split(",")] for l in open(sys.argv[1]).read().split()]
print(sum(r[-1] == 0x88 for r in rows), sum(r[0] == r[-1] & 0xFC for r in rows), len(rows))' "$DIR/dscp.tsv")
echo "outer DSCP: $copied of $all datagrams carry the inner one; $af41 with AF41 inside"
check "each ESP datagram carries its inner DSCP outside ($copied of $all, $af41 AF41)" \
    [ "$af41" -ge 1000 -a "$copied" -eq "$all" ]

# 2. Offloads refused.
check "demo up with TUNSETOFFLOAD refused" env WASMSEC_TEST_REFUSE_TUN_OFFLOAD=1 \
    "$WASMSEC_BIN" demo --manual --keep --dir "$DIR/off" --pings 2
check "the daemon says the offloads were refused" grep -q "TUN offloads refused" "$DIR/off/gwa.log"
mbit=$(tcp_run)
echo "TCP through the tunnel without offloads: $mbit Mbit/s"
check "TCP passes without offloads ($mbit Mbit/s)" [ "$mbit" -gt 0 ]
sleep 1.2
check "no super-packets without offloads" [ "$(stat_of "$DIR/off/gwa-stats.json" tun_rx_super)" -eq 0 ]
"$WASMSEC_BIN" demo --down >/dev/null 2>&1

# 3. UDP GSO failing.
check "demo up with UDP GSO failing" env WASMSEC_TEST_UDP_GSO_EIO=1 \
    "$WASMSEC_BIN" demo --manual --keep --dir "$DIR/nogso" --pings 2
mbit=$(tcp_run)
echo "TCP through the tunnel without UDP GSO: $mbit Mbit/s"
check "TCP passes without UDP GSO ($mbit Mbit/s)" [ "$mbit" -gt 0 ]
check "the daemon says UDP GSO was refused" grep -q "UDP GSO refused" "$DIR/nogso/gwa.log"
sleep 1.2
check "nothing failed to send ($(stat_of "$DIR/nogso/gwa-stats.json" tx_errors) errors)" \
    [ "$(stat_of "$DIR/nogso/gwa-stats.json" tx_errors)" -eq 0 ]
finish
