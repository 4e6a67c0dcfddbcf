#!/usr/bin/env bash
# Every refused negotiation says why, once, in words an operator acts on.
# strongSwan initiates to wasmsec (responder) four times, each with one
# thing wrong: its IKE proposal, its traffic selectors, its identity, its
# pre-shared key. wasmsec must log exactly one warning naming that reason
# (what was offered and what we accept), and no tunnel may come up.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 240 bash "$0" "$@"

# refuse CASE PATTERN -- SSWAN_ARGS...: run one case; PATTERN (grep -E) is the
# one warning wasmsec must log.
refuse() {
    local case=$1 pattern=$2; shift 3
    topo_up
    local A=$STATE/$case/A B=$STATE/$case/B
    mkdir -p "$A" "$B"
    PSK=${SSWAN_PSK:-$PSK} sswan_start wsi-gwa "$A" initiator "$@"
    wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none \
        aes256gcm16-prfsha256-x25519 aes256gcm16
    sswan "$A" --initiate --child s2s --timeout 15 >"$A/initiate.out" 2>&1 || true
    sleep 1
    local lines n
    lines=$(grep ' WARN ' "$B/wasmsec.log" | grep -E "$pattern" || true)
    n=$(printf '%s' "$lines" | grep -c . || true)
    echo "$case: $lines"
    check "$case: exactly one warning names the reason ($n)" [ "$n" -eq 1 ]
    check "$case: no CHILD SA came up" bash -c "! grep -q 'CHILD_SA s2s installed' '$B/wasmsec.log'"
    local pid; for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    PIDS=()
    topo_down
}

refuse proposal 'no acceptable IKE proposal: peer 198\.18\.0\.1 offered aes128-sha256-prfsha256-modp2048, we accept aes256gcm16-prfsha256-x25519' -- \
    $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B aes128-sha256-modp2048 aes256gcm16
refuse ts 'traffic selectors not allowed \(TS_UNACCEPTABLE\): peer proposed TSi 10\.99\.0\.0/24 TSr 198\.18\.2\.0/24; we allow s2s: local 198\.18\.2\.0/24 remote 198\.18\.1\.0/24' -- \
    $WAN_A $WAN_B $ID_A $ID_B 10.99.0.0/24 $LAN_B aes256gcm16-prfsha256-x25519 aes256gcm16
refuse identity "peer identity wrong\.interop\.test does not match the configured remote id $ID_A" -- \
    $WAN_A $WAN_B wrong.interop.test $ID_B $LAN_A $LAN_B aes256gcm16-prfsha256-x25519 aes256gcm16
SSWAN_PSK=not-the-same-psk refuse psk "AUTH from $ID_A \(198\.18\.0\.1\) does not verify: wrong pre-shared key" -- \
    $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B aes256gcm16-prfsha256-x25519 aes256gcm16
finish
