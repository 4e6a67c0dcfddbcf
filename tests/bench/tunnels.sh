#!/usr/bin/env bash
# tunnels.sh - tunnel throughput, wasmsec and the userspace anchors in one run
# (issue #16). Not a test: it prints numbers and ratios, and fails only when a
# tunnel cannot be brought up or a tool is missing.
#
# Every tunnel runs between the same two gateway namespaces of the interop
# topology (tests/interop/lib.sh), one after the other:
#
#   wsi-hosta 198.18.1.10 -- wsi-gwa 198.18.0.1 == wan0 == 198.18.0.2 wsi-gwb -- 198.18.2.10 wsi-hostb
#
#   wasmsec-udp    wasmsec <-> wasmsec, IKEv2, AES-256-GCM, ESP in UDP 4500
#   wasmsec-raw    the same with raw ESP (IP protocol 50), as the daemon
#                  sends it by default ([network] raw_esp_send = "auto":
#                  through a packet socket, as nothing here hooks the
#                  gateway's output path; its log says so)
#   wasmsec-rawip  raw ESP through the raw IP socket (raw_esp_send = "ip")
#   wasmsec-link   raw ESP through the packet socket (raw_esp_send = "link")
#   libipsec       strongSwan charon + kernel-libipsec <-> the same, AES-256-GCM
#                  (libipsec always encapsulates ESP in UDP)
#   boringtun      boringtun-cli <-> boringtun-cli (WireGuard), configured with wg(8)
#   wireguard-go   Debian's wireguard-go <-> the same
#
# For each: iperf3 TCP host A -> host B with 1 and with 4 streams for DUR s,
# REPS times (the table shows the median), then UDP with 64-byte payloads at
# full rate for UDP_DUR s (packets per second that arrive). CPU: the
# gateway daemons' own time (/proc/PID/stat of every process in the gateway
# namespace, in % of one core), not the kernel's forwarding softirqs.
#
# Env: REPS=3 DUR=10 UDP_DUR=5 TUNNELS="wasmsec-udp wasmsec-raw wasmsec-rawip libipsec boringtun wireguard-go"
#      STREAMS="1 4" OUT=dir for iperf3's JSON (default: a temp dir, kept)
#      BORINGTUN=path of boringtun-cli (default: PATH, then ~/.cargo/bin)
# Needs: iperf3, wg (wireguard-tools), wireguard-go, boringtun-cli
# (`cargo install boringtun-cli`), strongSwan's charon with kernel-libipsec.
# `cargo xtask bench-tunnels` installs what is missing and runs this.
source "$(dirname "$0")/../interop/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 3600 bash "$0" "$@"

REPS=${REPS:-3}
DUR=${DUR:-10}
UDP_DUR=${UDP_DUR:-5}
STREAMS=${STREAMS:-1 4}
TUNNELS=${TUNNELS:-wasmsec-udp wasmsec-raw wasmsec-rawip libipsec boringtun wireguard-go}
OUT=${OUT:-$(mktemp -d /tmp/wasmsec-bench-tunnels.XXXXXX)}
BORINGTUN=${BORINGTUN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
WG_MTU=1420
mkdir -p "$OUT"
RESULTS=$OUT/results.tsv
: >"$RESULTS"

need() { command -v "$1" >/dev/null || [ -x "$1" ] || { echo "tunnels.sh: $1 is missing ($2)" >&2; exit 2; }; }
need iperf3 "apt-get install iperf3"
for t in $TUNNELS; do
    case $t in
        boringtun) need wg "apt-get install wireguard-tools"; need "$BORINGTUN" "cargo install boringtun-cli" ;;
        wireguard-go) need wg "apt-get install wireguard-tools"; need wireguard-go "apt-get install wireguard-go" ;;
        libipsec) need /usr/lib/ipsec/charon "apt-get install charon-systemd libstrongswan-extra-plugins libcharon-extra-plugins" ;;
        wasmsec-*) need "$WASMSEC_BIN" "cargo xtask build" ;;
        *) echo "tunnels.sh: unknown tunnel $t" >&2; exit 2 ;;
    esac
