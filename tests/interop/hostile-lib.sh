# Shared by test-hostile-esp.sh and test-hostile-ike.sh (sourced after
# tests/interop/lib.sh): gateway A serves two manually keyed tunnels to
# gateway B, "honest" (198.18.1.0/24 <-> 198.18.2.0/24, the project's ESP
# component) and "hostile" (198.18.11.0/24 <-> 198.18.12.0/24), and the
# helpers both suites' cases build their gateways with.
# (One suite until it outgrew its time bound: two keep each well inside
# its own.)
COMPONENTS=${WASMSEC_COMPONENTS:-$ROOT/target/components}
for f in hostile-esp.wasm hostile-ike.wasm; do
    [ -f "$COMPONENTS/$f" ] || { echo "no $COMPONENTS/$f (cargo xtask test builds it)"; exit 1; }
done
HONEST_A=0x00001001 HONEST_B=0x00001002
PINGS=60

key() { (umask 077; python3 -c 'import os; print(os.urandom(36).hex())' >"$1"); }

# manual NAME REMOTE LTS RTS OUT_SPI IN_SPI "OUT_KEYFILE IN_KEYFILE": a [[manual]] tunnel.
manual() {
    local keys=($7)
    printf '[[manual]]\nname = "%s"\nremote_address = "%s"\nlocal_ts = ["%s"]\nremote_ts = ["%s"]\n' "$1" "$2" "$3" "$4"
    printf 'out_spi = "%s"\nout_key = "file:%s"\nin_spi = "%s"\nin_key = "file:%s"\n' "$5" "${keys[0]}" "$6" "${keys[1]}"
}

