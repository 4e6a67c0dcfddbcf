#!/usr/bin/env bash
# Many handshakes at once against a wasmsec responder: the load generator
# of the handshake benchmark (tests/ikeload, wasmsec's IKE engine as 4,000
# initiators on addresses and with identities of their own) runs 2,000 IKE_SA + CHILD_SA setups
# with 32 in flight, deleting each once it is up. Every setup completes,
# and afterwards the responder holds no IKE SA, no CHILD SA and no
# half-open SA and its key vault is back to what it held before (nothing
# leaks), its guests never trapped and it refused nothing. Then 6,000
# CHILD SAs are held in 2,000 IKE SAs; seven eighths of them are deleted
# by the generator: each ESP guest, grown with them,
# is replaced by one with the eighth left, to give its memory back. Then
# the rest are deleted at once, and the IKE guest, holding none, is
# replaced by a fresh instance; the new guests set up 200 more.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"
IKELOAD=${IKELOAD:-$ROOT/target/release/wasmsec-ikeload}
[ -x "$IKELOAD" ] || { echo "FAIL: $IKELOAD is missing (cargo build --release -p wasmsec-ikeload)"; exit 1; }
SETUPS=2000

topo_up
ikeload_topology
B=$STATE/B
M=127.0.0.1:9469
WASMSEC_CONTROL_EXTRA="metrics = \"$M\"" W_NO_KEYLOG=1 wasmsec_start wsi-gwb "$B" $WAN_B %any $ID_B %any $LAN_B $IKELOAD_TS 198.18.2.1 none
before=$(wasmsec_ctl "$B" status)

line=$(ikeload_run load "$(cat "$B/pid")" --in-flight 32 --setups $SETUPS --seconds 60) || true
echo "$line"
fail=0
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
if [ "$(field setups)" = $SETUPS ] && [ "$(field failed)" = 0 ] && [ "$(field ike_sas_left)" = 0 ]; then
    echo "PASS: $SETUPS setups with 32 in flight, none failed, every DELETE answered ($(field rate) per second)"
else
    echo "FAIL: setups=$(field setups) failed=$(field failed) unanswered DELETEs=$(field ike_sas_left) of $SETUPS"; cat "$STATE/load.err"; fail=1
fi

# The last DELETEs were answered before the generator exited; give the
# responder's data path a moment to drop the last CHILD SAs.
for _ in $(seq 20); do
    st=$(wasmsec_ctl "$B" status)
    python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if not s["ike_sas"] and not s["child_sas"] else 1)' "$st" && break
    sleep 0.2
done
if python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if not s["ike_sas"] and not s["child_sas"] else 1)' "$st"; then
    echo "PASS: the responder holds no IKE SA and no CHILD SA afterwards"
else
    echo "FAIL: SAs left behind: $st"; fail=1
fi
if python3 - "$before" "$st" <<'PY'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ike, esp = after["ike"], after["esp"]
seen = {
    "vault_secrets before/after": (before["ike"]["vault_secrets"], ike["vault_secrets"]),
    "guest_restarts": esp.get("guest_restarts", 0),
    "guest_protocol_errors": esp.get("guest_protocol_errors", 0),
    "half_open": ike.get("half_open", 0),
    "half_open_drops": ike.get("half_open_drops", 0),
    "rate_limited": ike.get("rate_limited", 0),
}
print(json.dumps(seen))
bad = [k for k, v in seen.items() if (v[0] != v[1] if isinstance(v, tuple) else v)]
sys.exit(1 if bad else 0)
PY
then
    echo "PASS: every key of the SAs left the vault; no guest restart, no protocol error, nothing half-open or rate-limited"
else
    echo "FAIL: the responder's counters (above)"; fail=1
