#!/usr/bin/env bash
# Metrics that a real Prometheus scrapes: wasmsec (responder, against
# strongSwan) serves /metrics on loopback inside its namespace; promtool
# checks the exposition; a Prometheus server started here scrapes it every
# second, and PromQL answers for the established CHILD SAs and the ESP
# packets sent equal what the admin socket reports. The probes answer,
# also while a trapped IKE guest waits out its replacement's back-off.
source "$(dirname "$0")/lib.sh"
[ -z "${WASMSEC_E2E_TIMEOUT:-}" ] && exec env WASMSEC_E2E_TIMEOUT=1 timeout 200 bash "$0" "$@"

M=127.0.0.1:9469 P=127.0.0.1:9090
one_of_each() { # DIR
    wasmsec_ctl "$1" status | python3 -c 'import json,sys
s=json.load(sys.stdin)
sys.exit(0 if len(s["ike_sas"]) == 1 and len(s["child_sas"]) == 1 else 1)'
}
get() { nsx wsi-gwb python3 "$ROOT/tests/interop/http-get.py" "$@"; }
# promql QUERY: the one value of an instant query (Prometheus's HTTP API).
promql() {
    get "http://$P/api/v1/query?query=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")" |
        python3 -c 'import json,sys
r=json.load(sys.stdin)["data"]["result"]
if len(r) == 1: print(r[0]["value"][1])
else: print("results:%d" % len(r)); print(json.dumps(r), file=sys.stderr)'
}

topo_up
A=$STATE/A B=$STATE/B
mkdir -p "$A" "$B"
sswan_start wsi-gwa "$A" initiator $WAN_A $WAN_B $ID_A $ID_B $LAN_A $LAN_B \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
WASMSEC_CONTROL_EXTRA="metrics = \"$M\"
fault_injection = true" \
    wasmsec_start wsi-gwb "$B" $WAN_B $WAN_A $ID_B $ID_A $LAN_B $LAN_A 198.18.2.1 none \
    aes256gcm16-prfsha256-x25519 aes256gcm16-x25519
