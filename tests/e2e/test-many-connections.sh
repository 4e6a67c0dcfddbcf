#!/usr/bin/env bash
# xtask: beside the interop suites (namespace wse-conns)
# A PoP's thousands of connections: the daemon routes every remote subnet
# into its TUN device at start (one `ip -batch`, not one `ip` per route),
# `list-conns` pages through them by name, reloads add, change and remove
# them (the IKE guest replaced once it holds half as many removed
# connections as loaded ones), and a route
# that fails says whose it was, at start (the daemon stops, naming it) and
# at a reload (a warning; the connection stays loaded). One namespace,
# no peer. Bounded in time; cleans up.
source "$(dirname "$0")/lib.sh"
source "$ROOT/tests/interop/wasmsec-conf.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 180 bash "$0" "$@"

N=3000
NS=wse-conns
DIR=$(mktemp -d /tmp/wasmsec-e2e-conns.XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    ip netns del $NS 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
lone_gateway $NS
(umask 077; head -c 24 /dev/urandom | base64 >"$DIR/psk")

# conf SOURCE: the config, with connections 1..N (names not in name order:
# t<i mod 13>-site<i>), each with a remote subnet of its own, except that
# the last two share one (a subnet routed twice is routed once).
conf() {
    W_SOURCE=$1 W_LISTEN=10.0.0.1 W_SOCKET=$DIR/ctl.sock W_DIR=$DIR W_NO_KEYLOG=1 W_NAME=t0-site0 \
        W_LOCAL=10.0.0.1 W_REMOTE=10.0.0.2 W_LID=gw.test W_RID=peer0.test W_IKE=aes256gcm16-prfsha256-x25519 \
        W_ESP=aes256gcm16 W_LTS='["10.1.0.0/16"]' W_RTS='["10.100.0.0/24"]' wasmsec_conf "$DIR/wasmsec.toml"
    connections 1 $((N - 1)) >>"$DIR/wasmsec.toml"
}
# connections FIRST LAST: [[connection]] sections FIRST..LAST on stdout.
connections() {
    local i rts
    for i in $(seq "$1" "$2"); do
        rts="10.$((100 + i / 256)).$((i % 256)).0/24"
        [ "$i" = $((N - 1)) ] && rts="10.$((100 + (i - 1) / 256)).$(((i - 1) % 256)).0/24"
        wasmsec_connection "t$((i % 13))-site$i" 10.0.0.1 "10.2.$((i / 256)).$((i % 256))" gw.test "peer$i.test" \
            '["10.1.0.0/16"]' "[\"$rts\"]" none
    done
}
start() { # LOG
    ip netns exec $NS "$WASMSEC_BIN" run --config "$DIR/wasmsec.toml" >"$DIR/$1" 2>&1 </dev/null &
    PID=$!
}
routes() { ip -n $NS route show dev wsec0 | grep -c '^10\.' || true; }
w() { "$WASMSEC_BIN" "$@" --socket "$DIR/ctl.sock"; }
names() { python3 -c 'import json,sys; d=json.load(sys.stdin); n=[c["name"] for c in d["connections"]]
print(len(n), len(set(n)), n == sorted(n), d["connections_total"])'; }

conf 10.0.0.1
begin=$(date +%s%N)
start wasmsec.log
for _ in $(seq 300); do [ -S "$DIR/ctl.sock" ] && break; sleep 0.1; done
echo "admin socket up $((($(date +%s%N) - begin) / 1000000)) ms after the start, with $N connections"
check "the daemon starts with $N connections" [ -S "$DIR/ctl.sock" ]
check "every remote subnet is routed into the TUN device, the shared one once ($(routes))" [ "$(routes)" = $((N - 1)) ]
check "list-conns over pages of 250: every connection once, by name, and the total" \
    [ "$(w list-conns --json --page-size 250 | names)" = "$N $N True $N" ]
check "... the same in one page" [ "$(w list-conns --json --page-size 10000 | names)" = "$N $N True $N" ]
w list-conns --page-size 500 >"$DIR/table.txt"
check "list-conns as a table over pages: one header, every connection" \
    [ "$(grep -c 'IKE/CHILD SAs' "$DIR/table.txt") $(grep -c '^  t[0-9]*-site' "$DIR/table.txt")" = "1 $N" ]

# A reload adds 100 connections: their routes come in one batch too.
connections $N $((N + 99)) >>"$DIR/wasmsec.toml"
check "a reload adds 100 connections" bash -c "'$WASMSEC_BIN' reload --json --socket '$DIR/ctl.sock' | grep -q 'site$((N + 99))\"'"
check "... and routes their subnets ($(routes))" [ "$(routes)" = $((N + 99)) ]
check "... list-conns counts them" [ "$(w list-conns --json --page-size 1000 | names)" = "$((N + 100)) $((N + 100)) True $((N + 100))" ]
# reloaded: the reload's lists as "added removed changed unchanged" counts.
reloaded() { "$WASMSEC_BIN" reload --json --socket "$DIR/ctl.sock" | python3 -c 'import json,sys; r=json.load(sys.stdin)
print(*(len(r[k]) for k in ("added", "removed", "changed", "unchanged")))'; }
check "a reload that changes nothing: every connection unchanged" [ "$(reloaded)" = "0 0 0 $((N + 100))" ]
# One connection changed (its remote subnet), the 100 added ones removed.
cp "$DIR/wasmsec.toml" "$DIR/with-100.toml"
conf 10.0.0.1
sed -i 's|10.100.0.0/24|10.99.0.0/24|' "$DIR/wasmsec.toml"
check "a reload that removes 100 and changes one: the counts" [ "$(reloaded)" = "1 101 1 $((N - 1))" ]
check "... list-conns counts what is left" [ "$(w list-conns --json --page-size 1000 | names)" = "$N $N True $N" ]
cp "$DIR/with-100.toml" "$DIR/wasmsec.toml"
check "... and the 100 come back" [ "$(reloaded)" = "101 1 1 $((N - 1))" ]

# Reloads that change every connection (their local subnet, back and
# forth): the IKE guest keeps each removed connection until it holds half
# as many as it has loaded (and 1,024), then it is replaced by one with the
# loaded ones only. Without that, five such reloads of 10,000 connections ran the
# guest out of memory (`cargo xtask bench-connections` shows the memory).
M=$((N + 100))
for r in 1 2 3 4 5 6; do
    if [ $((r % 2)) = 1 ]; then
        sed -i 's|^local_ts = \["10.1.0.0/16"\]|local_ts = ["10.1.0.0/17"]|' "$DIR/wasmsec.toml"
    else
        sed -i 's|^local_ts = \["10.1.0.0/17"\]|local_ts = ["10.1.0.0/16"]|' "$DIR/wasmsec.toml"
    fi
    out=$(reloaded)
    [ "$out" = "$M $M $M 0" ] || break
    # The replacement comes at the first quiet moment (looked for once a
    # second): wait for it before the next reload.
    for _ in $(seq 50); do
        [ "$(grep -c 'held many removed connections' "$DIR/wasmsec.log")" -ge "$r" ] && break
        sleep 0.1
    done
done
check "six reloads, each changing all $M connections ($out)" [ "$r" = 6 -a "$out" = "$M $M $M 0" ]
for _ in $(seq 50); do [ "$(grep -c 'held many removed connections' "$DIR/wasmsec.log")" -ge 6 ] && break; sleep 0.1; done
check "... after each the IKE guest was replaced by one with the $M loaded ($(grep -c 'held many removed connections' "$DIR/wasmsec.log"))" \
    [ "$(grep -o "held many removed connections.*removed_connections=[0-9]*" "$DIR/wasmsec.log" |
        awk -F= -v m=$M '$NF >= m' | wc -l)" = 6 ]
check "... with no trap" bash -c "! grep -q trapped '$DIR/wasmsec.log'"
check "... and list-conns counts the $M" [ "$(w list-conns --json --page-size 1000 | names)" = "$M $M True $M" ]

# A route the kernel refuses at a reload: a warning naming whose it was,
# and the connection is loaded all the same (its traffic has no route into
# the tunnel until the next reload routes it).
ip -n $NS addr del 10.0.0.1/24 dev wan0
connections $((N + 100)) $((N + 100)) >>"$DIR/wasmsec.toml"
check "a reload whose route fails still loads the connection" bash -c "'$WASMSEC_BIN' reload --json --socket '$DIR/ctl.sock' | grep -q 'site$((N + 100))\"'"
check "... and warns, naming the connection and the kernel's reason" \
    grep -q "WARN.*reload: cannot route a remote subnet.*connection \"t$(((N + 100) % 13))-site$((N + 100))\": route to 10\..*Invalid prefsrc" "$DIR/wasmsec.log"
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

# At start, a failed route stops the daemon, naming whose it was and how
# many more failed (here all: the source is no address of the gateway).
conf 10.0.0.99
ip -n $NS addr add 10.0.0.1/24 dev wan0
start bad-source.log
for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
check "a source no route takes: the daemon stops" bash -c "! kill -0 $PID 2>/dev/null"
rc=0; wait "$PID" 2>/dev/null || rc=$?; PID=""
check "... with a failure status ($rc)" [ "$rc" != 0 ]
check "... naming the first connection's route, the reason, and how many more failed" \
    grep -q "connection \"t0-site0\": route to 10.100.0.0/24: ip route replace 10.100.0.0/24 dev wsec0 src 10.0.0.99: .*Invalid prefsrc.* (and $((N - 2)) more routes failed)" "$DIR/bad-source.log"
finish
