//! IKE SA keys (RFC 7296 section 2.14) and the Encrypted payload
//! (section 3.14; AES-GCM per RFC 5282, ChaCha20-Poly1305 per RFC 7634,
//! AES-CBC per RFC 3602 with HMAC-SHA2 per RFC 4868).
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use wasmsec_wire::ike::{EncrId, IntegId};

use crate::prf::Prf;
use crate::{CryptoError, IkeSuite, push_hex, secret_buffer};

const HEADER_LEN: usize = 28;
const SK: u8 = 46;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integ {
    Sha256_128,
    Sha384_192,
    Sha512_256,
}

impl Integ {
    pub fn from_id(id: IntegId) -> Option<Integ> {
        match id {
            IntegId::HmacSha2_256_128 => Some(Integ::Sha256_128),
            IntegId::HmacSha2_384_192 => Some(Integ::Sha384_192),
            IntegId::HmacSha2_512_256 => Some(Integ::Sha512_256),
            _ => None,
        }
    }

    pub fn key_len(&self) -> usize {
        match self {
            Integ::Sha256_128 => 32,
            Integ::Sha384_192 => 48,
            Integ::Sha512_256 => 64,
        }
    }

    pub fn icv_len(&self) -> usize {
        self.key_len() / 2
    }

    fn alg(&self) -> hmac::Algorithm {
        match self {
            Integ::Sha256_128 => hmac::HMAC_SHA256,
            Integ::Sha384_192 => hmac::HMAC_SHA384,
            Integ::Sha512_256 => hmac::HMAC_SHA512,
        }
    }

    pub fn mac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&hmac::Key::new(self.alg(), key), data);
        tag.as_ref()[..self.icv_len()].to_vec()
    }

    fn wireshark_name(&self) -> &'static str {
        match self {
            Integ::Sha256_128 => "HMAC_SHA2_256_128 [RFC4868]",
            Integ::Sha384_192 => "HMAC_SHA2_384_192 [RFC4868]",
            Integ::Sha512_256 => "HMAC_SHA2_512_256 [RFC4868]",
        }
    }
}

/// How the Encrypted payload is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// Combined mode: key length without the 4-byte salt.
    Aead {
        chacha: bool,
        key_len: usize,
    },
    Cbc {
        key_len: usize,
        integ: Integ,
    },
}

impl Cipher {
    /// The cipher of an IKE SA or CHILD SA from its transform IDs.
    pub fn from_ids(encr: EncrId, key_bits: u16, integ: IntegId) -> Result<Cipher, CryptoError> {
        let aes_len = match key_bits {
            128 => Some(16),
            256 => Some(32),
            _ => None,
        };
        match (encr, aes_len, integ) {
            (EncrId::AesGcm16, Some(key_len), IntegId::None) => Ok(Cipher::Aead { chacha: false, key_len }),
            (EncrId::ChaCha20Poly1305, _, IntegId::None) => Ok(Cipher::Aead { chacha: true, key_len: 32 }),
            (EncrId::AesCbc, Some(key_len), i) => {
                Ok(Cipher::Cbc { key_len, integ: Integ::from_id(i).ok_or(CryptoError::Unsupported)? })
            }
            _ => Err(CryptoError::Unsupported),
        }
    }

    /// Length of the encryption key material (with salt for AEAD).
    pub fn encr_keymat_len(&self) -> usize {
        match self {
            Cipher::Aead { key_len, .. } => key_len + 4,
            Cipher::Cbc { key_len, .. } => *key_len,
        }
    }

    pub fn integ_key_len(&self) -> usize {
        match self {
            Cipher::Aead { .. } => 0,
            Cipher::Cbc { integ, .. } => integ.key_len(),
        }
    }

    fn iv_len(&self) -> usize {
        match self {
            Cipher::Aead { .. } => 8,
            Cipher::Cbc { .. } => 16,
        }
    }

