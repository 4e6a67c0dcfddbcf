#!/usr/bin/env bash
# xtask: beside the interop suites (the doctor's wsdoctor-* namespaces)
# The preflight check (`cargo xtask doctor`) passes on this machine, and
# fails, naming the missing piece and its Debian package, when a piece is
# made unavailable. Nothing is uninstalled: each case runs in a private
# mount namespace (unshare -m) where an empty file is bind-mounted over the
# piece, so only the doctor's own view changes.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 120 bash "$0" "$@"
XTASK=${XTASK_BIN:-$ROOT/target/release/xtask}
EMPTY=$(mktemp /tmp/wasmsec-doctor-empty.XXXXXX)
trap 'rm -f "$EMPTY"' EXIT

rc=0; out=$("$XTASK" doctor 2>&1) || rc=$?
check "doctor passes with everything installed" test "$rc" -eq 0
check "doctor proved the wasm linker, strongSwan's AES-GCM and tshark's ESP dissector" \
    bash -c 'grep -q "ok    the wasm linker links" <<<"$1" && grep -q "ok    strongSwan does AES-GCM" <<<"$1" && grep -q "ok    tshark dissects ESP" <<<"$1"' _ "$out"

# hidden PATHS... -- COMMAND: run COMMAND with each PATH covered by an empty file.
hidden() {
    local paths=() p
    while [ "$1" != -- ]; do paths+=("$1"); shift; done; shift
    unshare -m bash -c 'e=$1; shift; while [ "$1" != -- ]; do mount --bind "$e" "$1" || exit 99; shift; done; shift; exec "$@"' \
        _ "$EMPTY" "${paths[@]}" -- "$@"
}

rc=0; out=$(hidden "$(readlink -f /usr/bin/rust-lld)" -- "$XTASK" doctor 2>&1) || rc=$?
echo "$out" | grep FAIL -A1 | sed 's/^/    /'
check "without the wasm linker the doctor fails" test "$rc" -ne 0 -a "$rc" -ne 99
check "... naming the linker and the package rust-web-llvm" \
    bash -c 'grep -q "FAIL  the wasm linker links" <<<"$1" && grep -q "Debian package rust-web-llvm" <<<"$1"' _ "$out"
check "... and nothing else" test "$(grep -c 'FAIL ' <<<"$out")" -eq 1

P=/usr/lib/ipsec/plugins
rc=0; out=$(hidden $P/libstrongswan-openssl.so $P/libstrongswan-gcm.so -- "$XTASK" doctor 2>&1) || rc=$?
echo "$out" | grep FAIL -A1 | sed 's/^/    /'
check "without strongSwan's AES-GCM plugins the doctor fails" test "$rc" -ne 0 -a "$rc" -ne 99
check "... naming AES-GCM and the package libstrongswan-standard-plugins" \
    bash -c 'grep -q "FAIL  strongSwan does AES-GCM" <<<"$1" && grep -q "Debian package libstrongswan-standard-plugins" <<<"$1"' _ "$out"
check "... while ChaCha20-Poly1305 and X25519 still pass" \
    bash -c 'grep -q "ok    strongSwan does ChaCha20-Poly1305" <<<"$1" && grep -q "ok    strongSwan does X25519" <<<"$1"' _ "$out"

rc=0; out=$(hidden $P/libstrongswan-kernel-libipsec.so -- "$XTASK" doctor 2>&1) || rc=$?
check "without kernel-libipsec the doctor fails naming libcharon-extra-plugins" \
    bash -c '[ "$2" -ne 0 ] && grep -q "Debian package libcharon-extra-plugins" <<<"$1"' _ "$out" "$rc"
finish
