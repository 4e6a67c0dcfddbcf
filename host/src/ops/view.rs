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
}

/// The control thread's state as the metrics show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IkeView {
    /// Established IKE SAs, by connection.
    pub ike_sas: BTreeMap<String, u64>,
    /// Installed CHILD SAs, by connection.
    pub child_sas: BTreeMap<String, u64>,
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
