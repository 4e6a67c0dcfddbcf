//! Records kept in the order they were installed and found by SPI: the
//! host's lists of SAs (the data path's, to rebuild a guest after a trap;
//! the control thread's CHILD SAs, for the admin view). A PoP holds
//! thousands, and every delete looks one up; a `Vec` made each delete a
//! pass over the list and a move of its tail (#16, `STANDING` in
//! `cargo xtask bench-handshakes`).
use std::collections::{BTreeMap, HashMap};

/// See the module documentation. An SPI normally names one record; more
/// are kept apart, not merged.
pub struct BySpi<T> {
    /// By a running number of installation.
    by_order: BTreeMap<u64, T>,
    /// The numbers of each SPI's records.
    numbers: HashMap<u32, Vec<u64>>,
    installs: u64,
}

impl<T> Default for BySpi<T> {
    fn default() -> Self {
        BySpi { by_order: BTreeMap::new(), numbers: HashMap::new(), installs: 0 }
    }
}

impl<T> BySpi<T> {
    pub fn insert(&mut self, spi: u32, record: T) {
        self.installs += 1;
        self.numbers.entry(spi).or_default().push(self.installs);
        self.by_order.insert(self.installs, record);
    }

    /// Take out the records of `spi` for which `pred` holds.
    pub fn remove(&mut self, spi: u32, pred: impl Fn(&T) -> bool) -> Vec<T> {
        let Some(numbers) = self.numbers.get_mut(&spi) else { return Vec::new() };
        let by_order = &mut self.by_order;
        let mut gone = Vec::new();
        numbers.retain(|n| match by_order.get(n) {
            Some(r) if pred(r) => {
                gone.extend(by_order.remove(n));
                false
            }
            _ => true,
        });
        if numbers.is_empty() {
            self.numbers.remove(&spi);
        }
        gone
    }

    /// The first record of `spi` still here.
    pub fn get(&self, spi: u32) -> Option<&T> {
        self.numbers.get(&spi)?.iter().find_map(|n| self.by_order.get(n))
    }

    /// Every record, in installation order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.by_order.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.by_order.values_mut()
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
        assert!(!b.numbers.contains_key(&2), "no empty entry left behind");
        assert_eq!(b.get(2), None);
        b.insert(4, (4, 40));
        assert_eq!(pairs(&b), [(1, 10), (3, 30), (4, 40)]);
    }
}
