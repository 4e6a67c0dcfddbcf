//! The keystore: all key material lives here, and guests name it by handle.
//!
//! ESP keys are created from manual configuration (and later from the IKE
//! key schedule), wrapped in ring's AEAD keys, and never leave the host. A
//! guest instance sees only the handles granted to it ([`KeyTable`]). Nonces
//! come from a per-key counter owned here (RFC 4106 section 3.1 requires a
//! unique IV per key; the counter makes reuse impossible whatever a guest
//! asks), and the highest sequence number each key sealed or opened is kept
//! so a restarted guest can resume its SAs (DESIGN.md, security model).
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::packet::PacketBuf;

/// ESP encryption transforms (RFC 4106 AES-GCM, RFC 7634 ChaCha20-Poly1305),
/// named as strongSwan names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspAlgorithm {
    Aes128Gcm16,
    Aes256Gcm16,
    ChaCha20Poly1305,
}

impl EspAlgorithm {
    pub const ALL: [EspAlgorithm; 3] =
        [EspAlgorithm::Aes128Gcm16, EspAlgorithm::Aes256Gcm16, EspAlgorithm::ChaCha20Poly1305];

    /// Parse a strongSwan proposal keyword (`aes256gcm16`, `aes128gcm16`,
    /// `chacha20poly1305`; `aes256gcm` and `aes128gcm` mean the 16-byte ICV).
    pub fn from_name(name: &str) -> Option<EspAlgorithm> {
        match name.to_ascii_lowercase().as_str() {
            "aes128gcm16" | "aes128gcm128" | "aes128gcm" => Some(EspAlgorithm::Aes128Gcm16),
            "aes256gcm16" | "aes256gcm128" | "aes256gcm" => Some(EspAlgorithm::Aes256Gcm16),
            "chacha20poly1305" => Some(EspAlgorithm::ChaCha20Poly1305),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            EspAlgorithm::Aes128Gcm16 => "aes128gcm16",
            EspAlgorithm::Aes256Gcm16 => "aes256gcm16",
            EspAlgorithm::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }

    fn ring_alg(&self) -> &'static aead::Algorithm {
        match self {
            EspAlgorithm::Aes128Gcm16 => &aead::AES_128_GCM,
            EspAlgorithm::Aes256Gcm16 => &aead::AES_256_GCM,
            EspAlgorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// Keying material length: the cipher key plus the 4-byte salt
    /// (RFC 4106 section 8.1, RFC 7634 section 2).
    pub fn keymat_len(&self) -> usize {
        self.ring_alg().key_len() + SALT_LEN
    }

    /// Bytes ESP adds around a payload at most: header, IV, padding to 4,
    /// Pad Length, Next Header, ICV.
    pub fn overhead(&self) -> usize {
        wasmsec_wire::esp::HEADER_LEN + IV_LEN + 3 + 2 + ICV_LEN
    }
}

pub const SALT_LEN: usize = 4;
pub const IV_LEN: usize = 8;
pub const ICV_LEN: usize = 16;
/// What `seal` prepends: the ESP header and the IV.
pub const SEAL_HEADROOM: usize = wasmsec_wire::esp::HEADER_LEN + IV_LEN;

/// Why the keystore refused or failed an operation. Mirrors `crypto-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("unknown key handle")]
    UnknownKey,
    #[error("key is of another kind")]
    WrongKeyKind,
    #[error("integrity check failed")]
    IntegrityFailed,
    #[error("length out of range")]
    BadLength,
    #[error("key expired")]
    KeyExpired,
}

/// An ESP key: the AEAD key, its salt, the IV counter and sequence high-water mark.
pub struct EspKey {
    alg: EspAlgorithm,
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
    next_iv: AtomicU64,
    highest_seq: AtomicU64,
}

impl fmt::Debug for EspKey {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EspKey").field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl EspKey {
    /// Build from keying material (key || salt), which is zeroized after.
    pub fn new(alg: EspAlgorithm, keymat: Zeroizing<Vec<u8>>) -> Result<EspKey, KeyError> {
        if keymat.len() != alg.keymat_len() {
            return Err(KeyError::Length { alg: alg.name(), want: alg.keymat_len(), got: keymat.len() });
        }
        let (k, s) = keymat.split_at(keymat.len() - SALT_LEN);
        let key = LessSafeKey::new(UnboundKey::new(alg.ring_alg(), k).map_err(|_| KeyError::Rejected)?);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(s);
        Ok(EspKey { alg, key, salt, next_iv: AtomicU64::new(1), highest_seq: AtomicU64::new(0) })
    }

    pub fn algorithm(&self) -> EspAlgorithm {
        self.alg
    }

