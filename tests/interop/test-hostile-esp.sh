#!/usr/bin/env bash
# Deliberately hostile ESP guests under the real host (tests/hostile/esp).
# Gateway A serves two manually keyed tunnels to gateway B (hostile-lib.sh):
# "honest" (the project's ESP component) and "hostile" (hostile-esp.wasm,
# whose attack the SPI picks). For each attack, pings cross both tunnels
# while A's WAN is captured; then:
#  - the attack was refused and counted (guest protocol errors), or the
#    guest was replaced (loop, hoarding, trap);
#  - no unsealed packet reached the WAN (no UDP/4500 payload that is an IP
#    packet between the LANs), and nothing unopened reached the TUN (A wrote
#    to it exactly the packets the honest tunnel delivered);
#  - the honest tunnel kept forwarding throughout (at most 5 % ping loss).
# And an ESP guest with no replay check: recent ESP packets sent again do
# not reach the LAN (the host opens no number a key authenticated), nor do
# older ones left of an IKE child's replay_window.
# And an ESP guest refusing an IKE CHILD SA's install: the CHILD SA is
# deleted with the peer, not left up unserved; and one ignoring its SAs'
# packet limits: the host seals and delivers no packet past them and
# reports the expiry the guest kept quiet; at the soft limit too, so the
# CHILD SA is rekeyed before its hard one.
# (test-hostile-ike.sh has the hostile IKE guests.)
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 400 bash "$0" "$@"
source "$(dirname "$0")/hostile-lib.sh"

# leaks PCAP: UDP/4500 payloads that are IP packets between the LANs.
leaks() {
    python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
link, off, n = struct.unpack_from("<I", data, 20)[0], 24, 0
lans = [bytes([198, 18, x]) for x in (1, 2, 11, 12)]
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]
    pkt = data[off + 16: off + 16 + incl]; off += 16 + incl
    ip = pkt[14:] if link == 1 else pkt[16:]
    if len(ip) < 20 or ip[9] != 17:
        continue
    inner = ip[(ip[0] & 15) * 4 + 8:]
    if len(inner) >= 20 and inner[0] >> 4 == 4 and inner[12:15] in lans and inner[16:19] in lans:
        n += 1
print(n)
PY
}

# An ESP guest that ignores its SAs' byte and packet limits: A's connection
# "limitless" is served by hostile-esp.wasm, which for selectors from
# 198.18.25.0 seals and opens everything and never reports an expiry. A's
# CHILD SAs carry 20 packets each way (B, an honest wasmsec, has no limit).
# limitless_conf A B CHILD: gateway A with the hostile ESP guest for the
# `limitless` connection (198.18.25.0/24 <-> 198.18.26.0/24; CHILD: its
# child's lifetimes), honest B without limits, and the addresses in the
# tunnel the cases send from.
limitless_conf() {
    local A=$1 B=$2
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    (umask 077; printf '%s' "$PSK" >"$A/psk"; printf '%s' "$PSK" >"$B/psk")
    { conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0x00005001 0x00005002 "" "" "$A"
      wasmsec_connection limitless $WAN_A $WAN_B $ID_A $ID_B '["198.18.25.0/24"]' '["198.18.26.0/24"]' start "" "" \
          "esp_component = \"$COMPONENTS/hostile-esp.wasm\"" "$3"; } >"$A/wasmsec.toml"
    { conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A 0x00005002 0x00005001 "" "" "$B"
      wasmsec_connection limitless $WAN_B $WAN_A $ID_B $ID_A '["198.18.26.0/24"]' '["198.18.25.0/24"]' none; } >"$B/wasmsec.toml"
    ip -n wsi-gwa addr replace 198.18.25.1/32 dev lo
    ip -n wsi-gwb addr replace 198.18.26.1/32 dev lo
}
# limitless_down A B: A's status into A/status.json, both stopped, the
# addresses gone; prints whether A was still running (yes/no).
limitless_down() {
    wasmsec_ctl "$1" status >"$1/status.json"
    local alive=no
    kill -0 "$(cat "$1/pid")" 2>/dev/null && alive=yes
    stop "$1" >&2; stop "$2" >&2
    ip -n wsi-gwa addr del 198.18.25.1/32 dev lo 2>/dev/null || true
    ip -n wsi-gwb addr del 198.18.26.1/32 dev lo 2>/dev/null || true
    echo $alive
}
# limitless_counts STATUS: A's guest protocol errors, sa_expired drops and
# unknown_spi drops.
limitless_counts() {
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["esp"]; d=e["inbound_drops"]; print(e["guest_protocol_errors"], d["sa_expired"], d["unknown_spi"])' "$1"
}

