//! Diffie-Hellman for IKEv2: X25519 (RFC 8031), ECP-256 and ECP-384
//! (RFC 5903, points as x || y, shared secret the x coordinate), and
//! MODP-2048 (RFC 3526 group 14).
use std::sync::OnceLock;

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U512, U2048};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use ring::rand::{SecureRandom, SystemRandom};
use wasmsec_wire::ike::DhGroup;
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;

/// The groups this vault implements.
pub const SUPPORTED: [DhGroup; 4] = [DhGroup::X25519, DhGroup::Ecp256, DhGroup::Ecp384, DhGroup::Modp2048];

/// RFC 3526 section 3, the 2048-bit MODP group's prime; the generator is 2.
const MODP_2048_P: U2048 = U2048::from_be_hex(
    "\
FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD\
EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED\
EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F\
83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B\
E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510\
15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);
const MODP_2048_LEN: usize = 256;
/// Private exponent length: 512 bits, well above twice the group's ~112-bit strength.
const MODP_EXPONENT_LEN: usize = U512::BYTES;

/// A DH private value, used once.
pub enum Private {
    Ring { group: DhGroup, key: EphemeralPrivateKey },
    Modp { x: Zeroizing<Vec<u8>> },
}

impl Private {
    pub fn group(&self) -> DhGroup {
        match self {
            Private::Ring { group, .. } => *group,
            Private::Modp { .. } => DhGroup::Modp2048,
        }
    }
}

fn ring_alg(group: DhGroup) -> Option<&'static agreement::Algorithm> {
    match group {
        DhGroup::X25519 => Some(&agreement::X25519),
        DhGroup::Ecp256 => Some(&agreement::ECDH_P256),
        DhGroup::Ecp384 => Some(&agreement::ECDH_P384),
        _ => None,
    }
}

/// Length of a group's public value on the wire (the KE payload's data).
pub fn public_len(group: DhGroup) -> Option<usize> {
    match group {
        DhGroup::X25519 => Some(32),
        DhGroup::Ecp256 => Some(64),
        DhGroup::Ecp384 => Some(96),
        DhGroup::Modp2048 => Some(MODP_2048_LEN),
        _ => None,
    }
}

/// `base` to the power of the secret exponent `x` (big-endian,
/// [`MODP_EXPONENT_LEN`] bytes) modulo the MODP-2048 prime, in constant
/// time: crypto-bigint walks all 512 exponent bits in fixed windows in
/// Montgomery form and picks each window's table entry without branching
/// on it, so the time says nothing about the private value. The exponent's
/// copy is wiped; crypto-bigint's own stack temporaries are not.
fn modp_pow(base: &U2048, x: &[u8]) -> U2048 {
    static PARAMS: OnceLock<DynResidueParams<{ U2048::LIMBS }>> = OnceLock::new();
    let params = *PARAMS.get_or_init(|| DynResidueParams::new(&MODP_2048_P));
    let mut e = U512::from_be_slice(x);
    let r = DynResidue::new(base, params).pow_bounded_exp(&e, MODP_EXPONENT_LEN * 8).retrieve();
    e.zeroize();
    r
}

/// A fresh private value and the public value to send.
pub fn generate(group: DhGroup, rng: &SystemRandom) -> Result<(Private, Vec<u8>), CryptoError> {
    if let Some(alg) = ring_alg(group) {
        let key = EphemeralPrivateKey::generate(alg, rng).map_err(|_| CryptoError::Internal)?;
        let public = key.compute_public_key().map_err(|_| CryptoError::Internal)?;
        let mut p = public.as_ref().to_vec();
        if group != DhGroup::X25519 {
            p.remove(0); // RFC 5903 section 7: no 0x04 point-format octet
        }
        return Ok((Private::Ring { group, key }, p));
    }
    if group == DhGroup::Modp2048 {
        let mut x = Zeroizing::new(vec![0u8; MODP_EXPONENT_LEN]);
        rng.fill(&mut x).map_err(|_| CryptoError::Internal)?;
        let y = modp_pow(&U2048::from_u8(2), &x);
        return Ok((Private::Modp { x }, y.to_be_bytes().to_vec()));
    }
    Err(CryptoError::Unsupported)
}

