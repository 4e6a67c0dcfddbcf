//! Hash maps keyed by values this side chose: our inbound SPIs (random,
//! or an operator's manual ones) and the host's key handles (random).
//! SipHash guards a table against keys picked to collide, which only an
//! insert can exploit; these tables are never filled with a peer's
//! choices. A peer may send any SPI, but looking up an absent key costs no
//! more than any other lookup. So one multiply does: looked up once or
//! twice per packet, SipHash was a measurable part of the ESP path (#16).
use core::hash::{BuildHasherDefault, Hasher};

/// The hasher of a `HashMap` keyed by an SPI or a key handle of ours.
pub type OwnKeys = BuildHasherDefault<MixHasher>;

/// Fibonacci hashing: the product by an odd constant is a bijection on the
/// low bits (sequential manual SPIs spread over the buckets) and mixes the
/// key into the high bits (which the table's control bytes use).
#[derive(Default)]
pub struct MixHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(K);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn sequential_and_random_keys_all_found() {
        let mut m: HashMap<u32, u32, OwnKeys> = HashMap::default();
        for k in (0x1000..0x1000 + 5000).chain((0..5000u32).map(|i| i.wrapping_mul(0x8000_0001) | 0x8000_0000)) {
            m.insert(k, k ^ 7);
        }
        assert!(m.iter().all(|(k, v)| *v == k ^ 7));
        assert_eq!(m.get(&0x1000), Some(&(0x1000 ^ 7)));
        assert_eq!(m.get(&0x0fff), None);
    }

    #[test]
    fn low_bits_of_sequential_keys_differ() {
        // Consecutive keys land in distinct buckets of a 1,024-bucket table.
        let buckets: HashSet<u64> = (0x1000u32..0x1400)
            .map(|k| {
                let mut h = MixHasher::default();
                h.write_u32(k);
                h.finish() & 1023
            })
            .collect();
        assert_eq!(buckets.len(), 1024);
    }
}
