//! When to give freed heap back to the kernel.
//!
//! The host's records of an SA (its CHILD SA's keys and records, its IKE
//! SA's secrets and checkpoint) live in glibc's heap, spread over the
//! arenas of the threads that made them. When thousands of SAs go away at
//! once (a tenant removed, a peer site lost, a reload) glibc keeps most of
//! the freed pages: it only returns the top of the main heap by itself.
//! An operator then sees a resident set that never falls, which looks like
//! a leak and counts against a pod's memory limit. So once many SAs have
//! gone and the count has been still for a moment, the control thread
//! asks glibc to release every free page (`sys::trim_heap`). That walks
//! the arenas under their locks (tens of milliseconds at 100,000 SAs'
//! worth), hence not after every delete and not while removals go on.

/// SAs (IKE and CHILD, as the host holds them) that must have gone since
/// the largest count seen before a trim is worth its walk.
pub const MIN_GONE: usize = 1_000;
/// How long the count must have stayed put (ms): the removals are over.
pub const QUIET_MS: u64 = 2_000;

#[derive(Debug, Default)]
pub struct HeapTrim {
    /// The largest count since the last trim (or the start).
    high: usize,
    /// The count last seen, and when it last changed.
    last: usize,
    changed_at: u64,
}

impl HeapTrim {
    /// Note the count of SAs held at `now`; true when the heap should be
    /// trimmed now (the caller trims, and the high-water mark starts over
    /// from the current count).
    pub fn due(&mut self, now: u64, count: usize) -> bool {
        if count != self.last {
            self.last = count;
            self.changed_at = now;
        }
        self.high = self.high.max(count);
        if self.high - count >= MIN_GONE && now.saturating_sub(self.changed_at) >= QUIET_MS {
            self.high = count;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_many_went_and_the_count_is_still() {
        let mut t = HeapTrim::default();
        assert!(!t.due(0, 5_000));
        // Going down: not while the removals go on.
        assert!(!t.due(100, 4_000));
        assert!(!t.due(1_000, 3_000));
        assert!(!t.due(2_999, 3_000));
        assert!(t.due(3_000, 3_000), "2,000 gone and 2 s still");
        // Once: the mark starts over from 3,000.
        assert!(!t.due(10_000, 3_000));
        // Fewer than MIN_GONE since: never.
        assert!(!t.due(11_000, 2_500));
        assert!(!t.due(60_000, 2_500));
        // Up again and down by enough: again.
        assert!(!t.due(61_000, 9_000));
        assert!(!t.due(62_000, 7_900));
        assert!(t.due(64_000, 7_900));
    }

    #[test]
    fn a_count_that_only_grows_or_churns_a_little_never_trims() {
        let mut t = HeapTrim::default();
        for i in 0..10_000u64 {
            // Rekeys and churn: a few come and go around 50,000.
            assert!(!t.due(i * 1_000, 50_000 + (i % 7) as usize * 100));
        }
    }
}
