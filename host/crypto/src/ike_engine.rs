//! The IKE engine's [`IkeCrypto`] on a [`Vault`], with CHILD SA keys kept
//! as keying material by handle: what engine tests and fuzzing run the
//! engine on, natively. The real host reaches its vault through the IKE
//! component's imports instead (`host/src/wasm/ike.rs`).
use std::collections::HashMap;

use wasmsec_ike::crypto::{ChildKeys, ChildSuite, CryptoError as E, Handle, IkeCrypto, IkeSuite, KeyExchange};
use wasmsec_wire::ike::{DhGroup, PayloadType};
use zeroize::Zeroizing;

use crate::{CryptoError, Vault};

/// A vault plus an "ESP keystore" of CHILD SA keying material by handle.
pub struct EngineCrypto {
    pub vault: Vault,
    pub esp: HashMap<Handle, Zeroizing<Vec<u8>>>,
    next_esp: Handle,
}

impl EngineCrypto {
    pub fn new(vault: Vault) -> EngineCrypto {
        // ESP handles far from the vault's, so a mix-up shows.
        EngineCrypto { vault, esp: HashMap::new(), next_esp: 1 << 40 }
    }
}

fn err(e: CryptoError) -> E {
    match e {
        CryptoError::UnknownKey => E::UnknownKey,
        CryptoError::WrongKeyKind => E::WrongKeyKind,
        CryptoError::IntegrityFailed => E::IntegrityFailed,
        CryptoError::BadLength => E::BadLength,
        CryptoError::KeyExpired => E::KeyExpired,
        CryptoError::Unsupported => E::Unsupported,
        CryptoError::BadPeerValue => E::BadPeerValue,
        _ => E::Internal,
    }
}

fn suite(s: &IkeSuite) -> crate::IkeSuite {
    crate::IkeSuite { encr: s.encr.raw(), key_bits: s.key_bits, prf: s.prf.raw(), integ: s.integ.raw(), dh: s.dh.raw() }
}

impl IkeCrypto for EngineCrypto {
    fn random(&mut self, buf: &mut [u8]) {
        self.vault.random(buf)
    }

    fn dh_generate(&mut self, group: DhGroup) -> Result<(Handle, Vec<u8>), E> {
        self.vault.dh_generate(group.raw()).map_err(err)
    }

    fn derive_ike_sa(&mut self, old: Option<Handle>, kx: &KeyExchange) -> Result<Handle, E> {
        let suite = suite(kx.suite);
        let exchange = crate::KeyExchange {
            suite: &suite,
            dh: kx.dh,
            peer_public: kx.peer_public,
            ni: kx.ni,
            nr: kx.nr,
            spi_i: kx.spi_i,
            spi_r: kx.spi_r,
        };
        self.vault.derive_ike_sa(old, &exchange).map_err(err)
    }

    fn encrypt(&mut self, sa: Handle, fi: bool, h: &[u8; 28], first: PayloadType, inner: &[u8]) -> Result<Vec<u8>, E> {
        self.vault.encrypt(sa, fi, h, first.raw(), inner).map_err(err)
    }

    fn decrypt(&mut self, sa: Handle, fi: bool, msg: &[u8], off: usize) -> Result<Vec<u8>, E> {
        self.vault.decrypt(sa, fi, msg, off).map(|z| z.to_vec()).map_err(err)
    }

    fn psk_auth(&mut self, sa: Handle, psk: Handle, fi: bool, m: &[u8], n: &[u8], id: &[u8]) -> Result<Vec<u8>, E> {
        self.vault.psk_auth(sa, psk, fi, m, n, id).map_err(err)
    }

    fn child_keys(
        &mut self,
        sa: Handle,
        s: &ChildSuite,
        ni: &[u8],
        nr: &[u8],
        we_initiated: bool,
        pfs: Option<(Handle, &[u8])>,
    ) -> Result<ChildKeys, E> {
        let cs = crate::ChildSuite { encr: s.encr.raw(), key_bits: s.key_bits, integ: s.integ.raw() };
        let km = self.vault.child_keymat(sa, &cs, ni, nr, pfs).map_err(err)?;
        let (out, inb) = if we_initiated {
            (km.initiator_to_responder, km.responder_to_initiator)
        } else {
            (km.responder_to_initiator, km.initiator_to_responder)
        };
        let mut put = |k: Zeroizing<Vec<u8>>| {
            self.next_esp += 1;
            self.esp.insert(self.next_esp, k);
            self.next_esp
        };
        Ok(ChildKeys { outbound: put(out), inbound: put(inb) })
    }

    fn destroy(&mut self, h: Handle) {
        if !self.vault.destroy(h) {
            self.esp.remove(&h);
        }
    }
}
