//! `/metrics`: the Prometheus text exposition, built at scrape time from
//! the counters the threads keep (the data path's [`Stats`], the IKE
//! engine's counters via [`IkeView`]) plus the guest call metrics observed
//! as they happen ([`crate::telemetry`]).
//!
//! Names follow Prometheus conventions: `wasmsec_` prefix, `_total` for
//! counters, base units in the name. Labels are bounded sets (direction,
//! reason, connection), never SPIs or addresses.
use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::view::IkeView;
use crate::stats::Stats;
use crate::wasm::esp::DropReason;
use crate::wasm::ike::Counters;

/// One of the IKE engine's counters as a metric sample.
pub struct IkeCounter {
    pub name: &'static str,
    pub help: &'static str,
    /// A fixed label (name, value) that sets this sample apart from its
    /// siblings of the same name.
    pub label: Option<(&'static str, &'static str)>,
    /// A counter (false: a gauge, never carried across guest restarts).
    pub counter: bool,
    /// Shown by connection (a `connection` label): the engine counts it
    /// for the connection it belongs to.
    pub by_connection: bool,
    pub get: fn(&Counters) -> u64,
}

const fn c(
    name: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    get: fn(&Counters) -> u64,
) -> IkeCounter {
    IkeCounter { name, help, label, counter: true, by_connection: false, get }
}

/// A counter the engine keeps by connection too.
const fn per_connection(c: IkeCounter) -> IkeCounter {
    IkeCounter { by_connection: true, ..c }
}

const DROPPED: &str = "wasmsec_ike_messages_dropped_total";
const DROPPED_HELP: &str = "IKE messages dropped by the engine, by reason.";
const FAILED: &str = "wasmsec_ike_negotiation_failures_total";
const FAILED_HELP: &str = "IKE_SA or CHILD_SA negotiations that failed, by reason (ours or the peer's).";
const REKEYS: &str = "wasmsec_rekeys_total";
const REKEYS_HELP: &str = "SAs replaced by a rekey, by kind of SA.";
const COLLISIONS: &str = "wasmsec_rekey_collisions_total";
const COLLISIONS_HELP: &str = "Simultaneous rekeys resolved (RFC 7296 section 2.8.1/2.8.2), by kind and outcome.";
const EXPIRIES: &str = "wasmsec_child_sa_lifetime_expiries_total";
const EXPIRIES_HELP: &str = "CHILD SAs that reached a lifetime limit, by limit.";

