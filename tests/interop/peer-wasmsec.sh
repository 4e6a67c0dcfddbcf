#!/usr/bin/env bash
# peer-wasmsec.sh - peer-B adapter for the strongSwan interop harness
# (../shared/interop, "Peer-B adapter contract"): runs wasmsec in $NS_B.
#
# usage: peer-wasmsec.sh start|initiate|check|stop|logs [N]
# Reads only the harness's environment: SCENARIO ROLE_B TOPO NS_B WORK_B
# WAN_IP_B B_REMOTE_ADDR LAN_A LAN_B ID_A ID_B PSK IKE_PROPOSALS ESP_PROPOSALS,
# and, as the reference peer (peers/strongswan.sh) does, the lifecycle knobs
# IKE_REKEY_TIME CHILD_REKEY_TIME DPD_DELAY ENCAP and `life_time` in
# SWANCTL_CHILD_EXTRA (swanctl time syntax: 5s, 20m, 4h).
# WASMSEC_BIN overrides the binary (default: this checkout's target/release/wasmsec).
#
# So that a lost packet explains itself, the adapter also captures B's WAN
# and LAN (and host A's LAN when the harness's $NS_HA exists), exports the
# IKE and ESP keys (test keys only), and at `stop` writes
# $WORK_B/loss-report.txt (tests/interop/loss-report.py): every lost ping
# with the SPI and sequence number it travelled under and where it died.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${WASMSEC_BIN:-$ROOT/target/release/wasmsec}
WORK=${WORK_B:?WORK_B is not set (run me from the interop harness)}
SOCK=$WORK/wasmsec.sock
PIDFILE=$WORK/wasmsec.pid
CONN=s2s
source "$ROOT/tests/interop/wasmsec-conf.sh"

die() { echo "peer-wasmsec: $*" >&2; exit 1; }

# The gateway's own LAN address: the first host of LAN_B (the harness puts gw at .1).
lan_gw() { python3 -c 'import ipaddress,sys; print(next(ipaddress.ip_network(sys.argv[1], strict=False).hosts()))' "$1"; }

toml_list() { # "a,b" -> ["a", "b"]
    local IFS=, out="" x
    for x in $1; do out+="${out:+, }\"$x\""; done
    echo "[$out]"
}

alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# cap NS IF NAME: tcpdump (headers and a little payload) into $WORK/cap-NAME.pcap.
cap() {
    ip netns exec "$1" tcpdump -i "$2" -n -U -s 2048 -w "$WORK/cap-$3.pcap" 'udp or esp or icmp' \
        >/dev/null 2>"$WORK/cap-$3.err" </dev/null 9>&- &
    echo $! >> "$WORK/captures.pid"
}
start_captures() {
    stop_captures
    cap "$NS_B" wan0 b-wan
    cap "$NS_B" lan0 b-lan
    if [ -n "${NS_HA:-}" ] && ip netns pids "$NS_HA" >/dev/null 2>&1; then cap "$NS_HA" eth0 a-host; fi
    local f; for f in "$WORK"/cap-*.err; do
        for _ in $(seq 30); do grep -q "listening on" "$f" 2>/dev/null && break; sleep 0.1; done
    done
}
stop_captures() {
    [ -f "$WORK/captures.pid" ] || return 0
    sleep 0.3
    local p; for p in $(cat "$WORK/captures.pid"); do kill -INT "$p" 2>/dev/null || true; done
    for p in $(cat "$WORK/captures.pid"); do for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
    rm -f "$WORK/captures.pid"
}

status() { "$BIN" ctl --socket "$SOCK" status 2>/dev/null; }

# swanctl time (5s, 20m, 4h, 1d, or seconds) -> seconds.
secs() {
    local v=${1// /}
    case "$v" in
        *s) echo "${v%s}" ;;
        *m) echo $(( ${v%m} * 60 )) ;;
        *h) echo $(( ${v%h} * 3600 )) ;;
        *d) echo $(( ${v%d} * 86400 )) ;;
        *) echo "$v" ;;
    esac
}

# `life_time = 8s` in SWANCTL_CHILD_EXTRA, in seconds (empty if absent).
child_life_time() {
    local v; v=$(sed -n 's/.*life_time *= *\([0-9]*[smhd]\?\).*/\1/p' <<<"${SWANCTL_CHILD_EXTRA:-}")
    [ -n "$v" ] && secs "$v"
}

