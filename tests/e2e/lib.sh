# Shared helpers for the end-to-end tests (sourced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WASMSEC_BIN=${WASMSEC_BIN:-$ROOT/target/release/wasmsec}
PASSED=0
FAILED=0

ok() { echo "ok: $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $*"; FAILED=$((FAILED + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() { # prints the closing line the CI reads
    echo "$(basename "$0"): $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}
# stat FILE JSONPATH: a counter from a stats file (dots separate keys).
stat() {
    python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"
}
# lone_gateway NS: a namespace for a daemon without a peer: lo up, and
# wan0 (10.0.0.1/24; its veth peer wan1 in the same namespace) up.
lone_gateway() {
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip -n "$1" link add wan0 type veth peer name wan1
    ip -n "$1" addr add 10.0.0.1/24 dev wan0
    ip -n "$1" link set wan0 up
    ip -n "$1" link set wan1 up
}
# gso_cut NS: wasmsec sends with UDP GSO, and a veth passes a GSO datagram
# whole: a capture would see one UDP datagram holding many ESP packets, of
# which tshark reads the first (the busier the machine, the more each send
# carries). With the veth's UDP segmentation off, the kernel cuts it at
# NS's wan0, before any capture point, as a NIC would on the wire; the
# daemon still sends with GSO.
gso_cut() { ip netns exec "$1" ethtool -K wan0 tx-udp-segmentation off >/dev/null; }
