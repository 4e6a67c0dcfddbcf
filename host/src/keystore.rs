//! The keystore: all key material lives here, and guests name it by handle.
//!
//! ESP keys are created from manual configuration or by the IKE key
//! schedule, wrapped in ring's AEAD keys (or AES-CBC with HMAC-SHA2), and
//! never leave the host. A guest instance sees only the handles granted to
//! it ([`KeyTable`]). IVs come from a per-key counter owned here (RFC 4106
//! section 3.1 requires a unique IV per key; for AES-CBC the counter is
//! encrypted under the key, which makes the IV unpredictable as RFC 3602
//! section 3 requires), so no guest can cause IV reuse, and the highest
//! sequence number each key sealed or opened is kept so a restarted guest
//! can resume its SAs (DESIGN.md, security model).
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, KeyInit, KeyIvInit};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::packet::PacketBuf;

/// HMAC-SHA2 integrity for ESP (RFC 4868), truncated to half the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integ {
    Sha256_128,
    Sha384_192,
    Sha512_256,
}

impl Integ {
    fn key_len(&self) -> usize {
        match self {
            Integ::Sha256_128 => 32,
            Integ::Sha384_192 => 48,
            Integ::Sha512_256 => 64,
        }
    }

    fn icv_len(&self) -> usize {
        self.key_len() / 2
    }

    fn alg(&self) -> hmac::Algorithm {
        match self {
            Integ::Sha256_128 => hmac::HMAC_SHA256,
            Integ::Sha384_192 => hmac::HMAC_SHA384,
            Integ::Sha512_256 => hmac::HMAC_SHA512,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Integ::Sha256_128 => "sha256",
            Integ::Sha384_192 => "sha384",
            Integ::Sha512_256 => "sha512",
        }
    }
}

/// ESP transforms, named as strongSwan names them: AES-GCM (RFC 4106),
/// ChaCha20-Poly1305 (RFC 7634), AES-CBC (RFC 3602) with HMAC-SHA2 (RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspAlgorithm {
    Aes128Gcm16,
    Aes256Gcm16,
    ChaCha20Poly1305,
    /// AES-CBC with a 128- or 256-bit key.
    AesCbc {
        key_bits: u16,
        integ: Integ,
    },
}

impl EspAlgorithm {
    pub const ALL: [EspAlgorithm; 6] = [
        EspAlgorithm::Aes128Gcm16,
        EspAlgorithm::Aes256Gcm16,
        EspAlgorithm::ChaCha20Poly1305,
        EspAlgorithm::AesCbc { key_bits: 128, integ: Integ::Sha256_128 },
        EspAlgorithm::AesCbc { key_bits: 256, integ: Integ::Sha384_192 },
        EspAlgorithm::AesCbc { key_bits: 256, integ: Integ::Sha512_256 },
    ];

    /// Parse a strongSwan proposal keyword (`aes256gcm16`, `aes128gcm16`,
    /// `chacha20poly1305`, `aes128-sha256`, `aes256-sha384`, ...;
    /// `aes256gcm` and `aes128gcm` mean the 16-byte ICV).
    pub fn from_name(name: &str) -> Option<EspAlgorithm> {
        let n = name.to_ascii_lowercase();
        match n.as_str() {
            "aes128gcm16" | "aes128gcm128" | "aes128gcm" => return Some(EspAlgorithm::Aes128Gcm16),
            "aes256gcm16" | "aes256gcm128" | "aes256gcm" => return Some(EspAlgorithm::Aes256Gcm16),
            "chacha20poly1305" => return Some(EspAlgorithm::ChaCha20Poly1305),
            _ => {}
        }
        let (e, i) = n.split_once('-')?;
        let key_bits = match e {
            "aes128" | "aes" => 128,
            "aes256" => 256,
            _ => return None,
        };
        let integ = match i {
            "sha256" | "sha2_256" => Integ::Sha256_128,
            "sha384" | "sha2_384" => Integ::Sha384_192,
            "sha512" | "sha2_512" => Integ::Sha512_256,
            _ => return None,
        };
        Some(EspAlgorithm::AesCbc { key_bits, integ })
    }

