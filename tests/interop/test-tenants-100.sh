#!/usr/bin/env bash
# xtask: beside the interop suites (namespaces wsh-*)
# 100 tenants with live tunnels at once (#13): one wasmsec serves tenants
# t0..t99, each in its own namespace with its own TUN device and ESP guest
# pair, all with the same LAN (10.1.0.1 in 10.1.0.0/24). The peer is a
# second wasmsec with 100 connections (identity tI.wasmsec.test, subnet
# 10.100.I.0/24), which brings all 100 IKE SAs up at start. Then every
# tenant pings its peer subnet at the same time, and every ping must come
# back: each tenant's traffic went through its own SA and TUN device only
# (the addresses are the same in all 100 namespaces); the daemon starts
# with a soft open-files limit below what 100 tenants need and raises it
# (a hard limit that low is refused at start). Prints the start-up
# time, the time to 100 CHILD SAs and the daemon's resident memory.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"
N=${TENANTS:-100}
NS=(wsh-gw wsh-peer)
for i in $(seq 0 $((N - 1))); do NS+=(wsh-t$i); done
topo_down
for ns in "${NS[@]}"; do ip netns add "$ns"; nsx "$ns" ip link set lo up; done
ip link add name wan0 netns wsh-gw type veth peer name wan0 netns wsh-peer
nsx wsh-gw ip addr add 198.18.0.2/24 dev wan0
nsx wsh-peer ip addr add 198.18.0.1/24 dev wan0
nsx wsh-gw ip link set wan0 up
nsx wsh-peer ip link set wan0 up
for i in $(seq 0 $((N - 1))); do
    nsx wsh-peer ip addr add 10.100.$i.1/32 dev lo
    nsx wsh-t$i ip addr add 10.1.0.1/32 dev lo
done

G=$STATE/gw P=$STATE/peer
mkdir -p "$G/policies" "$P"
for d in "$G" "$P"; do (umask 077; printf '%s' "$PSK" >"$d/psk"); done
common() { # DIR LISTEN
    cat <<CONF
[network]
listen = "$2"

[control]
socket = "$1/ctl.sock"

[runtime]
components = "${WASMSEC_COMPONENTS:-$ROOT/target/components}"
state_dir = "$1/state"
CONF
}
{
    common "$G" 198.18.0.2
    for i in $(seq 0 $((N - 1))); do
        printf '\n[[tenant]]\nname = "t%d"\nnetns = "wsh-t%d"\nsource = "10.1.0.1"\n' $i $i
    done
    for i in $(seq 0 $((N - 1))); do
        printf '\n[[connection]]\nname = "c%d"\ntenant = "t%d"\nlocal_addrs = ["198.18.0.2"]\nremote_addrs = ["198.18.0.1"]\n' $i $i
        printf 'local_id = "pop.wasmsec.test"\nremote_id = "t%d.wasmsec.test"\npsk = "file:psk"\n' $i
        printf '[[connection.children]]\nname = "c%d"\nlocal_ts = ["10.1.0.0/24"]\nremote_ts = ["10.100.%d.0/24"]\n' $i $i
    done
} >"$G/wasmsec.toml"
{
    common "$P" 198.18.0.1
    for i in $(seq 0 $((N - 1))); do
        printf '\n[[connection]]\nname = "c%d"\nlocal_addrs = ["198.18.0.1"]\nremote_addrs = ["198.18.0.2"]\n' $i
        printf 'local_id = "t%d.wasmsec.test"\nremote_id = "pop.wasmsec.test"\npsk = "file:psk"\n' $i
        printf '[[connection.children]]\nname = "c%d"\nlocal_ts = ["10.100.%d.0/24"]\nremote_ts = ["10.1.0.0/24"]\n' $i $i
    done
} >"$P/wasmsec.toml"

