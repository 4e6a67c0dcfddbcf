//! The ESP transforms the data plane implements, named as strongSwan names
//! them, and the one mapping from IANA's transform IDs to them.
use ring::aead;
use ring::hmac;
use wasmsec_wire::ike::{EncrId, IntegId};

/// HMAC-SHA2 integrity for ESP (RFC 4868), truncated to half the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integ {
    Sha256_128,
    Sha384_192,
    Sha512_256,
}

impl Integ {
    pub(crate) fn key_len(&self) -> usize {
        match self {
            Integ::Sha256_128 => 32,
            Integ::Sha384_192 => 48,
            Integ::Sha512_256 => 64,
        }
    }

    pub(crate) fn icv_len(&self) -> usize {
        self.key_len() / 2
    }

    pub(crate) fn alg(&self) -> hmac::Algorithm {
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

    /// The transform our data plane implements for a negotiated CHILD SA
    /// suite (IANA IDs, RFC 7296 section 3.3.2), if any.
    pub fn from_iana(encr: u16, key_bits: u16, integ: u16) -> Option<EspAlgorithm> {
        match (EncrId::from(encr), key_bits, IntegId::from(integ)) {
            (EncrId::AesGcm16, 128, IntegId::None) => Some(EspAlgorithm::Aes128Gcm16),
            (EncrId::AesGcm16, 256, IntegId::None) => Some(EspAlgorithm::Aes256Gcm16),
            (EncrId::ChaCha20Poly1305, _, IntegId::None) => Some(EspAlgorithm::ChaCha20Poly1305),
            (EncrId::AesCbc, 128 | 256, i) => Some(EspAlgorithm::AesCbc {
                key_bits,
                integ: match i {
                    IntegId::HmacSha2_256_128 => Integ::Sha256_128,
                    IntegId::HmacSha2_384_192 => Integ::Sha384_192,
                    IntegId::HmacSha2_512_256 => Integ::Sha512_256,
                    _ => return None,
                },
            }),
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            EspAlgorithm::Aes128Gcm16 => "aes128gcm16".into(),
            EspAlgorithm::Aes256Gcm16 => "aes256gcm16".into(),
            EspAlgorithm::ChaCha20Poly1305 => "chacha20poly1305".into(),
            EspAlgorithm::AesCbc { key_bits, integ } => format!("aes{key_bits}-{}", integ.name()),
        }
    }

    pub(crate) fn ring_alg(&self) -> Option<&'static aead::Algorithm> {
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

    pub(crate) fn iv_len(&self) -> usize {
        match self {
            EspAlgorithm::AesCbc { .. } => CBC_BLOCK,
            _ => IV_LEN,
        }
    }

    pub(crate) fn icv_len(&self) -> usize {
        match self {
            EspAlgorithm::AesCbc { integ, .. } => integ.icv_len(),
            _ => ICV_LEN,
        }
    }

    /// What the ESP engine pads the payload to: at least 4 (RFC 4303
    /// section 2.4), the block size for AES-CBC. AES-GCM needs only 4
    /// (RFC 4106 section 3.2), but we pad it to the AES block, which the
    /// RFC allows (any Pad Length up to 255): ring's AES-GCM runs whole
    /// blocks through its vector loop and a trailing partial block through
    /// a separate pass, and the 2-byte trailer leaves every payload with
    /// one. Sealing and opening 1400-byte packets padded to 16 took 508 ns
    /// against 590 ns padded to 4, and an IMIX 268 against 318 ns
    /// (`cargo xtask bench`'s raw path, this machine, 2026-12-01), for on
    /// average 6 more bytes on the wire. ChaCha20-Poly1305 keeps 4.
    pub fn pad_align(&self) -> u8 {
        match self {
            EspAlgorithm::AesCbc { .. } | EspAlgorithm::Aes128Gcm16 | EspAlgorithm::Aes256Gcm16 => CBC_BLOCK as u8,
            EspAlgorithm::ChaCha20Poly1305 => 4,
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
pub(crate) const CBC_BLOCK: usize = 16;
/// The most `seal` prepends (header and a CBC IV).
pub const SEAL_HEADROOM: usize = wasmsec_wire::esp::HEADER_LEN + CBC_BLOCK;