/// The IKE engine's counters, in the order of [`IkeView::counters`].
pub static IKE_COUNTERS: &[IkeCounter] = &[
    c("wasmsec_ike_messages_received_total", "IKE datagrams received.", None, |c| c.rx),
    c("wasmsec_ike_messages_sent_total", "IKE datagrams sent, retransmissions included.", None, |c| c.tx),
    c("wasmsec_ike_retransmits_total", "IKE requests sent again for want of a response.", None, |c| c.retransmits),
    c(
        "wasmsec_ike_replayed_responses_total",
        "Retransmitted peer requests answered from the response cache.",
        None,
        |c| c.replayed_responses,
    ),
    c(DROPPED, DROPPED_HELP, Some(("reason", "malformed")), |c| c.malformed),
    c(DROPPED, DROPPED_HELP, Some(("reason", "unknown_spi")), |c| c.unknown_spi),
    c(DROPPED, DROPPED_HELP, Some(("reason", "integrity_failed")), |c| c.integrity_failed),
    c(DROPPED, DROPPED_HELP, Some(("reason", "unexpected")), |c| c.unexpected),
    c(DROPPED, DROPPED_HELP, Some(("reason", "half_open_cap")), |c| c.half_open_drops),
    c(DROPPED, DROPPED_HELP, Some(("reason", "rate_limited")), |c| c.rate_limited),
    c(DROPPED, DROPPED_HELP, Some(("reason", "oversize_engine")), |c| c.oversize),
    per_connection(c(
        "wasmsec_ike_handshakes_started_total",
        "IKE_SA set-ups begun, as initiator or responder.",
        None,
        |c| c.handshakes_started,
    )),
    per_connection(c(
        "wasmsec_ike_handshakes_succeeded_total",
        "IKE_SAs established by IKE_AUTH (rekeys not included).",
        None,
        |c| c.ike_established.saturating_sub(c.ike_rekeys),
    )),
    per_connection(c(FAILED, FAILED_HELP, Some(("reason", "authentication")), |c| c.auth_failed)),
    per_connection(c(FAILED, FAILED_HELP, Some(("reason", "policy_rejected")), |c| c.policy_rejected)),
    per_connection(c(FAILED, FAILED_HELP, Some(("reason", "no_proposal_chosen")), |c| c.no_proposal)),
    per_connection(c(FAILED, FAILED_HELP, Some(("reason", "ts_unacceptable")), |c| c.ts_unacceptable)),
    per_connection(c(FAILED, FAILED_HELP, Some(("reason", "timeout")), |c| c.timeouts)),
    per_connection(c(FAILED, FAILED_HELP, Some(("reason", "temporary_failure")), |c| c.temporary_failures)),
    per_connection(c("wasmsec_child_sas_installed_total", "CHILD_SAs installed in the data path.", None, |c| {
        c.child_installed
    })),
    per_connection(c(REKEYS, REKEYS_HELP, Some(("sa", "child")), |c| c.child_rekeys)),
    per_connection(c(REKEYS, REKEYS_HELP, Some(("sa", "ike")), |c| c.ike_rekeys)),
    per_connection(c(COLLISIONS, COLLISIONS_HELP, Some(("outcome", "child_won")), |c| c.rekey_collisions_won)),
    per_connection(c(COLLISIONS, COLLISIONS_HELP, Some(("outcome", "child_lost")), |c| c.rekey_collisions_lost)),
    per_connection(c(COLLISIONS, COLLISIONS_HELP, Some(("outcome", "ike_won")), |c| c.ike_rekey_collisions_won)),
    per_connection(c(COLLISIONS, COLLISIONS_HELP, Some(("outcome", "ike_lost")), |c| c.ike_rekey_collisions_lost)),
    per_connection(c(EXPIRIES, EXPIRIES_HELP, Some(("limit", "soft")), |c| c.lifetime_soft)),
    per_connection(c(EXPIRIES, EXPIRIES_HELP, Some(("limit", "hard")), |c| c.lifetime_hard)),
    per_connection(c("wasmsec_reauthentications_total", "IKE_SA reauthentications started.", None, |c| c.reauths)),
    per_connection(c(
        "wasmsec_ike_duplicates_deleted_total",
        "IKE_SAs deleted as duplicates of another with the same peer for the same connection.",
        None,
        |c| c.duplicates_deleted,
    )),
    per_connection(c("wasmsec_dpd_checks_total", "Liveness checks sent (RFC 7296 section 2.4).", None, |c| {
        c.dpd_checks
    })),
    per_connection(c("wasmsec_dpd_failures_total", "IKE_SAs whose peer stopped answering.", None, |c| c.dead_peers)),
    c("wasmsec_nat_keepalives_sent_total", "NAT keepalives sent (RFC 3948 section 2.3).", None, |c| c.keepalives),
    c("wasmsec_ike_cookies_sent_total", "COOKIE notifies sent (RFC 7296 section 2.6).", None, |c| c.cookies_sent),
    IkeCounter {
        name: "wasmsec_ike_half_open_sas",
        help: "Half-open IKE_SAs (IKE_SA_INIT answered, IKE_AUTH not yet) right now.",
        label: None,
        counter: false,
        by_connection: false,
        get: |c| c.half_open,
    },
];

/// A registry filled for one scrape; metrics of one name share label names.
#[derive(Default)]
struct Scrape {
    registry: Registry,
    counters: HashMap<&'static str, IntCounterVec>,
    gauges: HashMap<&'static str, IntGaugeVec>,
}

