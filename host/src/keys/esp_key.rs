//! An ESP key: seal and open in place (RFC 4303 section 3.3, RFC 4106,
//! RFC 7634, RFC 3602 with RFC 4868). IVs come from a per-key counter owned
//! here (RFC 4106 section 3.1 requires a unique IV per key; for AES-CBC the
//! counter is encrypted under the key, which makes the IV unpredictable as
//! RFC 3602 section 3 requires), so no guest can cause IV reuse; the highest
//! sequence number each key sealed or opened is kept so a restarted guest
//! can resume its SAs.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, KeyInit, KeyIvInit};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
pub use wasmsec_crypto::CryptoError;
use wasmsec_wire::esp;
use zeroize::Zeroizing;

use super::algorithm::{CBC_BLOCK, EspAlgorithm, IV_LEN, Integ, SALT_LEN};
use super::iv_reservation::IvReservation;
use super::usage::Usage;
use crate::packet::PacketBuf;

// One per SA, read on every packet: keeping the AEAD key inline saves a
// pointer chase in the hot path, and the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Aead { key: LessSafeKey, salt: [u8; SALT_LEN] },
    Cbc { key: Zeroizing<Vec<u8>>, mac: hmac::Key, integ: Integ },
}

/// An ESP key: the cipher, the IV counter and the sequence high-water mark.
pub struct EspKey {
    /// The ESP algorithm the key is for.
    alg: EspAlgorithm,
    /// The AEAD key and salt, or the CBC key and HMAC key.
    cipher: Cipher,
    /// Counter the next IV is made from: starts at 1, never repeats (MAX: key spent).
    next_iv: AtomicU64,
    /// Highest sequence number sealed or authenticated with this key.
    highest_seq: AtomicU64,
    /// Inbound: which of the 64 numbers up to `highest_seq` it
    /// authenticated (bit i for `highest_seq - i`), so that an ESP instance
    /// made again (after a trap, or to give back memory) still accepts a
    /// packet that was delayed behind later ones at that moment.
    seen: AtomicU64,
    /// Manual keys: the on-disk reservation every IV must be inside.
    reservation: Option<IvReservation>,
    /// What the key carried, against its SA's limits (see [`Usage`]).
    usage: Usage,
}

impl fmt::Debug for EspKey {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EspKey").field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// A bitmap of the numbers up to an edge (bit i for `edge - i`) seen from
/// an edge `by` further right.
fn shifted(bits: u64, by: u64) -> u64 {
    if by < 64 { bits << by } else { 0 }
}

/// Numbers a key authenticated: the highest, and which of the 64 up to it
/// (bit i for `top - i`). A run of opened packets starts from the key's
/// record ([`EspKey::authenticated`]), adds each number it opens, and
/// notes the result ([`EspKey::note_opened`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub top: u64,
    pub bits: u64,
}

impl Authenticated {
    pub fn add(&mut self, seq: u64) {
        self.merge(seq, 1);
    }

    /// Whether `seq` is among the numbers noted.
    pub fn has(&self, seq: u64) -> bool {
        seq <= self.top && self.top - seq < 64 && (self.bits >> (self.top - seq)) & 1 == 1
    }

    /// Whether an SA with anti-replay window `window` (not 0: off) refuses
    /// `seq` by this record: noted, or the window's size or more below
    /// the highest (RFC 4303 section 3.4.3).
    pub fn refuses(&self, seq: u64, window: u32) -> bool {
        self.has(seq) || self.top.saturating_sub(seq) >= u64::from(window)
    }

    /// Take in numbers noted up to another edge: `top`, and `bits` below it.
    fn merge(&mut self, top: u64, bits: u64) {
        if top > self.top {
            self.bits = shifted(self.bits, top - self.top) | bits;
            self.top = top;
        } else {
            self.bits |= shifted(bits, self.top - top);
        }
    }
}