    fn icv_len(&self) -> usize {
        match self {
            Cipher::Aead { .. } => 16,
            Cipher::Cbc { integ, .. } => integ.icv_len(),
        }
    }

    fn aead_alg(&self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aead { chacha: true, .. } => &aead::CHACHA20_POLY1305,
            Cipher::Aead { key_len: 16, .. } => &aead::AES_128_GCM,
            _ => &aead::AES_256_GCM,
        }
    }

    fn wireshark_name(&self) -> Option<&'static str> {
        match self {
            Cipher::Aead { chacha: true, .. } => None,
            Cipher::Aead { key_len: 16, .. } => Some("AES-GCM-128 with 16 octet ICV [RFC5282]"),
            Cipher::Aead { .. } => Some("AES-GCM-256 with 16 octet ICV [RFC5282]"),
            Cipher::Cbc { key_len: 16, .. } => Some("AES-CBC-128 [RFC3602]"),
            Cipher::Cbc { .. } => Some("AES-CBC-256 [RFC3602]"),
        }
    }
}

/// The seven keys of an IKE SA (section 2.14), in the order prf+ makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sk {
    D,
    Ai,
    Ar,
    Ei,
    Er,
    Pi,
    Pr,
}

impl Sk {
    pub const ALL: [Sk; 7] = [Sk::D, Sk::Ai, Sk::Ar, Sk::Ei, Sk::Er, Sk::Pi, Sk::Pr];
}

/// The seven keys of an IKE SA and what they are for.
pub struct IkeSaKeys {
    pub prf: Prf,
    pub cipher: Cipher,
    pub spi_i: u64,
    pub spi_r: u64,
    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} as prf+ made
    /// them (section 2.14), in one buffer of their exact length: a PoP holds
    /// an IKE SA per tunnel, and seven buffers cost it ~200 bytes more each
    /// (`cargo xtask bench-memory`). [`IkeSaKeys::sk`] finds each.
    km: Zeroizing<Vec<u8>>,
    /// Next AEAD IV; never reused under a key (RFC 5282 section 3.1).
    next_iv: u64,
}

