//! What an SA's key carried, held against the SA's hard byte and packet
//! limits by the host (RFC 4301 section 4.4.2.1: past a hard limit the SA
//! carries nothing more). The ESP guest counts the same and reports the
//! soft and hard limits; the host does not take its word for either: it
//! reports what the guest did not (a guest that keeps quiet at the soft
//! limit would leave the SA to end at the hard one, with no successor
//! ready), each once per SA. The counts live with the key, so they
//! outlive a replaced guest, which is installed with what is left
//! ([`remaining`]).
//!
//! The rule is the ESP engine's (`guest/esp/src/engine.rs`, `Usage`): a
//! packet passes while the packets and bytes before it are below both hard
//! limits, and its inner IP packet's length is what counts. Outbound a
//! packet is counted when the guest asks the host to seal it (as the engine
//! counts it when it plans it); inbound when it is delivered,
//! not when it opens: a replayed packet may open too (more than 63 below
//! its key's highest but within the SA's replay window, which the host
//! does not refuse, or with the SA's anti-replay off), and must not use up
//! the SA of the peer whose packet it copied.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::store::{KeyTable, KeyUse};
use crate::wasm::esp::SaLimits;

/// A key's packets and bytes so far (kept only for an SA with a limit).
#[derive(Debug, Default)]
pub struct Usage {
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Whether the SA's hard expiry went to the control thread.
    hard_reported: AtomicBool,
    /// Whether its soft expiry (time to rekey) did.
    soft_reported: AtomicBool,
}

impl Usage {
    /// (packets, bytes)
    pub fn get(&self) -> (u64, u64) {
        (self.packets.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// True the first time only: whoever gets it reports the SA's hard
    /// expiry, so the host's count and the guest's report it once.
    pub fn report_hard(&self) -> bool {
        !self.hard_reported.swap(true, Ordering::Relaxed)
    }

    pub fn hard_reported(&self) -> bool {
        self.hard_reported.load(Ordering::Relaxed)
    }

    /// As [`Usage::report_hard`], for the soft expiry.
    pub fn report_soft(&self) -> bool {
        !self.soft_reported.swap(true, Ordering::Relaxed)
    }

    pub fn soft_reported(&self) -> bool {
        self.soft_reported.load(Ordering::Relaxed)
    }

    /// True the first time only for an expiry of this kind.
    pub fn report(&self, hard: bool) -> bool {
        if hard { self.report_hard() } else { self.report_soft() }
    }
}

/// An SA whose key reached a soft or hard limit by the host's count, to
/// be reported (the control thread rekeys it, or deletes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReached {
    /// The key's handle.
    pub key: u64,
    /// The SA's name, as its expiries give it.
    pub spi: u32,
    pub outbound: bool,
    /// A hard limit (else a soft one).
    pub hard: bool,
    /// The byte limit was reached (else the packet limit).
    pub by_bytes: bool,
}

/// One run of one key's packets counted against its SA's hard limits:
/// read once, added once ([`Tally::finish`]), so a packet costs two
/// additions and two comparisons.
#[derive(Debug)]
pub struct Tally<'a> {
    usage: &'a Usage,
    reached: LimitReached,
    /// The hard and soft limits, (packets, bytes) (`u64::MAX`: none).
    hard: (u64, u64),
    soft: (u64, u64),
    /// The counts so far, the run's packets included.
    count: (u64, u64),
    /// What this run added.
    added: (u64, u64),
}

/// Whether an SA has a byte or packet limit, so its packets are counted.
pub fn limited(limits: &SaLimits) -> bool {
    [limits.hard_packets, limits.hard_bytes, limits.soft_packets, limits.soft_bytes].iter().any(|&l| l != 0)
}