fi
# Then SAs held and most of them deleted, as when a site or a tenant goes:
# the guests grew with them (a wasm memory only grows). Each ESP guest of
# the daemon's own domain is replaced by one with the SAs left once they
# are an eighth of its peak (datapath/group.rs, `reclaim`), filled in
# slices between batches (datapath/rebuild.rs); the IKE guest
# by a fresh instance once it holds no SA (control/replacement.rs,
# `reclaim_ike`). Then the new guests set up SAs as before. The generator
# deletes all but 250 of its 2,000 IKE SAs after 10 s.
HELD_IKE=2000 HELD_CHILDREN=3 KEPT_IKE=250
want=$((HELD_IKE * HELD_CHILDREN)) kept=$((KEPT_IKE * HELD_CHILDREN))
counts() {
    "$WASMSEC_BIN" list-conns --socket "$B/ctl.sock" --json 2>/dev/null |
        python3 -c 'import json,sys; c=json.load(sys.stdin)["connections"]; print(sum(x["ike_sas"] for x in c), sum(x["child_sas"] for x in c))'
}
# IKE SAs established (rekeys included) as `wasmsec status` shows them.
# (On stdin: with thousands of SAs the status is longer than an argument may be.)
status_established() { python3 -c 'import json,sys; print(json.load(sys.stdin)["ike"]["ike_established"])' 2>/dev/null; }
# IKE SAs established over the daemon's life, as /metrics shows them.
ike_total() {
    nsx wsi-gwb python3 "$ROOT/tests/interop/http-get.py" "http://$M/metrics" |
        awk '/^wasmsec_ike_handshakes_succeeded_total/ { n += $NF } END { print n + 0 }'
}
# wait_counts "IKE CHILD": until the responder holds that many (while the
# generator runs).
wait_counts() {
    for _ in $(seq 180); do
        have=$(counts)
        [ "$have" = "$1" ] && return 0
        kill -0 "$gen" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}
# Not through `nsx`: $! is then the generator itself, to be stopped by PID.
ip netns exec wsi-gwa "$IKELOAD" --psk-file "$STATE/psk" --server $WAN_B --sources $IKELOAD_SOURCES --id $IKELOAD_ID \
    --remote-id $ID_B --local-ts $IKELOAD_TS --remote-ts $LAN_B --label held --in-flight 16 \
    --standing $HELD_IKE --children $HELD_CHILDREN --setups 0 --seconds 90 --hold 10 \
    --keep $KEPT_IKE --keep-hold 150 >"$STATE/held.out" 2>"$STATE/held.err" &
gen=$!
PIDS+=($gen)
compacted=""
if wait_counts "$HELD_IKE $want"; then
    echo "PASS: $want CHILD SAs held in $HELD_IKE IKE SAs"
    # The generator's hold ends: it deletes all IKE SAs but 250.
    wait_counts "$KEPT_IKE $kept" || true
    # The data path applies the removals at its next wake-up, then
    # installs the SAs left in a new instance.
    for _ in $(seq 100); do
        [ "$(grep -ac "holds an eighth of its peak SAs or fewer" "$B/wasmsec.log")" -ge 2 ] && break
        sleep 0.1
    done
    compacted=$(grep -a "holds an eighth of its peak SAs or fewer" "$B/wasmsec.log" | grep -ao 'direction="\?[a-z]*\|sas=[0-9]*\|peak=[0-9]*\|grown_kib=[0-9]*\|grown_now_kib=[0-9]*\|turns=[0-9]*\|longest_turn_us=[0-9]*\|made_at_once=[a-z]*' | paste -sd' ')
    echo "  compacted: ${compacted:-none}"
    if [ "$have" = "$KEPT_IKE $kept" ] && python3 - "$compacted" "$kept" "$want" <<'PY'
import re, sys
seen = re.findall(r'direction="?([a-z]+) sas=(\d+) peak=(\d+) grown_kib=(\d+) grown_now_kib=(\d+)'
                  r' turns=(\d+) longest_turn_us=(\d+) made_at_once=(false|true)', sys.argv[1])
kept, peak = int(sys.argv[2]), int(sys.argv[3])
# Once per direction, with the SAs left, at the peak, giving back most,
# in slices (more than one turn of the loop), not made at once.
sys.exit(0 if sorted(d for d, *_ in seen) == ["inbound", "outbound"]
         and all(int(s) == kept and int(p) == peak and int(g) >= 1024 and int(n) * 4 < int(g)
                 and int(t) >= 2 and once == "false"
                 for _, s, p, g, n, t, _, once in seen) else 1)
