#!/usr/bin/env bash
# The admin API and the CLI against a running daemon with strongSwan as the
# peer: list, initiate, rekey, terminate through `wasmsec <verb>` on the
# Unix socket and on TCP with a bearer token; a wrong token, malformed JSON
# and an unknown connection are refused with a 4xx and change nothing; the
# SA and connection lists come in pages that the CLI follows; `initiate`
# of a connection that is up replaces its IKE SA make-before-break.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 150 bash "$0" "$@"

API=127.0.0.1:9470
topo_up
A=$STATE/A B=$STATE/B
mkdir -p "$A" "$B"
(umask 077; head -c 24 /dev/urandom | base64 >"$B/token"; echo wrong-token-0123456789 >"$B/wrong")
sswan_start wsi-gwa "$A" responder $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
WASMSEC_CONTROL_EXTRA="api = \"$API\"
api_token = \"file:$B/token\"
metrics = \"127.0.0.1:9471\"
watch_config = true" \
    wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
w() { "$WASMSEC_BIN" "$@" --socket "$B/ctl.sock"; }
wt() { nsx wsi-gwb "$WASMSEC_BIN" "$@" --api $API --token-file "$B/token"; }
# children: the CHILD SAs as "inbound/outbound" SPIs, from list-sas --json
children() { w list-sas --json | python3 -c 'import json,sys
print(" ".join(c["inbound_spi"]+"/"+c["outbound_spi"] for c in json.load(sys.stdin)["child_sas"]))'; }
# raw METHOD PATH BODY TOKEN: the HTTP status of a hand-made request on TCP
raw() { nsx wsi-gwb python3 -c 'import http.client,sys
c=http.client.HTTPConnection(sys.argv[1], timeout=5)
c.request(sys.argv[2], sys.argv[3], body=sys.argv[4], headers={"Authorization": "Bearer "+sys.argv[5]})
print(c.getresponse().status)' $API "$@"; }

check "the admin socket is owner-only" [ "$(command stat -c %a "$B/ctl.sock")" = 600 ]
w list-conns >"$B/conns.txt"; cat "$B/conns.txt"
check "list-conns shows the connection and its child" grep -q "child s2s: 198.18.2.0/24 === 198.18.1.0/24" "$B/conns.txt"
check "list-conns --json names it" bash -c "'$WASMSEC_BIN' list-conns --json --socket '$B/ctl.sock' | grep -q '\"name\": \"s2s\"'"
check "initiate over the socket" w initiate s2s
check "tunnel up" wasmsec_up "$B" 20
check "ping through it" ping_ok wsi-hosta $HOST_B
w list-sas | tee "$B/sas.txt"
before=$(children)
check "list-sas shows one CHILD SA ($before)" [ "$(wc -w <<<"$before")" = 1 ]
check "list-sas as a table names the proposal" grep -q "aes256gcm16" "$B/sas.txt"
check "list-sas shows the time to the CHILD SA's rekey (default 1 h, jittered) and the NAT state" \
    bash -c "'$WASMSEC_BIN' list-sas --json --socket '$B/ctl.sock' | python3 -c 'import json,sys
s=json.load(sys.stdin); c=s[\"child_sas\"][0]; i=s[\"ike_sas\"][0]
sys.exit(0 if 3000 < c[\"rekey_in_s\"] <= 3600 and c[\"expire_in_s\"] > c[\"rekey_in_s\"] and \"nat_remote\" in i else 1)'"
check "list-sas counts the CHILD SA's packets both ways (the 5 pings)" bash -c "'$WASMSEC_BIN' list-sas --json --socket '$B/ctl.sock' |
    python3 -c 'import json,sys; c=json.load(sys.stdin)[\"child_sas\"][0]; sys.exit(0 if c[\"in_packets\"]>=5 and c[\"out_packets\"]>=5 else 1)'"

# Pages: an answer holds at most `limit` SAs (IKE SAs first), its totals,
# and a `next` cursor while more are left; the CLI follows the cursors.
# get PATH: the HTTP status, then the JSON body on one line, over TCP
get() { nsx wsi-gwb python3 -c 'import http.client,sys
c=http.client.HTTPConnection(sys.argv[1], timeout=5)
c.request("GET", sys.argv[2], headers={"Authorization": "Bearer "+sys.argv[3]})
r=c.getresponse(); print(r.status, r.read().decode().replace("\n", " "))' $API "$1" "$(cat "$B/token")"; }
# field KEY: from get's line on stdin ("-" for absent; a list: its length)
field() { python3 -c 'import json,sys
code,body=sys.stdin.read().split(" ",1); v=json.loads(body).get(sys.argv[1],"-")
print(len(v) if isinstance(v,list) else v)' "$1"; }
get "/v1/sas?limit=1" >"$B/page1"
check "a page of one SA: 200" [ "$(cut -d' ' -f1 "$B/page1")" = 200 ]
check "... the IKE SA first, no CHILD SA" [ "$(field ike_sas <"$B/page1") $(field child_sas <"$B/page1")" = "1 0" ]
check "... the totals of both" [ "$(field ike_sas_total <"$B/page1") $(field child_sas_total <"$B/page1")" = "1 1" ]
next=$(field next <"$B/page1")
check "... and a cursor to the rest ($next)" grep -qE '^ike-[0-9a-f]{16}$' <<<"$next"
get "/v1/sas?limit=1&after=$next" >"$B/page2"
check "the next page: the CHILD SA, and no cursor" [ "$(field child_sas <"$B/page2") $(field ike_sas <"$B/page2") $(field next <"$B/page2")" = "1 0 -" ]
check "... the same CHILD SA as one page shows" bash -c "cut -d' ' -f2- '$B/page2' | python3 -c 'import json,sys
c=json.load(sys.stdin)[\"child_sas\"][0]; sys.exit(0 if c[\"inbound_spi\"]+\"/\"+c[\"outbound_spi\"]==\"$before\" else 1)'"
check "limit=0: 400" [ "$(raw GET "/v1/sas?limit=0" '' "$(cat "$B/token")")" = 400 ]
check "limit above 10,000: 400" [ "$(raw GET "/v1/status?limit=10001" '' "$(cat "$B/token")")" = 400 ]
check "a cursor that is not one: 400" [ "$(raw GET "/v1/sas?after=7" '' "$(cat "$B/token")")" = 400 ]
check "an unknown query parameter: 400" [ "$(raw GET "/v1/sas?page=2" '' "$(cat "$B/token")")" = 400 ]
# sas_of: the IKE SPIs and CHILD SPIs of a list-sas or stats JSON on stdin
sas_of() { python3 -c 'import json,sys; s=json.load(sys.stdin)
print(sorted(i["spi"] for i in s["ike_sas"]), sorted(c["inbound_spi"] for c in s["child_sas"]), s.get("next", "-"))'; }
check "list-sas --json over pages of one SA: the same SAs as one page" \
    [ "$(w list-sas --json --page-size 1 | sas_of)" = "$(w list-sas --json | sas_of)" ]
check "stats over pages of one SA: the same SAs, and the counters" bash -c "'$WASMSEC_BIN' stats --page-size 1 --socket '$B/ctl.sock' | tee '$B/stats1.json' | grep -q esp_tx_packets"
check "... the same SAs as list-sas" [ "$(sas_of <"$B/stats1.json")" = "$(w list-sas --json | sas_of)" ]
w list-sas --page-size 1 >"$B/sas1.txt"
check "list-sas as a table over pages: each title once" [ "$(grep -c 'IKE SAs' "$B/sas1.txt") $(grep -c 'CHILD SAs' "$B/sas1.txt")" = "1 1" ]
check "... and the CHILD SA's row" grep -q "${before%/*}" "$B/sas1.txt"

# Refusals change nothing.
check "a wrong token is refused" bash -c "! ip netns exec wsi-gwb '$WASMSEC_BIN' terminate s2s --api $API --token-file '$B/wrong' 2>'$B/wrong.out'"
check "... with 401" grep -q "401" "$B/wrong.out"
check "no token: 401" [ "$(raw POST /v1/terminate '{"connection":"s2s"}' '')" = 401 ]
check "malformed JSON: 400" [ "$(raw POST /v1/terminate '{"connection": s2s' "$(cat "$B/token")")" = 400 ]
check "GET on a POST endpoint: 405" [ "$(raw GET /v1/terminate '' "$(cat "$B/token")")" = 405 ]
check "an unknown connection is refused" bash -c "! '$WASMSEC_BIN' terminate nosuch --socket '$B/ctl.sock' 2>'$B/unknown.out'"
check "... with 404 naming the loaded ones" grep -q "404: no connection \"nosuch\" (loaded: s2s)" "$B/unknown.out"
check "rekeying an unknown connection: 404" [ "$(raw POST /v1/rekey '{"connection":"nosuch"}' "$(cat "$B/token")")" = 404 ]
check "a fault asking 17 traps (at most 16): 400" [ "$(raw POST /v1/fault '{"guest":"ike","calls":17}' "$(cat "$B/token")")" = 400 ]
check "a fault asking 0 traps: 400" [ "$(raw POST /v1/fault '{"guest":"ike","calls":0}' "$(cat "$B/token")")" = 400 ]
check "a fault without [control] fault_injection: 403" [ "$(raw POST /v1/fault '{"guest":"ike","calls":2}' "$(cat "$B/token")")" = 403 ]
check "after the refusals the same CHILD SA is up ($(children))" [ "$(children)" = "$before" ]
check "the tunnel still carries traffic" ping_ok wsi-hosta $HOST_B

# Rekey over TCP with the token: new SPIs, no loss.
nsx wsi-hosta ping -n -i 0.05 -c 100 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 &
PING=$!
sleep 1
check "rekey over TCP with the token" wt rekey s2s
for _ in $(seq 50); do [ "$(children)" != "$before" ] && [ "$(wc -w <<<"$(children)")" = 1 ] && break; sleep 0.2; done
after=$(children)
wait $PING || true
check "the rekey replaced the CHILD SA ($before -> $after)" [ -n "$after" -a "$after" != "$before" -a "$(wc -w <<<"$after")" = 1 ]
check "no ping lost across the rekey ($(grep -c 'bytes from' "$STATE/ping.out" || true)/100)" grep -q " 0% packet loss" "$STATE/ping.out"
check "strongSwan saw the rekey" grep -q "rekeying CHILD_SA\|CHILD_SA s2s{[0-9]*} established\|rekeyed" "$A/charon.log"

check "stats answers over TCP" bash -c "ip netns exec wsi-gwb '$WASMSEC_BIN' stats --api $API --token-file '$B/token' | grep -q esp_tx_packets"
sas=$(children)
check "reload of an unchanged config touches nothing" bash -c "'$WASMSEC_BIN' reload --json --socket '$B/ctl.sock' | grep -A2 unchanged | grep -q s2s"
check "... the CHILD SA is the same ($sas)" [ "$(children)" = "$sas" ]
# watch_config: an edit of the file is reloaded by itself.
wasmsec_connection extra "" 198.18.0.99 $ID_B extra.interop.test '["198.18.2.0/24"]' '["10.99.0.0/24"]' none \
    >>"$B/wasmsec.toml"
for _ in $(seq 30); do w list-conns | grep -q '^  extra ' && break; sleep 0.2; done
check "an edit of the config file was reloaded by itself (watch_config)" bash -c "'$WASMSEC_BIN' list-conns --socket '$B/ctl.sock' | grep -q '^  extra '"
check "... and the tunnel was not touched ($(children))" [ "$(children)" = "$sas" ]
# One connection's SAs (swanctl's --list-sas --ike), now that two are loaded.
check "list-sas --ike s2s: its IKE SA and its CHILD SA" \
    [ "$(w list-sas --ike s2s --json | sas_of)" = "$(w list-sas --json | sas_of)" ]
check "... the same over pages of one SA and on TCP" \
    [ "$(wt list-sas --ike s2s --json --page-size 1 | sas_of)" = "$(w list-sas --json | sas_of)" ]
check "list-sas --ike extra: none (it has no SA)" [ "$(w list-sas --ike extra --json | sas_of)" = "[] [] -" ]
check "stats --ike extra: no SA, and the counters" \
    bash -c "'$WASMSEC_BIN' stats --ike extra --socket '$B/ctl.sock' | tee '$B/stats-extra.json' | grep -q esp_tx_packets"
check "... and no SA in it" [ "$(sas_of <"$B/stats-extra.json")" = "[] [] -" ]
check "list-sas --ike nosuch is refused" bash -c "! '$WASMSEC_BIN' list-sas --ike nosuch --socket '$B/ctl.sock' 2>'$B/only.out'"
check "... with 404 naming the loaded ones" grep -q "404: no connection \"nosuch\" (loaded: s2s, extra)" "$B/only.out"
check "a name percent-encoded in the query: s2s as %73%32%73" \
    [ "$(get "/v1/sas?connection=%73%32%73" | field child_sas)" = 1 ]
check "connection and tenant at once: 400" [ "$(raw GET "/v1/sas?connection=s2s&tenant=a" '' "$(cat "$B/token")")" = 400 ]
check "a broken percent-encoding: 400" [ "$(raw GET "/v1/sas?connection=s2%" '' "$(cat "$B/token")")" = 400 ]
check "a tenant no connection has: 404" [ "$(raw GET "/v1/sas?tenant=nosuch" '' "$(cat "$B/token")")" = 404 ]
check "list-conns --ike extra: that connection only" \
    [ "$(w list-conns --ike extra --json | python3 -c 'import json,sys; print([c["name"] for c in json.load(sys.stdin)["connections"]])')" = "['extra']" ]
check "list-conns --ike nosuch is refused" bash -c "! '$WASMSEC_BIN' list-conns --ike nosuch --socket '$B/ctl.sock' 2>'$B/conns-only.out'"
check "... with 404" grep -q "404: no connection \"nosuch\"" "$B/conns-only.out"
# The connections come in pages too, by name, the cursor being the last
# name shown.
get "/v1/connections?limit=1" >"$B/conns1"
check "a page of one connection: the first by name, the total, the cursor" \
    [ "$(field connections <"$B/conns1") $(field connections_total <"$B/conns1") $(field next <"$B/conns1")" = "1 2 extra" ]
get "/v1/connections?limit=1&after=extra" >"$B/conns2"
check "... the next page: s2s, and no cursor" \
    [ "$(field next <"$B/conns2") $(grep -o '"name": "[a-z0-9]*"' "$B/conns2" | head -1)" = '- "name": "s2s"' ]
check "/v1/connections?limit=0: 400" [ "$(raw GET "/v1/connections?limit=0" '' "$(cat "$B/token")")" = 400 ]
conn_names() { python3 -c 'import json,sys; d=json.load(sys.stdin); print([c["name"] for c in d["connections"]], d["connections_total"])'; }
check "list-conns --json over pages of one: both connections, by name" \
    [ "$(w list-conns --json --page-size 1 | conn_names)" = "['extra', 's2s'] 2" ]
w list-conns --page-size 1 >"$B/conns-paged.txt"
check "list-conns as a table over pages: one header, both connections" \
    [ "$(grep -c 'IKE/CHILD SAs' "$B/conns-paged.txt") $(grep -cE '^  (extra|s2s) ' "$B/conns-paged.txt")" = "1 2" ]
# initiate on a connection that is up: a second IKE SA, without
# INITIAL_CONTACT, replaces the first once its CHILD SA is up
# (make-before-break), and strongSwan is left with one IKE SA too.
ike_spis() { w list-sas --json | python3 -c 'import json,sys; print(" ".join(sorted(i["spi"] for i in json.load(sys.stdin)["ike_sas"])))'; }
sswan_ikes() { swanctl --list-sas --uri "unix://$A/charon.vici" 2>/dev/null | grep -c '^s2s: #' || true; }
ike_before=$(ike_spis) sas=$(children)
nsx wsi-hosta ping -n -i 0.05 -c 100 -W 1 $HOST_B >"$STATE/ping2.out" 2>&1 &
PING=$!
sleep 1
check "initiate on a connection that is up" w initiate s2s
for _ in $(seq 50); do
    [ "$(ike_spis)" != "$ike_before" ] && [ "$(wc -w <<<"$(ike_spis)")" = 1 ] && [ "$(sswan_ikes)" = 1 ] && break
    sleep 0.2
done
wait $PING || true
check "a new IKE SA replaced the first ($ike_before -> $(ike_spis))" \
    [ "$(wc -w <<<"$(ike_spis)")" = 1 -a "$(ike_spis)" != "$ike_before" ]
check "... with a new CHILD SA ($sas -> $(children))" [ "$(wc -w <<<"$(children)")" = 1 -a "$(children)" != "$sas" ]
check "... strongSwan has one IKE SA of s2s ($(sswan_ikes))" [ "$(sswan_ikes)" = 1 ]
check "... and dropped none for INITIAL_CONTACT" bash -c "! grep -qi 'INITIAL_CONTACT.*delet\|deleting duplicate\|destroying duplicate' '$A/charon.log'"
check "... the older one deleted as a duplicate, in the log" grep -q "IKE_SA $ike_before duplicates IKE_SA" "$B/wasmsec.log"
check "... and in /metrics" bash -c "ip netns exec wsi-gwb python3 -c 'import urllib.request
print(urllib.request.urlopen(\"http://127.0.0.1:9471/metrics\", timeout=5).read().decode())' |
    grep -q '^wasmsec_ike_duplicates_deleted_total{connection=\"s2s\",tenant=\"\"} 1\$'"
check "no ping lost across the replacement ($(grep -c 'bytes from' "$STATE/ping2.out" || true)/100)" \
    grep -q " 0% packet loss" "$STATE/ping2.out"
check "terminate over the socket" w terminate s2s
for _ in $(seq 25); do [ -z "$(children)" ] && break; sleep 0.2; done
check "no CHILD SA left" [ -z "$(children)" ]
check "strongSwan has no IKE SA left" bash -c "! swanctl --list-sas --uri unix://$A/charon.vici | grep -q s2s"
finish