    pub fn name(&self) -> String {
        match self {
            EspAlgorithm::Aes128Gcm16 => "aes128gcm16".into(),
            EspAlgorithm::Aes256Gcm16 => "aes256gcm16".into(),
            EspAlgorithm::ChaCha20Poly1305 => "chacha20poly1305".into(),
            EspAlgorithm::AesCbc { key_bits, integ } => format!("aes{key_bits}-{}", integ.name()),
        }
    }

    fn ring_alg(&self) -> Option<&'static aead::Algorithm> {
        match self {
            EspAlgorithm::Aes128Gcm16 => Some(&aead::AES_128_GCM),
            EspAlgorithm::Aes256Gcm16 => Some(&aead::AES_256_GCM),
            EspAlgorithm::ChaCha20Poly1305 => Some(&aead::CHACHA20_POLY1305),
            EspAlgorithm::AesCbc { .. } => None,
        }
    }

    /// Keying material length: for AEAD the cipher key plus the 4-byte salt
    /// (RFC 4106 section 8.1, RFC 7634 section 2); for AES-CBC the cipher
    /// key followed by the integrity key (RFC 7296 section 2.17 order).
    pub fn keymat_len(&self) -> usize {
        match self {
            EspAlgorithm::AesCbc { key_bits, integ } => usize::from(key_bits / 8) + integ.key_len(),
            a => a.ring_alg().map_or(0, |r| r.key_len()) + SALT_LEN,
        }
    }

    fn iv_len(&self) -> usize {
        match self {
            EspAlgorithm::AesCbc { .. } => CBC_BLOCK,
            _ => IV_LEN,
        }
    }

    fn icv_len(&self) -> usize {
        match self {
            EspAlgorithm::AesCbc { integ, .. } => integ.icv_len(),
            _ => ICV_LEN,
        }
    }

    /// What the ESP engine pads the payload to (the cipher's block size, at
    /// least 4; RFC 4303 section 2.4).
    pub fn pad_align(&self) -> u8 {
        match self {
            EspAlgorithm::AesCbc { .. } => CBC_BLOCK as u8,
            _ => 4,
        }
    }

    /// Bytes ESP adds around a payload at most: header, IV, padding,
    /// Pad Length, Next Header, ICV.
    pub fn overhead(&self) -> usize {
        wasmsec_wire::esp::HEADER_LEN + self.iv_len() + usize::from(self.pad_align()) - 1 + 2 + self.icv_len()
    }

    /// What `seal` prepends: the ESP header and the IV.
    pub fn headroom(&self) -> usize {
        wasmsec_wire::esp::HEADER_LEN + self.iv_len()
    }
}

pub const SALT_LEN: usize = 4;
pub const IV_LEN: usize = 8;
pub const ICV_LEN: usize = 16;
const CBC_BLOCK: usize = 16;
/// The most `seal` prepends (header and a CBC IV).
pub const SEAL_HEADROOM: usize = wasmsec_wire::esp::HEADER_LEN + CBC_BLOCK;

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

enum Cipher {
    Aead { key: LessSafeKey, salt: [u8; SALT_LEN] },
    Cbc { key: Zeroizing<Vec<u8>>, mac: hmac::Key, integ: Integ },
}

/// An ESP key: the cipher, the IV counter and the sequence high-water mark.
pub struct EspKey {
    alg: EspAlgorithm,
    cipher: Cipher,
    next_iv: AtomicU64,
    highest_seq: AtomicU64,
}

impl fmt::Debug for EspKey {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EspKey").field("alg", &self.alg).finish_non_exhaustive()
    }
}

fn seq_of(header: &[u8; 8], esn_high: Option<u32>) -> u64 {
    (u64::from(esn_high.unwrap_or(0)) << 32)
        | u64::from(u32::from_be_bytes([header[4], header[5], header[6], header[7]]))
}

