#!/usr/bin/env bash
# IKEv2 with PSK between a real strongSwan (gwa) and wasmsec (gwb), in both
# roles: tunnel up, pings both ways, only ESP on the wire, and tshark
# decrypting the IKE exchange and the ESP with the keys wasmsec derived (its
# Wireshark key exports) - an independent check of SKEYSEED, SK_* and CHILD
# SA key derivation, and proof that an operator can decrypt a capture.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 300 bash "$0" "$@"

run_case() { # ROLE_OF_WASMSEC IKE ESP
    local role=$1 ike=$2 esp=$3 label="wasmsec $1, $2/$3"
    topo_up
    local A=$STATE/$role-$ike/A B=$STATE/$role-$ike/B
    mkdir -p "$A" "$B"
    capture wsi-gwa "$STATE/$role-$ike.pcap"
    sswan_start wsi-gwa "$A" "$([ "$role" = initiator ] && echo responder || echo initiator)" \
        $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B "$ike" "$esp"
    WASMSEC_IKE_EXTRA="esp_keylog = \"$B/esp_sa\"" \
        wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none "$ike" "$esp"
    bring_up "$label" "$role" "$A" "$B"
    check "$label: ping hosta -> hostb" ping_ok wsi-hosta $HOST_B
    check "$label: ping hostb -> hosta" ping_ok wsi-hostb $HOST_A
    capture_stop
    local pcap=$STATE/$role-$ike.pcap esp_n clear
    esp_n=$(count "$pcap" 'udp port 4500 and udp[8:4] != 0')
    clear=$(count "$pcap" "icmp and (net $LAN_A or net $LAN_B)")
    check "$label: >= 20 ESP-in-UDP packets on the wire ($esp_n)" [ "$esp_n" -ge 20 ]
    check "$label: no cleartext LAN packet on the wire ($clear)" [ "$clear" -eq 0 ]
    check "$label: strongSwan verified wasmsec's PSK AUTH" grep -q "authentication of '$ID_B' with pre-shared key successful" "$A/charon.log"
    # tshark decrypts IKE_AUTH (both directions) with wasmsec's SK_e* export.
    local table args=() ids
    check "$label: wasmsec exported the IKE SA keys" test -s "$B/ikev2_decryption_table"
    while IFS= read -r table; do args+=(-o "uat:ikev2_decryption_table:$table"); done <"$B/ikev2_decryption_table"
    ids=$(tshark -r "$pcap" "${args[@]}" -Y 'isakmp.exchangetype == 35' -T fields -e isakmp.id.data.fqdn 2>/dev/null \
        | tr ',' '\n' | sort -u | paste -sd, - || true)
    echo "tshark, decrypted IKE_AUTH identities: $ids"
    check "$label: tshark decrypts both sides' IKE_AUTH with wasmsec's keys (IDs: $ids)" \
        bash -c "[[ ',$ids,' == *,$ID_A,* && ',$ids,' == *,$ID_B,* ]]"
    # tshark decrypts the ESP both ways with wasmsec's `esp_sa` export
    # (Wireshark's ESP table has no ChaCha20-Poly1305: such SAs are not
    # exported, and the other cases cover ESP decryption).
    local from_a from_b
    if [ "$esp" = chacha20poly1305 ]; then
        echo "$label: ESP decryption not checked: Wireshark cannot decrypt ChaCha20-Poly1305 ESP"
    else
        check "$label: wasmsec exported the ESP SA keys, owner-only" \
            [ -s "$B/esp_sa" -a "$(command stat -c %a "$B/esp_sa" 2>/dev/null)" = 600 ]
        from_a=$(decrypted_count "$pcap" "$B/esp_sa" "esp && icmp && ip.src == $HOST_A")
        from_b=$(decrypted_count "$pcap" "$B/esp_sa" "esp && icmp && ip.src == $HOST_B")
        check "$label: tshark decrypts ESP both ways with wasmsec's keys ($from_a from hosta, $from_b from hostb)" \
            [ "$from_a" -ge 10 -a "$from_b" -ge 10 ]
    fi
    stat_file=$B/stats.json
    check "$label: no ESP integrity failures at wasmsec" \
        [ "$(stat "$stat_file" inbound_drops.integrity_failed)" -eq 0 ]
    cleanup_case
}

run_case initiator aes256gcm16-prfsha256-x25519 aes256gcm16
run_case responder aes256gcm16-prfsha256-x25519 aes256gcm16
run_case initiator aes128-sha256-modp2048 chacha20poly1305
run_case responder aes256-sha384-ecp384 aes128gcm16
run_case responder aes128gcm16-prfsha512-ecp256 aes256-sha256
finish