impl Scrape {
    fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: u64) {
        let (names, values): (Vec<&str>, Vec<&str>) = labels.iter().copied().unzip();
        let reg = &self.registry;
        let m = self
            .counters
            .entry(name)
            .or_insert_with(|| register(reg, IntCounterVec::new(Opts::new(name, help), &names)));
        m.with_label_values(&values).inc_by(v);
    }

    fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: u64) {
        let (names, values): (Vec<&str>, Vec<&str>) = labels.iter().copied().unzip();
        let reg = &self.registry;
        let m =
            self.gauges.entry(name).or_insert_with(|| register(reg, IntGaugeVec::new(Opts::new(name, help), &names)));
        m.with_label_values(&values).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
}

/// Register `m` (built from static names, so it cannot fail but for a
/// programming error, which a unit test covers).
fn register<M: Collector + Clone + 'static>(reg: &Registry, m: prometheus::Result<M>) -> M {
    let m = m.expect("static metric definition");
    reg.register(Box::new(m.clone())).expect("one registration per metric name");
    m
}

/// The data path's counters.
fn data_path(s: &mut Scrape, st: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    for (dir, packets, bytes) in
        [("in", &st.esp_rx_packets, &st.esp_rx_bytes), ("out", &st.esp_tx_packets, &st.esp_tx_bytes)]
    {
        s.counter("wasmsec_esp_packets_total", "ESP packets, by direction.", &[("direction", dir)], g(packets));
        s.counter(
            "wasmsec_esp_bytes_total",
            "ESP bytes (ESP header to ICV), by direction.",
            &[("direction", dir)],
            g(bytes),
        );
    }
    for (dir, n) in [("in", &st.tun_rx_packets), ("out", &st.tun_tx_packets)] {
        let help = "Inner packets read from (in) or written to (out) the TUN device.";
        s.counter("wasmsec_tun_packets_total", help, &[("direction", dir)], g(n));
    }
    s.counter(
        "wasmsec_tun_super_packets_total",
        "TCP super-packets read from the TUN device with TSO (each also counted as its segments).",
        &[],
        g(&st.tun_rx_super),
    );
    s.counter(
        "wasmsec_tun_joined_packets_total",
        "TCP super-packets written to the TUN device, joined from consecutive segments (each also counted as its segments).",
        &[],
        g(&st.tun_tx_joined),
    );
    for (path, n) in [("link", &st.esp_tx_link), ("ip", &st.esp_tx_link_fallback)] {
        let help = "Raw ESP datagrams sent with raw_esp_send = \"link\" or \"auto\": through the packet socket (link), or through the IP socket instead (ip).";
        s.counter("wasmsec_raw_esp_link_sends_total", help, &[("path", path)], g(n));
    }
    s.counter(
        "wasmsec_esp_held_packets_total",
        "ESP packets held for a CHILD SA we initiated until it was installed (then opened, or dropped as unknown_spi).",
        &[],
        g(&st.esp_rx_held),
    );
    s.counter(
        "wasmsec_esp_replays_refused_total",
        "ESP packets the host did not open: their key had authenticated their sequence number already, or it was left of the SA's replay window (a replay the ESP guest let through, a copy within one batch, or a number the batch pushed out of the window; the guest counts its drop too).",
        &[],
        g(&st.esp_rx_replays_refused),
    );
    s.counter(
        "wasmsec_esp_replays_missed_total",
        "Of wasmsec_esp_replays_refused_total, the packets refused by what their key had authenticated before the ESP guest asked to open them: replays the guest's own window should have dropped. An honest guest never asks for these; a rising count means a broken ESP guest.",
        &[],
        g(&st.esp_rx_replays_missed),
    );
    const DROPS: &str = "wasmsec_drops_total";
    const DROPS_HELP: &str = "Packets dropped by the data path, by direction and reason.";
    for r in DropReason::ALL {
        s.counter(DROPS, DROPS_HELP, &[("direction", "out"), ("reason", r.name())], st.out_drops(r));
        s.counter(DROPS, DROPS_HELP, &[("direction", "in"), ("reason", r.name())], st.in_drops(r));
    }
    s.counter(DROPS, DROPS_HELP, &[("direction", "in"), ("reason", "runt")], g(&st.rx_runts));
    s.counter(DROPS, DROPS_HELP, &[("direction", "in"), ("reason", "not_unicast")], g(&st.rx_not_unicast));
    s.counter(DROPS, DROPS_HELP, &[("direction", "in"), ("reason", "ecn_ce_not_ect")], g(&st.rx_ecn_drops));
    s.counter(DROPS, DROPS_HELP, &[("direction", "out"), ("reason", "tun_malformed")], g(&st.tun_rx_malformed));
    s.counter(DROPS, DROPS_HELP, &[("direction", "any"), ("reason", "guest_suspended")], g(&st.guest_suspended_drops));
    s.counter(DROPPED, DROPPED_HELP, &[("reason", "oversize_host")], g(&st.ike_oversize));
    s.counter(DROPPED, DROPPED_HELP, &[("reason", "not_unicast")], g(&st.ike_not_unicast));
    s.counter(DROPPED, DROPPED_HELP, &[("reason", "queue_full")], g(&st.ike_queue_full));
    s.counter("wasmsec_nat_keepalives_received_total", "NAT keepalives received.", &[], g(&st.keepalives_rx));
    s.gauge(
        "wasmsec_data_path_peers",
        "Peers the data path sends sealed packets to (its peer table).",
        &[],
        g(&st.peers),
    );
    s.counter("wasmsec_send_errors_total", "Socket or TUN writes that failed.", &[], g(&st.tx_errors));
    for (socket, n) in st.socket_drops() {
        s.counter(
            "wasmsec_socket_receive_drops_total",
            "Datagrams the kernel dropped at a socket of ours, its receive buffer full.",
            &[("socket", socket)],
            n,
        );
    }
    s.counter("wasmsec_guest_restarts_total", "Guest instances replaced after a trap.", &[], g(&st.guest_restarts));
    s.counter(
        "wasmsec_sa_install_failures_total",
        "SAs the data path could not install (guest refusal or trap, no instance); their CHILD SAs are deleted.",
        &[],
        g(&st.sa_install_failures),
    );
    // Manual tunnels live in the daemon's own domain (tenant "").
    for m in &st.manual {
        sa_traffic(s, [("connection", &m.name), ("tenant", "")], crate::stats::traffic(&m.sas));
    }
    s.counter(
        "wasmsec_guest_protocol_errors_total",
        "Guest requests or verdicts the host refused as breaking its rules.",
        &[],
        g(&st.guest_protocol_errors),
    );
}

