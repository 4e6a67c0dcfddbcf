//! Why the host refused or failed a crypto operation: the WIT
//! `crypto-error` as the guest engines (ESP and IKE) both see it, one type
//! for both. (Not a wire format; it lives here because every guest crate
//! depends on this one.)

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
}

impl CryptoError {
    /// In the order `crypto-error` declares its cases in
    /// `wit/deps/crypto/crypto.wit`, so a component shell converts the WIT
    /// enum with `CryptoError::from_wit(e as u8)`.
    const WIT_ORDER: [CryptoError; 8] = [
        CryptoError::UnknownKey,
        CryptoError::WrongKeyKind,
        CryptoError::IntegrityFailed,
        CryptoError::BadLength,
        CryptoError::KeyExpired,
        CryptoError::Unsupported,
        CryptoError::BadPeerValue,
        CryptoError::Internal,
    ];

    /// The error with this WIT case index (an index past the end is `Internal`).
    pub fn from_wit(case: u8) -> CryptoError {
        Self::WIT_ORDER.get(usize::from(case)).copied().unwrap_or(CryptoError::Internal)
    }
}

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
        let ours = ["unknown-key", "wrong-key-kind", "integrity-failed", "bad-length", "key-expired", "unsupported", "bad-peer-value", "internal"];
        assert_eq!(cases, ours);
        for (i, _) in ours.iter().enumerate() {
            assert_eq!(CryptoError::from_wit(i as u8), CryptoError::WIT_ORDER[i]);
        }
        assert_eq!(CryptoError::from_wit(200), CryptoError::Internal);
    }
}