impl<'a> Tally<'a> {
    /// A run of the SA `reached` names, or none for an SA without a limit:
    /// nothing is counted for it.
    pub fn start(usage: &'a Usage, limits: &SaLimits, reached: LimitReached) -> Option<Tally<'a>> {
        if !limited(limits) {
            return None;
        }
        let none = |l: u64| if l == 0 { u64::MAX } else { l };
        Some(Tally {
            usage,
            reached,
            hard: (none(limits.hard_packets), none(limits.hard_bytes)),
            soft: (none(limits.soft_packets), none(limits.soft_bytes)),
            count: usage.get(),
            added: (0, 0),
        })
    }

    /// Whether a packet whose inner IP packet has `len` bytes may pass; it
    /// is counted if it does.
    #[inline]
    pub fn pass(&mut self, len: usize) -> bool {
        if self.at_hard_limit() {
            return false;
        }
        let len = len as u64;
        self.count = (self.count.0 + 1, self.count.1.saturating_add(len));
        self.added = (self.added.0 + 1, self.added.1 + len);
        true
    }

    /// Whether the counts reached a hard limit: the SA carries nothing more.
    pub fn at_hard_limit(&self) -> bool {
        self.count.0 >= self.hard.0 || self.count.1 >= self.hard.1
    }

    /// Add the run to the key's counts; an SA at its soft or hard limit
    /// whose expiry of that kind is not reported yet goes to `reached`
    /// (the soft one first, as the engine lists them).
    pub fn finish(self, reached: &mut Vec<LimitReached>) {
        if self.added != (0, 0) {
            self.usage.packets.fetch_add(self.added.0, Ordering::Relaxed);
            self.usage.bytes.fetch_add(self.added.1, Ordering::Relaxed);
        }
        for (hard, (packets, bytes), reported) in
            [(false, self.soft, self.usage.soft_reported()), (true, self.hard, self.usage.hard_reported())]
        {
            if (self.count.0 >= packets || self.count.1 >= bytes) && !reported {
                reached.push(LimitReached { hard, by_bytes: self.count.1 >= bytes, ..self.reached });
            }
        }
    }
}

/// Inbound: one batch's delivered packets counted against their SAs'
/// limits, a run of one key's packets at a time (an SA's packets arrive
/// together, so the key table is asked once per run, not per packet).
#[derive(Debug, Default)]
pub struct Deliveries<'a> {
    /// The key handle of the run being counted, and its count (none for
    /// an SA without a limit).
    run: Option<(u64, Option<Tally<'a>>)>,
}

impl<'a> Deliveries<'a> {
    /// Whether a packet that inbound SA `spi` opened may be delivered; it
    /// is counted if it may. `counted` is the key's handle from the
    /// packet's mark (0: the SA has no limit, nothing to count).
    #[inline]
    pub fn pass(
        &mut self,
        keys: &'a KeyTable,
        counted: u64,
        spi: u32,
        len: usize,
        reached: &mut Vec<LimitReached>,
    ) -> bool {
        if counted == 0 {
            return true;
        }
        if self.run.as_ref().is_none_or(|(h, _)| *h != counted) {
            self.finish(reached);
            self.run = Some((counted, inbound_tally(keys, counted, spi)));
        }
        match &mut self.run {
            Some((_, Some(t))) => t.pass(len),
            _ => true,
        }
    }

    /// Add the last run to its key's counts (see [`Tally::finish`]).
    pub fn finish(&mut self, reached: &mut Vec<LimitReached>) {
        if let Some((_, Some(t))) = self.run.take() {
            t.finish(reached);
        }
    }
}

/// The count of inbound SA `spi`'s packets opened with key `handle`
/// against its limits; none for an SA without a limit.
fn inbound_tally(keys: &KeyTable, handle: u64, spi: u32) -> Option<Tally<'_>> {
    let Ok((k, KeyUse::Open { .. })) = keys.get(handle) else { return None };
    let reached = LimitReached { key: handle, spi, outbound: false, hard: true, by_bytes: false };
    Tally::start(k.usage(), keys.limits(handle)?, reached)
}

