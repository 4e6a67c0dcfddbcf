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

topo_up
nsx $NS_HOSTA ip addr add 198.18.11.10/24 dev eth0
nsx $NS_HOSTA ip route add 198.18.12.0/24 via 198.18.1.1
nsx $NS_HOSTB ip addr add 198.18.12.10/24 dev eth0
nsx $NS_HOSTB ip route add 198.18.11.0/24 via 198.18.2.1
nsx $NS_GWA ip addr add 198.18.11.1/24 dev lan0
nsx $NS_GWB ip addr add 198.18.12.1/24 dev lan0

# The inbound SPIs of a status JSON's CHILD SAs (spis_of FILE), of a running daemon's (child_spis DIR).
spis_of() { python3 -c 'import json,sys; print(" ".join(c["inbound_spi"] for c in json.load(open(sys.argv[1]))["child_sas"]))' "$1"; }
child_spis() { wasmsec_ctl "$1" status >"$1/spis.json" 2>/dev/null && spis_of "$1/spis.json"; }
# replaced BEFORE NOW: CHILD SAs were up before and are now, and the one
# before (its inbound SPI) is not among those now.
replaced() { [ -n "$1" ] && [ -n "$2" ] && ! grep -qw "$1" <<<"$2"; }
