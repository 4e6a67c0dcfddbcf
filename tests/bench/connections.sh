#!/usr/bin/env bash
# connections.sh - a PoP's thousands of loaded connections (no SAs): how
# long the daemon takes to start with them (until its admin socket
# answers) and to reload them, its resident memory per connection, and
# what listing them costs, and reloads that change every connection
# (time, and the resident set after them). Not a test: it prints numbers,
# and fails only when the daemon does not start, does not load every
# connection, or its IKE guest traps.
#
#   one namespace (wsb-conns), no peer: each connection has a remote
#   subnet of its own, routed into the TUN device at start.
#
# Env: N=10000 (connections), CHURN=6 (reloads changing all of them). `cargo xtask bench-connections` builds
# everything and runs this.
source "$(dirname "$0")/../e2e/lib.sh"
source "$ROOT/tests/interop/wasmsec-conf.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 600 bash "$0" "$@"

N=${N:-10000}
NS=wsb-conns
DIR=$(mktemp -d /tmp/wasmsec-bench-conns.XXXXXX)
PID=""
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=""; }
cleanup() { stop; ip netns del $NS 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
lone_gateway $NS
(umask 077; head -c 24 /dev/urandom | base64 >"$DIR/psk")

# conf COUNT FILE: a config with COUNT connections.
conf() {
    W_SOURCE=10.0.0.1 W_LISTEN=10.0.0.1 W_SOCKET=$DIR/ctl.sock W_DIR=$DIR W_NO_KEYLOG=1 W_NAME=site0 \
        W_LOCAL=10.0.0.1 W_REMOTE=10.2.0.0 W_LID=gw.test W_RID=peer0.test W_IKE=aes256gcm16-prfsha256-x25519 \
        W_ESP=aes256gcm16 W_LTS='["10.1.0.0/16"]' W_RTS='["10.100.0.0/24"]' wasmsec_conf "$2"
    local i
    for i in $(seq 1 $(($1 - 1))); do
        wasmsec_connection "site$i" 10.0.0.1 "10.2.$((i / 256)).$((i % 256))" gw.test "peer$i.test" \
            '["10.1.0.0/16"]' "[\"10.$((100 + i / 256)).$((i % 256)).0/24\"]" none
    done >>"$2"
}
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
w() { "$WASMSEC_BIN" "$@" --socket "$DIR/ctl.sock"; }
# start: the daemon on $DIR/wasmsec.toml (PID); UP_MS: the ms until it answers.
start() {
    local t0; t0=$(date +%s%N)
    ip netns exec $NS "$WASMSEC_BIN" run --config "$DIR/wasmsec.toml" >"$DIR/wasmsec.log" 2>&1 </dev/null &
    PID=$!
    local i; for i in $(seq 1200); do
        w list-failures >/dev/null 2>&1 && { UP_MS=$(ms "$t0"); return 0; }
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$DIR/wasmsec.log" >&2; echo "connections.sh: the daemon did not start" >&2; exit 1
}
loaded() { w list-conns --json --page-size 10000 | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections_total"])'; }
# reload: the ms a reload of $DIR/wasmsec.toml takes.
reload() { local t0; t0=$(date +%s%N); w reload >/dev/null || exit 1; ms "$t0"; }

conf 1 "$DIR/one.toml"
conf "$N" "$DIR/all.toml"
cp "$DIR/one.toml" "$DIR/wasmsec.toml"
start
sleep 2
base=$(kib "$PID" VmRSS)
stop

cp "$DIR/all.toml" "$DIR/wasmsec.toml"
start
up_ms=$UP_MS
[ "$(loaded)" = "$N" ] || { echo "connections.sh: not every connection loaded" >&2; exit 1; }
routes=$(ip -n $NS route show dev wsec0 | grep -c '^10\.' || true)
sleep 2
rss=$(kib "$PID" VmRSS) hwm_start=$(kib "$PID" VmHWM)
# peak_over COMMAND...: the daemon's peak resident set while COMMAND
# runs, over its resident set before (clear_refs 5 resets the peak).
peak_over() {
    echo 5 >"/proc/$PID/clear_refs"
    local before t0; before=$(kib "$PID" VmRSS) t0=$(date +%s%N)
    "$@" >/dev/null
    echo "$(ms "$t0") ms, peak +$((($(kib "$PID" VmHWM) - before) / 1024)) MiB"
}
pages=$(peak_over w list-conns --json)
one=$(peak_over w list-conns --json --page-size 10000)
same_ms=$(reload)
cp "$DIR/one.toml" "$DIR/wasmsec.toml"
remove_ms=$(reload)
cp "$DIR/all.toml" "$DIR/wasmsec.toml"
add_ms=$(reload)
[ "$(loaded)" = "$N" ] || { echo "connections.sh: not every connection came back" >&2; exit 1; }
# Reloads that change every connection (the local subnet, back and forth):
# the time of each, and the resident set after the last (the IKE guest is
# replaced once it holds half as many removed connections as loaded ones).
CHURN=${CHURN:-6}
churn_ms=""
for r in $(seq 1 "$CHURN"); do
    if [ $((r % 2)) = 1 ]; then from='10.1.0.0/16' to='10.1.0.0/17'; else from='10.1.0.0/17' to='10.1.0.0/16'; fi
    sed "s|^local_ts = \[\"$from\"\]|local_ts = [\"$to\"]|" "$DIR/all.toml" >"$DIR/wasmsec.toml"
    cp "$DIR/wasmsec.toml" "$DIR/all.toml"
    churn_ms="$churn_ms $(reload)"
done
sleep 1
churn_rss=$(kib "$PID" VmRSS)
compactions=$(grep -c "held many removed connections" "$DIR/wasmsec.log" || true)
[ "$(loaded)" = "$N" ] || { echo "connections.sh: not every connection is loaded after the reloads" >&2; exit 1; }
! grep -q "trapped" "$DIR/wasmsec.log" || { grep -a -m3 "trapped" "$DIR/wasmsec.log" >&2; echo "connections.sh: the IKE guest trapped" >&2; exit 1; }
stop

echo
echo "== $N loaded connections (no SAs), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPU, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
printf '%-58s %s\n' "start until the admin socket answers" "$up_ms ms ($routes routes)" \
    "resident set after start (one connection: $((base / 1024)) MiB)" "$((rss / 1024)) MiB, $(((rss - base) * 1024 / N)) B per connection" \
    "peak resident set at start" "$((hwm_start / 1024)) MiB" \
    "list-conns --json, pages of 1,000" "$pages" \
    "list-conns --json, one page of 10,000" "$one" \
    "reload, nothing changed" "$same_ms ms" \
    "reload removing $((N - 1))" "$remove_ms ms" \
    "reload adding $((N - 1))" "$add_ms ms" \
    "$CHURN reloads changing all $N, each" "${churn_ms# } ms" \
    "resident set after them" "$((churn_rss / 1024)) MiB ($compactions IKE guest replacements)"
