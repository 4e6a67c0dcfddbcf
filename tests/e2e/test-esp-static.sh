#!/usr/bin/env bash
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

finish
