#!/usr/bin/env bash
# Deliberately hostile guests under the real host (tests/hostile/esp and
# the IKE component built with its `hostile` feature). Gateway A serves two
# manually keyed tunnels to gateway B: "honest" (198.18.1.0/24 <->
# 198.18.2.0/24, the project's ESP component) and "hostile"
# (198.18.11.0/24 <-> 198.18.12.0/24, hostile-esp.wasm, whose attack the
# SPI picks). For each attack, pings cross both tunnels while A's WAN is
# captured; then:
#  - the attack was refused and counted (guest protocol errors), or the
#    guest was replaced (loop, hoarding, trap);
#  - no unsealed packet reached the WAN (no UDP/4500 payload that is an IP
#    packet between the LANs), and nothing unopened reached the TUN (A wrote
#    to it exactly the packets the honest tunnel delivered);
#  - the honest tunnel kept forwarding throughout (at most 5 % ping loss).
# And an ESP guest with no replay check: recent ESP packets sent again do
# not reach the LAN (the host opens no number a key authenticated).
# Then the IKE attacks: A's IKE guest derives CHILD keys twice, installs
# swapped key handles, encrypts with the peer's SK_e, deletes the honest
# manual tunnel's SAs (which it never installed), sends to A's LAN host
# (a reflector) or to B from A's LAN address, installs a CHILD SA for a
# connection whose key did not authenticate the peer or with selectors
# beyond the connection's, goes
# past a policy's refusal, moves a CHILD SA's ESP to A's LAN host,
# names another address of A's as the one its ESP leaves from,
# takes a peer's AUTH that did not verify as good, or installs a CHILD SA
# with an ESP transform A does not propose (or proposes only for another
# child of the connection), against an honest wasmsec B; the host refuses and counts each while the honest manual tunnel
# keeps forwarding. And a hostile ESP guest refusing an IKE CHILD SA's
# install: the CHILD SA is deleted with the peer, not left up unserved;
# and one ignoring its SAs' packet limits: the host seals and delivers no
# packet past them and reports the expiry the guest kept quiet; at the
# soft limit too, so the CHILD SA is rekeyed before its hard one.
# Last, an IKE guest that traps on one datagram in the middle of a read of
# UDP 500: the datagrams read with it are served by its replacement; and one
# that traps after an admin `initiate`: the API answers once the
# replacement has sent what the command asked for; and the same guest
# trapping while the daemon starts its connections: it is replaced, not
# stopped; and an honest guest made to trap while a `start` connection is
# being set up: the replacement initiates it again.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 400 bash "$0" "$@"
COMPONENTS=${WASMSEC_COMPONENTS:-$ROOT/target/components}
[ -f "$COMPONENTS/hostile-esp.wasm" ] || { echo "no $COMPONENTS/hostile-esp.wasm (cargo xtask test builds it)"; exit 1; }
HONEST_A=0x00001001 HONEST_B=0x00001002
PINGS=60

key() { (umask 077; python3 -c 'import os; print(os.urandom(36).hex())' >"$1"); }

# manual NAME REMOTE LTS RTS OUT_SPI IN_SPI "OUT_KEYFILE IN_KEYFILE": a [[manual]] tunnel.
manual() {
    local keys=($7)
    printf '[[manual]]\nname = "%s"\nremote_address = "%s"\nlocal_ts = ["%s"]\nremote_ts = ["%s"]\n' "$1" "$2" "$3" "$4"
    printf 'out_spi = "%s"\nout_key = "file:%s"\nin_spi = "%s"\nin_key = "file:%s"\n' "$5" "${keys[0]}" "$6" "${keys[1]}"
}

