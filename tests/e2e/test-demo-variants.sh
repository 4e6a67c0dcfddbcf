#!/usr/bin/env bash
# xtask: beside the interop suites (the demo's wsdemo-* namespaces)
# The demo: by default two gateways negotiate with IKEv2 and the output
# shows the IKE_SA and CHILD_SA, their proposals and passing checks; then
# every ESP algorithm and raw ESP (IP protocol 50), with IKE and with
# static SAs (--manual); and `--help`.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 400 bash "$0" "$@"
DIR=$(mktemp -d /tmp/wasmsec-e2e-variants.XXXXXX)
trap '"$WASMSEC_BIN" demo --down >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

help=$("$WASMSEC_BIN" demo --help)
check "demo --help exits 0 and lists the options" grep -q -- "--manual" <<<"$help"
check "demo --help names --raw-esp and --algorithm" grep -qE -- "--algorithm <?ALG" <<<"$help"
check "an unknown demo option is refused" bash -c '! "$1" demo --bogus >/dev/null 2>&1' _ "$WASMSEC_BIN"

out=$("$WASMSEC_BIN" demo --pings 3 --dir "$DIR/ike" 2>&1) || true
echo "$out" | grep -E "IKE_SA|CHILD_SA|PASS|FAIL" | sed 's/^/    /'
check "default demo: gwa's IKE_SA as initiator with its proposal" \
    grep -qE "^gwa: IKE_SA [0-9a-f]{16} 198.18.0.1:4500 -> 198.18.0.2:4500 as initiator, aes256gcm16-prfsha256-x25519$" <<<"$out"
check "default demo: gwb's IKE_SA as responder" grep -qE "^gwb: IKE_SA [0-9a-f]{16} .* as responder, aes256gcm16-prfsha256-x25519$" <<<"$out"
check "default demo: CHILD_SAs with their ESP proposal" \
    grep -qE "^gw[ab]: CHILD_SA lan SPIs in [0-9a-f]{8} out [0-9a-f]{8}, aes256gcm16, 198.18.[12].0/24 === 198.18.[12].0/24, UDP-encapsulated" <<<"$out"
for c in "IKE_SA and CHILD_SA established, SPIs agree" "ping A -> B" "ping B -> A" \
         "only ESP on the wire (no cleartext LAN packet)" "every ping crossed as ESP"; do
    check "default demo: PASS $c" grep -qxF "PASS: $c" <<<"$out"
done
check "default demo: RESULT PASS" grep -qx "RESULT demo: PASS" <<<"$out"

for alg in aes128gcm16 chacha20poly1305 aes128-sha256 aes256-sha512; do
    check "IKE demo with $alg over ESP-in-UDP" "$WASMSEC_BIN" demo --algorithm "$alg" --pings 3 --dir "$DIR/v"
    check "manual demo with $alg over ESP-in-UDP" "$WASMSEC_BIN" demo --manual --algorithm "$alg" --pings 3 --dir "$DIR/v"
done
check "IKE demo with raw ESP (protocol 50)" "$WASMSEC_BIN" demo --raw-esp --pings 3 --dir "$DIR/v"
check "manual demo with raw ESP (protocol 50)" "$WASMSEC_BIN" demo --manual --raw-esp --pings 3 --dir "$DIR/v"
finish
