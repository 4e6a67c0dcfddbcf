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
