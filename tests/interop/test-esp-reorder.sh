#!/usr/bin/env bash
# Anti-replay with reordering, every data-path optimisation on (issue #16):
# two wasmsec gateways talk through a relay where a NAT would be
# (tests/interop/reorder-relay.py), which holds one ESP datagram in five
# back behind the next 1-3 and sends one in fifty of the others twice.
# TUN TSO/GRO and UDP GSO/GRO stay at their defaults (on).
#  - 1,000 pings at 5 ms intervals all come back: reordered ESP within the
#    window is accepted, not taken for a replay;
#  - an 8 MiB stream over TCP through the tunnel (TCP super-packets
#    cut, sealed, reordered, opened, joined) arrives byte for byte;
#  - the receivers drop exactly the duplicated datagrams, as replays, and
#    nothing else.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"
fail=0
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi; }

topo_up_nat
# The relay is the only way between the gateways: no NAT, no forwarding.
nsx wsi-nat nft delete table ip nat
nsx wsi-nat sysctl -qw net.ipv4.ip_forward=0
A=$STATE/A B=$STATE/B
ip netns exec wsi-nat python3 "$ROOT/tests/interop/reorder-relay.py" $NAT_OUT 198.19.0.1 $WAN_B_NAT "$STATE/relay.json" &
RELAY=$!
PIDS+=($RELAY)
sleep 0.5
wasmsec_start wsi-gwb "$B" $WAN_B_NAT %any $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
wasmsec_start wsi-gwa "$A" $WAN_A $NAT_OUT $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
check "tunnel up through the relay" wasmsec_up "$A" 20

loss=$(nsx wsi-hosta ping -n -q -c 1000 -i 0.005 -W 2 $HOST_B | sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p')
check "1,000 pings through reordering: ${loss:-?} % lost (none may be)" [ "${loss:-100}" = 0 ]

# A plain TCP sender (http.server would look its own name up in DNS,
# which waits in a namespace without one): it sends the file to the
# first connection and closes.
head -c $((8 << 20)) /dev/urandom >"$STATE/blob"
ip netns exec wsi-hostb python3 -c '
import socket, sys
s = socket.create_server((sys.argv[1], 8080))
c, _ = s.accept()
c.sendall(open(sys.argv[2], "rb").read())
c.close()' $HOST_B "$STATE/blob" >"$STATE/sender.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [[ $(nsx wsi-hostb ss -Hltn "sport = :8080") == *LISTEN* ]] && break; sleep 0.1; done
want=$(sha256sum <"$STATE/blob" | cut -d' ' -f1)
got=$(nsx wsi-hosta python3 -c '
import hashlib, socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=30)
h = hashlib.sha256()
while b := c.recv(1 << 16):
    h.update(b)
print(h.hexdigest())' $HOST_B || true)
check "8 MiB over TCP through reordering arrive intact" [ "$want" = "$got" ]

kill -TERM $RELAY; wait $RELAY 2>/dev/null || true
cat "$STATE/relay.json"; echo
drops() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; d=json.load(sys.stdin)["esp"]["inbound_drops"]; print(d["replay"], sum(v for k, v in d.items() if k != "replay"))'; }
read -r replay_a other_a < <(drops "$A")
read -r replay_b other_b < <(drops "$B")
read -r reordered duplicated < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["reordered"], s["duplicated"])' "$STATE/relay.json")
check "the relay reordered ($reordered) and duplicated ($duplicated) ESP" [ "$reordered" -ge 100 -a "$duplicated" -ge 20 ]
check "replay drops (A $replay_a + B $replay_b) are exactly the duplicates ($duplicated)" [ $((replay_a + replay_b)) = "$duplicated" ]
check "no other inbound drop (A $other_a, B $other_b)" [ "$other_a" = 0 -a "$other_b" = 0 ]
esp() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; print(json.load(sys.stdin)["esp"][sys.argv[1]])' "$2"; }
# Duplicates within one batch the host refuses as well; one the honest
# guest's window already held before the batch it never asks for.
missed_a=$(esp "$A" esp_rx_replays_missed) missed_b=$(esp "$B" esp_rx_replays_missed)
check "no replay the honest guest missed (A $missed_a, B $missed_b; refused in a batch: A $(esp "$A" esp_rx_replays_refused), B $(esp "$B" esp_rx_replays_refused))" \
    [ "$missed_a" = 0 -a "$missed_b" = 0 ]
super_b=$(esp "$B" tun_rx_super) joined_a=$(esp "$A" tun_tx_joined)
check "offloads were at work: B read $super_b TCP super-packets, A wrote $joined_a joined ones" \
    [ "$super_b" -gt 0 -a "$joined_a" -gt 0 ]

[ $fail = 0 ] && echo "RESULT test-esp-reorder: PASS" || { echo "RESULT test-esp-reorder: FAIL"; exit 1; }
