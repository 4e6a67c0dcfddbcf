//! Where each inbound SA's per-packet state lies in an ESP instance's
//! linear memory, as the guest said when it installed the SA. Before a
//! batch for many SAs (a PoP's packets, each for another of its thousands
//! of SAs) the host asks the CPU for those lines, for every packet, so
//! that the guest's cache misses overlap instead of following one another:
//! WebAssembly has no prefetch, and the guest's own loads wait (#16).
//!
//! Outbound SAs have none: a packet does not name its SA, the guest finds
//! it by destination. Guessing it from the SA that sealed the
//! destination's last packet, and prefetching that SA, was tried on
//! 2026-12-02 and did not change encap at 100,000 SAs (the misses of the
//! guest's destination index and SA table remain); not kept.
//!
//! The host learns where an instance's memory lies when it makes it:
//! memory slots (`memory_slots`: tenants' instances) and guarded memories
//! (`guarded_memory`: the daemon's own routing domain) alike.
//!
//! The guest's word is only a hint: nothing is read through it, a range
//! is kept within the instance's memory slot, and at most [`RANGES`] of
//! [`MOST_BYTES`] each are kept per SA, so a lying guest costs a few
//! useless prefetches of its own memory.
use std::collections::HashMap;

use wasmsec_wire::own_keys::OwnKeys;

/// Ranges kept per SA: the SA and its replay window.
pub const RANGES: usize = 2;
/// Bytes prefetched at most per range.
pub const MOST_BYTES: u32 = 256;

/// Inbound SAs from which on a batch is prefetched: the state of fewer
/// (some 3 KB each, keys included) stays in this machine's caches, and
/// prefetching it cost decap 5-25 ns per packet at 10 and 1,000 SAs.
pub const WARM_FROM: usize = 4096;

/// One range, checked against the memory: an offset in the slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Range {
    offset: u32,
    len: u16,
}

/// The hints of one ESP instance.
#[derive(Debug, Default)]
pub struct StateHints {
    /// The instance's memory slot: base address and size in bytes (`None`:
    /// not known, no prefetching).
    memory: Option<(usize, usize)>,
    /// Inbound SAs by our SPI, which we chose at random.
    by_spi: HashMap<u32, [Range; RANGES], OwnKeys>,
}

impl StateHints {
    /// Hints for an instance whose memory is the slot `memory`.
    pub fn new(memory: Option<(usize, usize)>) -> StateHints {
        StateHints { memory, ..StateHints::default() }
    }

    /// What the guest said for inbound SA `spi`, as (offset, length)
    /// pairs: ranges outside the memory are left out, long ones cut.
    pub fn insert(&mut self, spi: u32, ranges: impl IntoIterator<Item = (u32, u32)>) {
        if let Some(kept) = self.checked(ranges) {
            self.by_spi.insert(spi, kept);
        } else {
            self.by_spi.remove(&spi);
        }
    }

    /// The ranges kept of what the guest said: none outside the memory,
    /// none longer than [`MOST_BYTES`], at most [`RANGES`].
    fn checked(&self, ranges: impl IntoIterator<Item = (u32, u32)>) -> Option<[Range; RANGES]> {
        let (_, size) = self.memory?;
        let mut kept = [Range::default(); RANGES];
        let mut n = 0;
        for (offset, len) in ranges {
            if n == RANGES {
                break;
            }
            let room = (size as u64).saturating_sub(u64::from(offset));
            let len = u64::from(len).min(u64::from(MOST_BYTES)).min(room);
            if len == 0 {
                continue;
            }
            kept[n] = Range { offset, len: len as u16 };
            n += 1;
        }
        (n > 0).then_some(kept)
    }

    pub fn remove(&mut self, spi: u32) {
        self.by_spi.remove(&spi);
    }

    /// SAs with hints.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_spi.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_spi.is_empty()
    }

    /// Prefetch the state of the SAs of `spis` (a batch's packets, in
    /// order), once per change of SPI (a batch of one SA's packets costs
    /// one lookup, and that SA's state is warm anyway), if there are at
    /// least [`WARM_FROM`] SAs.
    pub fn warm(&self, spis: impl Iterator<Item = u32>) {
        let Some((base, _)) = self.memory else { return };
        if self.by_spi.len() < WARM_FROM {
            return;
        }
        let mut last = None;
        for spi in spis {
            if last == Some(spi) {
                continue;
            }
            last = Some(spi);
            if let Some(ranges) = self.by_spi.get(&spi) {
                prefetch(base, ranges);
            }
        }
    }
}

/// Ask for each line of `ranges` in the memory at `base`.
fn prefetch(base: usize, ranges: &[Range; RANGES]) {
    for r in ranges {
        for off in (0..usize::from(r.len)).step_by(64) {
            crate::sys::prefetch_at(base.wrapping_add(r.offset as usize + off));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_within_the_memory_and_short() {
        let mut h = StateHints::new(Some((0x1000_0000, 1 << 20)));
        let wild = [(u32::MAX - 8, u32::MAX), (0, u32::MAX), ((1 << 20) - 10, 64), (5, 1), (6, 1)];
        h.insert(7, wild);
        // Beyond the memory: left out; too long: cut; the end of the
        // memory: cut there; a third range: not kept.
        assert_eq!(h.by_spi[&7], [Range { offset: 0, len: 256 }, Range { offset: (1 << 20) - 10, len: 10 }]);
        h.insert(8, [(1 << 20, 64)]);
        assert!(!h.by_spi.contains_key(&8), "nothing within the memory: no hint");
        h.remove(7);
        assert!(h.is_empty());
        // Unknown memory: nothing is kept, and warming does nothing.
        let mut none = StateHints::new(None);
        none.insert(7, [(0, 64)]);
        assert!(none.is_empty());
        none.warm([7, 8].into_iter());
    }
}
