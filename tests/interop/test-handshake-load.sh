#!/usr/bin/env bash
# Many handshakes at once against a wasmsec responder: the load generator
# of the handshake benchmark (tests/ikeload, wasmsec's IKE engine as 4,000
# initiators on addresses and with identities of their own) runs 2,000 IKE_SA + CHILD_SA setups
# with 32 in flight, deleting each once it is up. Every setup completes,
# and afterwards the responder holds no IKE SA, no CHILD SA and no
# half-open SA and its key vault is back to what it held before (nothing
# leaks), its guests never trapped and it refused nothing.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 180 bash "$0" "$@"
IKELOAD=${IKELOAD:-$ROOT/target/release/wasmsec-ikeload}
[ -x "$IKELOAD" ] || { echo "FAIL: $IKELOAD is missing (cargo build --release -p wasmsec-ikeload)"; exit 1; }
SETUPS=2000

topo_up
ikeload_topology
B=$STATE/B
W_NO_KEYLOG=1 wasmsec_start wsi-gwb "$B" $WAN_B %any $ID_B %any $LAN_B $IKELOAD_TS 198.18.2.1 none
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
[ $fail = 0 ] && echo "RESULT test-handshake-load: PASS" || { echo "RESULT test-handshake-load: FAIL"; exit 1; }
