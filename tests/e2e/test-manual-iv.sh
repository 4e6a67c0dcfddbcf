#!/usr/bin/env bash
# xtask: beside the interop suites (the demo's wsdemo-* namespaces)
# Manual AES-GCM keys never repeat a nonce: the same key after every restart
# must not start its IV counter at 1 again (RFC 4106 section 3.1). Two
# gateways with static SAs (the demo topology) carry a steady ping while
# the gateways are restarted three times; a capture of the WAN link must
# hold no (SPI, IV) pair twice. Also: `wasmsec check` refuses one key for
# two SAs and key files others can read. Bounded in time; cleans up.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"

DIR=$(mktemp -d /tmp/wasmsec-e2e-iv.XXXXXX)
CAP_PID=""
PING_PID=""
cleanup() {
    [ -n "$PING_PID" ] && kill "$PING_PID" 2>/dev/null
    [ -n "$CAP_PID" ] && kill "$CAP_PID" 2>/dev/null
    "$WASMSEC_BIN" demo --down >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
D=$DIR/demo

check "demo with manual AES-256-GCM keys comes up" "$WASMSEC_BIN" demo --manual --keep --dir "$D" --pings 2

ip netns exec wsdemo-gwa tcpdump -i wan0 -n -U -w "$DIR/iv.pcap" udp port 4500 2>/dev/null &
CAP_PID=$!
sleep 1
# A steady ping that outlives the gateways' restarts (-O: say when a reply is missing).
ip netns exec wsdemo-hosta ping -n -O -i 0.05 198.18.2.10 >"$DIR/ping.txt" 2>&1 &
PING_PID=$!
sleep 2

# restart GW: stop the daemon of namespace wsdemo-GW (ours: the demo started
# it) by PID, start it again with its config, wait until pings pass again.
restart() {
    local gw=$1 pid
    # The daemon among the namespace's processes (tcpdump runs there too).
    for pid in $(ip netns pids "wsdemo-$gw"); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = wasmsec ] && break
    done
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ip netns exec "wsdemo-$gw" "$WASMSEC_BIN" run --config "$D/$gw.toml" --stats-file "$D/$gw-stats.json" \
        >>"$D/$gw.log" 2>&1 </dev/null &
    for _ in $(seq 100); do
        ip netns exec wsdemo-hosta ping -n -c 1 -W 1 198.18.2.10 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}
for gw in gwa gwb gwa; do
    check "traffic passes again after restarting $gw" restart "$gw"
    sleep 2
done
# The manual tunnel's own traffic, by its name, in the stats gwa writes
# (and in /metrics as wasmsec_sa_packets_total{connection="demo"}).
manual_counts() {
    python3 - "$D/gwa-stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m = s["manual"]["demo"]
ok = m["out_packets"] >= 10 and m["in_packets"] >= 10 and m["out_packets"] <= s["esp_tx_packets"]
print(m, "esp_tx_packets", s["esp_tx_packets"])
sys.exit(0 if ok else 1)
PY
}
check "gwa counts the manual tunnel's packets both ways under its name" manual_counts
kill "$PING_PID" 2>/dev/null || true; PING_PID=""
sleep 0.5
kill "$CAP_PID" 2>/dev/null || true; wait "$CAP_PID" 2>/dev/null || true; CAP_PID=""
echo "ping: $(tail -2 "$DIR/ping.txt" | head -1)"

# Every ESP-in-UDP packet: SPI and the 8-byte IV after the sequence number.
report=$(python3 - "$DIR/iv.pcap" <<'PY'
import struct, sys
from collections import Counter
data = open(sys.argv[1], "rb").read()
link = struct.unpack_from("<I", data, 20)[0]
off, seen, n = 24, Counter(), 0
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]
    pkt = data[off + 16: off + 16 + incl]
    off += 16 + incl
    ip = pkt[14:] if link == 1 else pkt[16:]   # Ethernet or Linux cooked
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        continue
    udp = ip[(ip[0] & 15) * 4:]
    esp = udp[8:]
    if len(esp) < 16 or esp[:4] == b"\0\0\0\0":
        continue                                # keepalive or IKE
    seen[(esp[:4], esp[8:16])] += 1
    n += 1
repeats = sum(1 for c in seen.values() if c > 1)
spis = len({k[0] for k in seen})
print(n, spis, repeats)
PY
)
read -r packets spis repeats <<<"$report"
echo "capture: $packets ESP packets under $spis SPIs, $repeats (SPI, IV) pairs seen twice"
check "the capture holds traffic from before and after the restarts ($packets packets)" [ "${packets:-0}" -ge 200 ]
check "both directions' SPIs are in it ($spis)" [ "${spis:-0}" -eq 2 ]
check "no (SPI, IV) pair appears twice" [ "${repeats:-1}" -eq 0 ]
state=$(ls "$D"/state-198.18.0.1/manual-iv-* 2>/dev/null | head -1)
check "gwa keeps its IV reservation in its state directory" test -n "$state"
check "the reservation file is 0600" [ "$(command stat -c %a "$state")" = 600 ]
check "the state directory is 0700" [ "$(command stat -c %a "$D/state-198.18.0.1")" = 700 ]

# One key for two SAs, and a key file others can read, are refused up front.
sed 's/^in_key = .*/in_key = "file:a-to-b.key"/' "$D/gwa.toml" >"$D/same-key.toml"
out=$("$WASMSEC_BIN" check --config "$D/same-key.toml" 2>&1 || true)
check "check refuses one key for two SAs, saying why" grep -q "same key material" <<<"$out"
cp "$D/gwa.toml" "$D/loose.toml"
chmod 644 "$D/b-to-a.key"
out=$("$WASMSEC_BIN" check --config "$D/loose.toml" 2>&1 || true)
check "check refuses a key file others can read, saying how to fix it" grep -q "chmod 600" <<<"$out"
chmod 600 "$D/b-to-a.key"
check "check accepts the original config" "$WASMSEC_BIN" check --config "$D/gwa.toml"
finish
