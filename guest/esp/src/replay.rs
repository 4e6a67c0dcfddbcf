//! Anti-replay window and extended sequence numbers (RFC 4303 section
//! 3.4.3 and Appendix A).
//!
//! The window is a ring of 64-bit words indexed by sequence number, as in
//! RFC 6479: moving the right edge clears whole words instead of shifting
//! the bitmap, so a check and an update cost the same for any window size.
//! The ring's length is a power of two, so a word's index is a mask, not a
//! 64-bit remainder: three divisions per packet were 2-3 % of the ESP
//! component's time at IMIX sizes (#16), for 120 more bytes per SA at the
//! default window of 1,024 packets (32 words instead of 17).

/// Largest supported window, in packets.
pub const MAX_WINDOW: u32 = 1 << 16;

/// Why a sequence number is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Sequence number 0 is never sent (RFC 4303 section 3.3.3).
    Zero,
    /// Left of the window.
    TooOld,
    /// Already received.
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Window size in packets; 0 disables the check.
    size: u32,
    /// Highest authenticated sequence number (0: none yet).
    top: u64,
    bits: Vec<u64>,
}

impl ReplayWindow {
    /// A window of at least `size` packets (rounded up to a multiple of 64,
    /// at most [`MAX_WINDOW`]); `highest` is the highest sequence number
    /// already received (0 for a new SA).
    pub fn new(size: u32, highest: u64) -> ReplayWindow {
        ReplayWindow::restored(size, highest, 0)
    }

    /// A window whose right edge is `highest`, received by an instance
    /// before this one: of the 63 numbers below it, those whose bit in
    /// `missing` is set (bit i for `highest - i`) are still accepted once;
    /// every other number up to the edge, the edge itself included,
    /// counts as received, as in [`ReplayWindow::new`].
    pub fn restored(size: u32, highest: u64, missing: u64) -> ReplayWindow {
        let size = size.min(MAX_WINDOW);
        // One word more than the window spans, so that the word of the
        // right edge never overlaps the left edge's.
        let words = if size == 0 { 0 } else { (size.div_ceil(64) as usize + 1).next_power_of_two() };
        let mut w = ReplayWindow { size, top: 0, bits: vec![0; words] };
        w.reset(highest, missing);
        w
    }

    /// Move the window on to where another instance's left it (the
    /// host's record of what the SA's key authenticated: `highest` and
    /// `missing` as in [`ReplayWindow::restored`]), in place. A window
    /// never moves back: false, and nothing changes, if `highest` lies
    /// below its edge. A number it counts as received among the 64 up to
    /// `highest` stays received whatever `missing` says, so a catch-up can
    /// only refuse more (RFC 4303 section 3.4.3).
    pub fn catch_up(&mut self, highest: u64, missing: u64) -> bool {
        if highest < self.top {
            return false;
        }
        let received = self.received_up_to(highest);
        self.reset(highest, missing & !received);
        true
    }

    /// Which of the 64 numbers up to `highest`, at or past the edge, the
    /// window refuses (bit i for `highest - i`, 0 not among them): what
    /// [`ReplayWindow::check`] says of each, in a few word operations
    /// rather than 64 checks (a compaction catches up thousands of SAs in
    /// one turn of the data path).
    fn received_up_to(&self, highest: u64) -> u64 {
        let ahead = highest - self.top;
        if self.size == 0 || self.bits.is_empty() || ahead >= 64 {
            return 0;
        }
        // The ring's bits of the 64 numbers up to the edge, bit k for
        // `top - k`: one word, or the ends of two, reversed.
        let top = self.top;
        let up_to_edge = if top >= 63 {
            let low = top - 63;
            let (a, b, shift) = (self.word(low / 64), self.word(top / 64), low % 64);
            let raw = if shift == 0 { self.bits[a] } else { self.bits[a] >> shift | self.bits[b] << (64 - shift) };
            raw.reverse_bits()
        } else {
            (self.bits[self.word(0)] << (63 - top)).reverse_bits()
        };
        // Left of the window is refused too (`TooOld`).
        let too_old = if self.size < 64 { u64::MAX << self.size } else { 0 };
        let below = if highest >= 64 { u64::MAX } else { (1 << highest) - 1 };
        ((up_to_edge | too_old) << ahead) & below
    }

