//! What the operator interfaces ask the control thread, and what it
//! answers: the IKE side of the metrics, as plain values.
use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::page::{ConnectionPage, Page};
use super::render::IKE_COUNTERS;
use crate::wasm::ike::Counters;

/// A question for the control thread, answered on the enclosed channel.
/// It travels on a [`crate::datapath::channel`] channel, whose descriptor
/// wakes the control thread's `poll`.
#[derive(Debug)]
pub enum Query {
    /// The IKE view for `/metrics` (and the liveness probe: an answer
    /// proves the control thread and its guest are turning).
    Metrics(oneshot::Sender<IkeView>),
    /// An admin API request.
    Admin(Command, oneshot::Sender<Answer>),
}

/// What the admin API asks the IKE thread to show or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A page of the SAs, and every counter (`wasmsec stats`).
    Status(Page),
    /// A page of the loaded connections (of one name, or of one tenant).
    Connections(ConnectionPage),
    /// A page of the IKE and CHILD SAs.
    Sas(Page),
    /// Recent refused or failed negotiations, with their reasons.
    Failures,
    Initiate(String),
    Terminate(String),
    /// Rekey the connection's CHILD SAs now.
    Rekey(String),
    /// Re-read the config file's connections.
    Reload,
    /// Tests only (`[control] fault_injection`): the IKE guest traps on
    /// this many of its next calls (1 to `MAX_INJECTED_FAULTS`); more
    /// than one traps its replacement too.
    FaultIke(u32),
    /// Tests only: the IKE guest traps at a point of the next admin
    /// command ([`FaultPoint`]).
    FaultIkeAt(FaultPoint),
}

/// Where in the next admin command an injected fault traps the IKE guest
/// (tests only, `[control] fault_injection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// When the command's output (messages, SA changes, checkpoints) is
    /// taken, so that what it did (a reload's removals, say) is lost with it.
    Output,
    /// At the command's Nth call into the guest (1 to
    /// `MAX_INJECTED_FAULTS`), partway through it (a reload's second
    /// connection, say); a command with fewer calls does not trap.
    Call(u32),
}

impl Command {
    /// Does carrying it out make the IKE guest send (initiate, terminate,
    /// rekey)? Its answer then waits until what the guest queued has been
    /// applied, and a trap before that has the replacement carry it out
    /// again. A reload changes the host's connection list at once, and the
    /// rest only read or, for the fault, set the host's counter.
    pub fn changes_sas(&self) -> bool {
        matches!(self, Command::Initiate(_) | Command::Terminate(_) | Command::Rekey(_))
    }
}

/// The most traps one fault request may ask for.
pub const MAX_INJECTED_FAULTS: u32 = 16;

/// The IKE thread's answer: JSON, or a refusal with its HTTP status.
pub type Answer = Result<serde_json::Value, Refusal>;

/// A request the IKE thread would not carry out; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 404 (no such connection), 409 (not possible now), 403 (not enabled).
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
}

