//! The outbound SPD (RFC 4301 section 4.4.1) indexed by destination, so
//! that finding the SA a leaving packet takes costs the same with 10 SAs
//! as with 100,000 (#16): no scan over every SA.
//!
//! Every remote selector's address range is split into the CIDR prefixes
//! that cover it exactly (at most 2 x 32 of them for IPv4, 2 x 128 for
//! IPv6; one for a subnet). A packet's destination is looked up once per
//! prefix length in use, and only the SAs found there are checked against
//! their full selectors (ports, protocol, source). Of those that match, the
//! newest wins: a rekeyed SA takes over outbound traffic the moment it is
//! installed (make before break, RFC 7296 section 2.8). Each bucket keeps
//! its slots in the order they were installed, so the newest match of a
//! bucket is found from its end and an SA leaving is found by binary
//! search: thousands of SAs with one destination (many peers' SAs for one
//! prefix) cost neither a lookup nor a removal a walk over all of them.
//! (A `BTreeMap` per bucket did the same, but its nodes cost 100,000 SAs,
//! each with a bucket of its own, 15 MB more than the guest's 64 MiB.)
use std::collections::HashMap;

use wasmsec_wire::ip::Address;
use wasmsec_wire::peer_keys::PeerKeys;

use crate::selector::TrafficSelector;

/// A prefix: IPv6 or not, its length, its network address (host bits 0).
type Prefix = (bool, u8, u128);

/// One prefix's SA slots, oldest first. Most prefixes hold one SA (a
/// PoP's peers each have remote subnets of their own): that one is kept
/// in the table itself, so that a lookup does not miss the cache a second
/// time for a heap block of one slot.
#[derive(Default)]
enum Bucket {
    #[default]
    Empty,
    One(usize),
    Many(Vec<usize>),
}

impl Bucket {
    fn slots(&self) -> &[usize] {
        match self {
            Bucket::Empty => &[],
            Bucket::One(s) => std::slice::from_ref(s),
            Bucket::Many(v) => v,
        }
    }

    fn push(&mut self, slot: usize) {
        *self = match std::mem::take(self) {
            Bucket::Empty => Bucket::One(slot),
            Bucket::One(first) => Bucket::Many(vec![first, slot]),
            Bucket::Many(mut v) => {
                v.push(slot);
                Bucket::Many(v)
            }
        };
    }

    fn remove(&mut self, i: usize) {
        *self = match std::mem::take(self) {
            Bucket::Many(mut v) if i < v.len() => {
                v.remove(i);
                match v[..] {
                    [] => Bucket::Empty,
                    [one] => Bucket::One(one),
                    _ => Bucket::Many(v),
                }
            }
            Bucket::One(_) if i == 0 => Bucket::Empty,
            other => other,
        };
    }
}

/// SA slots by the prefixes of their remote selectors.
#[derive(Default)]
pub struct DestinationIndex {
    /// Per prefix: the slots of the SAs indexed there, oldest first. The
    /// prefixes come from selectors peers proposed (narrowed by ours), so
    /// the table is keyed with the component's seed (`peer_keys`).
    buckets: HashMap<Prefix, Bucket, PeerKeys>,
    /// The prefix lengths in use, per family, each with its bucket count.
    lengths: Vec<(bool, u8, usize)>,
}

fn value(a: &Address) -> (bool, u128) {
    match a {
        Address::V4(b) => (false, u128::from(u32::from_be_bytes(*b))),
        Address::V6(b) => (true, u128::from_be_bytes(*b)),
    }
}

fn bits(v6: bool) -> u8 {
    if v6 { 128 } else { 32 }
}

/// `v` with all but its first `len` of `width` bits cleared.
fn network(v: u128, len: u8, width: u8) -> u128 {
    match width - len {
        0 => v,
        host if host >= 128 => 0,
        host => (v >> host) << host,
    }
}

