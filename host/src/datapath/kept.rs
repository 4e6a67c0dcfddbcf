//! An SA as a data-path thread keeps it, to rebuild a trapped guest: the
//! guest's record without its selector lists, and the selectors that its
//! CHILD SA's two halves and the control thread's view share
//! ([`crate::wasm::selectors`]: the lists took about a tenth of the daemon's
//! memory per CHILD SA). The full record is made again for each guest call
//! that installs the SA.
use std::sync::Arc;

use super::tos::Override;
use crate::keys::KeyUse;
use crate::wasm::esp::{InboundSa, OutboundSa, TrafficSelector};
use crate::wasm::selectors::SaSelectors;

#[derive(Debug, Clone)]
pub struct Kept<S> {
    /// The record, its `local_ts` and `remote_ts` empty.
    pub sa: S,
    pub selectors: Arc<SaSelectors>,
    /// The SPI its packets carry. An inbound SA's is its name (`sa.spi`:
    /// we chose it). A negotiated outbound SA is named by its CHILD SA's
    /// inbound SPI, unique in the daemon, where the peer's SPI written on
    /// the wire need not be: two peers may choose the same one, and the
    /// guests' tables, expiries and removals all go by the name. Only the
    /// sealing grant (`keys::KeyUse::Seal`) writes this one.
    pub wire_spi: u32,
    /// Its child's own `copy_dscp` and `copy_ecn`, if any (the data
    /// path's [`super::tos::BySa`] resolves them at the install).
    pub tos: Override,
}

/// The two WIT SA records, whose selector lists [`Kept`] holds apart.
pub trait SelectorLists: Clone {
    fn set_lists(&mut self, local: Vec<TrafficSelector>, remote: Vec<TrafficSelector>);
    fn lists(&self) -> (&[TrafficSelector], &[TrafficSelector]);
    fn spi(&self) -> u32;
}

impl SelectorLists for InboundSa {
    fn set_lists(&mut self, local: Vec<TrafficSelector>, remote: Vec<TrafficSelector>) {
        (self.local_ts, self.remote_ts) = (local, remote);
    }

    fn lists(&self) -> (&[TrafficSelector], &[TrafficSelector]) {
        (&self.local_ts, &self.remote_ts)
    }

    fn spi(&self) -> u32 {
        self.spi
    }
}

impl SelectorLists for OutboundSa {
    fn set_lists(&mut self, local: Vec<TrafficSelector>, remote: Vec<TrafficSelector>) {
        (self.local_ts, self.remote_ts) = (local, remote);
    }

    fn lists(&self) -> (&[TrafficSelector], &[TrafficSelector]) {
        (&self.local_ts, &self.remote_ts)
    }

    fn spi(&self) -> u32 {
        self.spi
    }
}

impl Kept<OutboundSa> {
    /// Keep outbound SA `sa`, named `sa.spi` in the daemon, whose packets
    /// carry `wire_spi` (the peer's SPI; see [`Kept::wire_spi`]).
    pub fn outbound(sa: OutboundSa, wire_spi: u32, selectors: Arc<SaSelectors>) -> Kept<OutboundSa> {
        Kept { wire_spi, ..Kept::new(sa, selectors) }
    }
}

impl Kept<InboundSa> {
    /// What its key is granted for: opening its packets, refusing those
    /// whose number the key authenticated or that are left of the SA's
    /// replay window, unless its anti-replay is off (a window of 0). From
    /// the host's record, never a guest's word.
    pub fn open_use(&self) -> KeyUse {
        KeyUse::Open { spi: self.sa.spi, replay_window: self.sa.replay_window }
    }
}

impl<S: SelectorLists> Kept<S> {
    /// Keep `sa` with `selectors`, its packets carrying its own SPI (for
    /// an outbound SA named otherwise, [`Kept::outbound`]); lists it
    /// carries are dropped.
    pub fn new(mut sa: S, selectors: Arc<SaSelectors>) -> Kept<S> {
        sa.set_lists(Vec::new(), Vec::new());
        let wire_spi = sa.spi();
        Kept { sa, selectors, wire_spi, tos: Override::default() }
    }

    /// With its child's own `copy_dscp` and `copy_ecn`.
    pub fn with_tos(self, tos: Override) -> Kept<S> {
        Kept { tos, ..self }
    }

    /// Keep a whole record, its lists as the selectors; none if one of
    /// them is malformed.
    pub fn of_full(sa: S) -> Option<Kept<S>> {
        let (local, remote) = sa.lists();
        let selectors = SaSelectors::of(local, remote)?;
        Some(Kept::new(sa, selectors))
    }

    /// The whole record, for the guest.
    pub fn full(&self) -> S {
        let mut sa = self.sa.clone();
        sa.set_lists(self.selectors.local_wit(), self.selectors.remote_wit());
        sa
    }
}
