#!/usr/bin/env bash
# daemon-memory.sh - the whole wasmsec daemon's memory per SA (issue #16):
# the resident set of the responder process (host heap, guests' linear
# memories, code, everything) with SAs that a real IKE peer set up, less
# the same process's before them. Not a test: it prints numbers, and fails
# only when the responder cannot be started or does not get the SAs up.
#
#   wsi-gwa: the load generator (tests/ikeload), one IKE SA per source
#            address of 198.19.0.0/16 (a local route: one address each)
#   wsi-gwb 198.18.0.2: the responder wasmsec, one PSK connection for any
#            address and identity, as in handshakes.sh
#
# SHAPES lists runs as IKExCHILD: IKE SAs, and CHILD SAs in each (the first
# made in IKE_AUTH, the others by CREATE_CHILD_SA). Each run starts a fresh
# daemon, warms it with WARM setups (deleted: the allocator and the
# guests have met the work once), takes its RSS (the baseline), sets the
# SAs up and holds them, and takes the RSS once it has settled. It prints
# KiB of RSS per CHILD SA (and per IKE SA). Then it lists every SA as an
# operator would (`wasmsec list-sas --json`, which follows the admin API's
# pages) and prints how long that took and the daemon's peak RSS after it.
# Last it deletes them all (`wasmsec terminate`) and prints the RSS once
# none is left: how much of the growth the daemon gives back.
# 16000x1 is a PoP of small
# peers, each tunnel its own IKE SA; 1000x100 is 100,000 CHILD SAs.
#
# Env: SHAPES="16000x1 1000x100" WARM=2000 IKELOAD=path (built by cargo xtask)
# `cargo xtask bench-memory` builds everything and runs this.
source "$(dirname "$0")/../interop/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 1800 bash "$0" "$@"

