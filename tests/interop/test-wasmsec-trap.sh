#!/usr/bin/env bash
# start_action = "trap": traffic for the connection's remote subnet brings
# the tunnel up; until then nothing leaves in the clear. With IPv4 subnets,
# then with IPv6 subnets (IPv4 on the wire): an IPv6 packet brings the
# tunnel up too.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 120 bash "$0" "$@"

# trap_case FAMILY(4|6): gwa traps, gwb waits; hosta's pings start it.
trap_case() {
    local family=$1 lan_a=$LAN_A lan_b=$LAN_B host_b=$HOST_B clear_filter=icmp label="IPv4 subnets"
    topo_up
    if [ "$family" = 6 ]; then
        ipv6_lans
        lan_a=$LAN6_A lan_b=$LAN6_B host_b=$HOST6_B clear_filter=ip6 label="IPv6 subnets"
    fi
    local A=$STATE/A$family B=$STATE/B$family pcap=$STATE/wan$family.pcap clear
    capture wsi-gwa "$pcap"
    wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $lan_b $lan_a 198.18.2.1 none
    wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $lan_a $lan_b 198.18.1.1 trap
    sleep 1
    check "$label: no tunnel before traffic" bash -c "! '$WASMSEC_BIN' ctl --socket '$A/ctl.sock' status | grep -q inbound_spi"
    # The first packets trigger the negotiation (and are dropped, counted);
    # later ones pass.
    ip netns exec wsi-hosta ping -"$family" -n -c 3 -i 0.3 -W 1 "$host_b" >/dev/null || true
    check "$label: traffic brought the tunnel up" wasmsec_up "$A" 10
    check "$label: ping passes once the tunnel is up" \
        bash -c "ip netns exec wsi-hosta ping -$family -n -c 5 -i 0.2 -W 2 $host_b | grep -q ' 0% packet loss'"
    check "$label: packets before the SA were counted as no_policy drops" \
        [ "$(stat "$A/stats.json" outbound_drops.no_policy)" -ge 1 ]
    capture_stop
    clear=$(count "$pcap" "$clear_filter and (net $lan_a or net $lan_b)")
    check "$label: no cleartext LAN packet on the wire, before or after ($clear)" [ "$clear" -eq 0 ]
    cleanup_case
}

trap_case 4
trap_case 6
finish
