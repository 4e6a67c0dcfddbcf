#!/usr/bin/env bash
# `wasmsec reload` against strongSwan: three connections (three IKE SAs,
# told apart by identity), wasmsec the initiator. The new config removes
# one and adds one; the third is not touched: its SPIs stay and a ping
# through it loses nothing. A config that does not load is refused (400)
# and changes nothing. A removal lost with a trapped IKE guest is carried
# out again by its replacement, and so is a reload the guest traps in
# partway, from where it got. Reloads that remove 1,100 connections have the
# guest replaced by one without them, the IKE SAs carrying on, once no
# removed connection's DELETE is still unanswered.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 150 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
mkdir -p "$A" "$B"
# keep: the hosts' /26; drop and add: the next two /26 of each LAN.
# strongSwan's user-space ESP routes a policy from an address of its own
# inside the local selector: give gwa one in each.
nsx wsi-gwa ip addr add 198.18.1.65/32 dev lan0
nsx wsi-gwa ip addr add 198.18.1.129/32 dev lan0
sswan_start wsi-gwa "$A" responder $WAN_A $WAN_B $ID_A $ID_B 198.18.1.0/26 198.18.2.0/26 \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
for c in drop:64 add:128; do
    n=${c%%:*} o=${c##*:}
    cat >>"$A/swanctl/swanctl.conf" <<CONF
connections { $n { version = 2
    local_addrs = $WAN_A
    remote_addrs = %any
    proposals = aes256gcm16-prfsha256-x25519
    mobike = no
    local { auth = psk
      id = gwa-$n.interop.test }
    remote { auth = psk
      id = gwb-$n.interop.test }
    children { $n { local_ts = 198.18.1.$o/26
      remote_ts = 198.18.2.$o/26
      esp_proposals = aes256gcm16-x25519 } } } }
secrets { ike-$n { id-1 = gwa-$n.interop.test
  id-2 = gwb-$n.interop.test
  secret = "$PSK" } }
CONF
done
sswan "$A" --load-all --noprompt --file "$A/swanctl/swanctl.conf" >"$A/load2.out" 2>&1
(umask 077; printf '%s' "$PSK" >"$B/psk")
# conn NAME OCTET: a [[connection]] that wasmsec starts itself.
conn() {
    wasmsec_connection "$1" $WAN_B $WAN_A "gwb-$1.interop.test" "gwa-$1.interop.test" "[\"198.18.2.$2/26\"]" \
        "[\"198.18.1.$2/26\"]" start aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
}
W_CONTROL_EXTRA="fault_injection = true" W_SOURCE=198.18.2.1 W_LISTEN=$WAN_B W_SOCKET=$B/ctl.sock W_DIR=$B W_LOCAL=$WAN_B W_REMOTE=$WAN_A \
    W_LID=$ID_B W_RID=$ID_A W_IKE=aes256gcm16-prfsha256-x25519 W_ESP=aes256gcm16-x25519 W_START=start \
    W_LTS='["198.18.2.0/26"]' W_RTS='["198.18.1.0/26"]' wasmsec_conf "$B/base.toml"
{ cat "$B/base.toml"; conn drop 64; } >"$B/wasmsec.toml"
ip netns exec wsi-gwb "$WASMSEC_BIN" run --config "$B/wasmsec.toml" >"$B/wasmsec.log" 2>&1 </dev/null &
WPID=$!
PIDS+=($WPID)
w() { "$WASMSEC_BIN" "$@" --socket "$B/ctl.sock"; }
# spis NAME: the CHILD SA SPIs of connection NAME (none while the daemon
# does not answer yet)
spis() { w list-sas --json 2>/dev/null | python3 -c 'import json,sys
s=sys.stdin.read().strip()
print(" ".join(c["inbound_spi"]+"/"+c["outbound_spi"] for c in json.loads(s)["child_sas"] if c["connection"]==sys.argv[1]) if s else "")' "$1"; }
for _ in $(seq 100); do [ -n "$(spis s2s)" ] && [ -n "$(spis drop)" ] && break; sleep 0.2; done
keep=$(spis s2s)
check "s2s and drop are up ($keep / $(spis drop))" [ -n "$keep" -a -n "$(spis drop)" ]
check "ping through s2s" ping_ok wsi-hosta $HOST_B

nsx wsi-hosta ping -n -i 0.05 -c 160 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 &
PING=$!
sleep 1
{ cat "$B/base.toml"; conn add 128; } >"$B/wasmsec.toml"
w reload --json >"$B/reload.json" 2>&1 || true
cat "$B/reload.json"
check "reload: added add, removed drop, s2s unchanged" python3 -c 'import json,sys
r=json.load(open(sys.argv[1]))
sys.exit(0 if (r["added"],r["removed"],r["unchanged"],r["errors"])==(["add"],["drop"],["s2s"],[]) else 1)' "$B/reload.json"
for _ in $(seq 75); do [ -n "$(spis add)" ] && [ -z "$(spis drop)" ] && break; sleep 0.2; done
check "the added connection came up ($(spis add))" [ -n "$(spis add)" ]
check "the removed connection's CHILD SA is gone" [ -z "$(spis drop)" ]
for _ in $(seq 25); do swanctl --list-sas --uri "unix://$A/charon.vici" 2>/dev/null | grep -q '^drop' || break; sleep 0.2; done
check "strongSwan has no SA of the removed connection (DELETE reached it)" \
    bash -c "! swanctl --list-sas --uri unix://$A/charon.vici | grep -q '^drop'"
check "s2s was not touched: same SPIs ($keep -> $(spis s2s))" [ "$(spis s2s)" = "$keep" ]
wait $PING || true
check "no ping through s2s lost during the reload ($(grep -c 'bytes from' "$STATE/ping.out" || true)/160)" \
    grep -q " 0% packet loss" "$STATE/ping.out"
w list-conns

# A replaced IKE guest replays the reload (connections are named by index
# in its checkpoints): trap it, then rekey the added connection.
check "the IKE guest is set to trap" w ctl fault ike
w rekey add >/dev/null 2>&1 || true
added=$(spis add)
for _ in $(seq 3); do w rekey add >/dev/null 2>&1 && break; sleep 0.5; done
for _ in $(seq 50); do [ "$(spis add)" != "$added" ] && [ "$(wc -w <<<"$(spis add)")" = 1 ] && break; sleep 0.2; done
check "after the guest was replaced, add rekeys ($added -> $(spis add))" \
    [ -n "$(spis add)" -a "$(spis add)" != "$added" -a "$(wc -w <<<"$(spis add)")" = 1 ]
check "... and s2s is still untouched" [ "$(spis s2s)" = "$keep" ]
check "the guest was replaced once" grep -q "IKE guest replaced; its IKE SAs carry on" "$B/wasmsec.log"
keep_add=$(spis add)

# A config that does not load changes nothing.
cp "$B/wasmsec.toml" "$B/good.toml"
echo 'this is = not [valid' >>"$B/wasmsec.toml"
out=$(w reload 2>&1) && rc=0 || rc=$?
echo "$out"
check "a broken config is refused" [ "$rc" -ne 0 ]
check "... with 400 and the file's error" grep -q "400: the config does not load" <<<"$out"
check "... and nothing changed" [ "$(spis s2s)" = "$keep" -a "$(spis add)" = "$keep_add" ]

# SIGHUP reloads too: drop comes back.
{ cat "$B/base.toml"; conn add 128; conn drop 64; } >"$B/wasmsec.toml"
kill -HUP $WPID
for _ in $(seq 75); do [ -n "$(spis drop)" ] && break; sleep 0.2; done
check "SIGHUP reloaded the config: drop is up again ($(spis drop))" [ -n "$(spis drop)" ]
check "... the daemon still runs, s2s untouched" [ "$(spis s2s)" = "$keep" ]

# A changed key file reaches the unchanged connections in place, as
# `swanctl --load-creds` does: established SAs stay, new authentications
# use the new key (strongSwan still has the old one, so add fails).
(umask 077; printf '%s' "not-$PSK" >"$B/psk")
w reload --json >"$B/reload-psk.json" 2>&1 || true
cat "$B/reload-psk.json"
check "reload: a new PSK for all three, none torn down" python3 -c 'import json,sys
r=json.load(open(sys.argv[1]))
sys.exit(0 if (sorted(r["new_psk"]),sorted(r["unchanged"]),r["removed"])==(["add","drop","s2s"],)*2+([],) else 1)' "$B/reload-psk.json"
check "... s2s untouched" [ "$(spis s2s)" = "$keep" ]
refused=$(grep -c "AUTHENTICATION_FAILED" "$B/wasmsec.log" || true)
w terminate add >/dev/null
for _ in $(seq 50); do [ -z "$(spis add)" ] && break; sleep 0.1; done
w initiate add >/dev/null 2>&1 || true
for _ in $(seq 100); do [ "$(grep -c "AUTHENTICATION_FAILED" "$B/wasmsec.log")" -gt "$refused" ] && break; sleep 0.1; done
check "add authenticates with the new key now: strongSwan refuses it" \
    [ "$(grep -c "AUTHENTICATION_FAILED" "$B/wasmsec.log")" -gt "$refused" -a -z "$(spis add)" ]
(umask 077; printf '%s' "$PSK" >"$B/psk")
w reload >/dev/null
w initiate add >/dev/null 2>&1 || true
for _ in $(seq 100); do [ -n "$(spis add)" ] && break; sleep 0.1; done
check "the old key back, add comes up again ($(spis add))" [ -n "$(spis add)" ]

# A removal whose output the guest loses: it traps when the reload's
# output is taken. The replacement restores drop's IKE SA from its
# checkpoint (taken before the reload) and must delete it again, DELETE
# to strongSwan included, rather than keep an SA of a removed connection.
check "the IKE guest is set to trap when its output is next taken" w ctl fault ike output
{ cat "$B/base.toml"; conn add 128; } >"$B/wasmsec.toml"
w reload --json >"$B/reload-trap.json" 2>&1 || true
cat "$B/reload-trap.json"
check "reload: removed drop" python3 -c 'import json,sys
sys.exit(0 if json.load(open(sys.argv[1]))["removed"]==["drop"] else 1)' "$B/reload-trap.json"
for _ in $(seq 50); do [ "$(grep -c "IKE guest replaced; its IKE SAs carry on" "$B/wasmsec.log")" -ge 2 ] && break; sleep 0.1; done
check "the guest trapped on its output and was replaced from its checkpoints" \
    [ "$(grep -c "IKE guest replaced; its IKE SAs carry on" "$B/wasmsec.log")" -eq 2 ]
check "... which deleted drop's restored IKE SA again" \
    grep -q "the replacement deletes the SAs of a removed connection again connection=drop ike_sas=1" "$B/wasmsec.log"
for _ in $(seq 50); do swanctl --list-sas --uri "unix://$A/charon.vici" 2>/dev/null | grep -q '^drop' || break; sleep 0.1; done
check "strongSwan has no SA of drop: the DELETE lost with the guest was sent again" \
    bash -c "! swanctl --list-sas --uri unix://$A/charon.vici | grep -q '^drop'"
check "... nor have we ($(spis drop)), and s2s is untouched" [ -z "$(spis drop)" -a "$(spis s2s)" = "$keep" ]

# A reload the guest traps in partway: add is removed (the reload's first
# guest call) and drop added (its second), then the guest traps as drop
# is initiated (its third). The replacement deletes add's restored IKE SA
# again and carries the reload out again, from where the first got: add
# is not loaded, drop is, so nothing is done twice (the guest would refuse
# drop as defined twice), the answer covers both runs, and the
# replacement starts drop.
check "the IKE guest is set to trap at the next command's third call" w ctl fault ike call 3
{ cat "$B/base.toml"; conn drop 64; } >"$B/wasmsec.toml"
w reload --json >"$B/reload-halfway.json" 2>&1 || true
cat "$B/reload-halfway.json"
check "the reload was answered once carried out again: add removed, drop added, no error" python3 -c 'import json,sys
r=json.load(open(sys.argv[1]))
sys.exit(0 if (r["added"],r["removed"],r["unchanged"],r["errors"])==(["drop"],["add"],["s2s"],[]) else 1)' \
    "$B/reload-halfway.json"
check "the guest trapped partway and was replaced" \
    [ "$(grep -c "IKE guest replaced; its IKE SAs carry on" "$B/wasmsec.log")" -eq 3 ]
for _ in $(seq 75); do [ -n "$(spis drop)" ] && [ -z "$(spis add)" ] && break; sleep 0.2; done
check "drop came up ($(spis drop)), add is gone ($(spis add))" [ -n "$(spis drop)" -a -z "$(spis add)" ]
for _ in $(seq 50); do swanctl --list-sas --uri "unix://$A/charon.vici" 2>/dev/null | grep -q '^add' || break; sleep 0.1; done
check "strongSwan has no SA of add: its DELETE, lost with the guest, was sent again" \
    bash -c "! swanctl --list-sas --uri unix://$A/charon.vici | grep -q '^add'"
check "... and s2s is untouched" [ "$(spis s2s)" = "$keep" ]

# A PoP's reloads change thousands of connections, and a guest keeps
# each removed one (its SAs name it by index): once it holds 1,024 or more
# removed connections, and at least half as many as loaded, it is replaced from
# its checkpoints by one with the loaded connections only. The IKE SAs
# carry on through it, under their connections' new indexes.
cp "$B/wasmsec.toml" "$B/before-many.toml"
for i in $(seq 1 1100); do
    wasmsec_connection "idle$i" $WAN_B "100.64.$((i / 256)).$((i % 256))" "$ID_B" "idle$i.interop.test" \
        '["198.18.2.0/26"]' "[\"100.80.$((i / 256)).$((i % 256))/32\"]" none
done >"$B/idle.toml"
cat "$B/before-many.toml" "$B/idle.toml" >"$B/wasmsec.toml"
check "reload: 1,100 idle connections added" bash -c "w() { '$WASMSEC_BIN' \"\$@\" --socket '$B/ctl.sock'; }
    w reload --json | python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)[\"added\"]) == 1100 else 1)'"
cp "$B/before-many.toml" "$B/wasmsec.toml"
check "reload: the 1,100 removed again" bash -c "w() { '$WASMSEC_BIN' \"\$@\" --socket '$B/ctl.sock'; }
    w reload --json | python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)[\"removed\"]) == 1100 else 1)'"
for _ in $(seq 50); do grep -q "held many removed connections" "$B/wasmsec.log" && break; sleep 0.1; done
check "the guest holding 1,100 removed connections was replaced by one with the loaded ones" \
    grep -Eq "held many removed connections: replaced from its checkpoints by one with the loaded connections only removed_connections=11[0-9]{2} " "$B/wasmsec.log"
# The replacement's own line comes just before.
check "... its two IKE SAs carried on" \
    bash -c "grep -B3 'held many removed connections' '$B/wasmsec.log' | grep -q 'IKE guest replaced; its IKE SAs carry on ike_sas=2'"
check "... s2s untouched ($(spis s2s))" [ "$(spis s2s)" = "$keep" ]
check "... a ping through s2s passes" ping_ok wsi-hosta $HOST_B
dropped=$(spis drop)
for _ in $(seq 3); do w rekey drop >/dev/null 2>&1 && break; sleep 0.5; done
for _ in $(seq 50); do [ "$(spis drop)" != "$dropped" ] && [ "$(wc -w <<<"$(spis drop)")" = 1 ] && break; sleep 0.2; done
check "... and drop's restored IKE SA rekeys its CHILD SA ($dropped -> $(spis drop))" \
    [ -n "$(spis drop)" -a "$(spis drop)" != "$dropped" -a "$(wc -w <<<"$(spis drop)")" = 1 ]
check "the daemon lists the 2 loaded connections" bash -c "'$WASMSEC_BIN' list-conns --json --socket '$B/ctl.sock' | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)[\"connections_total\"] == 2 else 1)'"

# The replacement waits for a quiet moment: while an IKE SA of a removed
# connection is still being deleted (its DELETE retransmitted, here
# because gwb's IKE to strongSwan is dropped for 4 s) it does not come, so
# that the DELETE reaches the peer; once the peer answered, it does.
cat "$B/before-many.toml" "$B/idle.toml" >"$B/wasmsec.toml"
check "reload: 1,100 idle connections added again" bash -c "w() { '$WASMSEC_BIN' \"\$@\" --socket '$B/ctl.sock'; }
    w reload --json | python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)[\"added\"]) == 1100 else 1)'"
nsx wsi-gwb nft -f - <<NFT
table ip wsblock {
    chain out {
        type filter hook output priority 0;
        ip daddr $WAN_A udp dport { 500, 4500 } drop
    }
}
NFT
cp "$B/base.toml" "$B/wasmsec.toml"
check "reload: drop and the 1,100 removed, with strongSwan out of reach" bash -c "w() { '$WASMSEC_BIN' \"\$@\" --socket '$B/ctl.sock'; }
    w reload --json | python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)[\"removed\"]) == 1101 else 1)'"
sleep 4
check "no replacement while drop's DELETE is unanswered" \
    [ "$(grep -c 'held many removed connections' "$B/wasmsec.log")" -eq 1 ]
check "... strongSwan still has drop's SA" bash -c "swanctl --list-sas --uri unix://$A/charon.vici | grep -q '^drop'"
nsx wsi-gwb nft delete table ip wsblock
for _ in $(seq 150); do [ "$(grep -c 'held many removed connections' "$B/wasmsec.log")" -eq 2 ] && break; sleep 0.1; done
check "once the retransmitted DELETE got through, the guest was replaced" \
    [ "$(grep -c 'held many removed connections' "$B/wasmsec.log")" -eq 2 ]
check "... after strongSwan deleted drop's SA" bash -c "! swanctl --list-sas --uri unix://$A/charon.vici | grep -q '^drop'"
check "... and s2s carried on ($(spis s2s))" [ "$(spis s2s)" = "$keep" ]

# SIGTERM deletes every IKE SA at the peer before the daemon exits.
kill -TERM $WPID
for _ in $(seq 50); do kill -0 $WPID 2>/dev/null || break; sleep 0.1; done
check "the daemon exited on SIGTERM" bash -c "! kill -0 $WPID 2>/dev/null"
check "it said it sent DELETEs for its IKE SA" grep -q "stopping: DELETE sent for every IKE SA ike_sas=1" "$B/wasmsec.log"
for _ in $(seq 20); do [ -z "$(swanctl --list-sas --uri "unix://$A/charon.vici" 2>/dev/null)" ] && break; sleep 0.1; done
check "strongSwan has no SA left: the DELETEs reached it" [ -z "$(swanctl --list-sas --uri "unix://$A/charon.vici" 2>/dev/null)" ]
finish