SHAPES=${SHAPES:-16000x1 1000x100}
WARM=${WARM:-2000}
IKELOAD=${IKELOAD:-$ROOT/target/release/wasmsec-ikeload}
IKELOAD_SOURCES=198.19.0.0/16
[ -x "$IKELOAD" ] || { echo "daemon-memory.sh: $IKELOAD is missing (cargo build --release -p wasmsec-ikeload)" >&2; exit 2; }
[ -x "$WASMSEC_BIN" ] || { echo "daemon-memory.sh: WASMSEC_BIN is missing" >&2; exit 2; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# counts DIR: "IKE_SAS CHILD_SAS" of the responder (list-conns is small at any count).
counts() {
    "$WASMSEC_BIN" list-conns --socket "$1/ctl.sock" --json 2>/dev/null |
        python3 -c 'import json,sys; c=json.load(sys.stdin)["connections"]; print(sum(x["ike_sas"] for x in c), sum(x["child_sas"] for x in c))'
}
# settled PID: the RSS once two samples a second apart differ by < 0.5 %.
settled() {
    local a b i
    a=$(rss_kib "$1")
    for i in $(seq 30); do
        sleep 1; b=$(rss_kib "$1")
        [ $(((b > a ? b - a : a - b) * 200)) -lt "$b" ] && break
        a=$b
    done
    echo "$b"
}

echo "daemon-memory.sh: $(date -u +%FT%TZ), $(nproc) vCPU, $(uname -r), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo); shapes $SHAPES, warm-up $WARM setups"
topo_up
ikeload_topology
: >"$STATE/results.txt"
for shape in $SHAPES; do
    ike=${shape%x*}; children=${shape#*x}
    d=$STATE/wasmsec-$shape
    W_NO_KEYLOG=1 wasmsec_start wsi-gwb "$d" $WAN_B %any $ID_B %any $LAN_B $IKELOAD_TS 198.18.2.1 none >"$d.start" 2>&1 ||
        { echo "daemon-memory.sh: wasmsec did not start:" >&2; cat "$d.start" >&2; exit 1; }
    pid=$(cat "$d/pid")
    ikeload_run "warm-$shape" "$pid" --in-flight 24 --setups "$WARM" --seconds 120 >/dev/null ||
        { echo "daemon-memory.sh: the warm-up completed nothing" >&2; cat "$STATE/warm-$shape.err" >&2; exit 1; }
    base=$(settled "$pid")
    # The SAs, held until this run has its number (then the generator is
    # stopped, by its PID; the daemon next).
    ip netns exec wsi-gwa "$IKELOAD" --psk-file "$STATE/psk" --server $WAN_B --sources $IKELOAD_SOURCES --id $IKELOAD_ID \
        --remote-id $ID_B --local-ts $IKELOAD_TS --remote-ts $LAN_B --label "hold-$shape" --in-flight 24 \
        --standing "$ike" --children "$children" --setups 0 --seconds 900 --hold 900 \
        >"$STATE/hold-$shape.out" 2>"$STATE/hold-$shape.err" &
    gen=$!
    PIDS+=($gen)
    want=$((ike * children)); have=""
    for i in $(seq 1200); do
        have=$(counts "$d")
        [ "${have#* }" -ge "$want" ] 2>/dev/null && break
        kill -0 $gen 2>/dev/null || break
        sleep 0.5
    done
    if [ "${have#* }" -lt "$want" ] 2>/dev/null || [ -z "$have" ]; then
        echo "daemon-memory.sh: $shape: only ${have:-none} (IKE CHILD) SAs came up" >&2
        cat "$STATE/hold-$shape.err" >&2; kill $gen 2>/dev/null; exit 1
    fi
    up=$(settled "$pid")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    have=$(counts "$d")
    # Every SA through the pages: an answer of 1,000 SAs at a time keeps
    # the daemon's work per request (and its memory for it) small.
    t0=$(date +%s%N)
    listed=$("$WASMSEC_BIN" list-sas --json --socket "$d/ctl.sock" |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print(len(s["ike_sas"]) + len(s["child_sas"]))')
    list_ms=$((($(date +%s%N) - t0) / 1000000))
    hwm_list=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    [ "$listed" -ge "$((${have% *} + ${have#* }))" ] 2>/dev/null ||
        { echo "daemon-memory.sh: $shape: list-sas showed ${listed:-nothing} of $have SAs" >&2; exit 1; }
    # Then every SA goes, as when a site or a tenant is removed: the
    # responder deletes them all (the generator answers the DELETEs), and
    # the resident set once the count has been zero for a while shows what
    # the daemon gives back (its heap trim, control/heap_trim.rs).
    "$WASMSEC_BIN" terminate s2s --socket "$d/ctl.sock" >/dev/null ||
        { echo "daemon-memory.sh: $shape: terminate failed" >&2; exit 1; }
    for i in $(seq 600); do
        left=$(counts "$d")
        [ "$left" = "0 0" ] && break
        sleep 0.5
    done
    [ "$left" = "0 0" ] || { echo "daemon-memory.sh: $shape: $left (IKE CHILD) SAs left 5 minutes after terminate" >&2; exit 1; }
    sleep 5
    gone=$(settled "$pid")
    grep -aE "freed heap given back|to give back its memory" "$d/wasmsec.log" | tail -n 5 | sed 's/^/  /' >&2 || true
    echo "$shape ike_sas=${have% *} child_sas=${have#* } rss_base_kib=$base rss_kib=$up hwm_kib=$hwm listed=$listed list_ms=$list_ms hwm_list_kib=$hwm_list rss_gone_kib=$gone" | tee -a "$STATE/results.txt"
    kill -TERM $gen 2>/dev/null; wait $gen 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
echo
echo "| IKE SAs | CHILD SAs | RSS before (MiB) | RSS with them (MiB) | KiB per CHILD SA | KiB per IKE SA + its CHILD SAs | peak RSS (MiB) | list-sas of all (s) | peak RSS after it (MiB) | RSS once all deleted (MiB) | of the growth given back |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
while read -r shape i c b u h _ l lh g; do
    i=${i#*=}; c=${c#*=}; b=${b#*=}; u=${u#*=}; h=${h#*=}; l=${l#*=}; lh=${lh#*=}; g=${g#*=}
    awk -v i="$i" -v c="$c" -v b="$b" -v u="$u" -v h="$h" -v l="$l" -v lh="$lh" -v g="$g" 'BEGIN {
        printf "| %d | %d | %.1f | %.1f | %.2f | %.2f | %.1f | %.1f | %.1f | %.1f | %.0f %% |\n", i, c, b / 1024, u / 1024, (u - b) / c, (u - b) / i, h / 1024, l / 1000, lh / 1024, g / 1024, 100 * (u - g) / (u - b) }'
done <"$STATE/results.txt"
echo "(target: at most 4 KiB of host memory per CHILD SA)"