fn seq_of(header: &esp::Repr, esn_high: Option<u32>) -> u64 {
    (u64::from(esn_high.unwrap_or(0)) << 32) | u64::from(header.sequence_number)
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
        Ok(EspKey {
            alg,
            cipher,
            next_iv: AtomicU64::new(1),
            highest_seq: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            reservation: None,
            usage: Usage::default(),
        })
    }

    /// A manual key: its IVs come from `reservation`, from `first` on.
    pub fn with_reservation(mut self, reservation: IvReservation, first: u64) -> EspKey {
        self.next_iv = AtomicU64::new(first);
        self.reservation = Some(reservation);
        self
    }

    pub fn algorithm(&self) -> EspAlgorithm {
        self.alg
    }

    /// What the key carried, counted against its SA's limits.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Highest sequence number sealed (outbound) or authenticated (inbound).
    pub fn highest_seq(&self) -> u64 {
        self.highest_seq.load(Ordering::Relaxed)
    }

    /// `n` consecutive IV counters, the first returned: a run of packets
    /// takes them in one atomic step rather than one per packet.
    pub fn take_ivs(&self, n: u64) -> Result<u64, CryptoError> {
        // The counter is the IV-uniqueness guarantee: it never repeats and
        // never wraps. It stops at 2^64 - 1 (the key is spent: the last IV
        // was 2^64 - 2) instead of wrapping, as `fetch_add` would, to IVs
        // used before. Counters taken and not used are skipped.
        let first = self
            .next_iv
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(n))
            .map_err(|_| CryptoError::KeyExpired)?;
        if first == u64::MAX {
            return Err(CryptoError::KeyExpired);
        }
        // The reservation covers everything up to a counter it allows.
        if self.reservation.as_ref().is_some_and(|r| !r.allow(first + n.max(1) - 1)) {
            return Err(CryptoError::KeyExpired);
        }
        Ok(first)
    }

    /// Note that sequence number `seq` was sealed (once per run, with its
    /// highest). On an inbound key a new highest noted this way forgets
    /// which numbers were authenticated ([`EspKey::replay_state`] then
    /// takes every number up to it as seen), so the bits never stand for
    /// numbers below another edge than theirs.
    pub fn note_seq(&self, seq: u64) {
        if self.highest_seq.fetch_max(seq, Ordering::Relaxed) < seq {
            self.seen.store(0, Ordering::Relaxed);
        }
    }

    /// Note the numbers a run of packets authenticated: `top`, their
    /// highest, and `bits` (bit i for `top - i`; see [`Authenticated`]).
    /// The two words are read and written without a lock: only one thread
    /// may open an SA's packets (the inbound data-path thread, which also
    /// installs them again). A second writer could lose a bit, and a
    /// replaced instance would then accept that number once more.
    pub fn note_opened(&self, top: u64, bits: u64) {
        let mut known =
            Authenticated { top: self.highest_seq.load(Ordering::Relaxed), bits: self.seen.load(Ordering::Relaxed) };
        known.merge(top, bits);
        self.seen.store(known.bits, Ordering::Relaxed);
        self.highest_seq.fetch_max(top, Ordering::Relaxed);
    }

    /// The numbers this key is known to have authenticated: its highest
    /// and which of the 64 up to it ([`EspKey::note_opened`]); none where
    /// a number sealed with it moved the highest on ([`EspKey::note_seq`]).
    /// Read and written by the one thread that opens the key's packets.
    pub fn authenticated(&self) -> Authenticated {
        let (top, bits) = (self.highest_seq.load(Ordering::Relaxed), self.seen.load(Ordering::Relaxed));
        Authenticated { top, bits: if bits & 1 == 1 { bits } else { 0 } }
    }

    /// The highest number authenticated and which of the 64 up to it were
    /// ([`EspKey::note_opened`]), for an SA installed again; with every
    /// number up to it taken as seen where the key does not know (no bit
    /// for the highest itself: noted by [`EspKey::note_seq`]).
    pub fn replay_state(&self) -> (u64, u64) {
        let (high, seen) = (self.highest_seq.load(Ordering::Relaxed), self.seen.load(Ordering::Relaxed));
        (high, if seen & 1 == 1 { seen } else { u64::MAX })
    }

    /// ESP-seal `p` in place (RFC 4303 section 3.3): append the trailer
    /// (`pad_length` bytes of the default padding, Pad Length,
    /// `next_header`), encrypt, prepend the header and a fresh IV, append
    /// the ICV. The trailer is written straight into the tailroom: building
    /// it apart (up to 257 bytes, zeroed, then moved) was 3 % of a sealed
    /// and opened packet in the data-path bench.
    pub fn seal(
        &self,
        p: &mut PacketBuf,
        repr: &esp::Repr,
        esn_high: Option<u32>,
        pad_length: u8,
        next_header: u8,
    ) -> Result<(), CryptoError> {
        // Checked before an IV is taken, so a refusal spends none.
        self.check_room(p, pad_length)?;
        let counter = self.take_ivs(1)?;
        self.seal_at(p, repr, esn_high, (pad_length, next_header), counter)?;
        self.note_seq(seq_of(repr, esn_high));
        Ok(())
    }

    /// Room around `p` for the header, IV, trailer and ICV.
    fn check_room(&self, p: &PacketBuf, pad_length: u8) -> Result<(), CryptoError> {
        let tail = usize::from(pad_length) + esp::TRAILER_FIXED_LEN + self.alg.icv_len();
        if p.headroom() < self.alg.headroom() || p.tailroom() < tail {
            return Err(CryptoError::BadLength);
        }
        Ok(())
    }

    /// [`EspKey::seal`] with IV counter `counter`, taken from
    /// [`EspKey::take_ivs`] and used for nothing else; the caller notes the
    /// run's highest sequence number ([`EspKey::note_seq`]).
    pub fn seal_at(
        &self,
        p: &mut PacketBuf,
        repr: &esp::Repr,
        esn_high: Option<u32>,
        (pad_length, next_header): (u8, u8),
        counter: u64,
    ) -> Result<(), CryptoError> {
        self.check_room(p, pad_length)?;
        let pad = usize::from(pad_length);
        let header = &repr.to_bytes();
        // The trailer goes straight into the tailroom: the default padding
        // (RFC 4303 section 2.4), Pad Length, Next Header.
        p.append(&esp::DEFAULT_PADDING[..pad]);
        p.append(&[pad_length, next_header]);
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
                if !n.is_multiple_of(CBC_BLOCK) {
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
        Ok(())
    }

    /// ESP-open `p` in place: verify and decrypt, leaving payload and
    /// trailer. On failure the packet is to be dropped.
    pub fn open(&self, p: &mut PacketBuf, esn_high: Option<u32>) -> Result<(), CryptoError> {
        let seq = self.open_unnoted(p, esn_high)?;
        self.note_opened(seq, 1);
        Ok(())
    }

    /// [`EspKey::open`], answering the sequence number it authenticated;
    /// the caller notes the run's numbers ([`EspKey::note_opened`]).
    pub fn open_unnoted(&self, p: &mut PacketBuf, esn_high: Option<u32>) -> Result<u64, CryptoError> {
        let head = self.alg.headroom();
        let icv = self.alg.icv_len();
        let d = p.data();
        if d.len() < head + icv + esp::TRAILER_FIXED_LEN {
            return Err(CryptoError::BadLength);
        }
        let repr = esp::Repr::parse(&esp::Packet::new_unchecked(d)).map_err(|_| CryptoError::BadLength)?;
        let header = repr.to_bytes();
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
                if ct_len == 0 || !ct_len.is_multiple_of(CBC_BLOCK) {
                    return Err(CryptoError::BadLength);
                }
                let (signed, got) = d.split_at(d.len() - icv);
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(signed);
                if let Some(hi) = esn_high {
                    ctx.update(&hi.to_be_bytes());
                }
                let want = ctx.sign();
                if !wasmsec_crypto::ct_eq(&want.as_ref()[..integ.icv_len()], got) {
                    return Err(CryptoError::IntegrityFailed);
                }
                let mut iv = [0u8; CBC_BLOCK];
                iv.copy_from_slice(&d[8..head]);
                p.truncate(head + ct_len);
                p.advance(head);
                cbc_decrypt(key, &iv, p.data_mut())?;
            }
        }
        Ok(seq_of(&repr, esn_high))
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