/// The shared secret g^ir from our private value and the peer's public value.
pub fn complete(private: Private, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let group = private.group();
    if public_len(group) != Some(peer.len()) {
        return Err(CryptoError::BadPeerValue);
    }
    match private {
        Private::Ring { key, .. } => {
            let alg = ring_alg(group).ok_or(CryptoError::Unsupported)?;
            let mut p = Vec::with_capacity(peer.len() + 1);
            if group != DhGroup::X25519 {
                p.push(0x04);
            }
            p.extend_from_slice(peer);
            agreement::agree_ephemeral(key, &UnparsedPublicKey::new(alg, &p), |k| Zeroizing::new(k.to_vec()))
                .map_err(|_| CryptoError::BadPeerValue)
        }
        Private::Modp { x } => {
            // The length was checked above.
            let y = U2048::from_be_slice(peer);
            // Reject 0, 1 and p-1 and anything >= p (RFC 7296 section 5 / NIST SP 800-56A checks).
            if y <= U2048::ONE || y >= MODP_2048_P.wrapping_sub(&U2048::ONE) {
                return Err(CryptoError::BadPeerValue);
            }
            let mut s = modp_pow(&y, &x);
            let mut bytes = s.to_be_bytes();
            let secret = Zeroizing::new(bytes.to_vec());
            bytes.zeroize();
            s.zeroize();
            Ok(secret)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_for_every_group() {
        let rng = SystemRandom::new();
        for g in SUPPORTED {
            let (a, pa) = generate(g, &rng).unwrap();
            let (b, pb) = generate(g, &rng).unwrap();
            assert_eq!(Some(pa.len()), public_len(g));
            let s1 = complete(a, &pb).unwrap();
            let s2 = complete(b, &pa).unwrap();
            assert_eq!(*s1, *s2, "group {g}");
        }
    }

    /// Known answers that need no second implementation: 2^1024 is below
    /// the prime, so it comes out as it is; 2^2048 is p's complement in
    /// 2048 bits (p < 2^2048 < 2p); and the exponent's every bit counts.
    #[test]
    fn modp_exponentiation_gives_known_answers() {
        let exponent = |bit: usize| {
            let mut x = [0u8; MODP_EXPONENT_LEN];
            x[MODP_EXPONENT_LEN - 1 - bit / 8] = 1 << (bit % 8);
            x
        };
        let two = U2048::from_u8(2);
        assert_eq!(modp_pow(&two, &exponent(10)), U2048::ONE.shl_vartime(1024));
        assert_eq!(modp_pow(&two, &exponent(11)), U2048::ZERO.wrapping_sub(&MODP_2048_P));
        assert_eq!(modp_pow(&two, &[0; MODP_EXPONENT_LEN]), U2048::ONE);
        // The top bit counts: 2^(2^511) is the square of 2^(2^510).
        let square = modp_pow(&modp_pow(&two, &exponent(510)), &exponent(1));
        assert_eq!(modp_pow(&two, &exponent(511)), square);
        assert_ne!(square, modp_pow(&two, &exponent(510)));
    }

    #[test]
    fn bad_peer_values_are_refused() {
        let rng = SystemRandom::new();
        for g in SUPPORTED {
            let (a, _) = generate(g, &rng).unwrap();
            assert_eq!(complete(a, &[1, 2, 3]).err(), Some(CryptoError::BadPeerValue));
        }
        let (a, _) = generate(DhGroup::Modp2048, &rng).unwrap();
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(complete(a, &one).err(), Some(CryptoError::BadPeerValue));
        // p - 1 and p are refused, p - 2 is taken.
        let p_minus = |k: u8| MODP_2048_P.wrapping_sub(&U2048::from_u8(k)).to_be_bytes().to_vec();
        for (peer, ok) in [(p_minus(1), false), (p_minus(0), false), (p_minus(2), true)] {
            let (a, _) = generate(DhGroup::Modp2048, &rng).unwrap();
            assert_eq!(complete(a, &peer).is_ok(), ok);
        }
        let (a, _) = generate(DhGroup::Ecp256, &rng).unwrap();
        assert_eq!(complete(a, &[0x11; 64]).err(), Some(CryptoError::BadPeerValue), "not on the curve");
        assert!(generate(DhGroup::from(5), &rng).is_err());
    }
}
