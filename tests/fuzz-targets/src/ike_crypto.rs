//! The IKE engine's crypto trait with no secrets at all, for fuzzing: an
//! Encrypted payload carries its inner payloads in the clear (no IV, no
//! ICV), AUTH is a constant, DH values are fixed bytes, every derivation
//! succeeds with a fresh handle. A fuzzer can then write what a peer with
//! the keys would have sent.
use std::net::IpAddr;

use wasmsec_ike::crypto::{ChildKeying, ChildKeys, CryptoError, Handle, IkeCrypto, KeyExchange};
use wasmsec_wire::ike::{DhGroup, PayloadType};

/// The AUTH data every side computes, so AUTH always verifies.
pub const AUTH: [u8; 32] = [0xa5; 32];
/// The COOKIE the responder asks for and accepts.
pub const COOKIE: &[u8] = b"fuzz-cookie";

/// Deterministic, secret-free crypto.
#[derive(Debug, Default)]
pub struct ClearCrypto {
    next: Handle,
    /// Mixed into "random" bytes, so two ends never draw the same nonces
    /// (a simultaneous rekey is decided by comparing them).
    salt: u8,
}

impl ClearCrypto {
    /// A provider whose random bytes differ from those of another `salt`.
    pub fn salted(salt: u8) -> ClearCrypto {
        ClearCrypto { next: 0, salt }
    }

    fn handle(&mut self) -> Handle {
        self.next += 1;
        self.next
    }
}

/// Length of a group's public value.
fn public_len(g: DhGroup) -> Option<usize> {
    match g {
        DhGroup::X25519 => Some(32),
        DhGroup::Ecp256 => Some(64),
        DhGroup::Ecp384 => Some(96),
        DhGroup::Modp2048 => Some(256),
        _ => None,
    }
}

impl IkeCrypto for ClearCrypto {
    fn random(&mut self, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (self.next as u8).wrapping_add(i as u8).wrapping_mul(3) ^ self.salt | 1;
        }
        self.next += 1;
    }

    fn cookie(&mut self, _: u64, _: &[u8], _: IpAddr, offered: Option<&[u8]>) -> Option<Vec<u8>> {
        if offered == Some(COOKIE) { None } else { Some(COOKIE.to_vec()) }
    }

    fn dh_generate(&mut self, group: DhGroup) -> Result<(Handle, Vec<u8>), CryptoError> {
        let n = public_len(group).ok_or(CryptoError::Unsupported)?;
        Ok((self.handle(), vec![0x42; n]))
    }

    fn derive_ike_sa(&mut self, _: Option<Handle>, kx: &KeyExchange<'_>) -> Result<Handle, CryptoError> {
        if Some(kx.peer_public.len()) != public_len(kx.suite.dh) {
            return Err(CryptoError::BadPeerValue);
        }
        Ok(self.handle())
    }

    /// The header, then an Encrypted payload (type 46) whose body is `inner`.
    fn encrypt(
        &mut self,
        _: Handle,
        _: bool,
        h: &[u8; 28],
        first: PayloadType,
        inner: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let total = 28 + 4 + inner.len();
        let mut m = h.to_vec();
        m[16] = 46;
        m[24..28].copy_from_slice(&(total as u32).to_be_bytes());
        m.extend_from_slice(&[first.raw(), 0]);
        m.extend_from_slice(&((4 + inner.len()) as u16).to_be_bytes());
        m.extend_from_slice(inner);
        Ok(m)
    }

    fn decrypt(&mut self, _: Handle, _: bool, msg: &[u8], off: usize) -> Result<Vec<u8>, CryptoError> {
        let len = msg.get(off + 2..off + 4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        match len {
            Some(n) if n >= 4 && off + n <= msg.len() => Ok(msg[off + 4..off + n].to_vec()),
            _ => Err(CryptoError::BadLength),
        }
    }

    fn psk_auth(&mut self, _: Handle, _: Handle, _: &[u8], _: &[u8], _: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(AUTH.to_vec())
    }

    fn verify_psk_auth(
        &mut self,
        _: Handle,
        _: Handle,
        _: &[u8],
        _: &[u8],
        _: &[u8],
        auth: &[u8],
    ) -> Result<bool, CryptoError> {
        Ok(auth == AUTH)
    }

    fn child_keys(&mut self, _: &ChildKeying<'_>) -> Result<ChildKeys, CryptoError> {
        Ok(ChildKeys { outbound: self.handle(), inbound: self.handle() })
    }

    fn destroy(&mut self, _: Handle) {}
}