    /// Highest sequence number sealed (outbound) or authenticated (inbound).
    pub fn highest_seq(&self) -> u64 {
        self.highest_seq.load(Ordering::Relaxed)
    }

    fn nonce(&self, iv: &[u8]) -> Nonce {
        let mut n = [0u8; 12];
        n[..SALT_LEN].copy_from_slice(&self.salt);
        n[SALT_LEN..].copy_from_slice(iv);
        Nonce::assume_unique_for_key(n)
    }

    /// ESP-seal `p` in place (RFC 4303 section 3.3, RFC 4106 section 3):
    /// append `trailer`, encrypt, prepend `header` and a fresh IV, append the ICV.
    pub fn seal(
        &self,
        p: &mut PacketBuf,
        header: &[u8; 8],
        esn_high: Option<u32>,
        trailer: &[u8],
    ) -> Result<(), CryptoError> {
        if trailer.len() > wasmsec_wire::esp::MAX_TRAILER_LEN || trailer.len() < 2 {
            return Err(CryptoError::BadLength);
        }
        if p.headroom() < SEAL_HEADROOM || p.tailroom() < trailer.len() + ICV_LEN {
            return Err(CryptoError::BadLength);
        }
        // The IV counter is the nonce-uniqueness guarantee: it never repeats
        // and never wraps (at 2^64 the key is spent).
        let iv = self.next_iv.fetch_add(1, Ordering::Relaxed);
        if iv == u64::MAX {
            return Err(CryptoError::KeyExpired);
        }
        let iv = iv.to_be_bytes();
        p.append(trailer);
        let aad = esp_aad(header, esn_high);
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(&iv), Aad::from(aad.as_slice()), p.data_mut())
            .map_err(|_| CryptoError::BadLength)?;
        p.append(tag.as_ref());
        p.prepend(&iv);
        p.prepend(header);
        let seq = (u64::from(esn_high.unwrap_or(0)) << 32)
            | u64::from(u32::from_be_bytes([header[4], header[5], header[6], header[7]]));
        self.highest_seq.fetch_max(seq, Ordering::Relaxed);
        Ok(())
    }

    /// ESP-open `p` in place: verify and decrypt, leaving payload and
    /// trailer. On failure `p` is unchanged in length (its ciphertext may
    /// have been overwritten; it is dropped anyway).
    pub fn open(&self, p: &mut PacketBuf, esn_high: Option<u32>) -> Result<(), CryptoError> {
        let d = p.data();
        if d.len() < SEAL_HEADROOM + ICV_LEN + wasmsec_wire::esp::TRAILER_FIXED_LEN {
            return Err(CryptoError::BadLength);
        }
        let mut header = [0u8; 8];
        header.copy_from_slice(&d[..8]);
        let nonce = self.nonce(&d[8..SEAL_HEADROOM]);
        let aad = esp_aad(&header, esn_high);
        let body = &mut p.data_mut()[SEAL_HEADROOM..];
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_slice()), body)
            .map_err(|_| CryptoError::IntegrityFailed)?
            .len();
        p.advance(SEAL_HEADROOM);
        p.truncate(plain_len);
        let seq = (u64::from(esn_high.unwrap_or(0)) << 32)
            | u64::from(u32::from_be_bytes([header[4], header[5], header[6], header[7]]));
        self.highest_seq.fetch_max(seq, Ordering::Relaxed);
        Ok(())
    }
}

/// Additional authenticated data for combined-mode ESP: SPI || Seq, or
/// SPI || Seq-high || Seq-low with ESN (RFC 4106 section 5).
fn esp_aad(header: &[u8; 8], esn_high: Option<u32>) -> AadBuf {
    let mut b = AadBuf { bytes: [0u8; 12], len: 8 };
    b.bytes[..4].copy_from_slice(&header[..4]);
    match esn_high {
        Some(hi) => {
            b.bytes[4..8].copy_from_slice(&hi.to_be_bytes());
            b.bytes[8..12].copy_from_slice(&header[4..8]);
            b.len = 12;
        }
        None => b.bytes[4..8].copy_from_slice(&header[4..8]),
    }
    b
}

struct AadBuf {
    bytes: [u8; 12],
    len: usize,
}