impl IkeSaKeys {
    /// SKEYSEED = prf(Ni | Nr, g^ir) (section 2.14), or for the IKE SA
    /// that replaces `old`, SKEYSEED = prf_old(SK_d_old, g^ir (new) | Ni | Nr)
    /// (section 2.18); then {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi |
    /// SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) with the new SA's PRF.
    pub fn derive(
        old: Option<&IkeSaKeys>,
        suite: &IkeSuite,
        shared: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<IkeSaKeys, CryptoError> {
        let prf = Prf::from_id(suite.prf).ok_or(CryptoError::Unsupported)?;
        let cipher = Cipher::from_ids(suite.encr, suite.key_bits, suite.integ)?;
        let skeyseed = match old {
            Some(old) => old.prf.prf(old.sk(Sk::D), &[shared, ni, nr]),
            None => prf.prf(&[ni, nr].concat(), &[shared]),
        };
        Ok(Self::from_skeyseed(prf, cipher, &skeyseed, ni, nr, spi_i, spi_r))
    }

    fn from_skeyseed(
        prf: Prf,
        cipher: Cipher,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> IkeSaKeys {
        let mut seed = Vec::with_capacity(ni.len() + nr.len() + 16);
        seed.extend_from_slice(ni);
        seed.extend_from_slice(nr);
        seed.extend_from_slice(&spi_i.to_be_bytes());
        seed.extend_from_slice(&spi_r.to_be_bytes());
        let lens = Self::lens(prf, cipher);
        // prf+ leaves room for a whole last block: copied to its exact size.
        let km = Zeroizing::new(prf.prf_plus(skeyseed, &seed, lens.iter().sum())[..].to_vec());
        IkeSaKeys { prf, cipher, spi_i, spi_r, km, next_iv: 1 }
    }

    /// The lengths of the seven keys, in [`Sk`] order.
    fn lens(prf: Prf, cipher: Cipher) -> [usize; 7] {
        let (p, a, e) = (prf.output_len(), cipher.integ_key_len(), cipher.encr_keymat_len());
        [p, a, a, e, e, p, p]
    }

    /// One of the seven keys.
    pub fn sk(&self, which: Sk) -> &[u8] {
        let lens = Self::lens(self.prf, self.cipher);
        let i = which as usize;
        let start: usize = lens[..i].iter().sum();
        &self.km[start..start + lens[i]]
    }

    /// The seven keys (for the audit of [`crate::Vault::new_audited`]).
    pub(crate) fn all_keys(&self) -> [&[u8]; 7] {
        Sk::ALL.map(|k| self.sk(k))
    }

    fn keys(&self, from_initiator: bool) -> (&[u8], &[u8]) {
        if from_initiator { (self.sk(Sk::Ei), self.sk(Sk::Ai)) } else { (self.sk(Sk::Er), self.sk(Sk::Ar)) }
    }

    /// Build a whole message: `header` (its length and next-payload fields
    /// are filled in here) and an Encrypted payload holding `inner`, a
    /// payload chain whose first type is `first`.
    pub fn encrypt(
        &mut self,
        rng: &SystemRandom,
        from_initiator: bool,
        header: &[u8; HEADER_LEN],
        first: u8,
        inner: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let c = self.cipher;
        let pad = match c {
            Cipher::Aead { .. } => 0,
            Cipher::Cbc { .. } => (16 - (inner.len() + 1) % 16) % 16,
        };
        let pt_len = inner.len() + pad + 1;
        let body_len = c.iv_len() + pt_len + c.icv_len();
        let total = HEADER_LEN + 4 + body_len;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(header);
        msg[16] = SK;
        msg[24..28].copy_from_slice(&(total as u32).to_be_bytes());
        msg.extend_from_slice(&[first, 0]);
        msg.extend_from_slice(&((4 + body_len) as u16).to_be_bytes());
        let aad_len = msg.len();
        let mut pt = Zeroizing::new(Vec::with_capacity(pt_len + 16));
        pt.extend_from_slice(inner);
        pt.resize(inner.len() + pad, 0);
        pt.push(pad as u8);
        let (ek, ak) = self.keys(from_initiator);
        match c {
            Cipher::Aead { .. } => {
                let iv = self.next_iv;
                if iv == u64::MAX {
                    return Err(CryptoError::KeyExpired);
                }
                let (key, salt) = ek.split_at(ek.len() - 4);
                let key = LessSafeKey::new(UnboundKey::new(c.aead_alg(), key).map_err(|_| CryptoError::Internal)?);
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(salt);
                n[4..].copy_from_slice(&iv.to_be_bytes());
                let aad = msg.clone();
                msg.extend_from_slice(&iv.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&aad[..aad_len]), &mut pt)
                    .map_err(|_| CryptoError::Internal)?;
                msg.extend_from_slice(&pt);
                msg.extend_from_slice(tag.as_ref());
                self.next_iv += 1;
            }
            Cipher::Cbc { key_len, integ } => {
                let mut iv = [0u8; 16];
                rng.fill(&mut iv).map_err(|_| CryptoError::Internal)?;
                let n = pt.len();
                match key_len {
                    16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(ek, &iv)
                        .map_err(|_| CryptoError::Internal)?
                        .encrypt_padded_mut::<NoPadding>(&mut pt, n)
                        .map_err(|_| CryptoError::Internal)?,
                    _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(ek, &iv)
                        .map_err(|_| CryptoError::Internal)?
                        .encrypt_padded_mut::<NoPadding>(&mut pt, n)
                        .map_err(|_| CryptoError::Internal)?,
                };
                msg.extend_from_slice(&iv);
                msg.extend_from_slice(&pt);
                let icv = integ.mac(ak, &msg);
                msg.extend_from_slice(&icv);
            }
        }
        debug_assert_eq!(msg.len(), total);
        Ok(msg)
    }

    /// Verify and decrypt the Encrypted payload that starts at `sk_offset`
    /// of `msg`; returns the inner payload chain (padding removed).
    pub fn decrypt(
        &self,
        from_initiator: bool,
        msg: &[u8],
        sk_offset: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let c = self.cipher;
        if sk_offset < HEADER_LEN || sk_offset + 4 > msg.len() {
            return Err(CryptoError::BadLength);
        }
        let sk_len = usize::from(u16::from_be_bytes([msg[sk_offset + 2], msg[sk_offset + 3]]));
        if sk_offset + sk_len != msg.len() {
            return Err(CryptoError::BadLength);
        }
        let aad = &msg[..sk_offset + 4];
        let body = &msg[sk_offset + 4..];
        if body.len() < c.iv_len() + c.icv_len() + 1 {
            return Err(CryptoError::BadLength);
        }
        let (ek, ak) = self.keys(from_initiator);
        let mut pt = Zeroizing::new(body[c.iv_len()..].to_vec());
        let iv = &body[..c.iv_len()];
        let n = match c {
            Cipher::Aead { .. } => {
                let (key, salt) = ek.split_at(ek.len() - 4);
                let key = LessSafeKey::new(UnboundKey::new(c.aead_alg(), key).map_err(|_| CryptoError::Internal)?);
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(salt);
                nonce[4..].copy_from_slice(iv);
                key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut pt)
                    .map_err(|_| CryptoError::IntegrityFailed)?
                    .len()
            }
            Cipher::Cbc { key_len, integ } => {
                let (signed, icv) = msg.split_at(msg.len() - integ.icv_len());
                let want = integ.mac(ak, signed);
                if !crate::ct_eq(&want[..], icv) {
                    return Err(CryptoError::IntegrityFailed);
                }
                let ct_len = pt.len() - integ.icv_len();
                if ct_len == 0 || !ct_len.is_multiple_of(16) {
                    return Err(CryptoError::BadLength);
                }
                pt.truncate(ct_len);
                let r = match key_len {
                    16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(ek, iv)
                        .map_err(|_| CryptoError::Internal)?
                        .decrypt_padded_mut::<NoPadding>(&mut pt)
                        .map(|p| p.len()),
                    _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(ek, iv)
                        .map_err(|_| CryptoError::Internal)?
                        .decrypt_padded_mut::<NoPadding>(&mut pt)
                        .map(|p| p.len()),
                };
                r.map_err(|_| CryptoError::BadLength)?
            }
        };
        pt.truncate(n);
        let pad = usize::from(*pt.last().ok_or(CryptoError::BadLength)?);
        if pad + 1 > pt.len() {
            return Err(CryptoError::BadLength);
        }
        let keep = pt.len() - pad - 1;
        pt.truncate(keep);
        Ok(pt)
    }