# conf ME REMOTE SRC_GW OUT_SPI IN_SPI HOSTILE_OUT HOSTILE_IN HOSTILE_COMPONENT EXTRA DIR
conf() {
    local me=$1 remote=$2 gw=$3 out=$4 in=$5 hout=$6 hin=$7 comp=${8:-} extra=${9:-} d=${10}
    local lan rlan hlan hrlan
    if [ "$me" = $WAN_A ]; then lan=198.18.1.0/24 rlan=198.18.2.0/24 hlan=198.18.11.0/24 hrlan=198.18.12.0/24
    else lan=198.18.2.0/24 rlan=198.18.1.0/24 hlan=198.18.12.0/24 hrlan=198.18.11.0/24; fi
    cat <<CONF
[tunnel]
source = "$gw"
[network]
listen = "$me"
[control]
socket = "$d/ctl.sock"
$extra
[runtime]
components = "$COMPONENTS"
state_dir = "$d/state"
$(manual honest "$remote" "$lan" "$rlan" "$out" "$in" "$([ "$me" = $WAN_A ] && echo "a-b b-a" || echo "b-a a-b")")
$(manual hostile "$remote" "$hlan" "$hrlan" "$hout" "$hin" "$([ "$me" = $WAN_A ] && echo "ha-b hb-a" || echo "hb-a ha-b")")
${comp:+esp_component = \"$comp\"}
CONF
}

start() { # NS DIR
    ip netns exec "$1" "$WASMSEC_BIN" run --config "$2/wasmsec.toml" --stats-file "$2/stats.json" \
        >"$2/wasmsec.log" 2>&1 </dev/null &
    PIDS+=($!)
    echo $! >"$2/pid"
    # Up once it writes its counters (the control socket exists only with IKE).
    local i; for i in $(seq 100); do [ -s "$2/stats.json" ] && return 0; sleep 0.1; done
    cat "$2/wasmsec.log"; return 1
}
stop() { kill -TERM "$(cat "$1/pid")" 2>/dev/null; for _ in $(seq 50); do kill -0 "$(cat "$1/pid")" 2>/dev/null || return 0; sleep 0.1; done; }
counter() { stat "$1/stats.json" "$2"; }

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

topo_up
nsx wsi-hosta ip addr add 198.18.11.10/24 dev eth0
nsx wsi-hosta ip route add 198.18.12.0/24 via 198.18.1.1
nsx wsi-hostb ip addr add 198.18.12.10/24 dev eth0
nsx wsi-hostb ip route add 198.18.11.0/24 via 198.18.2.1
nsx wsi-gwa ip addr add 198.18.11.1/24 dev lan0
nsx wsi-gwb ip addr add 198.18.12.1/24 dev lan0

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

# ike_conf NAME LOCAL REMOTE LID RID LTS RTS START: one IKE connection.
ike_conf() { wasmsec_connection "$1" "$2" "$3" "$4" "$5" "[\"$6\"]" "[\"$7\"]" "$8"; }

# ike_pair DIR NAME A_START SPI A_CONTROL_EXTRA A_IKE_COMPONENT: gateways A
# (DIR/A) and B (DIR/B) with the manual tunnels (SPIs 0x0000<SPI>1 and 2)
# and one IKE connection NAME, started by A (A_START) and answered by B
# (none). A_IKE_COMPONENT: A's IKE guest, "" for the real one.
ike_pair() {
    local name=$2 start=$3 spi=$4 extra=$5 comp=$6 A=$1/A B=$1/B
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    (umask 077; printf '%s' "$PSK" >"$A/psk"; printf '%s' "$PSK" >"$B/psk")
    { conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0x0000${spi}1 0x0000${spi}2 "" "$extra" "$A"
      ike_conf "$name" $WAN_A $WAN_B $ID_A $ID_B 198.18.21.0/24 198.18.22.0/24 "$start"; } |
        sed "${comp:+s|^\[runtime\]|[runtime]\nike_component = \"$comp\"|}" >"$A/wasmsec.toml"
    { conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A 0x0000${spi}2 0x0000${spi}1 "" "" "$B"
      ike_conf "$name" $WAN_B $WAN_A $ID_B $ID_A 198.18.22.0/24 198.18.21.0/24 none; } >"$B/wasmsec.toml"
}

# A daemon's guest restarts (-1 when it has stopped: no control socket)
# and IKE SAs.
restarts_of() {
    { wasmsec_ctl "$1" status 2>/dev/null || echo '{"esp": {"guest_restarts": -1}}'; } |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["esp"]["guest_restarts"])'
}
ike_sas() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ike_sas"]))'; }
# The inbound SPIs of a status JSON's CHILD SAs (spis_of FILE), of a running daemon's (child_spis DIR).
spis_of() { python3 -c 'import json,sys; print(" ".join(c["inbound_spi"] for c in json.load(open(sys.argv[1]))["child_sas"]))' "$1"; }
child_spis() { wasmsec_ctl "$1" status >"$1/spis.json" 2>/dev/null && spis_of "$1/spis.json"; }
# replaced BEFORE NOW: CHILD SAs were up before and are now, and the one
# before (its inbound SPI) is not among those now.
replaced() { [ -n "$1" ] && [ -n "$2" ] && ! grep -qw "$1" <<<"$2"; }