impl AadBuf {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{alg} needs {want} bytes of keying material (key and 4-byte salt), got {got}")]
    Length { alg: &'static str, want: usize, got: usize },
    #[error("the crypto library rejected the key")]
    Rejected,
    #[error("cannot read key: {0}")]
    Source(String),
}

/// Owner of every key; hands out unguessable handles.
pub struct Keystore {
    keys: Mutex<HashMap<u64, Arc<EspKey>>>,
    rng: SystemRandom,
}

impl Default for Keystore {
    fn default() -> Self {
        Keystore::new()
    }
}

impl Keystore {
    pub fn new() -> Keystore {
        Keystore { keys: Mutex::new(HashMap::new()), rng: SystemRandom::new() }
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

/// The handles one guest instance may use, resolved once so the data path
/// takes no lock. Any other handle is `UnknownKey` to that guest.
#[derive(Default, Clone)]
pub struct KeyTable {
    keys: HashMap<u64, Arc<EspKey>>,
}

impl KeyTable {
    pub fn grant(&mut self, handle: u64, key: Arc<EspKey>) {
        self.keys.insert(handle, key);
    }

    pub fn revoke(&mut self, handle: u64) {
        self.keys.remove(&handle);
    }

    pub fn get(&self, handle: u64) -> Result<&EspKey, CryptoError> {
        self.keys.get(&handle).map(|k| &**k).ok_or(CryptoError::UnknownKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alg: EspAlgorithm, byte: u8) -> EspKey {
        EspKey::new(alg, Zeroizing::new(vec![byte; alg.keymat_len()])).unwrap()
    }

    #[test]
    fn seal_open_round_trip_all_algorithms() {
        for alg in EspAlgorithm::ALL {
            let k = key(alg, 7);
            for esn in [None, Some(3)] {
                let mut p = PacketBuf::with_payload(&[0x45; 100]);
                let header = [0, 0, 0x10, 0x01, 0, 0, 0, 9];
                k.seal(&mut p, &header, esn, &[1, 2, 2, 4]).unwrap();
                assert_eq!(p.len(), 8 + 8 + 104 + 16);
                assert_eq!(&p.data()[..8], &header);
                assert_ne!(&p.data()[16..116], &[0x45; 100][..], "{alg:?} encrypted");
                k.open(&mut p, esn).unwrap();
                assert_eq!(p.len(), 104);
                assert_eq!(&p.data()[..100], &[0x45; 100][..]);
                assert_eq!(&p.data()[100..], &[1, 2, 2, 4]);
            }
            assert_eq!(k.highest_seq(), (3 << 32) | 9);
        }
    }

    #[test]
    fn ivs_never_repeat() {
        let k = key(EspAlgorithm::Aes256Gcm16, 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut p = PacketBuf::with_payload(&[0; 20]);
            // The same header every time: a guest cannot force an IV.
            k.seal(&mut p, &[0, 0, 1, 0, 0, 0, 0, 1], None, &[0, 4]).unwrap();
            assert!(seen.insert(p.data()[8..16].to_vec()));
        }
    }

    #[test]
    fn tampering_wrong_key_wrong_esn_and_truncation_fail() {
        let k = key(EspAlgorithm::Aes128Gcm16, 1);
        let other = key(EspAlgorithm::Aes128Gcm16, 2);
        let sealed = {
            let mut p = PacketBuf::with_payload(&[9; 40]);
            k.seal(&mut p, &[0, 0, 1, 0, 0, 0, 0, 1], Some(0), &[0, 4]).unwrap();
            p
        };
        for flip in [0usize, 5, 10, 30, sealed.len() - 1] {
            let mut p = sealed.clone();
            p.data_mut()[flip] ^= 1;
            assert_eq!(k.open(&mut p, Some(0)), Err(CryptoError::IntegrityFailed), "byte {flip}");
        }
        assert_eq!(other.open(&mut sealed.clone(), Some(0)), Err(CryptoError::IntegrityFailed));
        assert_eq!(k.open(&mut sealed.clone(), Some(1)), Err(CryptoError::IntegrityFailed));
        let mut short = PacketBuf::with_payload(&sealed.data()[..33]);
        assert_eq!(k.open(&mut short, Some(0)), Err(CryptoError::BadLength));
    }

    #[test]
    fn keymat_length_checked_and_debug_hides_key() {
        let e = EspKey::new(EspAlgorithm::Aes256Gcm16, Zeroizing::new(vec![0; 32])).unwrap_err();
        assert!(e.to_string().contains("36 bytes"));
        let k = key(EspAlgorithm::ChaCha20Poly1305, 0xab);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("ab") && !dbg.contains("171"), "{dbg}");
    }

    #[test]
    fn handles_are_scoped_to_tables() {
        let ks = Keystore::new();
        let h = ks.insert(key(EspAlgorithm::Aes256Gcm16, 3));
        let mut t = KeyTable::default();
        assert_eq!(t.get(h).err(), Some(CryptoError::UnknownKey));
        t.grant(h, ks.get(h).unwrap());
        assert!(t.get(h).is_ok());
        assert!(ks.remove(h));
        assert!(ks.is_empty());
    }
}
