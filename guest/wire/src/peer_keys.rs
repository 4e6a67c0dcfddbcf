//! Hash maps keyed by values a peer chooses: its IKE SPIs and addresses.
//!
//! A guest is built for `wasm32-unknown-unknown`, where std's
//! `RandomState` has no entropy to draw from: every `HashMap` in a guest
//! hashes with the same fixed SipHash keys. A peer could then find, offline,
//! keys that all land in one probe sequence and turn each lookup in such a
//! table into a scan (hash flooding). The tables a peer fills, such as the
//! half-open IKE SAs an unauthenticated IKE_SA_INIT creates, use these keys
//! instead: SipHash keyed by [`set_seed`], which the component calls with
//! the host's randomness before it builds its engine. Natively (tests,
//! fuzzing) the seed stays 0, and the tables behave as before.
use core::hash::BuildHasher;
#[allow(deprecated)] // core's keyed SipHash-2-4: still there, just not advertised
use core::hash::SipHasher;
use core::sync::atomic::{AtomicU64, Ordering};

/// The keys new tables take; 0 until [`set_seed`].
static SEED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Key the tables made from now on. A table keeps the keys it was made
/// with, so call this before the first one exists.
pub fn set_seed(k0: u64, k1: u64) {
    SEED[0].store(k0, Ordering::Relaxed);
    SEED[1].store(k1, Ordering::Relaxed);
}

/// Random bytes a component asks its host for to seed its tables.
pub const SEED_BYTES: u32 = 16;

/// [`set_seed`] from [`SEED_BYTES`] random bytes (what is missing is 0).
pub fn seed_from(random: &[u8]) {
    let word = |i: usize| random.get(i..i + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    set_seed(word(0), word(8));
}

/// The hasher of a `HashMap` whose keys a peer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKeys {
    k0: u64,
    k1: u64,
}

impl Default for PeerKeys {
    /// The keys of the last [`set_seed`].
    fn default() -> PeerKeys {
        PeerKeys { k0: SEED[0].load(Ordering::Relaxed), k1: SEED[1].load(Ordering::Relaxed) }
    }
}

impl BuildHasher for PeerKeys {
    #[allow(deprecated)]
    type Hasher = SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> SipHasher {
        SipHasher::new_with_keys(self.k0, self.k1)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_seed_keys_the_tables_made_after_it() {
        let before = PeerKeys::default();
        set_seed(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        let after = PeerKeys::default();
        assert_ne!(before, after);
        // The same key hashes differently under other keys, and alike
        // under the same ones.
        assert_ne!(before.hash_one(7u64), after.hash_one(7u64));
        assert_eq!(after.hash_one(7u64), PeerKeys::default().hash_one(7u64));
        let mut m: HashMap<u64, u64, PeerKeys> = HashMap::default();
        m.extend((0..1000).map(|k| (k, k * 3)));
        assert!((0..1000).all(|k| m.get(&k) == Some(&(k * 3))));
        assert_eq!(m.get(&1000), None);
        // A component's 16 random bytes, little-endian words.
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        seed_from(&bytes);
        let from_bytes = PeerKeys::default();
        assert_eq!((from_bytes.k0, from_bytes.k1), (0x0807_0605_0403_0201, 0x100f_0e0d_0c0b_0a09));
    }
}
