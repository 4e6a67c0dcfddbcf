#!/usr/bin/env bash
# Policy modules against strongSwan (#13): wasmsec (responder) asks its
# policy module at IKE_AUTH. The allow-list admits gwa.interop.test and
# ok.interop.test and refuses evil.example (AUTHENTICATION_FAILED, one log
# line); its operator's table of cases ships beside it. Then a module
# that loops, traps or allocates without bound costs only the peer it was
# deciding on. (Twenty replacements under load, and tenants: test-tenants.sh.)
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"
C=${WASMSEC_COMPONENTS:-$ROOT/target/components}
for f in policy-allow-list ike hostile-policy; do
    [ -f "$C/$f.wasm" ] || { echo "missing $C/$f.wasm: run cargo xtask guests" >&2; exit 1; }
done

topo_up
A=$STATE/A B=$STATE/B P=$STATE/B/policies
mkdir -p "$A" "$B" "$P"
# strongSwan's user-space ESP routes a policy from an address of its own
# inside the local selector.
nsx wsi-gwa ip addr add 198.18.1.65/32 dev lan0
sswan_start wsi-gwa "$A" initiator $WAN_A $WAN_B $ID_A $ID_B 198.18.1.0/26 198.18.2.0/26
# Probes: one connection per identity, all for the same /26 pair.
for id in ok.interop.test evil.example loop.interop.test trap.interop.test alloc.interop.test \
    narrow.interop.test badgrant.interop.test; do
    n=${id%%.*}
    cat >>"$A/swanctl/swanctl.conf" <<CONF
connections { $n { version = 2
    local_addrs = $WAN_A
    remote_addrs = $WAN_B
    proposals = aes256gcm16-prfsha256-x25519
    mobike = no
    local { auth = psk
      id = $id }
    remote { auth = psk
      id = $ID_B }
    children { $n { local_ts = 198.18.1.64/26
      remote_ts = 198.18.2.64/26
      esp_proposals = aes256gcm16,aes128gcm16 } } } }
secrets { ike-$n { id-1 = $id
  id-2 = $ID_B
  secret = "$PSK" } }
CONF
done
sswan "$A" --load-all --noprompt --file "$A/swanctl/swanctl.conf" >"$A/load2.out" 2>&1
cp "$C/policy-allow-list.wasm" "$P/policy.wasm"
cp "$ROOT/policies/allow-list/cases.json" "$P/policy.cases.json"
WASMSEC_CONTROL_EXTRA='' wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A 198.18.2.0/26 198.18.1.0/26 198.18.2.1
# The probes' connection: any identity (the policy decides), its own /26.
wasmsec_connection probe $WAN_B "" $ID_B "%any" '["198.18.2.64/26"]' '["198.18.1.64/26"]' none >>"$B/wasmsec.toml"
printf '\n[policy]\nmodule = "policies/policy.wasm"\n' >>"$B/wasmsec.toml"
kill "$(cat "$B/pid")"; wait "$(cat "$B/pid")" 2>/dev/null || true; rm -f "$B/ctl.sock"
check "check-config loads the policy module and runs its cases" \
    bash -c "'$WASMSEC_BIN' check-config --config '$B/wasmsec.toml' 2>/dev/null | grep -q 'passed its self-test and 12 case'"
cp "$P/policy.wasm" "$STATE/good.wasm"; printf 'not wasm' >"$P/policy.wasm"
check "check-config refuses a policy module that is not a component" \
    bash -c "! '$WASMSEC_BIN' check-config --config '$B/wasmsec.toml' 2>&1 | grep -q OK"
cp "$STATE/good.wasm" "$P/policy.wasm"
ip netns exec wsi-gwb "$WASMSEC_BIN" run --config "$B/wasmsec.toml" >"$B/wasmsec.log" 2>&1 </dev/null &
PIDS+=($!); echo $! >"$B/pid"
for _ in $(seq 100); do grep -q "policy module serving" "$B/wasmsec.log" && [ -S "$B/ctl.sock" ] && break; sleep 0.1; done
check "the daemon started with the allow-list policy, its 12 cases passed" \
    grep -q "policy module serving.* cases=12" "$B/wasmsec.log"

sswan "$A" --initiate --child s2s --timeout 10 >"$A/init.out" 2>&1 || true
check "gwa.interop.test is admitted: the tunnel is up" sswan_up "$A" 10
check "ping through the tunnel" ping_ok wsi-hosta $HOST_B
# probe NAME: does strongSwan's connection NAME come up? (torn down again)
probe() {
    local ok=1
    sswan "$A" --initiate --child "$1" --timeout 3 >"$A/probe.out" 2>&1 && ok=0
    sswan "$A" --terminate --ike "$1" --timeout 3 >/dev/null 2>&1 || true
    return $ok
}
refused() { ! probe "$1"; }
check "ok.interop.test is admitted" probe ok
check "evil.example is refused" refused evil
check "... with one log line naming the policy's reason" \
    [ "$(grep -c 'policy refused evil.example (198.18.0.1): identity "evil.example" is not on the allow list' "$B/wasmsec.log")" = 1 ]

# ---- a module that misbehaves costs only its own decision ---------------------
rm "$P/policy.cases.json"
cp "$C/hostile-policy.wasm" "$P/.next"; mv "$P/.next" "$P/policy.wasm"
for _ in $(seq 200); do probe ok && break; sleep 0.05; done
for bad in loop trap alloc; do
    t0=$(date +%s%N)
    check "hostile module: $bad.interop.test is refused" refused $bad
    echo "  ($bad: refused after $(( ($(date +%s%N) - t0) / 1000000 )) ms)"
    check "... the tunnel still carries traffic" ping_ok wsi-hosta $HOST_B 3
    check "... and the next peer is admitted" probe ok
done
check "the three failures were counted and logged as policy failures" \
    [ "$(grep -c 'policy module failed' "$B/wasmsec.log")" -ge 3 ]

# ---- what a grant gives: selectors, proposals, lifetimes ------------------------
# narrow.interop.test proposes 198.18.1.64/26 and AES-256-GCM or AES-128-GCM;
# the hostile module grants it 198.18.1.64/27, AES-128-GCM and a 600 s rekey.
granted() {
    wasmsec_ctl "$B" status | python3 -c 'import json,sys
c=[c for c in json.load(sys.stdin)["child_sas"] if c["connection"] == "probe"]
ok=len(c) == 1 and c[0]["remote_ts"] == ["198.18.1.64/27"] and c[0]["proposal"] == "aes128gcm16" \
    and 500 <= (c[0]["rekey_in_s"] or 0) <= 600
print(c); sys.exit(0 if ok else 1)' >"$B/granted.out"
}
sswan "$A" --initiate --child narrow --timeout 5 >"$A/narrow.out" 2>&1 || true
check "a grant narrows the selectors, picks the proposal, sets the rekey time" granted
check "... and strongSwan installed the narrowed selectors" grep -q "198.18.1.64/27" "$A/narrow.out"
sswan "$A" --terminate --ike narrow --timeout 3 >/dev/null 2>&1 || true
check "a malformed grant is refused" refused badgrant
check "... and logged as a policy failure naming it" \
    grep -q 'policy granted peer subnet "198.18.1.0/99"' "$B/wasmsec.log"
check "the daemon still runs" kill -0 "$(cat "$B/pid")"
finish
