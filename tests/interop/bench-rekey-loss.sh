#!/usr/bin/env bash
# bench-rekey-loss.sh - how many pings rekeys cost, wasmsec against strongSwan
# and strongSwan against itself, back to back, with the team's harness
# (../shared/interop/sswan-rekey.sh: 20 pps for DURATION s while strongSwan A
# rekeys CHILD SAs every 5 s and the IKE SA every 20 s).
#
# usage: tests/interop/bench-rekey-loss.sh [RUNS] [VARIANT...]
#   RUNS      runs per variant and peer (default 10)
#   VARIANT   initiator | responder | pfs | initiator-soft | responder-soft | pfs-soft
#             (default: the first three). "initiator"/"responder" is strongSwan
#             A's IKE role; "pfs" is PFS in CREATE_CHILD_SA with 12 s IKE
#             rekeys. The "-soft" variants add `life_time = 8s` to A's CHILD
#             config: with rekey_time = 5s alone strongSwan derives life_time =
#             5 s (110 % in whole seconds) and rand_time = 0, so libipsec
#             schedules no soft expiry and every "rekey" is a hard expiry
#             followed by a DELETE and a new CHILD_SA (break before make).
# Env: DURATION (default 60), PEERS ("wasmsec strongswan"), OUT (a directory for
#      each run's output and wasmsec's loss report; default a temp dir).
# Prints one line per run and a table: lost pings per run, and how many runs
# lost none. It is a measurement, not a test: it always exits 0 unless the
# harness is missing.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HARNESS=${IOP_HARNESS:-$ROOT/../shared/interop}
[ -x "$HARNESS/sswan-rekey.sh" ] || { echo "no harness at $HARNESS" >&2; exit 2; }
RUNS=${1:-10}; shift || true
VARIANTS=("$@"); [ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(initiator responder pfs)
PEERS=${PEERS:-wasmsec strongswan}
OUT=${OUT:-$(mktemp -d /tmp/wasmsec-rekey-loss.XXXXXX)}
mkdir -p "$OUT"
declare -A LOST

variant_env() { # VARIANT -> env assignments
    local v=$1 e=()
    case "${v%-soft}" in
        initiator) e+=(ROLE_A=initiator) ;;
        responder) e+=(ROLE_A=responder) ;;
        pfs) e+=(ROLE_A=responder IKE_REKEY_TIME=12s ESP_PROPOSALS=aes256gcm16-x25519) ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    [[ $v == *-soft ]] && e+=("SWANCTL_CHILD_EXTRA=life_time = 8s")
    printf '%s\n' "${e[@]}"
}

for v in "${VARIANTS[@]}"; do
    mapfile -t venv < <(variant_env "$v")
    for peer in $PEERS; do
        row=()
        for i in $(seq "$RUNS"); do
            peer_env=()
            [ "$peer" = wasmsec ] && peer_env=(PEER_B="$ROOT/tests/interop/peer-wasmsec.sh")
            log=$OUT/$v-$peer-$i.log
            env "${venv[@]}" "${peer_env[@]}" MAX_LOSS=1000 MIN_CHILD_REKEYS=0 MIN_IKE_REKEYS=0 \
                DURATION="${DURATION:-60}" "$HARNESS/sswan-rekey.sh" >"$log" 2>&1
            line=$(grep -oE '[0-9]+ packets transmitted, [0-9]+ received' "$log" | head -1)
            sent=$(grep -oE '^[0-9]+' <<<"$line"); recv=$(grep -oE '[0-9]+ received' <<<"$line" | grep -oE '^[0-9]+')
            lost=$(( ${sent:-0} - ${recv:-0} )); [ -n "$sent" ] || lost=NA
            child=$(grep -m1 -oE '[0-9]+ CHILD_SA rekeys' "$log" | grep -oE '^[0-9]+')
            why=""
            rep=${RUN_DIR:-${TMPDIR:-/tmp}/wasmsec-interop/run}/B/loss-report.txt
            if [ "$peer" = wasmsec ] && [ -f "$rep" ]; then
                cp "$rep" "$OUT/$v-$peer-$i.loss-report.txt"
                why=$(grep -oE 'died in [^:]+' "$rep" | sort | uniq -c | sed 's/^ *//' | paste -sd';' -)
            fi
            expired=$(grep -c "closing expired CHILD_SA" "${RUN_DIR:-${TMPDIR:-/tmp}/wasmsec-interop/run}/A/charon.log" 2>/dev/null)
            echo "$v $peer run $i: lost $lost of ${sent:-?}; A: ${child:-?} new CHILD_SAs, ${expired:-?} hard expiries${why:+; $why}"
            row+=("$lost")
        done
        LOST[$v/$peer]="${row[*]}"
    done
done

echo
echo "pings lost per run (of $(( ${DURATION:-60} * 20 ))), $RUNS runs each; $(date -u +%F), $(nproc) cores"
printf '| %-16s | %-10s | %-40s | %s |\n' variant peer "lost per run" "runs with 0 lost"
for v in "${VARIANTS[@]}"; do
    for peer in $PEERS; do
        r=${LOST[$v/$peer]}
        zero=$(tr ' ' '\n' <<<"$r" | grep -cx 0)
        printf '| %-16s | %-10s | %-40s | %s of %s |\n' "$v" "$peer" "$r" "$zero" "$RUNS"
    done
done
echo "run logs and wasmsec's loss reports: $OUT"
