#!/usr/bin/env bash
# A packet socket's transmit ring against sendmmsg over a veth, in two
# namespaces of its own (README, Performance, "The transmit ring,
# tried"). A bare experiment, not the product, and not a test: it prints
# numbers. ROUNDS=3 N=2000000 by default; needs gcc.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
N=${N:-2000000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
A=txring-a-$$
B=txring-b-$$
cleanup() {
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -Wall -o "$work/tx-ring" "$here/tx-ring.c"
ip netns add "$A"
ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 10.9.0.1/24 dev va
ip -n "$B" addr add 10.9.0.2/24 dev vb
ip -n "$A" link set va up
ip -n "$B" link set vb up
mac=$(ip netns exec "$B" cat /sys/class/net/vb/address)
echo "$(date -u '+%F %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs"

echo "Safety: a 16-frame ring, a receiver that holds 2,000 datagrams for 2 s"
ip netns exec "$B" timeout 20 "$work/tx-ring" hold 2000 > "$work/hold.out" &
rx=$!
sleep 0.5
ip netns exec "$A" timeout 15 "$work/tx-ring" small va "$mac" 2000 | sed "s/^/  /"
wait "$rx" && ok=yes || ok=no
echo "  $(cat "$work/hold.out" | tail -1) (all their own: $ok)"

echo "Speed: $N datagrams a run, into a raw socket that drains them"
for _ in $(seq "$ROUNDS"); do
    for mode in mmsg ring; do
        ip netns exec "$B" timeout 60 "$work/tx-ring" drain > /dev/null &
        rx=$!
        sleep 0.3
        ip netns exec "$A" timeout 50 "$work/tx-ring" send va "$mac" "$N" "$mode" | sed 's/^/  /'
        wait "$rx" || true
    done
done