done

ns_ticks() { # NS: CPU ticks of every process in the namespace
    local t=0 p
    for p in $(ip netns pids "$1" 2>/dev/null); do
        # utime and stime are fields 14 and 15; the command name (field 2)
        # may hold spaces, so count from its closing parenthesis.
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0)))
    done
    echo "$t"
}

# measure TUNNEL TEST ARGS...: one iperf3 client run from host A; appends
# "tunnel test value cpu_a cpu_b" to the results (value: Mbit/s or packets/s).
measure() {
    local tunnel=$1 test=$2 json a0 b0 a1 b1 t0 t1 hz value
    shift 2
    json=$OUT/$tunnel-$test-$(date +%s%N).json
    hz=$(getconf CLK_TCK)
    a0=$(ns_ticks wsi-gwa); b0=$(ns_ticks wsi-gwb); t0=$(date +%s%N)
    nsx wsi-hosta iperf3 -c "$HOST_B" -J "$@" >"$json" 2>&1 || true
    a1=$(ns_ticks wsi-gwa); b1=$(ns_ticks wsi-gwb); t1=$(date +%s%N)
    value=$(python3 - "$json" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    e, proto = j["end"], j["start"]["test_start"]["protocol"]
except Exception:
    print("nan"); sys.exit()
if proto == "UDP":
    # What the server received, per second.
    s = e.get("sum_received") or e["sum"]
    print(f'{(s["packets"] - s["lost_packets"]) / s["seconds"]:.0f}')
else:
    print(f'{e["sum_received"]["bits_per_second"] / 1e6:.0f}')
PY
)
    local secs=$(( (t1 - t0) / 1000000 ))
    printf '%s\t%s\t%s\t%s\t%s\n' "$tunnel" "$test" "$value" \
        $(( (a1 - a0) * 100000 / hz / (secs > 0 ? secs : 1) )) $(( (b1 - b0) * 100000 / hz / (secs > 0 ? secs : 1) )) >>"$RESULTS"
    echo "  $tunnel $test: $value (gateway CPU A $(( (a1 - a0) * 100000 / hz / (secs > 0 ? secs : 1) )) % B $(( (b1 - b0) * 100000 / hz / (secs > 0 ? secs : 1) )) %)"
}

# ---- bringing each tunnel up ------------------------------------------------

up_wasmsec() { # ENCAP(true|false)
    local extra="encap = $1"
    WASMSEC_CONN_EXTRA=$extra wasmsec_start wsi-gwb "$STATE/B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
    WASMSEC_CONN_EXTRA=$extra wasmsec_start wsi-gwa "$STATE/A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 start
    wasmsec_up "$STATE/A" 20 || return 1
    # Which way raw ESP leaves (raw_esp_send = "auto" says it at start).
    grep -ho 'raw ESP through the [a-zA-Z ]*socket[^(]*' "$STATE/A/wasmsec.log" | head -1 | sed 's/^/  gateway A: /' || true
}

up_libipsec() {
    SSWAN_CONN_EXTRA="    encap = yes" sswan_start wsi-gwb "$STATE/B" responder $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A
    SSWAN_CONN_EXTRA="    encap = yes" sswan_start wsi-gwa "$STATE/A" initiator $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B
    sswan "$STATE/A" --initiate --child s2s --timeout 20 >"$STATE/A/initiate.out" 2>&1
}

# wg_in SIDE NS CMD...: wg(8) talks to a userspace WireGuard by its socket in
# /run/wireguard, so it runs with the daemon's /run bound.
wg_in() { local d=$STATE/$1 ns=$2; shift 2; ip netns exec "$ns" sh -c 'mount --bind "$0" /run && exec "$@"' "$d/run" "$@"; }