    /// Make the window one whose edge is `highest`, as [`ReplayWindow::restored`]
    /// describes: its words are reused, so where they lie does not change.
    fn reset(&mut self, highest: u64, missing: u64) {
        self.top = highest;
        self.bits.fill(0);
        if highest == 0 || self.bits.is_empty() {
            return;
        }
        // Treat everything at or below the restored top as seen: after a
        // restart we cannot know which of them arrived. Not what lies
        // above it in the top's word: a packet there that comes after a
        // higher one must still be accepted.
        self.bits.fill(u64::MAX);
        let top = self.word(highest / 64);
        self.bits[top] = u64::MAX >> (63 - highest % 64);
        let missing = missing & !1;
        let span = u64::from(self.size).min(64).min(highest);
        for i in (0..span).filter(|i| missing & (1 << i) != 0) {
            let seq = highest - i;
            let word = self.word(seq / 64);
            self.bits[word] &= !(1 << (seq % 64));
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn highest(&self) -> u64 {
        self.top
    }

    /// Where the window's bits lie, and their size in bytes.
    pub fn storage(&self) -> (usize, usize) {
        (self.bits.as_ptr() as usize, std::mem::size_of_val(self.bits.as_slice()))
    }

    /// Check `seq` without changing the window (before the ICV is verified).
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Zero);
        }
        if self.size == 0 || seq > self.top {
            return Ok(());
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError::TooOld);
        }
        if self.bit(seq) {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Record `seq` as received (only after the ICV verified, section 3.4.3).
    /// Returns the same errors as `check`, so a caller that checked, then
    /// opened, cannot be raced into accepting a duplicate.
    pub fn commit(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if self.size == 0 {
            self.top = self.top.max(seq);
            return Ok(());
        }
        if seq > self.top {
            let cur = self.top / 64;
            let new = seq / 64;
            let clear = (new - cur).min(self.bits.len() as u64);
            for i in 1..=clear {
                let w = self.word(cur + i);
                self.bits[w] = 0;
            }
            self.top = seq;
        }
        self.set_bit(seq);
        Ok(())
    }

    /// The full 64-bit sequence number for the low 32 bits received, with
    /// extended sequence numbers (RFC 4303 Appendix A2.2). `None` when the
    /// packet would lie before sequence number 1.
    pub fn infer_esn(&self, seq_lo: u32) -> Option<u64> {
        let w = u64::from(self.size.max(1));
        let tl = self.top & 0xffff_ffff;
        let th = self.top >> 32;
        let seq_lo = u64::from(seq_lo);
        let seqh = if tl >= w - 1 {
            // Case A: the window lies within one 2^32 subspace.
            if seq_lo >= tl - (w - 1) { th } else { th + 1 }
        } else {
            // Case B: the window spans two subspaces.
            let low_edge = (tl + (1 << 32) - (w - 1)) & 0xffff_ffff;
            if seq_lo >= low_edge { th.checked_sub(1)? } else { th }
        };
        Some((seqh << 32) | seq_lo)
    }

    /// The ring's word for word number `w` of the sequence space (the
    /// ring's length is a power of two).
    fn word(&self, w: u64) -> usize {
        (w & (self.bits.len() as u64 - 1)) as usize
    }

    fn bit(&self, seq: u64) -> bool {
        self.bits[self.word(seq / 64)] & (1 << (seq % 64)) != 0
    }

    fn set_bit(&mut self, seq: u64) {
        let w = self.word(seq / 64);
        self.bits[w] |= 1 << (seq % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new(1024, 0);
        assert_eq!(w.check(0), Err(ReplayError::Zero));
        for s in 1..=5000 {
            assert_eq!(w.commit(s), Ok(()));
        }
        assert_eq!(w.check(5000), Err(ReplayError::Duplicate));
        assert_eq!(w.check(4000), Err(ReplayError::Duplicate));
        assert_eq!(w.check(5001), Ok(()));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new(1024, 0);
        w.commit(2000).unwrap();
        // 2000 - 1023 is the left edge: inside; one further left is too old.
        assert_eq!(w.check(2000 - 1023), Ok(()));
        assert_eq!(w.check(2000 - 1024), Err(ReplayError::TooOld));
        w.commit(2000 - 1023).unwrap();
        assert_eq!(w.check(2000 - 1023), Err(ReplayError::Duplicate));
        // A jump of exactly the window clears everything that fell out.
        w.commit(3024).unwrap();
        assert_eq!(w.check(2001), Ok(()));
        assert_eq!(w.check(2000), Err(ReplayError::TooOld));
        // A jump far beyond the ring clears it all.
        w.commit(1_000_000).unwrap();
        for s in 1_000_000 - 1023..1_000_000 {
            assert_eq!(w.check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new(64, 0);
        for s in [10u64, 5, 7, 64, 3, 65, 9] {
            w.commit(s).unwrap();
        }
        for s in [10u64, 5, 7, 64, 3, 65, 9] {
            assert!(w.check(s).is_err(), "{s}");
        }
        assert_eq!(w.check(8), Ok(()));
        assert_eq!(w.check(2), Ok(()));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
        w.commit(200).unwrap();
        assert_eq!(w.check(136), Err(ReplayError::TooOld));
        assert_eq!(w.check(137), Ok(()));
    }

    /// Against a set of the numbers seen: every window size, jumps of
    /// every length, numbers on both sides of the window.
    #[test]
    fn agrees_with_a_model_for_every_size_and_jump() {
        use std::collections::BTreeSet;
        for size in [1u32, 63, 64, 65, 128, 1000, 1024] {
            let mut w = ReplayWindow::new(size, 0);
            let window = u64::from(w.size());
            let mut seen = BTreeSet::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut top = 0u64;
            for step in 0..20_000 {
                // Now and then the instance is replaced: the window made
                // again from its top and the numbers of the 63 below it
                // that did not arrive; the rest counts as received.
                // Or caught up in place to where another instance left it,
                // which received some numbers beyond this one's edge.
                if step % 500 == 499 && top > 0 {
                    if step % 1_000 != 999 {
                        let jump = x % 150;
                        seen.extend((top + 1..=top + jump).filter(|s| s % 3 != x % 3 || *s == top + jump));
                        top += jump;
                    }
                    let missing = (1..64u64).filter(|&i| i < top && !seen.contains(&(top - i)));
                    let missing = missing.fold(0, |m, i| m | 1 << i);
                    if step % 1_000 == 999 {
                        w = ReplayWindow::restored(size, top, missing);
                    } else {
                        assert!(w.catch_up(top, missing));
                    }
                    seen.extend((top.saturating_sub(window) + 1..top.saturating_sub(63)).filter(|&s| s > 0));
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let seq = match x % 4 {
                    0 => top + 1 + x % (3 * window),
                    1 => top + 1,
                    _ => top.saturating_sub(x % (window + 70)).max(1),
                };
                let want = if seq > top {
                    Ok(())
                } else if top - seq >= window {
                    Err(ReplayError::TooOld)
                } else if seen.contains(&seq) {
                    Err(ReplayError::Duplicate)
                } else {
                    Ok(())
                };
                assert_eq!(w.commit(seq), want, "size {size}, top {top}, seq {seq}");
                if want.is_ok() {
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }

    /// `received_up_to`'s word operations say what `check` says of each
    /// of the 64 numbers, for windows of every kind of size and history.
    #[test]
    fn what_a_window_refused_up_to_a_later_edge_is_what_check_says() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for size in [0u32, 1, 31, 63, 64, 65, 128, 1024] {
            for start in [0u64, 1, 5, 62, 63, 64, 100, 1 << 32] {
                let mut w = ReplayWindow::restored(size, start, next());
                for round in 0..300 {
                    let top = w.highest();
                    let seq =
                        if round % 3 == 0 { top + 1 + next() % 70 } else { top.saturating_sub(next() % 80).max(1) };
                    let _ = w.commit(seq);
                    for ahead in [0, 1, 7, 63, 64, 200] {
                        let highest = w.highest() + ahead;
                        let slow = (0..64u64.min(highest)).filter(|&i| w.check(highest - i).is_err());
                        let slow = slow.fold(0u64, |m, i| m | 1 << i);
                        assert_eq!(
                            w.received_up_to(highest),
                            slow,
                            "size {size}, start {start}, edge {}, at {highest}",
                            w.highest()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn disabled_window_accepts_repeats() {
        let mut w = ReplayWindow::new(0, 0);
        w.commit(5).unwrap();
        assert_eq!(w.commit(5), Ok(()));
        assert_eq!(w.check(0), Err(ReplayError::Zero));
    }

    #[test]
    fn restored_window_refuses_everything_at_or_below_top() {
        let w = ReplayWindow::new(128, 500);
        assert_eq!(w.check(500), Err(ReplayError::Duplicate));
        assert_eq!(w.check(450), Err(ReplayError::Duplicate));
        assert_eq!(w.check(501), Ok(()));
    }

    #[test]
    fn a_restored_window_takes_numbers_above_its_top_in_any_order() {
        // 500 lies in the word of 448..=511: the numbers above it in that
        // word were never received, and 502 coming after 503 is not a replay.
        for top in [500, 511, 512, 5] {
            let mut w = ReplayWindow::new(1024, top);
            assert_eq!(w.commit(top + 3), Ok(()));
            assert_eq!(w.commit(top + 2), Ok(()), "top {top}");
            assert_eq!(w.commit(top + 1), Ok(()), "top {top}");
            assert_eq!(w.commit(top), Err(ReplayError::Duplicate));
        }
    }

    #[test]
    fn a_window_restored_with_what_was_seen_accepts_the_rest_once() {
        // 500 and 498 arrived, 499 was delayed behind them, and so was
        // 437, the 64th number up to 500 (bit 63); 436 is further left.
        let missing = 1u64 << 1 | 1 << 63;
        let mut w = ReplayWindow::restored(1024, 500, missing);
        assert_eq!(w.highest(), 500);
        assert_eq!(w.check(500), Err(ReplayError::Duplicate));
        assert_eq!(w.check(498), Err(ReplayError::Duplicate));
        assert_eq!(w.check(436), Err(ReplayError::Duplicate), "left of the 64 known: taken as received");
        assert_eq!(w.commit(499), Ok(()));
        assert_eq!(w.commit(499), Err(ReplayError::Duplicate));
        assert_eq!(w.commit(437), Ok(()));
        // A window narrower than 64 knows only its own span.
        let w = ReplayWindow::restored(32, 500, u64::MAX);
        assert_eq!((w.check(469), w.check(468)), (Ok(()), Err(ReplayError::TooOld)));
        // The highest itself always arrived, whatever the bits say.
        assert_eq!(w.check(500), Err(ReplayError::Duplicate));
        // Near the start of the sequence space, and a disabled window.
        let w = ReplayWindow::restored(64, 3, !0b1);
        assert_eq!((w.check(1), w.check(2), w.check(3)), (Ok(()), Ok(()), Err(ReplayError::Duplicate)));
        assert_eq!(ReplayWindow::restored(0, 9, u64::MAX).check(9), Ok(()));
        // Nothing missing: as a restart without the bits.
        let w = ReplayWindow::restored(128, 500, 0);
        assert_eq!(w.check(499), Err(ReplayError::Duplicate));
    }

    #[test]
    fn a_window_caught_up_moves_on_never_back_and_keeps_what_it_received() {
        let mut w = ReplayWindow::restored(1024, 500, 1 << 1 | 1 << 2);
        let at = w.storage();
        // Behind its edge: refused, unchanged.
        assert!(!w.catch_up(400, u64::MAX));
        assert_eq!((w.highest(), w.check(499)), (500, Ok(())));
        // Another instance received up to 700, all but 695, 690 and 600
        // (the last further left than the 63 known, so taken as received).
        assert!(w.catch_up(700, 1 << 5 | 1 << 10));
        assert_eq!(w.highest(), 700);
        assert_eq!(w.storage(), at, "in place");
        for seq in [700, 699, 650, 600, 499, 498, 450] {
            assert_eq!(w.check(seq), Err(ReplayError::Duplicate), "{seq}");
        }
        assert_eq!(w.commit(690), Ok(()));
        assert_eq!(w.commit(701), Ok(()));
        // At its own edge, with bits that would open numbers it received
        // (701 and 690): they stay received; 695, missing by both, is open.
        assert!(w.catch_up(701, u64::MAX));
        assert_eq!(
            (w.check(701), w.check(690), w.check(695)),
            (Err(ReplayError::Duplicate), Err(ReplayError::Duplicate), Ok(()))
        );
        // A disabled window only moves its edge.
        let mut off = ReplayWindow::new(0, 0);
        assert!(off.catch_up(9, 0));
        assert_eq!((off.highest(), off.check(9)), (9, Ok(())));
    }

    #[test]
    fn esn_inference_case_a_and_b() {
        let w = 1024u64;
        // Case A: top well inside a subspace.
        let mut win = ReplayWindow::new(w as u32, (3 << 32) | 5000);
        assert_eq!(win.infer_esn(5001), Some((3 << 32) | 5001));
        assert_eq!(win.infer_esn(5000 - 1023), Some((3 << 32) | (5000 - 1023)));
        // Below the window: must be the next subspace (it wrapped).
        assert_eq!(win.infer_esn(10), Some((4 << 32) | 10));
        // Case B: top just after a wrap, window reaches back into the previous subspace.
        win = ReplayWindow::new(w as u32, (4 << 32) | 10);
        assert_eq!(win.infer_esn(0xffff_fff0), Some((3 << 32) | 0xffff_fff0));
        assert_eq!(win.infer_esn(11), Some((4 << 32) | 11));
        assert_eq!(win.infer_esn(0x8000_0000), Some((4 << 32) | 0x8000_0000));
        // Case B at the very start: nothing lies before subspace 0.
        win = ReplayWindow::new(w as u32, 10);
        assert_eq!(win.infer_esn(0xffff_fff0), None);
        assert_eq!(win.infer_esn(11), Some(11));
    }

    #[test]
    fn esn_rollover_end_to_end() {
        let mut win = ReplayWindow::new(1024, 0xffff_fff0);
        for lo in (0xffff_fff1u32..=0xffff_ffff).chain(0..=20) {
            let seq = win.infer_esn(lo).unwrap();
            win.commit(seq).unwrap();
        }
        assert_eq!(win.highest(), (1 << 32) | 20);
        // A late packet from before the wrap is placed in the old subspace.
        assert_eq!(win.infer_esn(0xffff_ffff), Some(0xffff_ffff));
        assert_eq!(win.check(0xffff_ffff), Err(ReplayError::Duplicate));
        assert_eq!(win.check(0xffff_fff0), Err(ReplayError::Duplicate));
    }
}