/// A connection's (or manual tunnel's) SA traffic:
/// [in packets, in bytes, out packets, out bytes].
fn sa_traffic(s: &mut Scrape, [c, tenant]: [(&str, &str); 2], t: crate::stats::Traffic) {
    let p = "ESP packets carried by the connection's CHILD SAs or manual tunnel (opened and delivered, or sealed and sent).";
    let b = "ESP bytes carried by the connection's CHILD SAs or manual tunnel (ESP header to ICV).";
    for (dir, packets, bytes) in [("in", t[0], t[1]), ("out", t[2], t[3])] {
        s.counter("wasmsec_sa_packets_total", p, &[c, tenant, ("direction", dir)], packets);
        s.counter("wasmsec_sa_bytes_total", b, &[c, tenant, ("direction", dir)], bytes);
    }
}

/// The labels of a series by connection: the connection and its tenant.
fn by_conn<'a>(v: &'a IkeView, conn: &'a str) -> [(&'static str, &'a str); 2] {
    [("connection", conn), ("tenant", v.tenants.get(conn).map_or("", String::as_str))]
}

/// The IKE side.
fn ike(s: &mut Scrape, v: &IkeView) {
    for (i, (d, &n)) in IKE_COUNTERS.iter().zip(&v.counters).enumerate() {
        let labels: Vec<(&str, &str)> = d.label.into_iter().collect();
        if d.by_connection {
            // Every series by connection; what no connection counted (an
            // IKE_SA_INIT that matched none) under connection="".
            let mut rest = n;
            for (conn, rows) in &v.by_connection {
                let m = rows.get(i).copied().unwrap_or(0);
                rest = rest.saturating_sub(m);
                let l: Vec<(&str, &str)> = by_conn(v, conn).into_iter().chain(d.label).collect();
                s.counter(d.name, d.help, &l, m);
            }
            if rest > 0 || v.by_connection.is_empty() {
                let l: Vec<(&str, &str)> = by_conn(v, "").into_iter().chain(d.label).collect();
                s.counter(d.name, d.help, &l, rest);
            }
        } else if d.counter {
            s.counter(d.name, d.help, &labels, n);
        } else {
            s.gauge(d.name, d.help, &labels, n);
        }
    }
    for ((conn, state), &n) in &v.ike_sas {
        let [c, t] = by_conn(v, conn);
        s.gauge("wasmsec_ike_sas", "IKE_SAs, by connection and state.", &[c, t, ("state", state)], n);
    }
    for (conn, &n) in &v.child_sas {
        s.gauge("wasmsec_child_sas", "Installed CHILD_SAs, by connection.", &by_conn(v, conn), n);
    }
    for (conn, t) in &v.traffic {
        sa_traffic(s, by_conn(v, conn), *t);
    }
    for (tenant, [accepted, rejected, failed, wrong_tenant, swaps, refused]) in &v.policy {
        const D: &str = "wasmsec_policy_decisions_total";
        let t = ("tenant", tenant.as_str());
        let help = "Policy decisions on authenticated peers, by tenant (\"\": [policy] module) and outcome (failed: trap, timeout or an answer the host refused; wrong_tenant: an accept naming another tenant than the connection's; both counted as rejects).";
        let outcomes =
            [("accepted", accepted), ("rejected", rejected), ("failed", failed), ("wrong_tenant", wrong_tenant)];
        for (outcome, n) in outcomes {
            s.counter(D, help, &[t, ("outcome", outcome)], *n);
        }
        s.counter(
            "wasmsec_policy_swaps_total",
            "Policy modules put in service (start and reloads), by tenant.",
            &[t],
            *swaps,
        );
        let help = "Policy modules refused at load (not a component, imports, self-test failed), by tenant; the previous one kept serving.";
        s.counter("wasmsec_policy_refused_total", help, &[t], *refused);
    }
    s.gauge("wasmsec_ike_vault_secrets", "Secrets the host holds for the IKE guest.", &[], v.vault_secrets);
    let help = "1 while a trapped IKE guest waits for its replacement (a back-off after repeated traps; the IKE series show the last values from before), else 0.";
    s.gauge("wasmsec_ike_guest_replacing", help, &[], u64::from(v.ike_guest_replacing));
    let help = "Peak linear memory of a guest instance, bytes.";
    s.gauge("wasmsec_guest_memory_peak_bytes", help, &[("guest", "ike")], v.guest_memory_peak);
    let help = "Guest instances alive, each holding a memory slot, by engine (esp: every ESP guest, a tenant's only while it has SAs; policy: policy modules without a language runtime, including ones being checked).";
    for (engine, n) in &v.guest_instances {
        s.gauge("wasmsec_guest_instances", help, &[("engine", engine)], *n);
    }
}

