#!/usr/bin/env bash
# teardown.sh - a PoP's tenant or site taken away at once: a reload that
# removes thousands of connections, each with an IKE SA and a CHILD SA up.
# The load generator (tests/ikeload) is the peers, an identity each; the
# responder loads a connection per identity. Prints how long the reload
# takes, how long until every SA is gone (each IKE SA's DELETE sent and
# answered), the DELETEs, the daemon's CPU time and resident set before
# and after. Not a test: it prints numbers, and fails only when the SAs
# do not come up or are not all gone, or a guest trapped.
#
#   wsi-gwa (the generator, one source address per initiator) -- wsi-gwb (wasmsec)
#
# Env: N=10000 (IKE SAs, at most 16,000). `cargo xtask bench-teardown`
# builds everything and runs this.
source "$(dirname "$0")/../interop/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 600 bash "$0" "$@"
IKELOAD=${IKELOAD:-$ROOT/target/release/wasmsec-ikeload}
[ -x "$IKELOAD" ] || { echo "teardown.sh: $IKELOAD is missing (cargo build --release -p wasmsec-ikeload)" >&2; exit 1; }
N=${N:-10000}
IN_FLIGHT=24
# Enough initiators (one address and identity each: the generator skips
# each /24's .0 and .255) for the standing SAs and its few measured
# setups; a connection for each.
for bits in 21 20 19 18; do
    SOURCES=198.19.0.0/$bits CONNS=$(((1 << (32 - bits)) / 256 * 254))
    [ $((N + IN_FLIGHT)) -le $CONNS ] && break
done
[ $((N + IN_FLIGHT)) -le $CONNS ] || { echo "teardown.sh: N=$N: at most $((CONNS - IN_FLIGHT))" >&2; exit 1; }

topo_up
ikeload_topology
B=$STATE/B
more=$STATE/more.toml
for i in $(seq 0 $((CONNS - 1))); do
    wasmsec_connection "load$i" "" "" "$ID_B" "i$i.$IKELOAD_ID" "[\"$LAN_B\"]" "[\"$IKELOAD_TS\"]" none
done >"$more"
# The first connection matches no initiator; it stays.
WASMSEC_MORE_CONNECTIONS=$more W_NO_KEYLOG=1 wasmsec_start wsi-gwb "$B" $WAN_B %any $ID_B nobody.test $LAN_B 10.97.0.0/16 198.18.2.1 none ||
    { echo "teardown.sh: the daemon did not start" >&2; exit 1; }
cp "$B/wasmsec.toml" "$STATE/all.toml"
# The same file up to the first load connection.
awk '/^\[\[connection\]\]$/ { n++ } n < 2 { print }' "$STATE/all.toml" >"$STATE/one.toml"
pid=$(cat "$B/pid")
w() { "$WASMSEC_BIN" "$@" --socket "$B/ctl.sock"; }
sas() { wasmsec_ctl "$B" status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(len(s["ike_sas"]), len(s["child_sas"]), s["ike"]["tx"], s["ike"]["retransmits"])'; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
cpu_ms() { awk '{ print int(($14 + $15) * 1000 / '"$(getconf CLK_TCK)"') }' "/proc/$1/stat"; }
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }

# The generator holds N IKE SAs (a CHILD SA each) until it is stopped.
nsx wsi-gwa "$IKELOAD" --psk-file "$STATE/psk" --server $WAN_B --sources $SOURCES --id $IKELOAD_ID --remote-id $ID_B \
    --local-ts $IKELOAD_TS --remote-ts $LAN_B --responder-pid "$pid" --label teardown --in-flight $IN_FLIGHT \
    --standing "$N" --setups $IN_FLIGHT --seconds 300 --hold 300 >"$STATE/load.out" 2>"$STATE/load.err" &
LOAD=$!
PIDS+=($LOAD)
t0=$(date +%s%N)
up=""
for _ in $(seq 1200); do
    read -r ike child _ <<<"$(sas)"
    [ "$ike" -ge "$N" ] && [ "$child" -ge "$N" ] && { up=$(ms "$t0"); break; }
    kill -0 $LOAD 2>/dev/null || break
    sleep 0.25
done
[ -n "$up" ] || { cat "$STATE/load.err" >&2; echo "teardown.sh: $ike IKE SAs and $child CHILD SAs of $N came up" >&2; exit 1; }
sleep 2
read -r ike child tx0 rt0 <<<"$(sas)"
rss0=$(kib "$pid" VmRSS) cpu0=$(cpu_ms "$pid")

cp "$STATE/one.toml" "$B/wasmsec.toml"
t0=$(date +%s%N)
w reload --json >"$STATE/reload.json" || { cat "$STATE/reload.json" >&2; echo "teardown.sh: the reload failed" >&2; exit 1; }
reload_ms=$(ms "$t0")
removed=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["removed"]))' "$STATE/reload.json")
# Polled every 0.1 s: the time is that coarse, and the daemon's CPU time
# includes answering the polls (a status of every SA left).
gone=""
for _ in $(seq 600); do
    read -r i c tx rt <<<"$(sas)"
    [ "$i $c" = "0 0" ] && { gone=$(ms "$t0"); break; }
    sleep 0.1
done
cpu1=$(cpu_ms "$pid")
[ -n "$gone" ] || { echo "teardown.sh: $i IKE SAs and $c CHILD SAs left after 600 polls" >&2; exit 1; }
# The IKE guest is replaced at a quiet moment: by one with the loaded
# connections only once it holds many removed ones, by a fresh one once
# it holds no SA.
replaced='holds no SA: replaced|held many removed connections: replaced'
for _ in $(seq 40); do grep -qE "$replaced" "$B/wasmsec.log" && break; sleep 0.25; done
sleep 1
rss1=$(kib "$pid" VmRSS)
! grep -q "trapped" "$B/wasmsec.log" || { grep -a -m3 "trapped" "$B/wasmsec.log" >&2; echo "teardown.sh: a guest trapped" >&2; exit 1; }

echo
echo "== a reload removing $removed connections, $ike of them with an IKE SA and $child CHILD SAs, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) vCPU, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
printf '%-56s %s\n' "SAs set up by the generator" "$N IKE SAs in $up ms" \
    "reload (until the command answers)" "$reload_ms ms" \
    "until no IKE SA and no CHILD SA is left" "$gone ms" \
    "IKE messages sent meanwhile (DELETEs)" "$((tx - tx0)), $((rt - rt0)) of them retransmissions" \
    "daemon CPU time from the reload until then (and polls)" "$((cpu1 - cpu0)) ms" \
    "resident set before / after" "$((rss0 / 1024)) / $((rss1 / 1024)) MiB" \
    "IKE guest replaced (memory given back)" "$(grep -cE "$replaced" "$B/wasmsec.log" || true)" \
    "ESP guests replaced (memory given back)" "$(grep -c "its ESP instance is replaced" "$B/wasmsec.log" || true)"
