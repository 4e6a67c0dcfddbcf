//! How the runs of a batch's `seal` and `open` calls share their flat
//! per-packet lists (`seal-runs` and `open-runs` in
//! `wit/deps/crypto/crypto.wit`): run after run, each takes the next
//! `count` entries. The host, which checks what the guest asks for, and
//! the engine, which builds the lists, walk them with these two functions,
//! so the layout is written once. (Not a wire format; it lives here
//! because the host and every guest crate depend on this crate.)

use core::ops::Range;

/// The span of a flat list each run takes, in turn, from the runs'
/// entry counts (0 for a run with no entries in that list, as runs
/// without ESN have in `esn-highs`). Saturating, never cut: [`share`]
/// cuts a span to the list it indexes.
pub fn spans(counts: impl Iterator<Item = u32>) -> impl Iterator<Item = Range<usize>> {
    let mut at = 0usize;
    counts.map(move |n| {
        let from = at;
        at = at.saturating_add(n as usize);
        from..at
    })
}

/// The entries of `list` in `span`, cut short where the list ends first
/// (a run the lists do not hold in full).
pub fn share<'a, T>(list: &'a [T], span: &Range<usize>) -> &'a [T] {
    let end = span.end.min(list.len());
    &list[span.start.min(end)..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn each_run_takes_the_next_entries_and_a_short_list_cuts_the_last() {
        let s: Vec<_> = spans([2, 0, 3].into_iter()).collect();
        assert_eq!(s, [0..2, 2..2, 2..5]);
        let list = [10, 11, 12, 13];
        assert_eq!(share(&list, &s[0]), [10, 11]);
        assert!(share(&list, &s[1]).is_empty());
        assert_eq!(share(&list, &s[2]), [12, 13]);
        assert!(share(&list, &(7..9)).is_empty());
    }

    #[test]
    fn a_count_past_the_list_takes_the_rest_and_leaves_later_runs_none() {
        let s: Vec<_> = spans([u32::MAX; 3].into_iter()).collect();
        assert_eq!(share(&[1u8, 2], &s[0]), [1, 2]);
        assert!(share(&[1u8, 2], &s[1]).is_empty());
        assert!(share(&[1u8, 2], &s[2]).is_empty());
    }
}