/// The control thread's state as the metrics show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IkeView {
    /// IKE SAs, by connection and state (the engine's view: half-open and
    /// connecting SAs too).
    pub ike_sas: BTreeMap<(String, &'static str), u64>,
    /// Installed CHILD SAs, by connection.
    pub child_sas: BTreeMap<String, u64>,
    /// ESP carried by each connection's CHILD SAs over the daemon's life:
    /// [in packets, in bytes, out packets, out bytes].
    pub traffic: BTreeMap<String, [u64; 4]>,
    /// The engine's counters in [`IKE_COUNTERS`] order, carried across
    /// replacements of the guest.
    pub counters: Vec<u64>,
    /// Each connection's negotiation counters, in the same order (only
    /// the rows marked `by_connection` are meaningful).
    pub by_connection: BTreeMap<String, Vec<u64>>,
    /// Each policy module's counters in [`PolicyStats::snapshot`]'s order
    /// (decisions, swaps, refused loads), by tenant ("" for `[policy] module`).
    ///
    /// [`PolicyStats::snapshot`]: crate::policy::PolicyStats::snapshot
    pub policy: Vec<(String, [u64; 6])>,
    /// The tenant of each connection that has one (a `tenant` label on
    /// every series labelled by connection; "" for none).
    pub tenants: BTreeMap<String, String>,
    /// Secrets held in the host's vault for the IKE guest.
    pub vault_secrets: u64,
    /// The IKE guest's peak linear memory, bytes.
    pub guest_memory_peak: u64,
    /// Guest instances alive, by engine (`Runtime::instances`).
    pub guest_instances: Vec<(&'static str, u64)>,
    /// The IKE guest trapped and waits for its replacement (a back-off):
    /// the rest of this view is the last one from before.
    pub ike_guest_replacing: bool,
}

/// One set of the engine's counters over the daemon's life. A replaced
/// guest starts from zero, so the last values seen from the old instance
/// are carried into the totals (counters only; gauges are what the
/// instance says now).
#[derive(Debug, Default)]
struct Carry {
    carried: Vec<u64>,
    last: Vec<u64>,
}

impl Carry {
    fn observe(&mut self, values: Vec<u64>) {
        self.last = values;
    }

    /// Every row, also after a replacement before the new instance
    /// reported: the carried counts, and gauges at 0.
    fn totals(&self) -> Vec<u64> {
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        let rows = IKE_COUNTERS.iter().enumerate();
        rows.map(|(i, d)| at(&self.last, i) + at(&self.carried, i) * u64::from(d.counter)).collect()
    }

    fn replaced(&mut self) {
        self.carried.resize(IKE_COUNTERS.len(), 0);
        for (c, l) in self.carried.iter_mut().zip(std::mem::take(&mut self.last)) {
            *c += l;
        }
    }
}

/// The counters in [`IKE_COUNTERS`] order.
fn rows(c: &Counters) -> Vec<u64> {
    IKE_COUNTERS.iter().map(|d| (d.get)(c)).collect()
}

/// The engine's counters over the daemon's life: its totals, and each
/// connection's negotiation counters (by name).
#[derive(Debug, Default)]
pub struct IkeTotals {
    engine: Carry,
    by_connection: BTreeMap<String, Carry>,
    /// The same for `wasmsec status`, which shows the counters by their
    /// field names: what replaced instances counted, and the last values
    /// seen from the current one.
    carried_fields: serde_json::Map<String, serde_json::Value>,
    last_fields: serde_json::Map<String, serde_json::Value>,
}

/// The one field of the engine's counters that is a gauge (half-open IKE
/// SAs now): not carried across a replacement.
const GAUGE_FIELDS: &[&str] = &["half_open"];

/// The counters' fields by name, as `wasmsec status` shows them.
fn fields(c: &Counters) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

impl IkeTotals {
    /// The counters as `wasmsec status` shows them, over the daemon's
    /// life: what the instance reports now plus what replaced ones
    /// counted (gauges as they are now).
    pub fn status(&mut self, c: &Counters) -> serde_json::Value {
        self.last_fields = fields(c);
        serde_json::Value::Object(with_carried(self.last_fields.clone(), &self.carried_fields))
    }

    /// Record what the instance reports now; returns the totals.
    pub fn observe(&mut self, c: &Counters) -> Vec<u64> {
        self.engine.observe(rows(c));
        self.last_fields = fields(c);
        self.engine.totals()
    }

    /// Record what the instance reports now for one connection.
    pub fn observe_connection(&mut self, name: &str, c: &Counters) {
        self.by_connection.entry(name.to_string()).or_default().observe(rows(c));
    }

    /// Each connection's counters over the daemon's life, in
    /// [`IKE_COUNTERS`] order.
    pub fn by_connection(&self) -> BTreeMap<String, Vec<u64>> {
        self.by_connection.iter().map(|(n, c)| (n.clone(), c.totals())).collect()
    }

    /// The guest was replaced: what the old instance counted stays in the
    /// totals. Increments since the last `observe` are lost with it.
    pub fn guest_replaced(&mut self) {
        self.engine.replaced();
        self.by_connection.values_mut().for_each(Carry::replaced);
        carry_fields(&mut self.carried_fields, std::mem::take(&mut self.last_fields));
    }
}

/// Add a replaced instance's last counters to what is carried (not its
/// gauges).
fn carry_fields(
    carried: &mut serde_json::Map<String, serde_json::Value>,
    last: serde_json::Map<String, serde_json::Value>,
) {
    for (k, v) in last {
        if GAUGE_FIELDS.contains(&k.as_str()) {
            continue;
        }
        let before = carried.get(&k).and_then(|c| c.as_u64()).unwrap_or(0);
        if let Some(n) = v.as_u64() {
            carried.insert(k, (before + n).into());
        }
    }
}

/// The current instance's counters plus what is carried.
fn with_carried(
    mut now: serde_json::Map<String, serde_json::Value>,
    carried: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    for (k, before) in carried {
        if let (Some(n), Some(b)) = (now.get(k).and_then(|v| v.as_u64()), before.as_u64()) {
            now.insert(k.clone(), (n + b).into());
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_a_guest_replacement() {
        let c = |n: u64| vec![n; IKE_COUNTERS.len()];
        let mut t = IkeTotals::default();
        t.engine.observe(c(5));
        t.by_connection.entry("gw".into()).or_default().observe(c(3));
        t.guest_replaced();
        t.engine.observe(c(1));
        let after = t.engine.totals();
        let row = |name: &str| IKE_COUNTERS.iter().position(|d| d.name == name).unwrap();
        assert_eq!(after[row("wasmsec_ike_messages_sent_total")], 6);
        assert_eq!(after[row("wasmsec_ike_half_open_sas")], 1, "a gauge is not carried");
        // A connection not heard from since the replacement keeps its count.
        assert_eq!(t.by_connection()["gw"][row("wasmsec_ike_messages_sent_total")], 3);
        t.by_connection.get_mut("gw").unwrap().observe(c(2));
        assert_eq!(t.by_connection()["gw"][row("wasmsec_ike_messages_sent_total")], 5);
    }

    #[test]
    fn the_status_counters_survive_a_guest_replacement_too() {
        let map = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let mut carried = serde_json::Map::new();
        carry_fields(&mut carried, map(serde_json::json!({"tx": 5, "half_open": 3})));
        let now = with_carried(map(serde_json::json!({"tx": 1, "half_open": 2})), &carried);
        assert_eq!((now["tx"].as_u64(), now["half_open"].as_u64()), (Some(6), Some(2)), "a gauge is not carried");
        // Replaced twice: both instances' counts stay.
        carry_fields(&mut carried, map(serde_json::json!({"tx": 1, "half_open": 2})));
        assert_eq!(with_carried(map(serde_json::json!({"tx": 0})), &carried)["tx"].as_u64(), Some(6));
    }
}