/// The limits to install a replaced guest's SA with, which has carried
/// `used` (packets, bytes) of `limits`: a limit passed already stays,
/// at its last packet (0 would be none), so the guest expires the SA too;
/// a soft limit passed is not asked for again.
pub fn remaining(limits: &SaLimits, (packets, bytes): (u64, u64)) -> SaLimits {
    let hard = |l: u64, used: u64| if l == 0 { 0 } else { l.saturating_sub(used).max(1) };
    let soft = |l: u64, used: u64| if l == 0 || used >= l { 0 } else { l - used };
    SaLimits {
        soft_bytes: soft(limits.soft_bytes, bytes),
        soft_packets: soft(limits.soft_packets, packets),
        hard_bytes: hard(limits.hard_bytes, bytes),
        hard_packets: hard(limits.hard_packets, packets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SA: LimitReached = LimitReached { key: 7, spi: 0x1234, outbound: true, hard: true, by_bytes: false };

    fn limits(hard_packets: u64, hard_bytes: u64) -> SaLimits {
        SaLimits { hard_packets, hard_bytes, ..SaLimits::default() }
    }

    #[test]
    fn a_packet_passes_while_the_counts_before_it_are_below_the_limits() {
        let usage = Usage::default();
        let mut reached = Vec::new();
        // Three packets: the third passes, the fourth does not.
        let mut t = Tally::start(&usage, &limits(3, 0), SA).unwrap();
        assert_eq!([t.pass(100), t.pass(100)], [true, true]);
        assert!(!t.at_hard_limit());
        t.finish(&mut reached);
        assert!(reached.is_empty());
        let mut t = Tally::start(&usage, &limits(3, 0), SA).unwrap();
        assert_eq!([t.pass(100), t.pass(100), t.pass(100)], [true, false, false]);
        t.finish(&mut reached);
        assert_eq!((usage.get(), reached.as_slice()), ((3, 300), [SA].as_slice()));
        // Reported, it is not listed again.
        assert!(usage.report_hard() && !usage.report_hard());
        let mut t = Tally::start(&usage, &limits(3, 0), SA).unwrap();
        assert!(!t.pass(1));
        reached.clear();
        t.finish(&mut reached);
        assert!(reached.is_empty());
        // Bytes: the packet that reaches the limit passes, as in the engine.
        let usage = Usage::default();
        reached.clear();
        let mut t = Tally::start(&usage, &limits(0, 250), SA).unwrap();
        assert_eq!([t.pass(100), t.pass(100), t.pass(100), t.pass(1)], [true, true, true, false]);
        t.finish(&mut reached);
        assert_eq!(usage.get(), (3, 300));
        assert_eq!(reached, [LimitReached { by_bytes: true, ..SA }]);
    }

    #[test]
    fn the_soft_limit_is_listed_once_and_before_the_hard_one() {
        let usage = Usage::default();
        let l = SaLimits { soft_packets: 2, hard_packets: 4, ..SaLimits::default() };
        let mut reached = Vec::new();
        let mut t = Tally::start(&usage, &l, SA).unwrap();
        assert!(t.pass(10));
        t.finish(&mut reached);
        assert!(reached.is_empty(), "below both");
        let mut t = Tally::start(&usage, &l, SA).unwrap();
        assert!(t.pass(10));
        t.finish(&mut reached);
        assert_eq!(reached, [LimitReached { hard: false, ..SA }]);
        // Reported: not listed again, while the hard one is when it comes.
        assert!(usage.report(false) && !usage.report(false));
        reached.clear();
        let mut t = Tally::start(&usage, &l, SA).unwrap();
        assert_eq!([t.pass(10), t.pass(10), t.pass(10)], [true, true, false]);
        t.finish(&mut reached);
        assert_eq!(reached, [SA]);
        // Both in one run: the soft one first, by bytes here.
        let usage = Usage::default();
        let l = SaLimits { soft_bytes: 100, hard_packets: 2, ..SaLimits::default() };
        reached.clear();
        let mut t = Tally::start(&usage, &l, SA).unwrap();
        assert_eq!([t.pass(60), t.pass(60)], [true, true]);
        t.finish(&mut reached);
        assert_eq!(reached, [LimitReached { hard: false, by_bytes: true, ..SA }, SA]);
    }

    #[test]
    fn only_an_sa_with_a_limit_is_counted() {
        let usage = Usage::default();
        assert!(Tally::start(&usage, &SaLimits::default(), SA).is_none());
        let soft_only = SaLimits { soft_bytes: 10, ..SaLimits::default() };
        let mut t = Tally::start(&usage, &soft_only, SA).unwrap();
        assert!((0..1000).all(|_| t.pass(1500)), "a soft limit stops nothing");
        let mut reached = Vec::new();
        t.finish(&mut reached);
        assert_eq!(usage.get(), (1000, 1_500_000));
        assert_eq!(reached, [LimitReached { hard: false, by_bytes: true, ..SA }], "it is only reported");
    }

    #[test]
    fn deliveries_are_counted_per_key_and_the_key_table_asked_once_per_run() {
        use crate::keys::EspAlgorithm;
        use crate::keys::esp_key::test_key;
        use std::sync::Arc;
        let mut keys = KeyTable::default();
        let alg = EspAlgorithm::Aes256Gcm16;
        let (a, b) = (Arc::new(test_key(alg, 1)), Arc::new(test_key(alg, 2)));
        keys.grant(1, a.clone(), KeyUse::Open { spi: 0xa, replay_window: 64 }, limits(2, 0));
        keys.grant(2, b.clone(), KeyUse::Open { spi: 0xb, replay_window: 64 }, limits(3, 0));
        let mut reached = Vec::new();
        let mut d = Deliveries::default();
        // Key 1, then 2, then 1 again: each run is added when the next begins.
        let got: Vec<bool> = [(1, 0xa), (1, 0xa), (2, 0xb), (1, 0xa), (0, 0xc), (2, 0xb)]
            .iter()
            .map(|&(h, spi)| d.pass(&keys, h, spi, 10, &mut reached))
            .collect();
        d.finish(&mut reached);
        // The third packet of key 1 is past its limit; handle 0 (an SA
        // without limits) always passes and is not counted.
        assert_eq!(got, [true, true, true, false, true, true]);
        assert_eq!((a.usage().get(), b.usage().get()), ((2, 20), (2, 20)));
        // Listed by each of its runs that ends at the limit (the report
        // of it is once, by `Usage::report_hard`).
        let mut hit: Vec<(u32, bool)> = reached.iter().map(|r| (r.spi, r.outbound)).collect();
        hit.dedup();
        assert_eq!(hit, [(0xa, false)], "only key 1's SA reached its limit");
    }

    #[test]
    fn a_replacement_gets_what_is_left() {
        let l = SaLimits { soft_bytes: 800, soft_packets: 8, hard_bytes: 1000, hard_packets: 10 };
        let left = remaining(&l, (3, 300));
        assert_eq!(left, SaLimits { soft_bytes: 500, soft_packets: 5, hard_bytes: 700, hard_packets: 7 });
        // Past the soft limits: not asked for again; at the hard ones: one
        // more packet for the guest, which the host refuses.
        let left = remaining(&l, (12, 900));
        assert_eq!(left, SaLimits { soft_bytes: 0, soft_packets: 0, hard_bytes: 100, hard_packets: 1 });
        assert_eq!(remaining(&SaLimits::default(), (5, 5)), SaLimits::default());
    }
}
