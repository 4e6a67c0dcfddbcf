#!/usr/bin/env bash
# Deliberately hostile IKE guests under the real host (the IKE component
# built with its `hostile` feature). Gateway A serves two manually keyed
# tunnels to gateway B (hostile-lib.sh), which carry pings meanwhile, and
# one IKE connection to B, an honest wasmsec. A's IKE guest derives CHILD
# keys twice, installs swapped key handles, encrypts with the peer's SK_e,
# deletes the honest manual tunnel's SAs (which it never installed), sends
# to A's LAN host (a reflector) or to B from A's LAN address, installs a
# CHILD SA for a connection whose key did not authenticate the peer or
# with selectors beyond the connection's, goes past a policy's refusal,
# moves a CHILD SA's ESP to A's LAN host, names another address of A's as
# the one its ESP leaves from, takes a peer's AUTH that did not verify as
# good, installs a CHILD SA with an ESP transform A does not propose (or
# proposes only for another child of the connection), without its byte
# limit or its rekey's PFS, or keeps CHILD SAs past their hard lifetime or
# packet limit. The host refuses and counts each while the honest manual
# tunnel keeps forwarding.
# And an IKE guest that traps on one datagram in the middle of a read of
# UDP 500: the datagrams read with it are served by its replacement; and one
# that traps after an admin `initiate`: the API answers once the
# replacement has sent what the command asked for; and the same guest
# trapping while the daemon starts its connections: it is replaced, not
# stopped; and an honest guest made to trap while a `start` connection is
# being set up: the replacement initiates it again; and a command that
# traps every replacement is given up with a 503.
# (test-hostile-esp.sh has the hostile ESP guests.)
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 600 bash "$0" "$@"
source "$(dirname "$0")/hostile-lib.sh"

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