/// The whole exposition: data path, IKE (when the control thread
/// answered) and the guest call metrics.
pub fn render(stats: &Stats, ike_view: Option<&IkeView>) -> String {
    let mut s = Scrape::default();
    data_path(&mut s, stats);
    if let Some(v) = ike_view {
        ike(&mut s, v);
    }
    s.gauge("wasmsec_build_info", "Constant 1, labelled by version.", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    let mut families = s.registry.gather();
    families.extend(crate::telemetry::GUESTS.registry.gather());
    TextEncoder::new().encode_to_string(&families).unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_registers_and_renders() {
        let mut stats = Stats::default();
        stats.in_drop(DropReason::Replay);
        let manual = crate::stats::ManualTraffic { name: "static".into(), ..Default::default() };
        manual.sas[1].count(120);
        stats.manual.push(manual);
        let view = IkeView {
            ike_sas: [(("gw".to_string(), "half_open"), 1)].into(),
            child_sas: [("gw".to_string(), 2)].into(),
            traffic: [("gw".to_string(), [1, 100, 2, 200])].into(),
            counters: (0..IKE_COUNTERS.len() as u64).collect(),
            by_connection: [("gw".to_string(), vec![1; IKE_COUNTERS.len()])].into(),
            vault_secrets: 3,
            policy: vec![(String::new(), [5, 4, 3, 6, 2, 1]), ("blue".to_string(), [1, 0, 0, 0, 1, 0])],
            tenants: [("gw".to_string(), "blue".to_string())].into(),
            guest_memory_peak: 65536,
            guest_instances: vec![("esp", 4), ("policy", 2)],
            ike_guest_replacing: true,
        };
        let text = render(&stats, Some(&view));
        assert!(text.contains("wasmsec_drops_total{direction=\"in\",reason=\"replay\"} 1"), "{text}");
        assert!(text.contains("wasmsec_child_sas{connection=\"gw\",tenant=\"blue\"} 2"), "{text}");
        assert!(text.contains("wasmsec_guest_instances{engine=\"esp\"} 4"), "{text}");
        assert!(text.contains("wasmsec_ike_guest_replacing 1"), "{text}");
        assert!(text.contains("wasmsec_policy_decisions_total{outcome=\"failed\",tenant=\"\"} 3"), "{text}");
        assert!(text.contains("wasmsec_policy_decisions_total{outcome=\"wrong_tenant\",tenant=\"\"} 6"), "{text}");
        assert!(text.contains("wasmsec_policy_decisions_total{outcome=\"accepted\",tenant=\"blue\"} 1"), "{text}");
        assert!(text.contains("wasmsec_ike_sas{connection=\"gw\",state=\"half_open\",tenant=\"blue\"} 1"), "{text}");
        assert!(
            text.contains("wasmsec_sa_bytes_total{connection=\"gw\",direction=\"out\",tenant=\"blue\"} 200"),
            "{text}"
        );
        assert!(text.contains("wasmsec_ike_messages_sent_total 1\n"), "{text}");
        let manual = "wasmsec_sa_bytes_total{connection=\"static\",direction=\"out\",tenant=\"\"} 120";
        assert!(text.contains(manual), "{text}");
        // By connection, with what no connection counted under connection="".
        let auth = IKE_COUNTERS.iter().position(|d| d.label == Some(("reason", "authentication"))).unwrap();
        let failed = "wasmsec_ike_negotiation_failures_total";
        let gw = format!("{failed}{{connection=\"gw\",reason=\"authentication\",tenant=\"blue\"}} 1\n");
        assert!(text.contains(&gw), "{text}");
        let rest = format!("{failed}{{connection=\"\",reason=\"authentication\",tenant=\"\"}} {}\n", auth - 1);
        assert!(text.contains(&rest), "{text}");
        let last = IKE_COUNTERS.len() - 1;
        assert!(text.contains(&format!("wasmsec_ike_half_open_sas {last}\n")), "{text}");
        // Same name, one HELP: definitions that share a name share label names.
        assert_eq!(text.matches("# HELP wasmsec_ike_messages_dropped_total").count(), 1);
    }

    /// The Grafana dashboard (docs/grafana-dashboard.json) queries only
    /// metrics that /metrics has: a renamed metric fails here, not on a
    /// blank panel.
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let _ = crate::telemetry::guest_call(crate::telemetry::Guest::Ike, || Ok::<_, ()>(()));
        let view = IkeView { counters: vec![0; IKE_COUNTERS.len()], ..IkeView::default() };
        let mut view = view;
        view.ike_sas.insert(("c".into(), "established"), 1);
        view.child_sas.insert("c".into(), 1);
        let text = render(&Stats::default(), Some(&view));
        let exported: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let dash = include_str!("../../../docs/grafana-dashboard.json");
        let v: serde_json::Value = serde_json::from_str(dash).expect("the dashboard is JSON");
        let mut used = 0;
        for panel in v["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr");
                for (i, _) in expr.match_indices("wasmsec_") {
                    let name: String =
                        expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    let base = name.strip_suffix("_bucket").unwrap_or(&name);
                    assert!(
                        exported.contains(base),
                        "dashboard panel {:?} queries {name}, not exported",
                        panel["title"]
                    );
                    used += 1;
                }
            }
        }
        assert!(used >= 14, "{used}");
    }
}
