#!/usr/bin/env bash
# The demo with every ESP algorithm and with raw ESP (IP protocol 50).
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"
trap '"$WASMSEC_BIN" demo --down >/dev/null 2>&1 || true' EXIT

for alg in aes128gcm16 aes256gcm16 chacha20poly1305 aes128-sha256 aes256-sha512; do
    check "demo with $alg over ESP-in-UDP" "$WASMSEC_BIN" demo --algorithm "$alg" --pings 3 --dir /tmp/wasmsec-e2e-variants
done
check "demo with raw ESP (protocol 50)" "$WASMSEC_BIN" demo --raw-esp --pings 3 --dir /tmp/wasmsec-e2e-variants
rm -rf /tmp/wasmsec-e2e-variants
finish