child_up() { status | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["child_sas"] else 1)' 2>/dev/null; }

case "${1:-}" in
start)
    [ "${SCENARIO:-psk}" = psk ] || die "scenario ${SCENARIO} is not supported yet (only psk)"
    [ -x "$BIN" ] || die "no wasmsec binary at $BIN (run: cargo xtask build)"
    mkdir -p "$WORK"
    umask 077
    printf '%s' "${PSK:?}" > "$WORK/psk"
    lt=$(child_life_time || true)
    W_SOURCE=$(lan_gw "${LAN_B:?}") W_LISTEN=${WAN_IP_B:?} W_SOCKET=$SOCK W_DIR=$WORK W_NAME=$CONN \
        W_LOCAL=$WAN_IP_B W_REMOTE=${B_REMOTE_ADDR:?} W_LID=${ID_B:?} W_RID=${ID_A:?} \
        W_IKE=${IKE_PROPOSALS:?} W_ESP=${ESP_PROPOSALS:?} W_LTS=$(toml_list "$LAN_B") W_RTS=$(toml_list "${LAN_A:?}") \
        W_TUNNEL_EXTRA='name = "wsec0"' W_IKE_EXTRA="esp_keylog = \"$WORK/esp_sa\"" \
        W_CONN_EXTRA="keepalive = $(secs "${KEEPALIVE:-5s}")
rekey_time = $(secs "${IKE_REKEY_TIME:-4h}")
dpd_delay = $(secs "${DPD_DELAY:-0}")
encap = $([ "${ENCAP:-no}" = yes ] && echo true || echo false)" \
        W_CHILD_EXTRA="rekey_time = $(secs "${CHILD_REKEY_TIME:-1h}")${lt:+
life_time = $lt}" \
        wasmsec_conf "$WORK/wasmsec.toml"
    "$BIN" check --config "$WORK/wasmsec.toml" >/dev/null
    alive && kill "$(cat "$PIDFILE")" 2>/dev/null || true
    rm -f "$SOCK" "$WORK/ikev2_decryption_table" "$WORK/esp_sa" "$WORK"/cap-*.pcap "$WORK/loss-report.txt"
    start_captures
    # Detached from the harness's descriptors (it holds a lock on fd 9).
    ip netns exec "${NS_B:?}" "$BIN" run --config "$WORK/wasmsec.toml" --stats-file "$WORK/stats.json" \
        >"$WORK/wasmsec.log" 2>&1 </dev/null 9>&- &
    echo $! > "$PIDFILE"
    for _ in $(seq 100); do
        [ -S "$SOCK" ] && status >/dev/null && exit 0
        alive || { tail -20 "$WORK/wasmsec.log" >&2; die "wasmsec exited during start"; }
        sleep 0.2
    done
    tail -20 "$WORK/wasmsec.log" >&2
    die "wasmsec did not come up within 20 s"
    ;;
initiate)
    "$BIN" ctl --socket "$SOCK" initiate "$CONN"
    for _ in $(seq 150); do
        child_up && exit 0
        alive || die "wasmsec is not running"
        sleep 0.2
    done
    tail -20 "$WORK/wasmsec.log" >&2
    die "no CHILD_SA within 30 s"
    ;;
check)
    s=$(status || true)
    echo "vip="
    echo "dns="
    echo "nat_local=$(echo "$s" | python3 -c 'import json,sys
try: print("yes" if any(c["encap"] for c in json.load(sys.stdin)["child_sas"]) else "no")
except Exception: print("no")')"
    ;;
stop)
    if alive; then
        pid=$(cat "$PIDFILE")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE" "$SOCK"
    stop_captures
    if [ -f "$WORK/cap-b-wan.pcap" ]; then
        python3 "$ROOT/tests/interop/loss-report.py" --dir "$WORK" \
            ${RUN_DIR:+--peer-log "$RUN_DIR/A/charon.log"} >"$WORK/loss-report.txt" 2>&1 || true
    fi
    ;;
logs)
    tail -n "${2:-40}" "$WORK/wasmsec.log" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 start|initiate|check|stop|logs [N]" >&2
    exit 2
    ;;
esac