# N tenants need 64 + 2N open files. A hard limit below that is refused
# at start, with the reason; a soft limit below it (the usual 1,024
# against a hard one far above) the daemon raises itself.
(ulimit -n $((N + 64)); exec ip netns exec wsh-gw "$WASMSEC_BIN" run --config "$G/wasmsec.toml") >"$G/nofile.log" 2>&1 </dev/null || true
check "a hard open-files limit too low for $N tenants is refused, naming it" \
    grep -q "tenants need about $((64 + 2 * N)) open files, and the limit is $((N + 64))" "$G/nofile.log"
t0=$(date +%s%N)
(ulimit -Sn $((N + 64)); exec ip netns exec wsh-gw "$WASMSEC_BIN" run --config "$G/wasmsec.toml") >"$G/wasmsec.log" 2>&1 </dev/null &
GPID=$!; PIDS+=($GPID)
for _ in $(seq 600); do [ -S "$G/ctl.sock" ] && break; kill -0 $GPID 2>/dev/null || break; sleep 0.1; done
t1=$(date +%s%N)
check "the daemon started with $N tenant domains" grep -q "tenants=$N" "$G/wasmsec.log"
ip netns exec wsh-peer "$WASMSEC_BIN" run --config "$P/wasmsec.toml" >"$P/wasmsec.log" 2>&1 </dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$P/ctl.sock" ] && break; sleep 0.1; done
# The peer brings its 100 tunnels up 10 a second (one source address: the
# responder lets one address start 20 a second and hold 16 half-open).
for i in $(seq 0 $((N - 1))); do
    "$WASMSEC_BIN" initiate --socket "$P/ctl.sock" c$i >/dev/null 2>&1 &
    sleep 0.1
done
children() { "$WASMSEC_BIN" list-sas --socket "$G/ctl.sock" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["child_sas"]))' 2>/dev/null || echo 0; }
for _ in $(seq 600); do [ "$(children)" -ge "$N" ] && break; kill -0 $GPID 2>/dev/null || break; sleep 0.1; done
t2=$(date +%s%N)
check "$N CHILD SAs up, one per tenant ($(children))" [ "$(children)" = "$N" ]
"$WASMSEC_BIN" stats --socket "$G/ctl.sock" >"$G/stats.txt" 2>&1 || true
check "each is listed with its own tenant" bash -c "'$WASMSEC_BIN' list-sas --socket '$G/ctl.sock' --json | python3 -c 'import json,sys
v=json.load(sys.stdin); t={s[\"tenant\"] for s in v[\"ike_sas\"]}
sys.exit(0 if t == {\"t%d\" % i for i in range($N)} else 1)'"

# Every tenant pings its peer subnet, all at the same time.
for i in $(seq 0 $((N - 1))); do
    ip netns exec wsh-t$i ping -n -q -c 5 -i 0.2 -W 2 -I 10.1.0.1 10.100.$i.1 >"$STATE/ping-$i.out" 2>&1 &
done
wait_pings() { local i; for i in $(seq 0 $((N - 1))); do grep -q "packets transmitted" "$STATE/ping-$i.out" 2>/dev/null || return 1; done; }
for _ in $(seq 150); do wait_pings && break; sleep 0.1; done
full=$(grep -l " 5 received" "$STATE"/ping-*.out | wc -l)
got=$(cat "$STATE"/ping-*.out | sed -n 's/.* \([0-9]*\) received.*/\1/p' | awk '{s+=$1} END {print s+0}')
check "all $N tenants passed traffic at once: $full tenants got 5/5 ($got of $((N * 5)) replies)" [ "$full" = "$N" ]
rss=$(awk '/VmRSS/ {print $2}' /proc/$GPID/status)
echo "tenants: $N; daemon up in $(( (t1 - t0) / 1000000 )) ms; $N CHILD SAs $(( (t2 - t1) / 1000000 )) ms later;" \
    "resident memory $((rss / 1024)) MiB ($((rss / N)) KiB per tenant, with 2 ESP instances, TUN device and SAs each)"
check "the daemon still runs" kill -0 $GPID
finish
