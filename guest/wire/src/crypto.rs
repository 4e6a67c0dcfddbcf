//! What the engines and the host's key vault say to each other about keys:
//! the suites a key schedule runs with, the inputs of an IKE SA's and a
//! CHILD SA's derivation, and why an operation was refused. One type per
//! concept for the ESP engine, the IKE engine and the vault; the component
//! shells convert to and from the WIT records. (Not a wire format; it lives
//! here because every guest crate and the vault depend on this crate.)

use core::fmt;

use crate::ike::{DhGroup, EncrId, IntegId, PrfId};

/// An IKE SA's algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeSuite {
    /// The cipher of the SK payload.
    pub encr: EncrId,
    /// Key length in bits (256 for ChaCha20-Poly1305).
    pub key_bits: u16,
    /// The PRF of the key schedule and AUTH.
    pub prf: PrfId,
    /// `None` with an AEAD cipher.
    pub integ: IntegId,
    /// The key exchange of IKE_SA_INIT (and of a rekey's KE payloads).
    pub dh: DhGroup,
}

/// A CHILD SA's algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildSuite {
    /// ESP's cipher.
    pub encr: EncrId,
    /// Its key length in bits.
    pub key_bits: u16,
    /// `None` with an AEAD cipher.
    pub integ: IntegId,
    /// Extended sequence numbers (RFC 4303 section 2.2.1).
    pub esn: bool,
}

/// What an IKE SA's keys come from (RFC 7296 section 2.14): the suite, our
/// DH value (consumed) and the peer's public value, both nonces and both SPIs.
#[derive(Debug, Clone, Copy)]
pub struct KeyExchange<'a> {
    /// The chosen algorithms.
    pub suite: &'a IkeSuite,
    /// The vault's handle on our DH private value.
    pub dh: u64,
    /// The peer's KE payload data.
    pub peer_public: &'a [u8],
    /// The initiator's nonce.
    pub ni: &'a [u8],
    /// The responder's nonce.
    pub nr: &'a [u8],
    /// The initiator's SPI.
    pub spi_i: u64,
    /// The responder's SPI.
    pub spi_r: u64,
    /// We are this IKE SA's original initiator (we sent IKE_SA_INIT, or the
    /// CREATE_CHILD_SA request that rekeyed it): our messages use SK_ei.
    pub we_initiated: bool,
}

/// What a CHILD SA's keys come from (RFC 7296 section 2.17).
#[derive(Debug, Clone, Copy)]
pub struct ChildKeying<'a> {
    /// The vault's handle on the IKE SA whose SK_d keys it.
    pub ike_sa: u64,
    /// The chosen ESP algorithms.
    pub suite: &'a ChildSuite,
    /// The nonce of the request that created it.
    pub ni: &'a [u8],
    /// The nonce of the response.
    pub nr: &'a [u8],
    /// We sent that request: our outbound key is the initiator's.
    pub we_initiated: bool,
    /// With PFS: our DH value (consumed) and the peer's public value.
    pub pfs: Option<(u64, &'a [u8])>,
}

/// Why the host refused or failed a crypto operation (the WIT `crypto-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The handle does not name a key this instance may use.
    UnknownKey,
    /// The key exists but is of another kind than the operation needs.
    WrongKeyKind,
    /// The integrity check failed: forged or corrupt.
    IntegrityFailed,
    /// A length is out of range.
    BadLength,
    /// The key may not be used any more.
    KeyExpired,
    /// The algorithm or group is not supported.
    Unsupported,
    /// The peer's public value is invalid.
    BadPeerValue,
    /// The host failed (entropy, internal error).
    Internal,
    /// The key already authenticated the packet's sequence number, or it
    /// is left of the SA's replay window.
    Replayed,
}

impl CryptoError {
    /// In the order `crypto-error` declares its cases in
    /// `wit/deps/crypto/crypto.wit`, so a component shell converts the WIT
    /// enum with `CryptoError::from_wit(e as u8)`.
    const WIT_ORDER: [CryptoError; 9] = [
        CryptoError::UnknownKey,
        CryptoError::WrongKeyKind,
        CryptoError::IntegrityFailed,
        CryptoError::BadLength,
        CryptoError::KeyExpired,
        CryptoError::Unsupported,
        CryptoError::BadPeerValue,
        CryptoError::Internal,
        CryptoError::Replayed,
    ];

    /// The error with this WIT case index (an index past the end is `Internal`).
    pub fn from_wit(case: u8) -> CryptoError {
        Self::WIT_ORDER.get(usize::from(case)).copied().unwrap_or(CryptoError::Internal)
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptoError::UnknownKey => "unknown handle",
            CryptoError::WrongKeyKind => "handle names another kind of secret",
            CryptoError::IntegrityFailed => "integrity check failed",
            CryptoError::BadLength => "length out of range",
            CryptoError::KeyExpired => "key expired",
            CryptoError::Unsupported => "algorithm not supported",
            CryptoError::BadPeerValue => "peer's public value is invalid",
            CryptoError::Internal => "internal crypto failure",
            CryptoError::Replayed => "sequence number already authenticated or left of the window",
        })
    }
}

impl core::error::Error for CryptoError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_order_matches_the_wit_file() {
        let wit = include_str!("../../../wit/deps/crypto/crypto.wit");
        let start = wit.find("enum crypto-error {").unwrap();
        let body = &wit[start..start + wit[start..].find('}').unwrap()];
        let cases: alloc::vec::Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.starts_with("enum") && l.ends_with(','))
            .map(|l| l.trim_end_matches(','))
            .collect();
        let ours = [
            "unknown-key",
            "wrong-key-kind",
            "integrity-failed",
            "bad-length",
            "key-expired",
            "unsupported",
            "bad-peer-value",
            "internal",
            "replayed",
        ];
        assert_eq!(cases, ours);
        for (i, _) in ours.iter().enumerate() {
            assert_eq!(CryptoError::from_wit(i as u8), CryptoError::WIT_ORDER[i]);
        }
        assert_eq!(CryptoError::from_wit(200), CryptoError::Internal);
    }
}