PY
    then
        echo "PASS: $((want - kept)) CHILD SAs deleted, $kept left: each ESP guest replaced by one with those, at a quarter of its memory or less, filled in slices"
    else
        echo "FAIL: with $have (IKE CHILD) SAs left of $HELD_IKE $want, the ESP guests' replacements: ${compacted:-none}"; fail=1
    fi
    established=$(ike_total)
    in_status=$(wasmsec_ctl "$B" status | status_established)
    "$WASMSEC_BIN" terminate s2s --socket "$B/ctl.sock" >/dev/null || echo "terminate failed"
    for _ in $(seq 120); do
        have=$(counts)
        [ "$have" = "0 0" ] && break
        sleep 0.5
    done
else
    echo "FAIL: only ${have:-no} (IKE CHILD) SAs came up of $HELD_IKE $want"; sed -n 1,5p "$STATE/held.err"; fail=1
fi
kill -TERM $gen 2>/dev/null; wait $gen 2>/dev/null || true
# The IKE guest's once the count has been still for 2 s (control/heap_trim.rs).
for _ in $(seq 40); do
    grep -aq "the IKE guest holds no SA: replaced" "$B/wasmsec.log" && break
    sleep 0.25
done
reclaimed=$(grep -a "to give back its memory" "$B/wasmsec.log" | grep -ao 'direction="\?[a-z]*\|grown_kib=[0-9]*' | paste -sd' ')
echo "  reclaimed: ${reclaimed:-none}"
if [ "$have" = "0 0" ] && python3 - "$reclaimed" <<'PY' &&
import re, sys
seen = re.findall(r'(?:direction="?([a-z]+) )?grown_kib=(\d+)', sys.argv[1])
# Each ESP direction's guest once (at least 1 MiB grown), the IKE guest
# once (at least 4 MiB).
esp = sorted(d for d, _ in seen if d)
ike = [int(k) for d, k in seen if not d]
sys.exit(0 if esp == ["inbound", "outbound"] and len(ike) == 1 and ike[0] >= 4096
         and all(int(k) >= 1024 for d, k in seen if d) else 1)
PY
    [ "$(grep -ac "to give back its memory" "$B/wasmsec.log")" -eq 3 ]
then
    echo "PASS: all deleted; the IKE guest was replaced by a fresh one, and no ESP guest again"
else
    echo "FAIL: after the terminate: SAs left ${have:-?}, guests replaced: ${reclaimed:-none}"; fail=1
fi
# The fresh guests work: the connections are in the new IKE guest, and
# SAs are set up, carried and deleted as before.
line=$(ikeload_run again "$(cat "$B/pid")" --in-flight 16 --setups 200 --seconds 30) || true
st=$(wasmsec_ctl "$B" status)
if [ "$(field setups)" = 200 ] && [ "$(field failed)" = 0 ] && [ "$(field ike_sas_left)" = 0 ]; then
    echo "PASS: after the replacements, 200 more setups, none failed"
else
    echo "FAIL: after the replacements: $line"; sed -n 1,5p "$STATE/again.err"; fail=1
fi
# The counters carry over the replacement, in /metrics and in `wasmsec
# status` alike: 200 more than before it.
after=$(ike_total)
after_status=$(status_established <<<"$st")
if [ -n "$established" ] && [ "$after" = $((established + 200)) ] &&
    [ -n "$in_status" ] && [ "$after_status" = $((in_status + 200)) ]; then
    echo "PASS: the IKE counters carried over (/metrics: $established established before, $after after; status: $in_status, $after_status)"
else
    echo "FAIL: IKE SAs established before the replacement and after 200 more: /metrics ${established:-?}, ${after:-?}; status ${in_status:-?}, ${after_status:-?}"; fail=1
fi
if python3 -c 'import json,sys; e=json.loads(sys.argv[1])["esp"]; sys.exit(0 if not e.get("guest_restarts") and not e.get("guest_protocol_errors") else 1)' "$st"; then
    echo "PASS: replacing an emptied guest is no guest restart"
else
    echo "FAIL: guest restarts or protocol errors after the replacements"; fail=1
fi
[ $fail = 0 ] && echo "RESULT test-handshake-load: PASS" || { echo "RESULT test-handshake-load: FAIL"; exit 1; }