# conf ME REMOTE SRC_GW OUT_SPI IN_SPI HOSTILE_OUT HOSTILE_IN HOSTILE_COMPONENT EXTRA DIR
conf() {
    local me=$1 remote=$2 gw=$3 out=$4 in=$5 hout=$6 hin=$7 comp=${8:-} extra=${9:-} d=${10}
    local lan rlan hlan hrlan
    if [ "$me" = $WAN_A ]; then lan=198.18.1.0/24 rlan=198.18.2.0/24 hlan=198.18.11.0/24 hrlan=198.18.12.0/24
    else lan=198.18.2.0/24 rlan=198.18.1.0/24 hlan=198.18.12.0/24 hrlan=198.18.11.0/24; fi
    cat <<CONF
[tunnel]
source = "$gw"
[network]
listen = "$me"
[control]
socket = "$d/ctl.sock"
$extra
[runtime]
components = "$COMPONENTS"
state_dir = "$d/state"
$(manual honest "$remote" "$lan" "$rlan" "$out" "$in" "$([ "$me" = $WAN_A ] && echo "a-b b-a" || echo "b-a a-b")")
$(manual hostile "$remote" "$hlan" "$hrlan" "$hout" "$hin" "$([ "$me" = $WAN_A ] && echo "ha-b hb-a" || echo "hb-a ha-b")")
${comp:+esp_component = \"$comp\"}
CONF
}

start() { # NS DIR
    ip netns exec "$1" "$WASMSEC_BIN" run --config "$2/wasmsec.toml" --stats-file "$2/stats.json" \
        >"$2/wasmsec.log" 2>&1 </dev/null &
    PIDS+=($!)
    echo $! >"$2/pid"
    # Up once it writes its counters (the control socket exists only with IKE).
    local i; for i in $(seq 100); do [ -s "$2/stats.json" ] && return 0; sleep 0.1; done
    cat "$2/wasmsec.log"; return 1
}
stop() { kill -TERM "$(cat "$1/pid")" 2>/dev/null; for _ in $(seq 50); do kill -0 "$(cat "$1/pid")" 2>/dev/null || return 0; sleep 0.1; done; }
counter() { stat "$1/stats.json" "$2"; }

# leaks PCAP: UDP/4500 payloads that are IP packets between the LANs.
leaks() {
    python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
link, off, n = struct.unpack_from("<I", data, 20)[0], 24, 0
lans = [bytes([198, 18, x]) for x in (1, 2, 11, 12)]
while off + 16 <= len(data):
    incl = struct.unpack_from("<I", data, off + 8)[0]
    pkt = data[off + 16: off + 16 + incl]; off += 16 + incl
    ip = pkt[14:] if link == 1 else pkt[16:]
    if len(ip) < 20 or ip[9] != 17:
        continue
    inner = ip[(ip[0] & 15) * 4 + 8:]
    if len(inner) >= 20 and inner[0] >> 4 == 4 and inner[12:15] in lans and inner[16:19] in lans:
        n += 1
print(n)
PY
}

topo_up
nsx wsi-hosta ip addr add 198.18.11.10/24 dev eth0
nsx wsi-hosta ip route add 198.18.12.0/24 via 198.18.1.1
nsx wsi-hostb ip addr add 198.18.12.10/24 dev eth0
nsx wsi-hostb ip route add 198.18.11.0/24 via 198.18.2.1
nsx wsi-gwa ip addr add 198.18.11.1/24 dev lan0
nsx wsi-gwb ip addr add 198.18.12.1/24 dev lan0

# ike_conf NAME LOCAL REMOTE LID RID LTS RTS START: one IKE connection.
ike_conf() { wasmsec_connection "$1" "$2" "$3" "$4" "$5" "[\"$6\"]" "[\"$7\"]" "$8"; }

# ike_pair DIR NAME A_START SPI A_CONTROL_EXTRA A_IKE_COMPONENT: gateways A
# (DIR/A) and B (DIR/B) with the manual tunnels (SPIs 0x0000<SPI>1 and 2)
# and one IKE connection NAME, started by A (A_START) and answered by B
# (none). A_IKE_COMPONENT: A's IKE guest, "" for the real one.
ike_pair() {
    local name=$2 start=$3 spi=$4 extra=$5 comp=$6 A=$1/A B=$1/B
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    (umask 077; printf '%s' "$PSK" >"$A/psk"; printf '%s' "$PSK" >"$B/psk")
    { conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0x0000${spi}1 0x0000${spi}2 "" "$extra" "$A"
      ike_conf "$name" $WAN_A $WAN_B $ID_A $ID_B 198.18.21.0/24 198.18.22.0/24 "$start"; } |
        sed "${comp:+s|^\[runtime\]|[runtime]\nike_component = \"$comp\"|}" >"$A/wasmsec.toml"
    { conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A 0x0000${spi}2 0x0000${spi}1 "" "" "$B"
      ike_conf "$name" $WAN_B $WAN_A $ID_B $ID_A 198.18.22.0/24 198.18.21.0/24 none; } >"$B/wasmsec.toml"
}

# A daemon's guest restarts (-1 when it has stopped: no control socket)
# and IKE SAs.
restarts_of() {
    { wasmsec_ctl "$1" status 2>/dev/null || echo '{"esp": {"guest_restarts": -1}}'; } |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["esp"]["guest_restarts"])'
}
ike_sas() { wasmsec_ctl "$1" status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ike_sas"]))'; }
# The inbound SPIs of a status JSON's CHILD SAs (spis_of FILE), of a running daemon's (child_spis DIR).
spis_of() { python3 -c 'import json,sys; print(" ".join(c["inbound_spi"] for c in json.load(open(sys.argv[1]))["child_sas"]))' "$1"; }
child_spis() { wasmsec_ctl "$1" status >"$1/spis.json" 2>/dev/null && spis_of "$1/spis.json"; }
# replaced BEFORE NOW: CHILD SAs were up before and are now, and the one
# before (its inbound SPI) is not among those now.
replaced() { [ -n "$1" ] && [ -n "$2" ] && ! grep -qw "$1" <<<"$2"; }

# An ESP guest that ignores its SAs' byte and packet limits: A's connection
# "limitless" is served by hostile-esp.wasm, which for selectors from
# 198.18.25.0 seals and opens everything and never reports an expiry. A's
# CHILD SAs carry 20 packets each way (B, an honest wasmsec, has no limit).
# limitless_conf A B CHILD: gateway A with the hostile ESP guest for the
# `limitless` connection (198.18.25.0/24 <-> 198.18.26.0/24; CHILD: its
# child's lifetimes), honest B without limits, and the addresses in the
# tunnel the cases send from.
limitless_conf() {
    local A=$1 B=$2
    mkdir -p "$A" "$B"
    for k in a-b b-a ha-b hb-a; do key "$A/$k"; cp "$A/$k" "$B/$k"; done
    (umask 077; printf '%s' "$PSK" >"$A/psk"; printf '%s' "$PSK" >"$B/psk")
    { conf $WAN_A $WAN_B 198.18.1.1 $HONEST_A $HONEST_B 0x00005001 0x00005002 "" "" "$A"
      wasmsec_connection limitless $WAN_A $WAN_B $ID_A $ID_B '["198.18.25.0/24"]' '["198.18.26.0/24"]' start "" "" \
          "esp_component = \"$COMPONENTS/hostile-esp.wasm\"" "$3"; } >"$A/wasmsec.toml"
    { conf $WAN_B $WAN_A 198.18.2.1 $HONEST_B $HONEST_A 0x00005002 0x00005001 "" "" "$B"
      wasmsec_connection limitless $WAN_B $WAN_A $ID_B $ID_A '["198.18.26.0/24"]' '["198.18.25.0/24"]' none; } >"$B/wasmsec.toml"
    ip -n wsi-gwa addr replace 198.18.25.1/32 dev lo
    ip -n wsi-gwb addr replace 198.18.26.1/32 dev lo
}
# limitless_down A B: A's status into A/status.json, both stopped, the
# addresses gone; prints whether A was still running (yes/no).
limitless_down() {
    wasmsec_ctl "$1" status >"$1/status.json"
    local alive=no
    kill -0 "$(cat "$1/pid")" 2>/dev/null && alive=yes
    stop "$1" >&2; stop "$2" >&2
    ip -n wsi-gwa addr del 198.18.25.1/32 dev lo 2>/dev/null || true
    ip -n wsi-gwb addr del 198.18.26.1/32 dev lo 2>/dev/null || true
    echo $alive
}
# limitless_counts STATUS: A's guest protocol errors, sa_expired drops and
# unknown_spi drops.
limitless_counts() {
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["esp"]; d=e["inbound_drops"]; print(e["guest_protocol_errors"], d["sa_expired"], d["unknown_spi"])' "$1"
}