    /// A line of Wireshark's `ikev2_decryption_table` for this SA, for
    /// operators who opt in to key export (None if Wireshark cannot
    /// decrypt this cipher).
    pub fn wireshark_line(&self) -> Option<Zeroizing<String>> {
        use std::fmt::Write;
        let enc = self.cipher.wireshark_name()?;
        let integ = match self.cipher {
            Cipher::Cbc { integ, .. } => integ.wireshark_name(),
            Cipher::Aead { .. } => "NONE [RFC4306]",
        };
        let [ei, er, ai, ar] = [Sk::Ei, Sk::Er, Sk::Ai, Sk::Ar].map(|k| self.sk(k));
        let mut line = secret_buffer([ei, er, ai, ar].iter().map(|k| 2 * k.len()).sum::<usize>() + 160);
        // Byte fields are bare hex in Wireshark's UAT files; enums are quoted.
        let _ = write!(line, "{:016x},{:016x},", self.spi_i, self.spi_r);
        push_hex(&mut line, ei);
        line.push(',');
        push_hex(&mut line, er);
        let _ = write!(line, ",\"{enc}\",");
        push_hex(&mut line, ai);
        line.push(',');
        push_hex(&mut line, ar);
        let _ = write!(line, ",\"{integ}\"");
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmsec_wire::ike::{DhGroup, PrfId};

    fn suites() -> Vec<IkeSuite> {
        let mut v = Vec::new();
        for (encr, bits, integ) in [
            (EncrId::AesGcm16, 128, IntegId::None),
            (EncrId::AesGcm16, 256, IntegId::None),
            (EncrId::ChaCha20Poly1305, 256, IntegId::None),
            (EncrId::AesCbc, 128, IntegId::HmacSha2_256_128),
            (EncrId::AesCbc, 256, IntegId::HmacSha2_384_192),
            (EncrId::AesCbc, 256, IntegId::HmacSha2_512_256),
        ] {
            for prf in [PrfId::HmacSha2_256, PrfId::HmacSha2_384, PrfId::HmacSha2_512] {
                v.push(IkeSuite { encr, key_bits: bits, prf, integ, dh: DhGroup::X25519 });
            }
        }
        v
    }

    #[test]
    fn encrypt_decrypt_round_trip_every_suite() {
        let rng = SystemRandom::new();
        for s in suites() {
            let mut k = IkeSaKeys::derive(None, &s, &[7; 32], &[1; 32], &[2; 32], 11, 22).unwrap();
            let mut header = [0u8; 28];
            header[17] = 0x20;
            for len in [0usize, 1, 15, 16, 17, 100] {
                let inner = vec![0x5a; len];
                let msg = k.encrypt(&rng, true, &header, 35, &inner).unwrap();
                assert_eq!(u32::from_be_bytes(msg[24..28].try_into().unwrap()) as usize, msg.len());
                assert_eq!(&k.decrypt(true, &msg, 28).unwrap()[..], &inner[..], "{s:?} {len}");
                // The other direction's keys do not open it.
                assert!(k.decrypt(false, &msg, 28).is_err());
                for i in [0usize, 20, 30, msg.len() - 1] {
                    let mut bad = msg.clone();
                    bad[i] ^= 1;
                    assert!(k.decrypt(true, &bad, 28).is_err(), "{s:?} flip {i}");
                }
            }
        }
    }

    #[test]
    fn key_lengths_follow_the_suite() {
        let k = IkeSaKeys::derive(None, &suites()[9], &[7; 32], &[1; 32], &[2; 32], 1, 2).unwrap();
        assert_eq!(k.cipher, Cipher::Cbc { key_len: 16, integ: Integ::Sha256_128 });
        let lens = Sk::ALL.map(|x| k.sk(x).len());
        assert_eq!(lens, [32, 32, 32, 16, 16, 32, 32]);
        // One buffer of exactly the keys, each where prf+ put it.
        assert_eq!((k.km.len(), k.km.capacity()), (192, 192));
        let seed = [&[1; 32][..], &[2; 32], &1u64.to_be_bytes(), &2u64.to_be_bytes()].concat();
        let km = k.prf.prf_plus(&k.prf.prf(&[[1; 32], [2; 32]].concat(), &[&[7; 32]]), &seed, 192);
        assert_eq!(Sk::ALL.map(|x| k.sk(x).as_ptr() as usize - k.km.as_ptr() as usize), [0, 32, 64, 96, 112, 128, 160]);
        assert_eq!((k.sk(Sk::Ar), k.sk(Sk::Pr)), (&km[64..96], &km[160..192]));
        let k = IkeSaKeys::derive(None, &suites()[1], &[7; 32], &[1; 32], &[2; 32], 1, 2).unwrap();
        assert_eq!(Sk::ALL.map(|x| k.sk(x).len()), [48, 0, 0, 20, 20, 48, 48]);
    }
}