/// A key of `alg` whose keying material is `byte` repeated (tests).
#[cfg(test)]
pub(crate) fn test_key(alg: EspAlgorithm, byte: u8) -> EspKey {
    EspKey::new(alg, Zeroizing::new(vec![byte; alg.keymat_len()])).expect("a key of the right length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alg: EspAlgorithm, byte: u8) -> EspKey {
        test_key(alg, byte)
    }

    #[test]
    fn seal_open_round_trip_all_algorithms() {
        for alg in EspAlgorithm::ALL {
            let k = key(alg, 7);
            for esn in [None, Some(3)] {
                // 108 + 4 = 112: a multiple of 16, as the engine pads for CBC.
                let mut p = PacketBuf::with_payload(&[0x45; 108]);
                let header = esp::Repr { spi: 0x1001, sequence_number: 9 };
                k.seal(&mut p, &header, esn, 2, 4).unwrap();
                assert_eq!(p.len(), alg.headroom() + 112 + alg.icv_len());
                assert_eq!(&p.data()[..8], &header.to_bytes());
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
            k.seal(&mut p, &esp::Repr { spi: 0x100, sequence_number: 1 }, None, 0, 4).unwrap();
            assert!(seen.insert(p.data()[8..16].to_vec()));
        }
    }

    #[test]
    fn runs_take_ivs_in_blocks_that_never_overlap_and_stop_at_the_end() {
        let k = key(EspAlgorithm::Aes256Gcm16, 1);
        let (a, b) = (k.take_ivs(64).unwrap(), k.take_ivs(3).unwrap());
        assert_eq!(b, a + 64, "the next run starts after the last");
        // A packet sealed alone after them takes the next counter.
        let mut p = PacketBuf::with_payload(&[0; 20]);
        k.seal(&mut p, &esp::Repr { spi: 0x100, sequence_number: 1 }, None, 0, 4).unwrap();
        assert_eq!(p.data()[8..16], (b + 3).to_be_bytes());
        // seal_at uses the counter given, and leaves the high-water mark to
        // the run.
        let mut p = PacketBuf::with_payload(&[0; 20]);
        k.seal_at(&mut p, &esp::Repr { spi: 0x100, sequence_number: 77 }, None, (0, 4), a).unwrap();
        assert_eq!(p.data()[8..16], a.to_be_bytes());
        assert_eq!(k.highest_seq(), 1);
        k.note_seq(77);
        assert_eq!(k.highest_seq(), 77);
        assert_eq!(k.open_unnoted(&mut p, None).unwrap(), 77);
        // Near 2^64 the key is spent: no IV reaches u64::MAX, a run that
        // would is refused whole, and the counter never wraps to IVs used.
        k.next_iv.store(u64::MAX - 10, Ordering::Relaxed);
        assert!(matches!(k.take_ivs(11), Err(CryptoError::KeyExpired)));
        assert_eq!(k.take_ivs(10).unwrap(), u64::MAX - 10, "a refused run takes nothing");
        for _ in 0..3 {
            assert!(matches!(k.take_ivs(1), Err(CryptoError::KeyExpired)));
        }
        let mut p = PacketBuf::with_payload(&[0; 20]);
        let spent = k.seal(&mut p, &esp::Repr { spi: 0x100, sequence_number: 2 }, None, 0, 4);
        assert!(matches!(spent, Err(CryptoError::KeyExpired)));
        assert_eq!(k.next_iv.load(Ordering::Relaxed), u64::MAX, "stopped, not wrapped");
    }

    #[test]
    fn tampering_wrong_key_wrong_esn_and_truncation_fail() {
        let k = key(EspAlgorithm::Aes128Gcm16, 1);
        let other = key(EspAlgorithm::Aes128Gcm16, 2);
        let sealed = {
            let mut p = PacketBuf::with_payload(&[9; 40]);
            k.seal(&mut p, &esp::Repr { spi: 0x100, sequence_number: 1 }, Some(0), 0, 4).unwrap();
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
    fn an_inbound_key_knows_which_of_the_64_numbers_up_to_its_highest_it_authenticated() {
        let k = key(EspAlgorithm::Aes256Gcm16, 1);
        assert_eq!(k.replay_state(), (0, u64::MAX), "nothing known");
        // A run of 5, 3, 4 (2 and 1 still on the way).
        let mut run = Authenticated::default();
        [5, 3, 4].into_iter().for_each(|s| run.add(s));
        assert_eq!(run, Authenticated { top: 5, bits: 0b111 });
        k.note_opened(run.top, run.bits);
        assert_eq!(k.replay_state(), (5, 0b111));
        // Then 2 in a run of its own, below the edge; then 60, which moves
        // the edge by 55; then 70, which leaves 5 to 2 behind the 64.
        k.note_opened(2, 1);
        assert_eq!(k.replay_state(), (5, 0b1111));
        k.note_opened(60, 1);
        assert_eq!(k.replay_state(), (60, 1 | 0b1111 << 55));
        k.note_opened(70, 1);
        assert_eq!(k.replay_state(), (70, 1 | 1 << 10));
        // A run far ahead forgets every earlier bit.
        let mut run = Authenticated::default();
        [1_000, 900].into_iter().for_each(|s| run.add(s));
        assert_eq!(run, Authenticated { top: 1_000, bits: 1 }, "100 behind: outside the 64");
        k.note_opened(run.top, run.bits);
        assert_eq!(k.replay_state(), (1_000, 1));
        // A key that only sealed has no bits: every number up to its highest counts as seen.
        let s = key(EspAlgorithm::Aes256Gcm16, 2);
        s.note_seq(9);
        assert_eq!(s.replay_state(), (9, u64::MAX));
        // Nor one whose highest was noted so after its bits: they would
        // stand for the numbers below another edge.
        s.note_opened(12, 0b101);
        assert_eq!(s.replay_state(), (12, 0b101));
        s.note_seq(20);
        assert_eq!(s.replay_state(), (20, u64::MAX));
    }

    /// What the host refuses to open again: only numbers it knows the key
    /// authenticated, never one it does not know about.
    #[test]
    fn a_key_knows_which_numbers_it_authenticated_and_claims_no_others() {
        let k = key(EspAlgorithm::Aes256Gcm16, 1);
        assert!(!k.authenticated().has(0) && !k.authenticated().has(1), "a new key authenticated nothing");
        k.note_opened(70, 1 | 1 << 10);
        let a = k.authenticated();
        assert_eq!([70, 60, 69, 61, 71].map(|s| a.has(s)), [true, true, false, false, false]);
        // 63 below the edge is the last the bits cover; 64 below is unknown.
        k.note_opened(70, 1 << 63);
        assert!(k.authenticated().has(7) && !k.authenticated().has(6));
        // A highest moved on by a number sealed: its bits are not known,
        // so the key claims none of them (the guest's window decides).
        let s = key(EspAlgorithm::Aes256Gcm16, 2);
        s.note_opened(12, 0b101);
        s.note_seq(20);
        assert_eq!(s.authenticated(), Authenticated { top: 20, bits: 0 });
        assert!((1..=20).all(|n| !s.authenticated().has(n)));
    }
}