run_esp_attack() { # SPI_HIGH WHAT DIRECTION(out|in)
    local hi=$1 what=$2 dir=$3 A=$STATE/esp-$1/A B=$STATE/esp-$1/B
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    # A's hostile tunnel: its outbound SPI picks the encap attack, its
    # inbound SPI the decap attack (tests/hostile/esp/src/lib.rs).
    local hout=0x${hi}000011 hin=0x${hi}000012
    conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B $hout $hin "$COMPONENTS/hostile-esp.wasm" "" "$A" >"$A/wasmsec.toml"
    conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A $hin $hout "" "" "$B" >"$B/wasmsec.toml"
    start wsi-gwa "$A" && start wsi-gwb "$B" || return 1
    ip netns exec wsi-gwa tcpdump -i wan0 -n -U -w "$A/wan.pcap" udp port 4500 2>/dev/null &
    local cap=$!; PIDS+=($cap)
    sleep 1
    nsx wsi-hosta ping -n -i 0.1 -c $PINGS -W 1 198.18.2.10 >"$A/honest.out" 2>&1 &
    local honest=$!
    if [ "$dir" = out ]; then
        nsx wsi-hosta ping -n -i 0.1 -c $PINGS -W 1 -I 198.18.11.10 198.18.12.10 >"$A/hostile.out" 2>&1 &
    else
        nsx wsi-hostb ping -n -i 0.1 -c $PINGS -W 1 -I 198.18.12.10 198.18.11.10 >"$A/hostile.out" 2>&1 &
    fi
    local hostile=$!
    wait $honest $hostile || true
    sleep 0.5
    kill -INT $cap; wait $cap 2>/dev/null || true
    stop "$A"; stop "$B"
    local got errors restarts leaked tun replies
    got=$(grep -c "bytes from" "$A/honest.out" || true)
    errors=$(counter "$A" guest_protocol_errors); restarts=$(counter "$A" guest_restarts)
    leaked=$(leaks "$A/wan.pcap"); tun=$(counter "$A" tun_tx_packets)
    echo "$what: honest pings $got/$PINGS; A: $errors protocol errors, $restarts replacements, $tun packets to its TUN; $leaked leaks on the WAN"
    case $hi in
        a1|a2|a3) check "$what: refused and counted ($errors)" [ "$errors" -gt 0 ] ;;
        *) check "$what: the guest was replaced ($restarts)" [ "$restarts" -gt 0 ] ;;
    esac
    check "$what: nothing unsealed on the WAN ($leaked)" [ "$leaked" -eq 0 ]
    check "$what: A's TUN got only the honest tunnel's replies ($tun <= $got)" [ "$tun" -le "$got" ]
    check "$what: the honest tunnel kept forwarding ($got/$PINGS)" [ "$got" -ge $((PINGS * 95 / 100)) ]
}

run_esp_attack a1 "Send of unsealed packets" out
run_esp_attack a2 "sealing with an inbound key" in
run_esp_attack a3 "Deliver of unopened packets" in
run_esp_attack a4 "a guest that never returns" out
run_esp_attack a5 "a guest that allocates without bound" out
run_esp_attack a6 "a guest that traps on every batch" out