impl EspKey {
    /// Build from keying material, which is zeroized after.
    pub fn new(alg: EspAlgorithm, keymat: Zeroizing<Vec<u8>>) -> Result<EspKey, KeyError> {
        if keymat.len() != alg.keymat_len() {
            return Err(KeyError::Length { alg: alg.name(), want: alg.keymat_len(), got: keymat.len() });
        }
        let cipher = match alg {
            EspAlgorithm::AesCbc { key_bits, integ } => {
                let (k, a) = keymat.split_at(usize::from(key_bits / 8));
                Cipher::Cbc { key: Zeroizing::new(k.to_vec()), mac: hmac::Key::new(integ.alg(), a), integ }
            }
            a => {
                let (k, s) = keymat.split_at(keymat.len() - SALT_LEN);
                let ring = a.ring_alg().ok_or(KeyError::Rejected)?;
                let key = LessSafeKey::new(UnboundKey::new(ring, k).map_err(|_| KeyError::Rejected)?);
                let mut salt = [0u8; SALT_LEN];
                salt.copy_from_slice(s);
                Cipher::Aead { key, salt }
            }
        };
        Ok(EspKey { alg, cipher, next_iv: AtomicU64::new(1), highest_seq: AtomicU64::new(0) })
    }

    pub fn algorithm(&self) -> EspAlgorithm {
        self.alg
    }

    /// Highest sequence number sealed (outbound) or authenticated (inbound).
    pub fn highest_seq(&self) -> u64 {
        self.highest_seq.load(Ordering::Relaxed)
    }

    fn next_counter(&self) -> Result<u64, CryptoError> {
        // The counter is the IV-uniqueness guarantee: it never repeats and
        // never wraps (at 2^64 the key is spent).
        let iv = self.next_iv.fetch_add(1, Ordering::Relaxed);
        if iv == u64::MAX { Err(CryptoError::KeyExpired) } else { Ok(iv) }
    }

    /// ESP-seal `p` in place (RFC 4303 section 3.3): append `trailer`,
    /// encrypt, prepend `header` and a fresh IV, append the ICV.
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
        if p.headroom() < self.alg.headroom() || p.tailroom() < trailer.len() + self.alg.icv_len() {
            return Err(CryptoError::BadLength);
        }
        let counter = self.next_counter()?;
        p.append(trailer);
        match &self.cipher {
            Cipher::Aead { key, salt } => {
                let iv = counter.to_be_bytes();
                let aad = esp_aad(header, esn_high);
                let tag = key
                    .seal_in_place_separate_tag(nonce(salt, &iv), Aad::from(aad.as_slice()), p.data_mut())
                    .map_err(|_| CryptoError::BadLength)?;
                p.append(tag.as_ref());
                p.prepend(&iv);
                p.prepend(header);
            }
            Cipher::Cbc { key, mac, integ } => {
                let n = p.len();
                if n % CBC_BLOCK != 0 {
                    return Err(CryptoError::BadLength);
                }
                let iv = cbc_iv(key, counter)?;
                cbc_encrypt(key, &iv, p.data_mut())?;
                p.prepend(&iv);
                p.prepend(header);
                // RFC 4303 section 3.3.4: the ICV covers header, IV and
                // ciphertext, and the high sequence bits with ESN (not sent).
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(p.data());
                if let Some(hi) = esn_high {
                    ctx.update(&hi.to_be_bytes());
                }
                let tag = ctx.sign();
                p.append(&tag.as_ref()[..integ.icv_len()]);
            }
        }
        self.highest_seq.fetch_max(seq_of(header, esn_high), Ordering::Relaxed);
        Ok(())
    }

    /// ESP-open `p` in place: verify and decrypt, leaving payload and
    /// trailer. On failure the packet is to be dropped.
    pub fn open(&self, p: &mut PacketBuf, esn_high: Option<u32>) -> Result<(), CryptoError> {
        let head = self.alg.headroom();
        let icv = self.alg.icv_len();
        let d = p.data();
        if d.len() < head + icv + wasmsec_wire::esp::TRAILER_FIXED_LEN {
            return Err(CryptoError::BadLength);
        }
        let mut header = [0u8; 8];
        header.copy_from_slice(&d[..8]);
        match &self.cipher {
            Cipher::Aead { key, salt } => {
                let iv: [u8; IV_LEN] = d[8..head].try_into().map_err(|_| CryptoError::BadLength)?;
                let aad = esp_aad(&header, esn_high);
                let body = &mut p.data_mut()[head..];
                let plain_len = key
                    .open_in_place(nonce(salt, &iv), Aad::from(aad.as_slice()), body)
                    .map_err(|_| CryptoError::IntegrityFailed)?
                    .len();
                p.advance(head);
                p.truncate(plain_len);
            }
            Cipher::Cbc { key, mac, integ } => {
                let ct_len = d.len() - head - icv;
                if ct_len == 0 || ct_len % CBC_BLOCK != 0 {
                    return Err(CryptoError::BadLength);
                }
                let (signed, got) = d.split_at(d.len() - icv);
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(signed);
                if let Some(hi) = esn_high {
                    ctx.update(&hi.to_be_bytes());
                }
                let want = ctx.sign();
                let diff = want.as_ref()[..integ.icv_len()].iter().zip(got).fold(0u8, |a, (x, y)| a | (x ^ y));
                if diff != 0 {
                    return Err(CryptoError::IntegrityFailed);
                }
                let mut iv = [0u8; CBC_BLOCK];
                iv.copy_from_slice(&d[8..head]);
                p.truncate(head + ct_len);
                p.advance(head);
                cbc_decrypt(key, &iv, p.data_mut())?;
            }
        }
        self.highest_seq.fetch_max(seq_of(&header, esn_high), Ordering::Relaxed);
        Ok(())
    }
}