/// The CIDR prefixes `(length, network)` that together cover exactly
/// `start..=end` in a `width`-bit address space, fewest first to last.
pub fn prefixes(start: u128, end: u128, width: u8) -> Vec<(u8, u128)> {
    let mut out = Vec::new();
    let mut s = start;
    loop {
        // The largest block that starts at `s` (aligned there) and does not
        // run past `end`: 2^k addresses.
        let aligned = if s == 0 { u32::from(width) } else { s.trailing_zeros().min(u32::from(width)) };
        let room = end - s;
        let fits = if room == u128::MAX { 128 } else { 127 - (room + 1).leading_zeros() };
        let k = aligned.min(fits);
        out.push((width - k as u8, s));
        if k == 128 {
            return out;
        }
        let last = s + ((1u128 << k) - 1);
        if last >= end {
            return out;
        }
        s = last + 1;
    }
}

/// The index keys of an SA about to be installed, room made for them:
/// from [`DestinationIndex::reserve`], for [`DestinationIndex::insert`].
pub struct Reserved(Vec<Prefix>);

impl DestinationIndex {
    fn keys(remote: &[TrafficSelector]) -> Vec<Prefix> {
        let mut keys: Vec<Prefix> = remote
            .iter()
            .flat_map(|t| {
                let ((v6, s), (_, e)) = (value(&t.start), value(&t.end));
                prefixes(s, e, bits(v6)).into_iter().map(move |(len, net)| (v6, len, net))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The keys of an SA that sends to `remote`, with room made in the
    /// table for the buckets they may add, so that `insert` does not have
    /// to grow it (a full guest refuses the SA instead of trapping).
    pub fn reserve(&mut self, remote: &[TrafficSelector]) -> Result<Reserved, std::collections::TryReserveError> {
        let keys = Self::keys(remote);
        self.buckets.try_reserve(keys.len())?;
        Ok(Reserved(keys))
    }

    /// Index slot `slot`, whose SA's keys were `reserve`d and which was
    /// installed after every SA indexed so far.
    pub fn insert(&mut self, slot: usize, keys: Reserved) {
        for key in keys.0 {
            let bucket = self.buckets.entry(key).or_default();
            if bucket.slots().is_empty() {
                match self.lengths.iter_mut().find(|(v6, len, _)| (*v6, *len) == (key.0, key.1)) {
                    Some(l) => l.2 += 1,
                    None => self.lengths.push((key.0, key.1, 1)),
                }
            }
            bucket.push(slot);
        }
    }

    /// Forget slot `slot` (indexed with the same `remote`); `installed`
    /// tells each indexed slot's install number (which grows with every
    /// install), `slot`'s included.
    pub fn remove(&mut self, slot: usize, remote: &[TrafficSelector], installed: impl Fn(usize) -> u64) {
        let mine = installed(slot);
        for key in Self::keys(remote) {
            let Some(bucket) = self.buckets.get_mut(&key) else { continue };
            if let Ok(i) = bucket.slots().binary_search_by_key(&mine, |&s| installed(s)) {
                bucket.remove(i);
            }
            if bucket.slots().is_empty() {
                self.buckets.remove(&key);
                if let Some(i) = self.lengths.iter().position(|(v6, len, _)| (*v6, *len) == (key.0, key.1)) {
                    self.lengths[i].2 -= 1;
                    if self.lengths[i].2 == 0 {
                        self.lengths.swap_remove(i);
                    }
                }
            }
        }
    }

    /// The slot of the newest SA whose remote selectors may contain `dst`
    /// and for which `matches` (the full selectors) holds: in each bucket
    /// that covers `dst`, the newest match, then the newest of those by
    /// `order` (each slot's install number).
    pub fn newest(
        &self,
        dst: &Address,
        mut matches: impl FnMut(usize) -> bool,
        order: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let (v6, v) = value(dst);
        self.lengths
            .iter()
            .filter(|l| l.0 == v6)
            .filter_map(|&(_, len, _)| self.buckets.get(&(v6, len, network(v, len, bits(v6)))).map(Bucket::slots))
            .filter_map(|bucket| bucket.iter().rev().position(|&slot| matches(slot)).map(|k| (bucket, k)))
            .map(|(bucket, k)| bucket[bucket.len() - 1 - k])
            .max_by_key(|&slot| order(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> u128 {
        u128::from(u32::from_be_bytes(a))
    }

    #[test]
    fn buckets_keep_one_slot_inline_and_the_order_of_many() {
        let mut b = Bucket::default();
        b.push(7);
        assert!(matches!(b, Bucket::One(7)));
        b.push(9);
        b.push(11);
        assert_eq!(b.slots(), [7, 9, 11]);
        b.remove(1);
        assert_eq!(b.slots(), [7, 11]);
        b.remove(5);
        assert_eq!(b.slots(), [7, 11], "an index out of range changes nothing");
        b.remove(0);
        assert!(matches!(b, Bucket::One(11)), "back inline");
        b.remove(0);
        assert!(b.slots().is_empty());
    }

    #[test]
    fn ranges_split_into_exact_prefixes() {
        assert_eq!(prefixes(v4([10, 0, 1, 0]), v4([10, 0, 1, 255]), 32), [(24, v4([10, 0, 1, 0]))]);
        assert_eq!(prefixes(0, u128::from(u32::MAX), 32), [(0, 0)]);
        assert_eq!(prefixes(0, u128::MAX, 128), [(0, 0)]);
        assert_eq!(prefixes(v4([1, 2, 3, 4]), v4([1, 2, 3, 4]), 32), [(32, v4([1, 2, 3, 4]))]);
        // 10.0.0.5 - 10.0.0.200: .5/32 .6/31 .8/29 .16/28 .32/27 .64/26
        // .128/26 .192/29 .200/32.
        let p = prefixes(v4([10, 0, 0, 5]), v4([10, 0, 0, 200]), 32);
        let mut covered = 0u128;
        let mut next = v4([10, 0, 0, 5]);
        for &(len, net) in &p {
            assert_eq!(net, next, "prefixes are contiguous and in order");
            assert_eq!(network(net, len, 32), net, "each is aligned");
            covered += 1 << (32 - len);
            next = net + (1 << (32 - len));
        }
        assert_eq!(covered, 196);
        assert_eq!(p.len(), 9);
    }

    #[test]
    fn lookups_find_the_covering_slots_only() {
        let mut ix = DestinationIndex::default();
        let sub = |third: u8| TrafficSelector::from_prefix(Address::V4([10, 0, third, 0]), 24).unwrap();
        let range = TrafficSelector {
            start: Address::V4([10, 9, 0, 5]),
            end: Address::V4([10, 9, 0, 200]),
            ..TrafficSelector::any_v4()
        };
        // Slot s was installed as number 10 + s.
        fn order(s: usize) -> u64 {
            10 + s as u64
        }
        for (slot, remote) in
            [vec![sub(1)], vec![sub(2), range.clone()], vec![TrafficSelector::any_v4()]].iter().enumerate()
        {
            let keys = ix.reserve(remote).expect("room");
            ix.insert(slot, keys);
        }
        fn found(ix: &DestinationIndex, a: [u8; 4]) -> Vec<usize> {
            // Every slot the index offers, by asking for the newest match
            // while refusing the ones already found.
            let mut c = Vec::new();
            while let Some(s) = ix.newest(&Address::V4(a), |s| !c.contains(&s), order) {
                c.push(s);
            }
            c.sort_unstable();
            c
        }
        assert_eq!(found(&ix, [10, 0, 1, 7]), [0, 2]);
        assert_eq!(found(&ix, [10, 0, 2, 7]), [1, 2]);
        assert_eq!(found(&ix, [10, 9, 0, 100]), [1, 2]);
        assert_eq!(found(&ix, [10, 9, 0, 201]), [2]);
        assert_eq!(ix.newest(&Address::V4([10, 0, 1, 7]), |_| true, order), Some(2), "the newest match");
        assert_eq!(ix.newest(&Address::V4([10, 0, 1, 7]), |s| s != 2, order), Some(0));
        assert!(ix.newest(&Address::V6([0; 16]), |_| true, order).is_none(), "families do not mix");
        ix.remove(1, &[sub(2), range], order);
        ix.remove(2, &[TrafficSelector::any_v4()], order);
        assert_eq!(found(&ix, [10, 0, 2, 7]), Vec::<usize>::new());
        assert_eq!(found(&ix, [10, 0, 1, 7]), [0]);
        assert_eq!(ix.lengths, [(false, 24, 1)], "unused prefix lengths are no longer looked up");
    }
}