# An ESP guest with no replay check (SPI 0xa7: real ESP, but every packet
# it is given it opens and delivers). Pings from B's LAN host to A's cross
# A's hostile tunnel; then B's last 10 ESP packets on A's WAN are sent to A
# again. A's host must open none of them (their keys authenticated those
# numbers, each within the 64 up to its highest), so none reaches A's LAN:
# counted as refused replays, not held against the guest. Then the same
# with A's tunnel set to `replay_window = 0` (anti-replay off, as for a
# manual SA whose peer's counter restarts with it): the host does not
# overrule the operator, and all 10 are delivered. Last, with a window of
# 100, the first 10 sent again after 200 more: the key's record no longer
# holds them, but they are left of the window, and the host refuses them.
#
# run_esp_replay REPLAY_WINDOW (empty: the default) WHICH EXPECT: 20 pings
# from B's LAN through the hostile tunnel, captured; with WHICH "first",
# 200 more; then B sends A 10 of the captured ESP packets again (the
# capture's last 10, or with "first" its first 10, by then left of a
# window of 100). EXPECT: "refused" by A's host, or "delivered".
run_esp_replay() {
    local window=$1 which=$2 expect=$3 what="an ESP guest with no replay check${1:+, replay_window = $1}"
    what+=", the $which 10 sent again"
    local A=$STATE/esp-replay$1$2/A B=$STATE/esp-replay$1$2/B
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0xa7000011 0xa7000012 "$COMPONENTS/hostile-esp.wasm" "" "$A" |
        sed "${window:+/^name = \"hostile\"/a replay_window = $window}" >"$A/wasmsec.toml"
    conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A 0xa7000012 0xa7000011 "" "" "$B" >"$B/wasmsec.toml"
    start wsi-gwa "$A" && start wsi-gwb "$B" || return 1
    ip netns exec wsi-gwa tcpdump -i wan0 -n -U -w "$A/wan.pcap" udp port 4500 2>"$A/cap.err" &
    local cap=$!; PIDS+=($cap)
    for _ in $(seq 50); do grep -q "listening on" "$A/cap.err" && break; sleep 0.1; done
    nsx wsi-hostb ping -n -i 0.1 -c 20 -W 1 -I 198.18.12.10 198.18.11.10 >"$A/ping.out" 2>&1 || true
    sleep 0.3; kill -INT $cap; wait $cap 2>/dev/null || true
    local got tun0 refused0 missed0 tun refused missed errors more=0
    got=$(grep -c "bytes from" "$A/ping.out" || true)
    if [ "$which" = first ]; then
        nsx wsi-hostb ping -n -q -i 0.005 -c 200 -W 1 -I 198.18.12.10 198.18.11.10 >"$A/ping-more.out" 2>&1 || true
        more=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$A/ping-more.out")
        sleep 0.6 # two rewrites of the stats file
    fi
    tun0=$(counter "$A" tun_tx_packets); refused0=$(counter "$A" esp_rx_replays_refused)
    missed0=$(counter "$A" esp_rx_replays_missed)
    nsx wsi-gwb python3 "$ROOT/tests/e2e/inject.py" replay-$which "$A/wan.pcap" $WAN_B $WAN_A 10 >/dev/null
    # The stats file is rewritten every 250 ms: wait for the count, then
    # two more rewrites, so that a replay delivered late shows too.
    for _ in $(seq 50); do
        [ "$(counter "$A" esp_rx_replays_refused)" -ge $((refused0 + 10)) ] && break
        [ "$expect" = delivered ] && [ "$(counter "$A" tun_tx_packets)" -ge $((tun0 + 10)) ] && break
        sleep 0.2
    done
    sleep 0.6
    local alive=no; kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    # The daemon writes its counters once more as it stops.
    stop "$A"; stop "$B"
    tun=$(counter "$A" tun_tx_packets); refused=$(counter "$A" esp_rx_replays_refused)
    missed=$(counter "$A" esp_rx_replays_missed)
    errors=$(counter "$A" guest_protocol_errors)
    echo "$what: pings $got/20; after 10 replays A's TUN $tun0 -> $tun, refused replays $refused0 -> $refused; $errors protocol errors"
    check "$what: the tunnel carried the pings ($got/20)" [ "$got" -ge 19 ]
    if [ "$which" = first ]; then check "$what: and 200 more ($more/200)" [ "${more:-0}" -ge 190 ]; fi
    if [ "$expect" = refused ]; then
        check "$what: A's host refused the 10 replays ($refused0 -> $refused)" [ "$((refused - refused0))" -eq 10 ]
        check "$what: and counted them as replays the guest missed ($missed0 -> $missed)" [ "$((missed - missed0))" -eq 10 ]
        check "$what: none reached A's LAN (TUN $tun0 -> $tun)" [ "$tun" -eq "$tun0" ]
    else
        check "$what: A's host refused none ($refused0 -> $refused)" [ "$refused" -eq "$refused0" ]
        check "$what: nor counted one as missed ($missed0 -> $missed)" [ "$missed" -eq "$missed0" ]
        check "$what: all 10 reached A's LAN (TUN $tun0 -> $tun)" [ "$tun" -eq $((tun0 + 10)) ]
    fi
    check "$what: none of it held against the guest ($errors protocol errors)" [ "$errors" -eq 0 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}
run_esp_replay "" last refused
run_esp_replay 0 last delivered
# Numbers the key's own record (the 64 up to its highest) no longer
# holds: left of the SA's window, the host refuses them too.
run_esp_replay 100 first refused

# The data path refuses an IKE CHILD SA: A's connection "refused" is served
# by hostile-esp.wasm, which refuses SAs with selectors from 198.18.23.0.
# A must not keep that CHILD SA up with nothing to carry its traffic: it
# counts the refusal, deletes the CHILD SA with B (an honest wasmsec), keeps
# the IKE SA, and does not retry in a loop (the retry delay, a tenth of the
# rekey time). The manual tunnels carry pings meanwhile.
run_install_refused() {
    local what="ESP guest refusing an IKE CHILD SA" A=$STATE/refused/A B=$STATE/refused/B
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    (umask 077; printf '%s' "$PSK" >"$A/psk"; printf '%s' "$PSK" >"$B/psk")
    { conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0x00003001 0x00003002 "" "" "$A"
      wasmsec_connection refused $WAN_A $WAN_B $ID_A $ID_B '["198.18.23.0/24"]' '["198.18.24.0/24"]' start "" "" \
          "esp_component = \"$COMPONENTS/hostile-esp.wasm\""; } >"$A/wasmsec.toml"
    { conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A 0x00003002 0x00003001 "" "" "$B"
      wasmsec_connection refused $WAN_B $WAN_A $ID_B $ID_A '["198.18.24.0/24"]' '["198.18.23.0/24"]' none; } >"$B/wasmsec.toml"
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    nsx wsi-hosta ping -n -i 0.1 -c $PINGS -W 1 198.18.2.10 >"$A/honest.out" 2>&1 || true
    local got failures ike child_a child_b tries alive=no
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    got=$(grep -c "bytes from" "$A/honest.out" || true)
    wasmsec_ctl "$A" status >"$A/status.json"; wasmsec_ctl "$B" status >"$B/status.json"
    failures=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["esp"]["sa_install_failures"])' "$A/status.json")
    ike=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["ike_sas"]))' "$A/status.json")
    child_a=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["child_sas"]))' "$A/status.json")
    child_b=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["child_sas"]))' "$B/status.json")
    tries=$(grep -c "WARN.*CHILD_SA [0-9a-f]*: the data path could not install it" "$A/wasmsec.log" || true)
    stop "$A"; stop "$B"
    echo "$what: honest pings $got/$PINGS; A: $failures SAs not installed, $tries CHILD SAs deleted for it, $ike IKE SAs; CHILD SAs A $child_a, B $child_b"
    check "$what: the refusal was counted ($failures)" [ "$failures" -gt 0 ]
    check "$what: A logged why, the guest's words escaped" grep -q "refused by the guest: no room for this SA\\\\n(a test guest's refusal)" "$A/wasmsec.log"
    check "$what: the CHILD SA was deleted, once, not retried at once ($tries)" [ "$tries" -eq 1 ]
    check "$what: no CHILD SA left up at A ($child_a) or at B ($child_b)" [ $((child_a + child_b)) -eq 0 ]
    check "$what: the IKE SA stays ($ike)" [ "$ike" -eq 1 ]
    check "$what: the honest tunnel kept forwarding ($got/$PINGS)" [ "$got" -ge $((PINGS * 95 / 100)) ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

# A burst of 60 UDP datagrams from B to A's address in the tunnel, then one
# from A to B: each burst arrives within a batch or two, long before any
# expiry report or replacement, so what decides is the host's count alone.
# A's host must deliver at most 20 of B's (the rest counted as sa_expired
# drops), seal at most 20 per outbound SA (none past the limit reaches the
# WAN), report the hard expiry the guest kept quiet (IKE replaces the CHILD
# SA, whose successor carries pings), and hold none of it against the
# guest: the SA ran out, the guest told no lie.
run_esp_over_limit() {
    local what="ESP guest ignoring its SAs' packet limits" A=$STATE/over-limit/A B=$STATE/over-limit/B
    limitless_conf "$A" "$B" "rekey_time = 0
life_packets = 20"
    ip netns exec wsi-gwa tcpdump -i wan0 -n -U -w "$A/wan.pcap" esp or udp port 4500 2>"$A/cap.err" &
    local cap=$!; PIDS+=($cap)
    for _ in $(seq 50); do grep -q "listening on" "$A/cap.err" && break; sleep 0.1; done
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    wasmsec_up "$A" 10 || true
    local first
    first=$(child_spis "$A")
    # burst FROM TO: 60 UDP datagrams to the discard port, back to back.
    burst() { python3 -c 'import socket,sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for _ in range(60): s.sendto(b"x" * 64, (sys.argv[2], 9))' "$1" "$2"; }
    nsx wsi-gwb bash -c "$(declare -f burst); burst 198.18.26.1 198.18.25.1"
    # The hard expiry's report and the CHILD SA's replacement.
    sleep 1.5
    nsx wsi-gwa bash -c "$(declare -f burst); burst 198.18.25.1 198.18.26.1"
    sleep 1.5
    nsx wsi-gwa ping -n -I 198.18.25.1 -i 0.1 -c 5 -W 1 198.18.26.1 >"$A/ping-after.out" 2>&1 || true
    sleep 0.3; kill -INT $cap 2>/dev/null || true; wait $cap 2>/dev/null || true
    local alive
    alive=$(limitless_down "$A" "$B")
    # ESP packets A sent, per SPI, in the order the SPIs first appear.
    local per_spi
    per_spi=$(tcpdump -r "$A/wan.pcap" -n "src host $WAN_A" 2>/dev/null | grep -o 'spi=0x[0-9a-f]*' |
        awk '{ if (!($0 in n)) order[k++] = $0; n[$0]++ } END { for (i = 0; i < k; i++) printf "%s ", n[order[i]] }')
    local errors expired unknown now_spis after
    read -r errors expired unknown <<<"$(limitless_counts "$A/status.json")"
    now_spis=$(spis_of "$A/status.json")
    after=$(grep -c "bytes from" "$A/ping-after.out" || true)
    echo "$what: ESP packets A sent per SPI: $per_spi; inbound sa_expired drops: $expired, unknown_spi: $unknown; protocol errors: $errors; CHILD SAs $first -> $now_spis; pings after: $after/5"
    read -r -a counts <<<"$per_spi"
    local most=0 c
    for c in "${counts[@]}"; do [ "$c" -gt "$most" ] && most=$c; done
    # The 21st is refused by the host's count (sa_expired) and reported;
    # IKE then deletes the CHILD SA, with no inbound linger, so what of the
    # burst comes later (a slow or busy B spreads it) finds no SA at all.
    check "$what: of B's 60 datagrams A delivered at most 20, the rest dropped ($expired sa_expired, $unknown after the SA went)" \
        [ "$expired" -ge 1 -a $((expired + unknown)) -ge 40 ]
    check "$what: of A's 60 an outbound SA sealed exactly its 20, none more (per SPI: $per_spi)" [ "$most" -eq 20 ]
    check "$what: A's host reported the hard limit the guest kept quiet" \
        grep -q "SA at its limit by the host's count before the ESP guest said so.*limit=\"hard\"" "$A/wasmsec.log"
    check "$what: the CHILD SA was replaced ($first -> $now_spis)" \
        replaced "$first" "$now_spis"
    check "$what: its successor carries traffic ($after/5)" [ "$after" -ge 4 ]
    check "$what: none of it held against the guest ($errors protocol errors)" [ "$errors" -eq 0 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

# The same guest keeps quiet at the soft limit too (it never reports an
# expiry): A's host reports it by its own count, so IKE rekeys the CHILD SA
# long before its hard limit, and traffic goes on under the new SAs.
run_esp_quiet_soft_limit() {
    local what="ESP guest keeping quiet at its SAs' soft limit" A=$STATE/quiet-soft/A B=$STATE/quiet-soft/B
    limitless_conf "$A" "$B" "rekey_time = 0
rekey_packets = 10
life_packets = 1000"
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    wasmsec_up "$A" 10 || true
    local first
    first=$(child_spis "$A")
    # 9 or 10 packets each way reach the soft limit (less its jitter).
    nsx wsi-gwa ping -n -I 198.18.25.1 -i 0.2 -c 15 -W 1 198.18.26.1 >"$A/ping.out" 2>&1 || true
    local alive
    alive=$(limitless_down "$A" "$B")
    local errors expired now_spis got
    read -r errors expired _ <<<"$(limitless_counts "$A/status.json")"
    now_spis=$(spis_of "$A/status.json")
    got=$(grep -c "bytes from" "$A/ping.out" || true)
    echo "$what: CHILD SAs $first -> $now_spis; pings $got/15; sa_expired drops: $expired; protocol errors: $errors"
    check "$what: A's host reported the soft limit the guest kept quiet" \
        grep -q "SA at its limit by the host's count before the ESP guest said so.*limit=\"soft\"" "$A/wasmsec.log"
    check "$what: IKE rekeyed the CHILD SA ($first -> $now_spis)" \
        replaced "$first" "$now_spis"
    check "$what: traffic went on across the rekey ($got/15 pings)" [ "$got" -ge 14 ]
    check "$what: no SA reached its hard limit ($expired sa_expired drops)" [ "$expired" -eq 0 ]
    check "$what: none of it held against the guest ($errors protocol errors)" [ "$errors" -eq 0 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

# The same guest opens and delivers every packet of the `limitless`
# connection with no replay check. A's child names `replay_window = 100`
# (ESP in UDP both ways, so that inject.py can send it again): 20 pings
# from B's address in the tunnel, captured, then 200 more; then B's first
# 10 ESP packets are sent to A again, 200 and more below the highest
# number, left of the child's window. A's host refuses all 10, as the
# child's window (not the host's default of 1,024, in which they would
# open) says, and none reaches A.
run_ike_replay_window() {
    local what="IKE: an ESP guest with no replay check, child replay_window = 100" A=$STATE/ike-replay/A B=$STATE/ike-replay/B
    limitless_conf "$A" "$B" "replay_window = 100"
    sed -i 's/^start_action = \(.*\)$/start_action = \1\nencap = true/' "$A/wasmsec.toml" "$B/wasmsec.toml"
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    wasmsec_up "$A" 10 || true
    ip netns exec wsi-gwa tcpdump -i wan0 -n -U -w "$A/wan.pcap" udp port 4500 2>"$A/cap.err" &
    local cap=$!; PIDS+=($cap)
    for _ in $(seq 50); do grep -q "listening on" "$A/cap.err" && break; sleep 0.1; done
    nsx wsi-gwb ping -n -I 198.18.26.1 -i 0.1 -c 20 -W 1 198.18.25.1 >"$A/ping.out" 2>&1 || true
    sleep 0.3; kill -INT $cap; wait $cap 2>/dev/null || true
    nsx wsi-gwb ping -n -q -I 198.18.26.1 -i 0.005 -c 200 -W 1 198.18.25.1 >"$A/ping-more.out" 2>&1 || true
    sleep 0.6 # two rewrites of the stats file
    local got more tun0 refused0 missed0 tun refused missed errors alive
    got=$(grep -c "bytes from" "$A/ping.out" || true)
    more=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$A/ping-more.out")
    tun0=$(counter "$A" tun_tx_packets); refused0=$(counter "$A" esp_rx_replays_refused)
    missed0=$(counter "$A" esp_rx_replays_missed)
    nsx wsi-gwb python3 "$ROOT/tests/e2e/inject.py" replay-first "$A/wan.pcap" $WAN_B $WAN_A 10 >/dev/null
    for _ in $(seq 50); do
        [ "$(counter "$A" esp_rx_replays_refused)" -ge $((refused0 + 10)) ] && break
        sleep 0.2
    done
    sleep 0.6
    alive=$(limitless_down "$A" "$B")
    tun=$(counter "$A" tun_tx_packets); refused=$(counter "$A" esp_rx_replays_refused)
    missed=$(counter "$A" esp_rx_replays_missed)
    errors=$(counter "$A" guest_protocol_errors)
    echo "$what: pings $got/20 and $more/200; after 10 replays A's TUN $tun0 -> $tun, refused replays $refused0 -> $refused; $errors protocol errors"
    check "$what: the tunnel carried the pings ($got/20)" [ "$got" -ge 19 ]
    check "$what: and 200 more ($more/200)" [ "${more:-0}" -ge 190 ]
    check "$what: A's host refused the 10 replays ($refused0 -> $refused)" [ "$((refused - refused0))" -eq 10 ]
    check "$what: and counted them as replays the guest missed ($missed0 -> $missed)" [ "$((missed - missed0))" -eq 10 ]
    check "$what: none reached A (TUN $tun0 -> $tun)" [ "$tun" -eq "$tun0" ]
    check "$what: none of it held against the guest ($errors protocol errors)" [ "$errors" -eq 0 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}


run_install_refused
run_esp_over_limit
run_esp_quiet_soft_limit
run_ike_replay_window
finish
