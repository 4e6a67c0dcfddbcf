//! The keystore: every ESP key lives here, named by an unguessable handle,
//! and a guest instance sees only the handles granted to it ([`KeyTable`]).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};
use wasmsec_wire::own_keys::OwnKeys;

use super::esp_key::{CryptoError, EspKey};
use crate::wasm::esp::SaLimits;

/// Owner of every key; hands out unguessable handles.
pub struct Keystore {
    /// Every key, by its handle.
    keys: Mutex<HashMap<u64, Arc<EspKey>, OwnKeys>>,
    /// The OS random generator the handles come from.
    rng: SystemRandom,
}

impl Default for Keystore {
    fn default() -> Self {
        Keystore::new()
    }
}

impl Keystore {
    pub fn new() -> Keystore {
        Keystore { keys: Mutex::new(HashMap::default()), rng: SystemRandom::new() }
    }

    /// Store a key; returns its handle (random, never 0).
    pub fn insert(&self, key: EspKey) -> u64 {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut b = [0u8; 8];
            // SystemRandom only fails if the OS has no entropy source at all.
            self.rng.fill(&mut b).expect("OS random number generator failed");
            let h = u64::from_ne_bytes(b);
            if h != 0 && !keys.contains_key(&h) {
                keys.insert(h, Arc::new(key));
                return h;
            }
        }
    }

    pub fn get(&self, handle: u64) -> Option<Arc<EspKey>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(&handle).cloned()
    }

    /// Destroy a key (with its SA); live `Arc`s finish their batch.
    pub fn remove(&self, handle: u64) -> bool {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&handle).is_some()
    }

    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a granted key may do: the host binds each key to one SA and one
/// direction when it installs the SA, so a guest cannot seal with a key it
/// should only open with (the peer's nonces) or under another SA's SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Seal packets of the outbound SA named `spi` (see
    /// `crate::datapath::Kept::wire_spi`), writing `wire_spi`, the peer's
    /// SPI, into their headers; to be sent to peer index `peer`.
    Seal { spi: u32, wire_spi: u32, peer: u32 },
    /// Open packets that carry inbound SA `spi`. With a `replay_window`
    /// of more than 0 packets (the SA's anti-replay is on), none whose
    /// sequence number the key authenticated already, and none left of
    /// that window (`replay_window` or more below the highest number the
    /// key authenticated: RFC 4303 section 3.4.3).
    Open { spi: u32, replay_window: u32 },
}

/// The handles one guest instance may use, resolved once so the data path
/// takes no lock. Any other handle is `UnknownKey` to that guest.
#[derive(Default, Clone)]
pub struct KeyTable {
    /// The granted keys, by handle, with what each may do.
    keys: HashMap<u64, (Arc<EspKey>, KeyUse), OwnKeys>,
    /// The byte and packet limits the key may not seal or deliver past
    /// (`super::usage`), for the keys of SAs that have any: apart, so an
    /// SA without limits (the most) costs 32 bytes of table, not 64.
    limits: HashMap<u64, SaLimits, OwnKeys>,
}

impl KeyTable {
    /// Grant `key` for `key_use`, held to the SA's `limits`.
    pub fn grant(&mut self, handle: u64, key: Arc<EspKey>, key_use: KeyUse, limits: SaLimits) {
        self.keys.insert(handle, (key, key_use));
        if super::usage::limited(&limits) {
            self.limits.insert(handle, limits);
        } else {
            self.limits.remove(&handle);
        }
    }

    pub fn revoke(&mut self, handle: u64) {
        self.keys.remove(&handle);
        self.limits.remove(&handle);
    }

    /// The key and what it was granted for.
    pub fn get(&self, handle: u64) -> Result<(&EspKey, KeyUse), CryptoError> {
        self.keys.get(&handle).map(|(k, u)| (&**k, *u)).ok_or(CryptoError::UnknownKey)
    }

    /// The limits of a granted key's SA; none for an SA without limits
    /// (no lookup while no SA has any).
    pub fn limits(&self, handle: u64) -> Option<&SaLimits> {
        if self.limits.is_empty() {
            return None;
        }
        self.limits.get(&handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EspAlgorithm;
    use crate::keys::esp_key::test_key as key;

    #[test]
    fn handles_are_scoped_to_tables() {
        let ks = Keystore::new();
        let h = ks.insert(key(EspAlgorithm::Aes256Gcm16, 3));
        let mut t = KeyTable::default();
        assert_eq!(t.get(h).err(), Some(CryptoError::UnknownKey));
        let open = KeyUse::Open { spi: 7, replay_window: 64 };
        t.grant(h, ks.get(h).unwrap(), open, SaLimits::default());
        assert_eq!(t.get(h).map(|(_, u)| u).ok(), Some(open));
        assert!(t.get(h).is_ok());
        assert!(t.limits(h).is_none(), "no limits kept for an SA without");
        let limits = SaLimits { hard_bytes: 9, ..SaLimits::default() };
        t.grant(h, ks.get(h).unwrap(), open, limits);
        assert_eq!(t.limits(h), Some(&limits));
        t.revoke(h);
        assert!(t.get(h).is_err() && t.limits(h).is_none());
        assert!(ks.remove(h));
        assert!(ks.is_empty());
    }
}
