#!/usr/bin/env bash
# handshakes.sh - IKEv2 setups as responder: wasmsec and strongSwan under the
# same load in one run (issue #16). Not a test: it prints numbers and ratios,
# and fails only when a responder cannot be started or completes nothing.
#
#   wsi-gwa: the load generator (tests/ikeload), its initiators on the
#            addresses of 198.19.0.0/18 (a local route: one address each)
#   wsi-gwb 198.18.0.2: the responder, one PSK connection for any address
#            and identity (initiator N is iN.load.bench.test)
#
# Per responder: SEQ setups one after the other (the latency of a setup,
# IKE_SA_INIT + IKE_AUTH with its CHILD SA installed, as an initiator sees
# it), then RATE_SETUPS setups with IN_FLIGHT at once (at most RATE_SECS s):
# setups per second, and per CPU-second of the responder process (all its
# threads; the generator runs on the other core). Each setup is deleted once
# it is up. AES-256-GCM, PRF-SHA256, X25519; PSK. With STANDING=N the
# rate phase first sets up N IKE SAs that stay up while the setups are
# measured (N + IN_FLIGHT <= 16,382, the generator's addresses): does a
# setup cost more when the responder holds many SAs? With OTHERS=N
# wasmsec's config also holds N connections of other peers (each its own
# address and identity, none the generator's), as a PoP's does: does a
# setup cost more when the responder has many connections to choose from?
#
# Env: SEQ=200 RATE_SETUPS=20000 RATE_SECS=30 IN_FLIGHT=24 STANDING=0 OTHERS=0
#      RESPONDERS="wasmsec strongswan" IKELOAD=path (built by cargo xtask)
# `cargo xtask bench-handshakes` builds everything and runs this.
source "$(dirname "$0")/../interop/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 1800 bash "$0" "$@"

SEQ=${SEQ:-200}
RATE_SETUPS=${RATE_SETUPS:-20000}
RATE_SECS=${RATE_SECS:-30}
IN_FLIGHT=${IN_FLIGHT:-24}
STANDING=${STANDING:-0}
OTHERS=${OTHERS:-0}
RESPONDERS=${RESPONDERS:-wasmsec strongswan}
IKELOAD=${IKELOAD:-$ROOT/target/release/wasmsec-ikeload}
RESULTS=$STATE/results.txt

[ -x "$IKELOAD" ] || { echo "handshakes.sh: $IKELOAD is missing (cargo build --release -p wasmsec-ikeload)" >&2; exit 2; }
for r in $RESPONDERS; do
    case $r in
        wasmsec) [ -x "$WASMSEC_BIN" ] || { echo "handshakes.sh: WASMSEC_BIN is missing" >&2; exit 2; } ;;
        strongswan) [ -x /usr/lib/ipsec/charon ] || { echo "handshakes.sh: strongSwan's charon is missing (apt-get install charon-systemd libstrongswan-extra-plugins libcharon-extra-plugins)" >&2; exit 2; } ;;
        *) echo "handshakes.sh: unknown responder $r" >&2; exit 2 ;;
    esac
done

# start_responder NAME: started in wsi-gwb; its PID in RESP_PID.
start_responder() {
    local d=$STATE/$1
    rm -rf "$d"; mkdir -p "$d"
    case $1 in
        wasmsec)
            local i more=$STATE/more-connections.toml
            : >"$more"
            for i in $(seq 1 "$OTHERS"); do
                wasmsec_connection "other$i" "" "100.$((64 + i / 65536)).$((i / 256 % 256)).$((i % 256))" "$ID_B" \
                    "other$i.peer.test" "[\"$LAN_B\"]" "[\"10.$((100 + i / 65536)).$((i / 256 % 256)).$((i % 256))/32\"]" none
            done >"$more"
            WASMSEC_MORE_CONNECTIONS=$more W_NO_KEYLOG=1 wasmsec_start wsi-gwb "$d" $WAN_B %any $ID_B %any $LAN_B $IKELOAD_TS 198.18.2.1 none >"$d/start.out" 2>&1
            RESP_PID=$(cat "$d/pid") ;;
        strongswan)
            # strongSwan's default log levels (lib.sh logs more for the tests).
            SSWAN_LOG_IKE=1 sswan_start wsi-gwb "$d" responder $WAN_B %any $ID_B %any $LAN_B $IKELOAD_TS >"$d/start.out" 2>&1
            RESP_PID=${PIDS[-1]} ;;
    esac
}

# udp_drops NS: datagrams the namespace's UDP sockets dropped for a full
# receive buffer (RcvbufErrors in /proc/net/snmp).
udp_drops() {
    nsx "$1" awk '/^Udp:/ { if (!n) { for (i = 1; i <= NF; i++) col[$i] = i; n = 1 } else print $col["RcvbufErrors"] }' /proc/net/snmp
}

# load LABEL PID ARGS...: one generator run; its report line goes to the results.
load() {
    local label=$1 pid=$2 line ga gb
    shift 2
    ga=$(udp_drops wsi-gwa); gb=$(udp_drops wsi-gwb)
    line=$(ikeload_run "$label" "$pid" "$@") || {
        echo "handshakes.sh: $label completed nothing:" >&2; cat "$STATE/$label.err" >&2; echo "$line" >&2; return 1; }
    echo "$line" | tee -a "$RESULTS"
    echo "    UDP datagrams dropped for a full receive buffer: generator $(($(udp_drops wsi-gwa) - ga)), responder $(($(udp_drops wsi-gwb) - gb))"
    [ -s "$STATE/$label.err" ] && sed 's/^/    /' "$STATE/$label.err" | head -5
    return 0
}

echo "handshakes.sh: $(date -u +%FT%TZ), $(nproc) vCPU, $(uname -r); sequential $SEQ, then $RATE_SETUPS with $IN_FLIGHT in flight (at most ${RATE_SECS}s), $STANDING IKE SAs standing, $OTHERS other connections"
topo_up
ikeload_topology
: >"$RESULTS"
for r in $RESPONDERS; do
    start_responder $r || { echo "handshakes.sh: $r did not start:" >&2; cat "$STATE/$r/start.out" >&2; exit 1; }
    pid=$RESP_PID
    case $r in
        wasmsec) echo "$r: $("$WASMSEC_BIN" --version 2>/dev/null | head -1) (pid $pid)" ;;
        strongswan) echo "$r: $(/usr/lib/ipsec/charon --version 2>/dev/null | head -1 || true) kernel-libipsec (pid $pid)" ;;
    esac
    load "$r-sequential" "$pid" --in-flight 1 --setups "$SEQ" --seconds 120
    load "$r-rate" "$pid" --in-flight "$IN_FLIGHT" --setups "$RATE_SETUPS" --seconds "$RATE_SECS" --standing "$STANDING"
    # What the responder refused (its counters; a refusal is a retransmission
    # half a second later, seen in the p99).
    if [ $r = wasmsec ] && wasmsec_ctl "$STATE/$r" status >"$STATE/$r/status.json" 2>/dev/null; then
        python3 -c 'import json,sys
ike = json.load(open(sys.argv[1]))["ike"]
keys = ("rate_limited", "half_open_drops", "cookies_sent", "temporary_failures", "oversize")
print("    wasmsec refused: " + ", ".join("%s %d" % (k, ike.get(k, 0)) for k in keys))' "$STATE/$r/status.json"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
python3 "$ROOT/tests/bench/handshakes-table.py" "$RESULTS"