# IKE attacks: A's IKE guest is hostile; its only connection's name picks
# the attack. B is an honest wasmsec. The manual tunnels carry pings meanwhile.
run_ike_attack() { # NAME WHAT
    local name=$1 what=$2 A=$STATE/$1/A B=$STATE/$1/B
    ike_pair "$STATE/$1" "$name" start 200 "" "$COMPONENTS/hostile-ike.wasm"
    case $name in
        hostile-other-connection)
            # A second connection at A, with a key of its own and a peer
            # that never comes (another tenant's, say): the guest puts the
            # CHILD SA B authenticated for into it.
            (umask 077; printf '%s' "another connection's key" >"$A/victim-psk")
            ike_conf victim $WAN_A 198.18.0.99 $ID_A victim.test 198.18.31.0/24 198.18.32.0/24 none |
                sed 's|file:psk|file:victim-psk|' >>"$A/wasmsec.toml" ;;
        hostile-ignore-policy)
            # B initiates with an identity A's policy module does not list
            # (policy-allow-list.wasm lists *.interop.test): A's host
            # rejects it, A's guest goes on as if accepted.
            sed -i "s/$ID_B/gwb.unlisted.example/; s/^start_action = \"start\"/start_action = \"none\"/" "$A/wasmsec.toml"
            printf '\n[policy]\nmodule = "%s"\n' "$COMPONENTS/policy-allow-list.wasm" >>"$A/wasmsec.toml"
            sed -i "s/$ID_B/gwb.unlisted.example/; s/^start_action = \"none\"/start_action = \"start\"/" "$B/wasmsec.toml" ;;
        hostile-move-elsewhere)
            # ESP in UDP, which follows the peer's NAT mapping.
            sed -i 's/^start_action = \(.*\)$/start_action = \1\nencap = true/' "$A/wasmsec.toml" "$B/wasmsec.toml" ;;
        hostile-other-source | hostile-send-from-elsewhere)
            # A listens on every address, so the address the guest names
            # for our end (of a CHILD SA, of a datagram) is the one its ESP
            # or the datagram leaves from: the guest names A's LAN side,
            # 198.18.1.1, where no IKE arrived.
            sed -i 's/^listen = .*/listen = "0.0.0.0"/' "$A/wasmsec.toml" ;;
        hostile-skip-auth)
            # B initiates with a key A does not have: A's host finds B's
            # AUTH false, A's guest goes on as if it were true.
            sed -i 's/^start_action = "start"/start_action = "none"/' "$A/wasmsec.toml"
            sed -i 's/^start_action = "none"/start_action = "start"/' "$B/wasmsec.toml"
            (umask 077; printf '%s' "not the key A has" >"$B/psk") ;;
        hostile-weaker-other-child)
            # A second child at A for other subnets proposes the weaker
            # transform: each child bounds its own CHILD SAs, so the
            # tunnel's SA may not take it (B refuses the second child's
            # selectors, so it never comes up).
            printf '\n[[connection.children]]\nname = "legacy"\nlocal_ts = ["198.18.41.0/24"]\nremote_ts = ["198.18.42.0/24"]\nesp_proposals = "aes128-sha256"\n' >>"$A/wasmsec.toml" ;;
        hostile-skip-pfs)
            # Both sides' child asks for X25519 PFS, and A rekeys it after
            # 2 s: the first CHILD SA (IKE_AUTH, rightly without a key
            # exchange) comes up, the rekey's is keyed without one.
            printf 'esp_proposals = "aes256gcm16-x25519"\nrekey_time = 2\n' >>"$A/wasmsec.toml"
            printf 'esp_proposals = "aes256gcm16-x25519"\n' >>"$B/wasmsec.toml" ;;
        hostile-unlimited)
            # A's CHILD SA may carry a gigabyte; the guest installs it
            # with no limit. (The IKE connection's child is A's last
            # section.)
            printf 'life_bytes = 1000000000\n' >>"$A/wasmsec.toml" ;;
        hostile-keep-expired)
            # A's CHILD SAs live 4 s, and the host allows 1 s more before
            # it removes one the guest kept.
            printf 'rekey_time = 0\nlife_time = 4\n' >>"$A/wasmsec.toml"
            export WASMSEC_TEST_LIFETIME_GRACE_MS=1000 ;;
        hostile-keep-expired-packets)
            # A's CHILD SAs carry 20 packets each way and have no lifetime
            # by time: what ends one is the ESP guest's hard expiry, after
            # which the host allows 1 s. The gateways' own addresses in the
            # IKE tunnel's subnets give it traffic.
            printf 'rekey_time = 0\nlife_packets = 20\n' >>"$A/wasmsec.toml"
            ip -n wsi-gwa addr replace 198.18.21.1/32 dev lo
            ip -n wsi-gwb addr replace 198.18.22.1/32 dev lo
            export WASMSEC_TEST_LIFETIME_GRACE_MS=1000 ;;
    esac
    # What gateway A sends into its LAN to UDP 500 (hostile-send-anywhere).
    ip netns exec wsi-gwa tcpdump -i lan0 -n -U -w "$A/lan.pcap" udp port 500 2>"$A/lan-cap.err" &
    local cap=$!; PIDS+=($cap)
    for _ in $(seq 50); do grep -q "listening on" "$A/lan-cap.err" && break; sleep 0.1; done
    # What leaves A's WAN from its LAN address (hostile-other-source,
    # hostile-send-from-elsewhere).
    ip netns exec wsi-gwa tcpdump -i wan0 -n -U -w "$A/wan-other.pcap" src host 198.18.1.1 2>"$A/wan-cap.err" &
    local wcap=$!; PIDS+=($wcap)
    for _ in $(seq 50); do grep -q "listening on" "$A/wan-cap.err" && break; sleep 0.1; done
    local up=0
    start wsi-gwb "$B" && start wsi-gwa "$A" || up=1
    unset WASMSEC_TEST_LIFETIME_GRACE_MS
    [ "$up" -eq 0 ] || return 1
    nsx wsi-hosta ping -n -i 0.1 -c $PINGS -W 1 198.18.2.10 >"$A/honest.out" 2>&1 || true
    # Past the first CHILD SA's life and grace.
    if [ "$name" = hostile-keep-expired ]; then sleep 3; fi
    local first=""
    if [ "$name" = hostile-keep-expired-packets ]; then
        # 40 pings through the IKE tunnel: its first CHILD SA passes 20
        # packets on the way; then the grace.
        wasmsec_up "$A" 10 || true
        first=$(child_spis "$A")
        nsx wsi-gwa ping -n -I 198.18.21.1 -i 0.05 -c 40 -W 1 198.18.22.1 >"$A/ike-ping.out" 2>&1 || true
        sleep 2.5
    fi
    sleep 0.3; kill -INT $cap $wcap 2>/dev/null || true; wait $cap $wcap 2>/dev/null || true
    local reflected from_lan
    reflected=$(tcpdump -r "$A/lan.pcap" -n 2>/dev/null | grep -c "> 198.18.1.10.500" || true)
    from_lan=$(tcpdump -r "$A/wan-other.pcap" -n 2>/dev/null | grep -c "198.18.1.1" || true)
    local got errors child victim
    local alive=no
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    got=$(grep -c "bytes from" "$A/honest.out" || true)
    wasmsec_ctl "$A" status >"$A/status.json"
    errors=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["esp"]["guest_protocol_errors"])' "$A/status.json")
    child=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["child_sas"]))' "$A/status.json")
    victim=$(python3 -c 'import json,sys; print(sum(c["connection"] == "victim" for c in json.load(open(sys.argv[1]))["child_sas"]))' "$A/status.json")
    local peers
    peers=$(python3 -c 'import json,sys; print(" ".join(c["peer"] for c in json.load(open(sys.argv[1]))["child_sas"]))' "$A/status.json")
    stop "$A"; stop "$B"
    echo "$what: honest pings $got/$PINGS; A: $errors protocol errors, $child CHILD SAs installed ($victim for victim)"
    check "$what: refused and counted ($errors)" [ "$errors" -gt 0 ]
    case $name in
        hostile-swap-handles) check "$what: no CHILD SA with swapped keys was installed ($child)" [ "$child" -eq 0 ] ;;
        hostile-wrong-ske) check "$what: nothing went out under the peer's key: no IKE SA, no CHILD SA ($child)" [ "$child" -eq 0 ] ;;
        hostile-other-connection)
            check "$what: no CHILD SA went into the other connection ($victim)" [ "$victim" -eq 0 ]
            check "$what: A said why" grep -q "for a connection whose key did not authenticate its IKE SA's peer: refused" "$A/wasmsec.log" ;;
        hostile-widen-selectors)
            check "$what: no CHILD SA for every address ($child)" [ "$child" -eq 0 ]
            check "$what: A said why" grep -q "beyond its child's local_ts and remote_ts (or for a child its connection lacks): refused" "$A/wasmsec.log" ;;
        hostile-skip-pfs)
            check "$what: the first CHILD SA, without a key exchange of its own, was installed" \
                grep -q "CHILD_SA hostile-skip-pfs installed" "$A/wasmsec.log"
            check "$what: A said why it refused the rekey's" \
                grep -q "made without the key exchange (PFS group) its child's or the policy's grant's proposal asks for: refused" "$A/wasmsec.log" ;;
        hostile-unlimited)
            check "$what: no CHILD SA without A's byte limit ($child)" [ "$child" -eq 0 ]
            check "$what: A said why" grep -q "with hard limits beyond its child's or the policy's grant: refused" "$A/wasmsec.log" ;;
        hostile-keep-expired-packets)
            check "$what: the first CHILD SA carried the pings ($(grep -c 'bytes from' "$A/ike-ping.out" || true) of 40 answered)" \
                grep -q "bytes from" "$A/ike-ping.out"
            check "$what: A's host removed the CHILD SA kept past its packet limit" \
                grep -q "IKE guest kept a CHILD SA past its hard lifetime: the host removed it" "$A/wasmsec.log"
            local now_spis s gone=yes
            now_spis=$(spis_of "$A/status.json")
            for s in $first; do grep -qw "$s" <<<"$now_spis" && gone=no; done
            check "$what: the first CHILD SA ($first) is gone (now: $now_spis)" [ -n "$first" -a "$gone" = yes ] ;;
        hostile-keep-expired)
            check "$what: A's host removed a CHILD SA kept past its life" \
                grep -q "IKE guest kept a CHILD SA past its hard lifetime: the host removed it" "$A/wasmsec.log"
            # About 9 s in, a new CHILD SA every 4 s: the one alive and at
            # most one within its grace (the guest alone keeps every one).
            check "$what: the expired CHILD SAs are gone ($child installed)" [ "$child" -le 2 ] ;;
        hostile-weaker-transform | hostile-weaker-other-child)
            check "$what: no CHILD SA with a transform A does not propose for it ($child)" [ "$child" -eq 0 ]
            check "$what: A said why" grep -q "with an ESP transform neither its child nor the policy's grant proposes: refused" "$A/wasmsec.log" ;;
        hostile-ignore-policy)
            check "$what: A's host refused the keys" grep -q "whose peer the policy did not accept: refused" "$A/wasmsec.log"
            check "$what: no CHILD SA for a peer the policy refused ($child)" [ "$child" -eq 0 ] ;;
        hostile-move-elsewhere)
            check "$what: the CHILD SA is up ($child)" [ "$child" -eq 1 ]
            check "$what: ... and its ESP still goes to B ($peers)" [ "$peers" = "$WAN_B:4500" ] ;;
        hostile-other-source)
            check "$what: no CHILD SA leaving from another address of A's ($child)" [ "$child" -eq 0 ]
            check "$what: A said why" grep -q "whose ESP would leave from another address of ours than its IKE SA's peer sent to: refused" "$A/wasmsec.log"
            check "$what: A's WAN was captured" grep -q "listening on" "$A/wan-cap.err"
            check "$what: nothing left A's WAN from its LAN address ($from_lan)" [ "$from_lan" -eq 0 ] ;;
        hostile-send-from-elsewhere)
            check "$what: the IKE tunnel came up all the same ($child)" [ "$child" -eq 1 ]
            check "$what: A's WAN was captured" grep -q "listening on" "$A/wan-cap.err"
            check "$what: nothing left A's WAN from its LAN address ($from_lan)" [ "$from_lan" -eq 0 ] ;;
        hostile-skip-auth)
            # Past the failed AUTH the guest asks the policy, which the host
            # refuses for a peer it verified no AUTH of (and it would give no
            # keys either).
            check "$what: A's host refused to ask the policy about B" \
                grep -q "refused by the host: the host verified no AUTH of this IKE SA" "$A/wasmsec.log"
            check "$what: no CHILD SA for a peer with the wrong key ($child)" [ "$child" -eq 0 ] ;;
        hostile-send-anywhere)
            check "$what: A's LAN was captured" grep -q "listening on" "$A/lan-cap.err"
            check "$what: nothing reached A's LAN host on UDP 500 ($reflected)" [ "$reflected" -eq 0 ] ;;
    esac
    check "$what: the honest tunnel kept forwarding ($got/$PINGS)" [ "$got" -ge $((PINGS * 95 / 100)) ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
    # The guest's forged log line (src/hostile.rs): escaped, so it forged no
    # line of its own, and cut to the host's bound (1,000 characters).
    local longest
    longest=$(awk '/FORGED-BY-THE-IKE-GUEST/ { if (length($0) > n) n = length($0) } END { print n + 0 }' "$A/wasmsec.log")
    local forged
    forged=$(grep -c "^FORGED-BY-THE-IKE-GUEST" "$A/wasmsec.log" || true)
    check "$what: the guest's log line forged no line ($forged)" [ "$forged" -eq 0 ]
    check "$what: the guest's log line was escaped and cut (longest $longest characters)" \
        grep -q "a hostile guest's line\\\\nFORGED-BY-THE-IKE-GUEST x*…" "$A/wasmsec.log"
    check "$what: ... to the bound and its context ($longest)" test "$longest" -gt 1000 -a "$longest" -lt 1400
}

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

