#!/usr/bin/env bash
# start_action = "trap": traffic for the connection's remote subnet brings
# the tunnel up; until then nothing leaves in the clear. Then the same with
# IPv6 subnets (IPv4 on the wire): an IPv6 packet brings the tunnel up too.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 120 bash "$0" "$@"

topo_up
A=$STATE/A B=$STATE/B
capture wsi-gwa "$STATE/wan.pcap"
wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none
wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B 198.18.1.1 trap
sleep 1
check "no tunnel before traffic" bash -c "! '$WASMSEC_BIN' ctl --socket '$A/ctl.sock' status | grep -q inbound_spi"
# The first packets trigger the negotiation (and are dropped, counted); later ones pass.
ip netns exec wsi-hosta ping -n -c 3 -i 0.3 -W 1 $HOST_B >/dev/null || true
check "traffic brought the tunnel up" wasmsec_up "$A" 10
check "ping passes once the tunnel is up" ping_ok wsi-hosta $HOST_B
check "packets before the SA were counted as no_policy drops" [ "$(stat "$A/stats.json" outbound_drops.no_policy)" -ge 1 ]
capture_stop
clear=$(count "$STATE/wan.pcap" "icmp and (net $LAN_A or net $LAN_B)")
check "no cleartext LAN packet on the wire, before or after ($clear)" [ "$clear" -eq 0 ]

for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
PIDS=()
topo_up
ipv6_lans
A=$STATE/A6 B=$STATE/B6
capture wsi-gwa "$STATE/wan6.pcap"
wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN6_B $LAN6_A 198.18.2.1 none
wasmsec_start wsi-gwa "$A" $WAN_A $WAN_B $ID_A $ID_B $LAN6_A $LAN6_B 198.18.1.1 trap
sleep 1
check "IPv6 subnets: no tunnel before traffic" bash -c "! '$WASMSEC_BIN' ctl --socket '$A/ctl.sock' status | grep -q inbound_spi"
ip netns exec wsi-hosta ping -6 -n -c 3 -i 0.3 -W 1 $HOST6_B >/dev/null || true
check "IPv6 subnets: IPv6 traffic brought the tunnel up" wasmsec_up "$A" 10
check "IPv6 subnets: ping6 passes once the tunnel is up" ping6_ok wsi-hosta $HOST6_B
capture_stop
clear=$(count "$STATE/wan6.pcap" "ip6 and (net $LAN6_A or net $LAN6_B)")
check "IPv6 subnets: no cleartext LAN packet on the wire, before or after ($clear)" [ "$clear" -eq 0 ]
finish
