#!/usr/bin/env bash
# No secret leaves the vault: wasmsec runs against strongSwan for 40 s with
# CHILD rekeys every 6 s (with PFS) and IKE rekeys every 15 s, keeping a copy
# of every secret its IKE vault creates (`[ike] secret_audit`) and of every
# byte string it hands the IKE guest (`guest_transcript`). Then the PSK and
# every 12-byte piece of every audited secret are searched for, raw and in
# hex, in the daemon's log, its counters, its admin answers and the guest's
# transcript; the audit must hold every key the run exported for Wireshark.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 200 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
mkdir -p "$A" "$B"
SSWAN_CONN_EXTRA="    rekey_time = 15s" SSWAN_CHILD_EXTRA="      rekey_time = 6s" \
    sswan_start wsi-gwa "$A" initiator $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
WASMSEC_IKE_EXTRA="esp_keylog = \"$B/esp_sa\"
secret_audit = \"$B/secrets.hex\"
guest_transcript = \"$B/transcript.hex\"" \
    wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
sswan "$A" --initiate --child s2s --timeout 20 >"$A/initiate.out" 2>&1 || true
check "tunnel up" wasmsec_up "$B" 20
nsx wsi-hosta ping -n -i 0.1 -c 400 -W 1 $HOST_B >"$STATE/ping.out" 2>&1 &
PING=$!
for i in 1 2 3 4; do sleep 9; wasmsec_ctl "$B" status >"$B/status-$i.json"; done
wait $PING || true
kill -TERM "$(cat "$B/pid")"
for _ in $(seq 50); do kill -0 "$(cat "$B/pid")" 2>/dev/null || break; sleep 0.1; done
rekeys=$(grep -c "CHILD_SA s2s installed" "$B/wasmsec.log" || true)
echo "CHILD SAs installed: $rekeys; ping: $(grep -c 'bytes from' "$STATE/ping.out" || true)/400 replies"
check "CHILD SAs were rekeyed with PFS ($rekeys)" [ "$rekeys" -ge 5 ]
check "the audit and the transcript were written, owner-only" \
    [ "$(command stat -c %a "$B/secrets.hex")" = 600 -a "$(command stat -c %a "$B/transcript.hex")" = 600 ]
check "no secret in the log, the counters, the admin answers or what the guest was given" \
    python3 "$ROOT/tests/interop/secret-scan.py" --audit "$B/secrets.hex" --psk "$PSK" \
        --keylog "$B/ikev2_decryption_table" --keylog "$B/esp_sa" \
        "$B/wasmsec.log" "$B/stats.json" "$B"/status-*.json "$B/transcript.hex"
# The scan can fail: a file with one of the secrets planted in it is caught.
sed -n 2p "$B/secrets.hex" | cut -c9-40 | sed 's/^/planted: /' >"$B/planted.txt"
check "the scan catches a secret planted in a file" bash -c "! python3 '$ROOT/tests/interop/secret-scan.py' \
    --audit '$B/secrets.hex' --psk '$PSK' --keylog '$B/ikev2_decryption_table' '$B/planted.txt' >/dev/null"
finish