# The IKE guest traps on one datagram of a read (hostile-trap-marker: the
# initiator SPI "TRAPTRAP"). A is stopped while a prober in B's namespace
# sends 8 IKE_SA_INIT requests, the 4th marked, so all 8 come out of one
# read; the 4 after the marked one must be answered by the replacement.
run_ike_trap_midread() {
    local what="IKE: a trap in the middle of a read" A=$STATE/trap-midread/A
    mkdir -p "$A"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; done
    (umask 077; printf '%s' "$PSK" >"$A/psk")
    { conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0x00004001 0x00004002 "" "" "$A"
      ike_conf hostile-trap-marker $WAN_A $WAN_B $ID_A $ID_B 198.18.21.0/24 198.18.22.0/24 none; } |
        sed "s|^\[runtime\]|[runtime]\nike_component = \"$COMPONENTS/hostile-ike.wasm\"|" >"$A/wasmsec.toml"
    start wsi-gwa "$A" || return 1
    nsx wsi-gwb python3 "$ROOT/tests/interop/ike-burst.py" $WAN_A "$(cat "$A/pid")" 8 3 >"$A/burst.json"
    local answered unanswered marked restarts alive=no
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    answered=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["answered"]))' "$A/burst.json")
    unanswered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["unanswered"])' "$A/burst.json")
    marked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["marked_answered"])' "$A/burst.json")
    restarts=$(restarts_of "$A")
    stop "$A"
    echo "$what: $answered of 7 unmarked requests answered (unanswered: $unanswered), marked answered: $marked, guest restarts: $restarts"
    check "$what: the guest trapped and was replaced ($restarts)" [ "$restarts" -eq 1 ]
    check "$what: the marked datagram was not answered ($marked)" [ "$marked" = False ]
    check "$what: every other datagram of the read was answered, those after the trap by the replacement ($answered of 7)" [ "$answered" -eq 7 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

# An admin command whose messages a trap loses (hostile-trap-after-initiate:
# the first instance traps in the poll that would hand over the IKE_SA_INIT
# of an `initiate`). The API must not answer OK for messages that never
# went: its answer waits until they are sent, and the replacement carries
# the command out again. B, an honest wasmsec, only responds.
run_ike_trap_after_initiate() {
    local what="IKE: a trap after an admin initiate" A=$STATE/trap-initiate/A B=$STATE/trap-initiate/B
    local name=hostile-trap-after-initiate
    ike_pair "$STATE/trap-initiate" $name none 500 "" "$COMPONENTS/hostile-ike.wasm"
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    local rc=0 up=no restarts ike_b alive=no
    wasmsec_ctl "$A" initiate $name >"$A/initiate.out" 2>&1 || rc=$?
    # Answered only once the IKE_SA_INIT went: the SAs follow within a round trip.
    wasmsec_up "$A" 5 && up=yes
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    restarts=$(restarts_of "$A")
    ike_b=$(ike_sas "$B")
    stop "$A"; stop "$B"
    echo "$what: initiate answered rc=$rc ($(head -c 200 "$A/initiate.out")); CHILD SA up at A: $up; IKE SAs at B: $ike_b; guest restarts: $restarts"
    check "$what: the guest trapped after the initiate and was replaced ($restarts)" [ "$restarts" -eq 1 ]
    check "$what: the initiate was answered OK" [ "$rc" -eq 0 ]
    check "$what: ... and carried out: the replacement sent it, the CHILD SA is up at A" [ "$up" = yes ]
    check "$what: ... and the IKE SA at B ($ike_b)" [ "$ike_b" -eq 1 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

# The same guest with a `start` connection: it traps while the daemon
# starts its connections. The daemon must not stop (that would take the
# manual tunnels with it, and a restart would trap again): the replacement
# starts the connection.
run_ike_trap_at_start() {
    local what="IKE: a trap while starting the connections" A=$STATE/trap-start/A B=$STATE/trap-start/B
    local name=hostile-trap-after-initiate
    ike_pair "$STATE/trap-start" $name start 600 "" "$COMPONENTS/hostile-ike.wasm"
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    local up=no restarts got alive=no
    wasmsec_up "$A" 5 && up=yes
    nsx wsi-hosta ping -n -i 0.1 -c 20 -W 1 198.18.2.10 >"$A/honest.out" 2>&1 || true
    got=$(grep -c "bytes from" "$A/honest.out" || true)
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    restarts=$(restarts_of "$A")
    stop "$A"; stop "$B"
    echo "$what: daemon running: $alive; guest restarts: $restarts; CHILD SA up: $up; manual tunnel pings $got/20"
    check "$what: the daemon is still running" [ "$alive" = yes ]
    check "$what: the guest trapped and was replaced ($restarts)" [ "$restarts" -eq 1 ]
    check "$what: the replacement started the connection: the CHILD SA is up" [ "$up" = yes ]
    check "$what: the manual tunnel forwards ($got/20)" [ "$got" -ge 19 ]
    check "$what: A said why" grep -q "trapped while starting the connections: its replacement starts them again" "$A/wasmsec.log"
}

# An honest IKE guest made to trap (`ctl fault ike`, [control]
# fault_injection) while A's `start` connection is being set up: B is not
# up yet, so A's IKE_SA_INIT waits for an answer. A half-open SA has no
# checkpoint, so the replacement must initiate the connection again, or it
# stays down for good. Then: a connection the admin API terminated stays
# down across a replacement, and an established one is restored, not
# initiated a second time.
run_ike_trap_while_initiating() {
    local what="IKE: a trap while a start connection is set up" A=$STATE/trap-initiating/A B=$STATE/trap-initiating/B
    ike_pair "$STATE/trap-initiating" x start 700 "fault_injection = true" ""
    start wsi-gwa "$A" || return 1
    sleep 1
    wasmsec_ctl "$A" fault ike 1 >/dev/null
    sleep 1
    start wsi-gwb "$B" || return 1
    local up=no after_terminate again=no after_restore restarts alive=no
    wasmsec_up "$A" 15 && up=yes
    wasmsec_ctl "$A" terminate x >/dev/null
    wasmsec_ctl "$A" fault ike 1 >/dev/null
    sleep 3
    after_terminate="$(ike_sas "$A")/$(ike_sas "$B")"
    wasmsec_ctl "$A" initiate x >/dev/null && wasmsec_up "$A" 5 && again=yes
    wasmsec_ctl "$A" fault ike 1 >/dev/null
    sleep 3
    after_restore="$(ike_sas "$A")/$(ike_sas "$B")"
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    restarts=$(restarts_of "$A")
    stop "$A"; stop "$B"
    echo "$what: up after the trap: $up; IKE SAs A/B after terminate + trap: $after_terminate; initiated again: $again; after a trap with it up: $after_restore; guest restarts: $restarts"
    check "$what: the replacement initiated it again, and it came up" [ "$up" = yes ]
    check "$what: terminated through the API, it stays down across a replacement ($after_terminate)" [ "$after_terminate" = 0/0 ]
    check "$what: initiated through the API, it is up again" [ "$again" = yes ]
    check "$what: up, it is restored, not initiated twice ($after_restore)" [ "$after_restore" = 1/1 ]
    check "$what: three traps, three replacements ($restarts)" [ "$restarts" -eq 3 ]
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

# An admin command that traps every instance (hostile-trap-on-terminate):
# the replacement carries it out once more, traps too, and the host gives
# it up with a 503 rather than trap guest after guest while the requester
# waits. The IKE SA stays (nothing was terminated), the daemon runs on.
run_ike_trap_every_try() {
    local what="IKE: a command that traps every replacement" A=$STATE/trap-terminate/A B=$STATE/trap-terminate/B
    local name=hostile-trap-on-terminate
    ike_pair "$STATE/trap-terminate" $name start 900 "" "$COMPONENTS/hostile-ike.wasm"
    start wsi-gwb "$B" && start wsi-gwa "$A" || return 1
    local rc=0 up=no restarts ike alive=no took t0
    wasmsec_up "$A" 15 && up=yes
    t0=$(date +%s%N)
    wasmsec_ctl "$A" terminate $name >"$A/terminate.out" 2>&1 || rc=$?
    took=$((($(date +%s%N) - t0) / 1000000))
    sleep 0.5
    kill -0 "$(cat "$A/pid")" 2>/dev/null && alive=yes
    restarts=$(restarts_of "$A")
    ike="$(ike_sas "$A")/$(ike_sas "$B")"
    stop "$A"; stop "$B"
    echo "$what: up: $up; terminate rc=$rc in $took ms ($(head -c 300 "$A/terminate.out")); guest restarts: $restarts; IKE SAs A/B: $ike"
    check "$what: the connection came up" [ "$up" = yes ]
    check "$what: the terminate was refused with 503, given up" \
        bash -c "[ $rc -ne 0 ] && grep -q '503: the IKE guest trapped in this command, and its replacement did again: given up' '$A/terminate.out'"
    check "$what: ... after two traps, not more ($restarts replacements)" [ "$restarts" -eq 2 ]
    check "$what: ... at once, not when the requester gave up ($took ms)" [ "$took" -lt 5000 ]
    check "$what: the IKE SA is still up at both ends ($ike)" [ "$ike" = 1/1 ]
    check "$what: A said it gave up" grep -q "the IKE guest trapped in this admin command twice: given up" "$A/wasmsec.log"
    check "$what: the daemon is still running" [ "$alive" = yes ]
}

run_install_refused
run_esp_over_limit
run_esp_quiet_soft_limit
run_ike_replay_window
run_ike_trap_midread
run_ike_trap_after_initiate
run_ike_trap_at_start
run_ike_trap_while_initiating
run_ike_trap_every_try
run_ike_attack hostile-derive-twice "IKE: CHILD keys derived twice"
run_ike_attack hostile-swap-handles "IKE: swapped key handles installed"
run_ike_attack hostile-wrong-ske "IKE: encrypting with the peer's SK_e"
run_ike_attack hostile-delete-others "IKE: deleting a manual tunnel's SAs it never installed"
run_ike_attack hostile-send-anywhere "IKE: sending to an address no peer has (A's LAN host)"
run_ike_attack hostile-send-from-elsewhere "IKE: sending to the peer from an address of A's no IKE arrived at (its LAN side)"
run_ike_attack hostile-other-connection "IKE: installing a CHILD SA for another connection (another key)"
run_ike_attack hostile-widen-selectors "IKE: a CHILD SA widened to every address on the peer's side"
run_ike_attack hostile-ignore-policy "IKE: a CHILD SA for a peer the policy refused"
run_ike_attack hostile-move-elsewhere "IKE: moving a CHILD SA's ESP to A's LAN host"
run_ike_attack hostile-other-source "IKE: a CHILD SA whose ESP leaves from another address of A's (its LAN side)"
run_ike_attack hostile-skip-auth "IKE: a CHILD SA for a peer whose AUTH did not verify"
run_ike_attack hostile-weaker-transform "IKE: a CHILD SA with a weaker ESP transform than configured"
run_ike_attack hostile-weaker-other-child "IKE: a CHILD SA with the weaker ESP transform of another child of its connection"
run_ike_attack hostile-unlimited "IKE: a CHILD SA without the connection's hard byte limit"
run_ike_attack hostile-skip-pfs "IKE: a rekeyed CHILD SA without the PFS its proposal asks for"
run_ike_attack hostile-keep-expired "IKE: CHILD SAs kept past their hard lifetime"
run_ike_attack hostile-keep-expired-packets "IKE: a CHILD SA kept past its hard packet limit"
finish