wg_side() { # IMPL SIDE NS PRIVATE PEER_PUBLIC PEER_ADDR PEER_LAN
    local impl=$1 side=$2 ns=$3 d=$STATE/$2 i
    mkdir -p "$d/run"
    local cmd
    case $impl in
        boringtun) cmd=(env WG_LOG_LEVEL=error "$BORINGTUN" --foreground --disable-drop-privileges --log "$d/daemon.log" wg0) ;;
        wireguard-go) cmd=(env LOG_LEVEL=error WG_PROCESS_FOREGROUND=1 wireguard-go -f wg0) ;;
    esac
    ip netns exec "$ns" sh -c 'mount --bind "$0" /run && exec "$@"' "$d/run" "${cmd[@]}" >"$d/daemon.out" 2>&1 &
    PIDS+=($!)
    for i in $(seq 100); do [ -S "$d/run/wireguard/wg0.sock" ] && break; sleep 0.1; done
    (umask 077; printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n[Peer]\nPublicKey = %s\nEndpoint = %s:51820\nAllowedIPs = %s\n' \
        "$4" "$5" "$6" "$7" >"$d/wg0.conf")
    wg_in "$side" "$ns" wg setconf wg0 "$d/wg0.conf"
    nsx "$ns" ip link set wg0 mtu $WG_MTU up
    nsx "$ns" ip route add "$7" dev wg0
}

up_wireguard() { # IMPL
    local ka kb
    ka=$(wg genkey); kb=$(wg genkey)
    wg_side "$1" A wsi-gwa "$ka" "$(wg pubkey <<<"$kb")" $WAN_B $LAN_B
    wg_side "$1" B wsi-gwb "$kb" "$(wg pubkey <<<"$ka")" $WAN_A $LAN_A
}

bring_up() { # TUNNEL
    rm -rf "$STATE/A" "$STATE/B"; mkdir -p "$STATE/A" "$STATE/B"
    case $1 in
        wasmsec-udp) up_wasmsec true ;;
        wasmsec-raw) up_wasmsec false ;;
        wasmsec-rawip) WASMSEC_NETWORK_EXTRA='raw_esp_send = "ip"' up_wasmsec false ;;
        wasmsec-link) WASMSEC_NETWORK_EXTRA='raw_esp_send = "link"' up_wasmsec false ;;
        libipsec) up_libipsec ;;
        boringtun | wireguard-go) up_wireguard "$1" ;;
    esac
}

version_of() { # TUNNEL
    case $1 in
        wasmsec-*) "$WASMSEC_BIN" --version 2>/dev/null | head -1 ;;
        libipsec) /usr/lib/ipsec/charon --version 2>/dev/null | head -1 || dpkg-query -W -f '${Version}' charon-systemd ;;
        boringtun) "$BORINGTUN" --version ;;
        wireguard-go) wireguard-go --version | head -1 ;;
    esac
}

echo "tunnels.sh: $(date -u +%FT%TZ), $(nproc) vCPU, $(uname -r); TCP ${DUR}s x $REPS, streams: $STREAMS; UDP 64 B ${UDP_DUR}s; iperf3 JSON in $OUT"
for t in $TUNNELS; do
    topo_up
    if ! bring_up "$t" >"$OUT/$t-up.log" 2>&1 || ! ping_ok wsi-hosta "$HOST_B" 3; then
        echo "tunnels.sh: $t did not come up:" >&2; tail -20 "$OUT/$t-up.log" >&2
        cp -r "$STATE/A" "$OUT/$t-A" 2>/dev/null; cp -r "$STATE/B" "$OUT/$t-B" 2>/dev/null
        exit 1
    fi
    echo "$t: $(version_of "$t")"
    grep -h '^  gateway A: ' "$OUT/$t-up.log" || true
    nsx wsi-hostb iperf3 -s >/dev/null 2>&1 &
    PIDS+=($!)
    sleep 0.5
    for s in $STREAMS; do
        for _ in $(seq "$REPS"); do measure "$t" "tcp-$s" -t "$DUR" -P "$s"; done
    done
    measure "$t" udp64 -u -l 64 -b 0 -t "$UDP_DUR"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    PIDS=()
    topo_down
done

python3 "$ROOT/tests/bench/tunnels-table.py" "$RESULTS"