fn nonce(salt: &[u8; SALT_LEN], iv: &[u8; IV_LEN]) -> Nonce {
    let mut n = [0u8; 12];
    n[..SALT_LEN].copy_from_slice(salt);
    n[SALT_LEN..].copy_from_slice(iv);
    Nonce::assume_unique_for_key(n)
}

/// An unpredictable CBC IV: the counter block encrypted under the key
/// (NIST SP 800-38A appendix C).
fn cbc_iv(key: &[u8], counter: u64) -> Result<[u8; CBC_BLOCK], CryptoError> {
    let mut block = [0u8; CBC_BLOCK];
    block[..8].copy_from_slice(b"wsec-iv\0");
    block[8..].copy_from_slice(&counter.to_be_bytes());
    let mut b = aes::Block::from(block);
    match key.len() {
        16 => aes::Aes128::new_from_slice(key).map_err(|_| CryptoError::WrongKeyKind)?.encrypt_block(&mut b),
        _ => aes::Aes256::new_from_slice(key).map_err(|_| CryptoError::WrongKeyKind)?.encrypt_block(&mut b),
    }
    Ok(b.into())
}

fn cbc_encrypt(key: &[u8], iv: &[u8; CBC_BLOCK], buf: &mut [u8]) -> Result<(), CryptoError> {
    let n = buf.len();
    let r = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| CryptoError::WrongKeyKind)?
            .encrypt_padded_mut::<NoPadding>(buf, n)
            .map(|_| ()),
        _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| CryptoError::WrongKeyKind)?
            .encrypt_padded_mut::<NoPadding>(buf, n)
            .map(|_| ()),
    };
    r.map_err(|_| CryptoError::BadLength)
}

fn cbc_decrypt(key: &[u8], iv: &[u8; CBC_BLOCK], buf: &mut [u8]) -> Result<(), CryptoError> {
    let r = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| CryptoError::WrongKeyKind)?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ()),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| CryptoError::WrongKeyKind)?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ()),
    };
    r.map_err(|_| CryptoError::BadLength)
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
    #[error("{alg} needs {want} bytes of keying material, got {got}")]
    Length { alg: String, want: usize, got: usize },
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
                // 108 + 4 = 112: a multiple of 16, as the engine pads for CBC.
                let mut p = PacketBuf::with_payload(&[0x45; 108]);
                let header = [0, 0, 0x10, 0x01, 0, 0, 0, 9];
                k.seal(&mut p, &header, esn, &[1, 2, 2, 4]).unwrap();
                assert_eq!(p.len(), alg.headroom() + 112 + alg.icv_len());
                assert_eq!(&p.data()[..8], &header);
                assert!(!p.data().windows(16).any(|w| w == [0x45; 16]), "{alg:?} encrypted");
                k.open(&mut p, esn).unwrap();
                assert_eq!(p.len(), 112);
                assert_eq!(&p.data()[..108], &[0x45; 108][..]);
                assert_eq!(&p.data()[108..], &[1, 2, 2, 4]);
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
        assert_eq!(EspAlgorithm::from_name("aes256-sha384").unwrap().keymat_len(), 32 + 48);
        assert_eq!(EspAlgorithm::from_name("AES128-SHA256").unwrap().name(), "aes128-sha256");
        assert!(EspAlgorithm::from_name("aes256-sha1").is_none());
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