check "/readyz answers 200 once the daemon runs" [ "$(get "http://$M/readyz" --status)" = 200 ]
check "/healthz answers 200 (the IKE thread answers)" [ "$(get "http://$M/healthz" --status)" = 200 ]
check "an unknown path is a 404" [ "$(get "http://$M/nothing" --status)" = 404 ]
sswan "$A" --initiate --child s2s --timeout 20 >"$A/initiate.out" 2>&1 || true
check "tunnel up" wasmsec_up "$B" 20
check "60 pings through the tunnel" ping_ok wsi-hosta $HOST_B 60

get "http://$M/metrics" >"$B/metrics.txt"
check "promtool check metrics accepts /metrics" bash -c "promtool check metrics <'$B/metrics.txt'"
check "/metrics has the CHILD SA by connection (no tenant)" grep -q '^wasmsec_child_sas{connection="s2s",tenant=""} 1$' "$B/metrics.txt"
check "/metrics has the data path's peer table: the one peer" grep -q '^wasmsec_data_path_peers 1$' "$B/metrics.txt"
check "/metrics has guest call latencies" grep -q '^wasmsec_guest_call_duration_seconds_count{guest="esp"} [1-9]' "$B/metrics.txt"

cat >"$B/prometheus.yml" <<YML
global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: wasmsec
    static_configs: [ { targets: ["$M"] } ]
YML
check "prometheus.yml is valid" promtool check config "$B/prometheus.yml"
nsx wsi-gwb prometheus --config.file="$B/prometheus.yml" --storage.tsdb.path="$B/tsdb" \
    --web.listen-address=$P >"$B/prometheus.log" 2>&1 </dev/null &
PIDS+=($!)
# Prometheus takes a while to open its database and scrape the first time.
for _ in $(seq 150); do [ "$(promql 'up{job="wasmsec"}' 2>/dev/null)" = 1 ] && break; sleep 0.2; done
check "Prometheus scraped wasmsec (up == 1)" [ "$(promql 'up{job="wasmsec"}')" = 1 ]
# Traffic has stopped; the admin socket's numbers are final. Let at least
# three scrapes happen after reading them.
wasmsec_ctl "$B" status >"$B/status.json"
sleep 3.5
want_children=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["child_sas"]))' "$B/status.json")
want_esp_out=$(stat "$B/status.json" esp.esp_tx_packets)
echo "admin socket: $want_children CHILD SA(s), $want_esp_out ESP packets sent"
got_children=$(promql 'sum(wasmsec_child_sas{job="wasmsec"})')
got_esp_out=$(promql 'wasmsec_esp_packets_total{job="wasmsec",direction="out"}')
echo "PromQL: $got_children CHILD SA(s), $got_esp_out ESP packets sent"
check "PromQL's CHILD SAs ($got_children) = the admin socket's ($want_children)" [ "$got_children" = "$want_children" ]
check "PromQL's ESP packets sent ($got_esp_out) = the admin socket's ($want_esp_out)" [ "$got_esp_out" = "$want_esp_out" ]
check "at least the 60 echo replies were sent as ESP" [ "$want_esp_out" -ge 60 ]
# Per connection: what the CHILD SA sealed and sent, as list-sas shows it.
want_sa_out=$(python3 -c 'import json,sys; print(sum(c["out_packets"] for c in json.load(open(sys.argv[1]))["child_sas"]))' "$B/status.json")
got_sa_out=$(promql 'wasmsec_sa_packets_total{job="wasmsec",connection="s2s",direction="out"}')
check "PromQL's packets sent by connection s2s ($got_sa_out) = its CHILD SA's ($want_sa_out), at least 60" \
    [ "$got_sa_out" = "$want_sa_out" -a "$want_sa_out" -ge 60 ]
check "the handshake is counted as started and succeeded, for connection s2s" \
    [ "$(promql 'wasmsec_ike_handshakes_succeeded_total{job="wasmsec",connection="s2s"}')" = 1 -a \
      "$(promql 'wasmsec_ike_handshakes_started_total{job="wasmsec",connection="s2s"}')" = 1 ]
# Traps in quick succession: the IKE guest's replacement backs off (at
# once, then 50, 100, ... 1,600 and 3,200 ms). Through the wait the IKE
# thread must still answer the probes: a liveness probe that timed out
# would get the pod restarted, and every tunnel with it.
replaced() { grep -c 'IKE guest replaced; its IKE SAs carry on' "$B/wasmsec.log" || true; }
for i in $(seq 7); do
    check "fault $i injected into the IKE guest" wasmsec_ctl "$B" fault ike
    for _ in $(seq 60); do [ "$(replaced)" -ge "$i" ] && break; sleep 0.1; done
done
# The 8th: the guest traps on the call after this answer, and its
# replacement waits 3.2 s. Ask at once, without waiting for the log.
check "fault 8 injected into the IKE guest" wasmsec_ctl "$B" fault ike
t0=$(date +%s%N)
health=$(get "http://$M/healthz" --status)
took=$((($(date +%s%N) - t0) / 1000000))
ready=$(get "http://$M/readyz" --status)
get "http://$M/metrics" >"$B/metrics-replacing.txt"
refused=$(wasmsec_ctl "$B" status 2>&1 || true)
waiting=$(grep -o 'wait_ms=[0-9]*' "$B/wasmsec.log" | tail -1 | cut -d= -f2)
check "the 8th trap in a row waits for its replacement (${waiting:-no} ms)" [ "${waiting:-0}" -ge 1600 ]
check "/healthz answers 200 at once during the wait ($health in $took ms)" [ "$health" = 200 -a "$took" -lt 1000 ]
check "/readyz answers 503 during the wait ($ready)" [ "$ready" = 503 ]
check "/metrics shows the guest waiting for its replacement" \
    grep -q '^wasmsec_ike_guest_replacing 1$' "$B/metrics-replacing.txt"
check "the admin API says why it does not answer ($refused)" grep -q "replaced in" <<<"$refused"
for _ in $(seq 50); do [ "$(get "http://$M/readyz" --status)" = 200 ] && break; sleep 0.2; done
check "/readyz is 200 again after the replacement" [ "$(get "http://$M/readyz" --status)" = 200 ]
check "8 replacements counted ($(stat "$B/stats.json" guest_restarts))" [ "$(stat "$B/stats.json" guest_restarts)" -eq 8 ]
check "the IKE and CHILD SA carried on through them" one_of_each "$B"
check "pings still pass the tunnel" ping_ok wsi-hosta $HOST_B 10
# Datagrams the kernel drops at our sockets (a full receive buffer) are
# counted too: with the daemon stopped, 30,000 datagrams of 1,200 bytes to
# UDP 500 are more than its receive buffer holds.
check "/metrics has the IKE socket's receive drops, none yet" \
    grep -q '^wasmsec_socket_receive_drops_total{socket="ike"} 0$' "$B/metrics.txt"
kill -STOP "$(cat "$B/pid")"
nsx wsi-gwa python3 -c 'import socket,sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(30000): s.sendto(bytes(1200), (sys.argv[1], 500))' $WAN_B
kill -CONT "$(cat "$B/pid")"
for _ in $(seq 50); do
    drops=$(promql 'wasmsec_socket_receive_drops_total{job="wasmsec",socket="ike"}' 2>/dev/null)
    [ "${drops:-0}" -gt 0 ] 2>/dev/null && break; sleep 0.2
done
check "PromQL: datagrams dropped at the IKE socket while the daemon was stopped are counted ($drops)" \
    [ "${drops:-0}" -gt 1000 ] 2>/dev/null
check "the daemon still answers /healthz after the flood" [ "$(get "http://$M/healthz" --status)" = 200 ]
# Stopped while a trapped guest waits for its replacement (a 9th trap in
# a row: 5 s): the replacement comes first, so the peer still gets its DELETE.
for _ in $(seq 60); do wasmsec_ctl "$B" fault ike >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 60); do grep -q 'wait_ms=5000' "$B/wasmsec.log" && break; sleep 0.05; done
kill -TERM "$(cat "$B/pid")"
for _ in $(seq 50); do kill -0 "$(cat "$B/pid")" 2>/dev/null || break; sleep 0.1; done
check "stopped during a replacement's wait, the DELETE still went out" \
    grep -q "stopping: DELETE sent for every IKE SA ike_sas=1" "$B/wasmsec.log"
check "/readyz is gone with the daemon" bash -c "! ip netns exec wsi-gwb python3 '$ROOT/tests/interop/http-get.py' 'http://$M/readyz' --status 2>/dev/null"
finish
