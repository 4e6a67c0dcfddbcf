//! What the operator interfaces ask the control thread, and what it
//! answers: the IKE side of the metrics, as plain values.
use std::collections::BTreeMap;

use tokio::sync::oneshot;

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
    /// SAs and every counter (`wasmsec stats`).
    Status,
    /// The loaded connections.
    Connections,
    /// The IKE and CHILD SAs.
    Sas,
    /// Recent refused or failed negotiations, with their reasons.
    Failures,
    Initiate(String),
    Terminate(String),
    /// Rekey the connection's CHILD SAs now.
    Rekey(String),
    /// Re-read the config file's connections.
    Reload,
    /// Tests only (`[control] fault_injection`): the IKE guest traps on
    /// its next call.
    FaultIke,
}

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
    /// Established IKE SAs, by connection.
    pub ike_sas: BTreeMap<String, u64>,
    /// Installed CHILD SAs, by connection.
    pub child_sas: BTreeMap<String, u64>,
    /// ESP carried by each connection's CHILD SAs over the daemon's life:
    /// [in packets, in bytes, out packets, out bytes].
    pub traffic: BTreeMap<String, [u64; 4]>,
    /// The engine's counters in [`IKE_COUNTERS`] order, carried across
    /// replacements of the guest.
    pub counters: Vec<u64>,
    /// Secrets held in the host's vault for the IKE guest.
    pub vault_secrets: u64,
    /// The IKE guest's peak linear memory, bytes.
    pub guest_memory_peak: u64,
}

/// The engine's counters over the daemon's life. A replaced guest starts
/// from zero, so the last values seen from the old instance are carried
/// into the totals (counters only; gauges are what the instance says now).
#[derive(Debug, Default)]
pub struct IkeTotals {
    carried: Vec<u64>,
    last: Vec<u64>,
}

impl IkeTotals {
    /// Record what the instance reports now; returns the totals.
    pub fn observe(&mut self, c: &Counters) -> Vec<u64> {
        self.last = IKE_COUNTERS.iter().map(|d| (d.get)(c)).collect();
        self.carried.resize(self.last.len(), 0);
        IKE_COUNTERS
            .iter()
            .zip(self.last.iter().zip(&self.carried))
            .map(|(d, (l, c))| l + c * u64::from(d.counter))
            .collect()
    }

    /// The guest was replaced: what the old instance counted stays in the
    /// totals. Increments since the last `observe` are lost with it.
    pub fn guest_replaced(&mut self) {
        self.carried.resize(self.last.len(), 0);
        for (c, l) in self.carried.iter_mut().zip(std::mem::take(&mut self.last)) {
            *c += l;
        }
    }
}
