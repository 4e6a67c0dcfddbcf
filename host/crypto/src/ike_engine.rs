//! The IKE engine's [`IkeCrypto`] on a [`Vault`], with CHILD SA keys kept
//! as keying material by handle: what engine tests and fuzzing run the
//! engine on, natively. The real host reaches its vault through the IKE
//! component's imports instead (`host/src/wasm/ike.rs`).
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use wasmsec_ike::crypto::{ChildKeying, ChildKeys, CryptoError as E, Handle, IkeCrypto, KeyExchange};
use wasmsec_wire::ike::{DhGroup, PayloadType};
use zeroize::Zeroizing;

use crate::Vault;

/// A vault plus an "ESP keystore" of CHILD SA keying material by handle.
pub struct EngineCrypto {
    pub vault: Vault,
    pub esp: HashMap<Handle, Zeroizing<Vec<u8>>>,
    next_esp: Handle,
    /// The clock COOKIE secrets rotate by (the host's, not the engine's).
    started: Instant,
    /// The policy decisions (tests); none: accept everyone.
    pub policy: Option<TestPolicy>,
    /// A seeded stream for the engine's nonces and SPIs instead of the
    /// vault's randomness (tests), so that a run of a randomised test
    /// repeats from its seed.
    pub test_random: Option<u64>,
}

/// The next value of a seeded xorshift64* stream: not for keys, only to
/// repeat a randomised test's choices from its seed (`test_random`, and
/// the tests' own chaos).
pub fn test_stream(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A policy decision function (tests).
pub type TestPolicy = Box<dyn FnMut(&wasmsec_ike::AuthorizeRequest) -> wasmsec_ike::Decision>;

impl EngineCrypto {
    pub fn new(vault: Vault) -> EngineCrypto {
        // ESP handles far from the vault's, so a mix-up shows.
        EngineCrypto {
            vault,
            esp: HashMap::new(),
            next_esp: 1 << 40,
            started: Instant::now(),
            policy: None,
            test_random: None,
        }
    }
}

impl IkeCrypto for EngineCrypto {
    fn authorize(
        &mut self,
        _: Handle,
        _ike_spi: u64,
        request: &wasmsec_ike::AuthorizeRequest,
    ) -> wasmsec_ike::Decision {
        match &mut self.policy {
            Some(p) => p(request),
            None => wasmsec_ike::Decision::Accept(Default::default()),
        }
    }

    fn random(&mut self, buf: &mut [u8]) {
        let Some(state) = &mut self.test_random else { return self.vault.random(buf) };
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&test_stream(state).to_le_bytes()[..chunk.len()]);
        }
    }

    fn cookie(&mut self, spi_i: u64, ni: &[u8], initiator: IpAddr, offered: Option<&[u8]>) -> Option<Vec<u8>> {
        let now = self.started.elapsed().as_millis() as u64;
        let addr = match initiator {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        self.vault.cookie(now, spi_i, ni, &addr, offered)
    }

    fn dh_generate(&mut self, group: DhGroup) -> Result<(Handle, Vec<u8>), E> {
        self.vault.dh_generate(group)
    }

    fn derive_ike_sa(&mut self, old: Option<Handle>, kx: &KeyExchange) -> Result<Handle, E> {
        self.vault.derive_ike_sa(old, kx)
    }

    fn encrypt(&mut self, sa: Handle, fi: bool, h: &[u8; 28], first: PayloadType, inner: &[u8]) -> Result<Vec<u8>, E> {
        self.vault.encrypt(sa, fi, h, first.raw(), inner)
    }

    fn decrypt(&mut self, sa: Handle, fi: bool, msg: &[u8], off: usize) -> Result<Vec<u8>, E> {
        self.vault.decrypt(sa, fi, msg, off).map(|z| z.to_vec())
    }

    fn psk_auth(&mut self, sa: Handle, psk: Handle, m: &[u8], n: &[u8], id: &[u8]) -> Result<Vec<u8>, E> {
        self.vault.psk_auth(sa, psk, m, n, id)
    }

    fn verify_psk_auth(&mut self, sa: Handle, psk: Handle, m: &[u8], n: &[u8], id: &[u8], a: &[u8]) -> Result<bool, E> {
        self.vault.verify_psk_auth(sa, psk, m, n, id, a)
    }

    fn child_keys(&mut self, k: &ChildKeying) -> Result<ChildKeys, E> {
        let km = self.vault.child_keymat(k)?;
        let mut put = |k: Zeroizing<Vec<u8>>| {
            self.next_esp += 1;
            self.esp.insert(self.next_esp, k);
            self.next_esp
        };
        Ok(ChildKeys { outbound: put(km.outbound), inbound: put(km.inbound) })
    }

    fn destroy(&mut self, h: Handle) {
        if !self.vault.destroy(h) {
            self.esp.remove(&h);
        }
    }
}
