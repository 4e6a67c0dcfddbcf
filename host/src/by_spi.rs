//! Records kept in the order they were installed and found by SPI: the
//! host's lists of SAs (the data path's, to rebuild a guest after a trap;
//! the control thread's CHILD SAs, for the admin view). A PoP holds
//! thousands, and every delete looks one up; a `Vec` made each delete a
//! pass over the list and a move of its tail (#16, `STANDING` in
//! `cargo xtask bench-handshakes`).
//!
//! Memory per record counts at 100,000 CHILD SAs (`cargo xtask
//! bench-memory`): the records are boxed, because a B-tree filled in
//! ascending order leaves its nodes about half full, and a node of
//! records 100-200 bytes each wasted about as much again; and an SPI's
//! numbers are one set of (SPI, number) pairs rather than a vector per SPI
//! (an allocation each).
use std::collections::{BTreeMap, BTreeSet};

/// See the module documentation. An SPI normally names one record; more
/// are kept apart, not merged.
pub struct BySpi<T> {
    /// By a running number of installation.
    by_order: BTreeMap<u64, Box<T>>,
    /// Each record's SPI and number.
    numbers: BTreeSet<(u32, u64)>,
    installs: u64,
}

impl<T> Default for BySpi<T> {
    fn default() -> Self {
        BySpi { by_order: BTreeMap::new(), numbers: BTreeSet::new(), installs: 0 }
    }
}

impl<T> BySpi<T> {
    pub fn insert(&mut self, spi: u32, record: T) {
        self.installs += 1;
        self.numbers.insert((spi, self.installs));
        self.by_order.insert(self.installs, Box::new(record));
    }

    /// The numbers of `spi`'s records, oldest first.
    fn numbers_of(&self, spi: u32) -> impl Iterator<Item = u64> + '_ {
        self.numbers.range((spi, 0)..=(spi, u64::MAX)).map(|&(_, n)| n)
    }

    /// Take out the records of `spi` for which `pred` holds.
    pub fn remove(&mut self, spi: u32, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let going: Vec<u64> = self.numbers_of(spi).filter(|n| self.by_order.get(n).is_some_and(|r| pred(r))).collect();
        let mut gone = Vec::with_capacity(going.len());
        for n in going {
            self.numbers.remove(&(spi, n));
            gone.extend(self.by_order.remove(&n).map(|r| *r));
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    /// The first record of `spi` still here.
    pub fn get(&self, spi: u32) -> Option<&T> {
        self.all(spi).next()
    }

    /// The first record of `spi` still here, to change.
    pub fn get_mut(&mut self, spi: u32) -> Option<&mut T> {
        let n = self.numbers_of(spi).find(|n| self.by_order.contains_key(n))?;
        self.by_order.get_mut(&n).map(|r| &mut **r)
    }

    /// Every record, in installation order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_order.values().map(|r| &**r)
    }

    /// The records installed after `from`, with their numbers, in
    /// installation order (the admin view's pages, [`crate::ops::page`]).
    pub fn numbered(&self, from: std::ops::Bound<u64>) -> impl Iterator<Item = (u64, &T)> {
        self.by_order.range((from, std::ops::Bound::Unbounded)).map(|(&n, r)| (n, &**r))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.by_order.values_mut().map(|r| &mut **r)
    }

    /// Every record of `spi`, oldest first.
    pub fn all(&self, spi: u32) -> impl Iterator<Item = &T> {
        self.numbers_of(spi).filter_map(|n| self.by_order.get(&n)).map(|r| &**r)
    }

    /// Change every record of `spi` with `f`, oldest first.
    pub fn change_all(&mut self, spi: u32, mut f: impl FnMut(&mut T)) {
        let numbers: Vec<u64> = self.numbers_of(spi).collect();
        for n in numbers {
            if let Some(r) = self.by_order.get_mut(&n) {
                f(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BySpi;

    fn pairs(b: &BySpi<(u32, u32)>) -> Vec<(u32, u32)> {
        b.values().copied().collect()
    }

    #[test]
    fn removal_by_spi_keeps_the_installation_order() {
        let mut b = BySpi::default();
        for (a, o) in [(1, 10), (2, 20), (3, 30), (2, 21)] {
            b.insert(a, (a, o));
        }
        assert!(b.remove(2, |r| r.1 == 99).is_empty(), "the predicate must hold too");
        assert!(b.remove(7, |_| true).is_empty());
        assert_eq!(b.get(2), Some(&(2, 20)));
        assert_eq!(b.remove(2, |r| r.1 == 20), [(2, 20)]);
        assert_eq!(pairs(&b), [(1, 10), (3, 30), (2, 21)]);
        assert_eq!(b.get(2), Some(&(2, 21)));
        assert_eq!(b.remove(2, |_| true).len(), 1);
        assert_eq!(b.numbers_of(2).count(), 0, "no number left behind");
        assert_eq!(b.get(2), None);
        b.insert(4, (4, 40));
        assert_eq!(pairs(&b), [(1, 10), (3, 30), (4, 40)]);
    }
}
