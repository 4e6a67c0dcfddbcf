#!/usr/bin/env bash
# xtask: beside the interop suites (the demo's wsdemo-* namespaces)
# Static-SA ESP between two wasmsec gateways in namespaces (the demo
# topology): traffic flows encrypted, tshark decrypts the capture with the
# configured keys, and hostile packets are dropped and counted while the
# tunnel keeps working. Bounded in time; cleans up on any exit.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"

DIR=$(mktemp -d /tmp/wasmsec-e2e-esp.XXXXXX)
cleanup() { "$WASMSEC_BIN" demo --down >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT

# 1. The demo, left running: ping both ways, only ESP on the wire.
check "demo passes (ping both ways, only ESP-in-UDP on the wire)" \
    "$WASMSEC_BIN" demo --manual --keep --dir "$DIR/demo" --pings 5

# 2. tshark decrypts our ESP with the keys from the config (its ESP SA table).
tshark_args=(-r "$DIR/demo/wan.pcap" -o esp.enable_encryption_decode:TRUE)
while IFS= read -r line; do tshark_args+=(-o "uat:esp_sa:$line"); done < "$DIR/demo/esp_sa"
inner=$(tshark "${tshark_args[@]}" -Y 'esp && icmp' -T fields -e icmp.type 2>/dev/null | sort | uniq -c)
echo "tshark, decrypted inner ICMP types:"; echo "$inner"
requests=$(tshark "${tshark_args[@]}" -Y 'esp && icmp.type == 8' 2>/dev/null | wc -l)
replies=$(tshark "${tshark_args[@]}" -Y 'esp && icmp.type == 0' 2>/dev/null | wc -l)
check "tshark decrypts >= 10 echo requests inside ESP ($requests)" [ "$requests" -ge 10 ]
check "tshark decrypts >= 10 echo replies inside ESP ($replies)" [ "$replies" -ge 10 ]
undecrypted=$(tshark -r "$DIR/demo/wan.pcap" -Y icmp 2>/dev/null | wc -l)
check "without the keys tshark sees no ICMP ($undecrypted)" [ "$undecrypted" -eq 0 ]
# Same SA table with every key replaced by zeros of the same length.
zeroed=$(head -1 "$DIR/demo/esp_sa" | python3 -c 'import sys
f=sys.stdin.read().strip().split("\",\"")
f[5]="0x"+"0"*(len(f[5])-2)
print("\",\"".join(f))')
# Garbage from a wrong key can parse as ICMP by chance (a 1-in-65,536
# next-header and protocol match); its checksum will not be good.
wrong=$(tshark -r "$DIR/demo/wan.pcap" -o esp.enable_encryption_decode:TRUE -o "uat:esp_sa:$zeroed" \
    -Y 'icmp.checksum.status == 1' 2>/dev/null | wc -l)
good=$(tshark "${tshark_args[@]}" -Y 'icmp.checksum.status == 1' 2>/dev/null | wc -l)
check "with the right keys the same filter finds the 20 echoes ($good)" [ "$good" -ge 20 ]
check "tshark accepts the zero-key table" tshark -r "$DIR/demo/wan.pcap" -o esp.enable_encryption_decode:TRUE -o "uat:esp_sa:$zeroed" -c 1
check "with a wrong key tshark decrypts nothing ($wrong)" [ "$wrong" -eq 0 ]

# 3. Hostile packets from gwa's namespace to gwb: each kind lands on its counter.
STATS=$DIR/demo/gwb-stats.json
inject() { ip netns exec wsdemo-gwa python3 "$ROOT/tests/e2e/inject.py" "$1" "$DIR/demo/wan.pcap" 198.18.0.1 198.18.0.2 "$2" >/dev/null; }
expect_delta() { # KIND COUNT COUNTER
    local before after i
    before=$(stat "$STATS" "$3")
    inject "$1" "$2"
    # The stats file is rewritten every 250 ms and a loaded machine may
    # take a while to get to the packets: wait (up to 10 s) for the count
    # to arrive, then two more rewrites, so that counting too many fails too.
    for i in $(seq 50); do
        after=$(stat "$STATS" "$3")
        [ "$((after - before))" -ge "$2" ] && break
        sleep 0.2
    done
    sleep 0.6
    after=$(stat "$STATS" "$3")
    check "$1 x$2 dropped and counted as $3 ($before -> $after)" [ "$((after - before))" -eq "$2" ]
}
delivered_before=$(stat "$STATS" tun_tx_packets)
expect_delta replay 3 inbound_drops.replay
expect_delta wrong-spi 2 inbound_drops.unknown_spi
expect_delta bad-icv 2 inbound_drops.integrity_failed
# A forger who read the SPI off the wire: hundreds of bad ICVs within a
# second are the packets' failures, not the guest's; its instance must not
# be struck and replaced for them (over 64 protocol errors in a second).
expect_delta bad-icv 300 inbound_drops.integrity_failed
expect_delta truncated 2 inbound_drops.malformed
expect_delta runt 2 rx_runts
expect_delta keepalive 1 keepalives_rx
check "no hostile packet was delivered" [ "$(stat "$STATS" tun_tx_packets)" -eq "$delivered_before" ]
check "the honest guest dropped the replays itself: none it missed ($(stat "$STATS" esp_rx_replays_missed))" \
    [ "$(stat "$STATS" esp_rx_replays_missed)" -eq 0 ]
check "the data path's peer table holds the manual tunnel's one peer ($(stat "$STATS" peers))" [ "$(stat "$STATS" peers)" -eq 1 ]
check "the receiving guest never trapped" [ "$(stat "$STATS" guest_restarts)" -eq 0 ]
check "no protocol error was held against a guest ($(stat "$STATS" guest_protocol_errors))" [ "$(stat "$STATS" guest_protocol_errors)" -eq 0 ]

# 4. Still alive and still passing traffic after all of that.
check "gwb daemon still running" test -n "$(ip netns pids wsdemo-gwb)"
check "ping still works after the attack" ip netns exec wsdemo-hosta ping -n -c 3 -i 0.2 -W 2 198.18.2.10

# 5. A manual tunnel's own outer DSCP and ECN (`manual.copy_dscp`,
# `manual.copy_ecn`): gwa's tunnel says "no" and false over [network]'s
# "out" and true; gwb's keeps [network]'s. Both daemons start again (a
# restarted sender's sequence numbers start at 1, which the other's window
# would refuse; the IV reservations keep the nonces apart across it).
daemons() { local ns p; for ns in wsdemo-gwa wsdemo-gwb; do for p in $(ip netns pids $ns); do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = wasmsec ] && echo "$p"; done; done; }
for p in $(daemons); do kill -TERM "$p"; done
for _ in $(seq 50); do [ -z "$(daemons)" ] && break; sleep 0.1; done
check "the demo's daemons stopped" [ -z "$(daemons)" ]
printf 'copy_dscp = "no"\ncopy_ecn = false\n' >>"$DIR/demo/gwa.toml"
for gw in gwa gwb; do
    ip netns exec wsdemo-$gw "$WASMSEC_BIN" run --config "$DIR/demo/$gw.toml" --stats-file "$DIR/demo/$gw-stats.json" \
        >"$DIR/demo/$gw-again.log" 2>&1 </dev/null &
done
routed() { ip -n wsdemo-gwa route show 198.18.2.0/24 | grep -q wsec0 && ip -n wsdemo-gwb route show 198.18.1.0/24 | grep -q wsec0; }
for _ in $(seq 100); do routed && break; sleep 0.1; done
check "both daemons up again, gwa with its tunnel's own copy_dscp and copy_ecn" routed
ip netns exec wsdemo-gwa tcpdump -i wan0 -n -U -w "$DIR/tos.pcap" udp port 4500 2>"$DIR/tos.err" &
CAP=$!
for _ in $(seq 50); do grep -q "listening on" "$DIR/tos.err" && break; sleep 0.1; done
# DSCP EF with ECT(0) inside; host B's echo replies carry the same DSCP.
check "pings with DSCP EF and ECT(0) pass" ip netns exec wsdemo-hosta ping -n -c 5 -i 0.2 -W 2 -Q 0xba 198.18.2.10
sleep 0.3; kill -INT "$CAP"; wait "$CAP" 2>/dev/null || true
# The outer TOS bytes of the ESP datagrams (not the 1-byte keepalives), by sender.
read -r a_tos b_tos < <(python3 - "$DIR/tos.pcap" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
off, seen = 24, {"198.18.0.1": set(), "198.18.0.2": set()}
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]
    ip = data[off + 16 + 14: off + 16 + incl]; off += 16 + incl
    src = ".".join(map(str, ip[12:16]))
    if len(ip) > 20 + 8 + 1 and src in seen:
        seen[src].add("%#04x" % ip[1])
print(",".join(sorted(seen["198.18.0.1"])) or "none", ",".join(sorted(seen["198.18.0.2"])) or "none")
PY
)
echo "outer TOS: gwa's ESP $a_tos (its tunnel: copy_dscp \"no\", copy_ecn false), gwb's $b_tos ([network]'s)"
check "gwa's tunnel sends DSCP 0 and Not-ECT outside ($a_tos)" [ "$a_tos" = 0x00 ]
check "gwb's, with [network]'s defaults, copies EF outside ($b_tos)" bash -c "[[ '$b_tos' =~ ^0xb[89a]$ ]]"

finish
