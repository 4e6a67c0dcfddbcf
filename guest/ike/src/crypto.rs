//! What the engine asks of the host's keystore. Every secret stays there;
//! the engine holds handles (see `wit/deps/crypto/crypto.wit`, `ike-keys`).

use std::net::IpAddr;

use wasmsec_wire::ike::{DhGroup, PayloadType};

/// Opaque name of a secret in the host keystore.
pub type Handle = u64;

pub use wasmsec_wire::crypto::{ChildKeying, ChildSuite, CryptoError, IkeSuite, KeyExchange};

/// ESP key handles for a new CHILD SA, as the host's ESP keystore knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildKeys {
    /// The host's handle on the key we seal with.
    pub outbound: Handle,
    /// The host's handle on the key we open with.
    pub inbound: Handle,
}

/// What the engine asks its host: randomness, the key schedule and
/// ciphers behind handles, and policy decisions.
pub trait IkeCrypto {
    /// May the peer of IKE SA `ike_spi` (ours; its keys `sa`) bring it up?
    /// Asked at IKE_AUTH once its AUTH verified, in both roles. Without a
    /// policy: yes.
    fn authorize(
        &mut self,
        sa: Handle,
        ike_spi: u64,
        request: &crate::policy::AuthorizeRequest,
    ) -> crate::policy::Decision {
        let _ = (sa, ike_spi, request);
        crate::policy::Decision::Accept(Default::default())
    }
    /// Random bytes (nonces, SPIs).
    fn random(&mut self, buf: &mut [u8]);
    /// The COOKIE check of section 2.6, the secret kept by the host: `None`
    /// if `offered` is a valid cookie for this initiator, else the cookie to
    /// send back.
    fn cookie(&mut self, spi_i: u64, ni: &[u8], initiator: IpAddr, offered: Option<&[u8]>) -> Option<Vec<u8>>;
    /// A fresh DH private value (kept by the host) and its public value.
    fn dh_generate(&mut self, group: DhGroup) -> Result<(Handle, Vec<u8>), CryptoError>;
    /// Complete DH and derive SKEYSEED and SK_* (RFC 7296 section 2.14),
    /// or with `old` those of the IKE SA replacing it (section 2.18); the
    /// DH handle is consumed. Returns the new IKE SA's key handle.
    fn derive_ike_sa(&mut self, old: Option<Handle>, kx: &KeyExchange) -> Result<Handle, CryptoError>;
    /// A whole message with an Encrypted payload holding `inner`.
    fn encrypt(
        &mut self,
        sa: Handle,
        from_initiator: bool,
        header: &[u8; 28],
        first: PayloadType,
        inner: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    /// The inner payload chain of the Encrypted payload at `sk_offset`.
    fn decrypt(
        &mut self,
        sa: Handle,
        from_initiator: bool,
        msg: &[u8],
        sk_offset: usize,
    ) -> Result<Vec<u8>, CryptoError>;
    /// Our AUTH data for PSK authentication (section 2.15); the host knows
    /// which side of the IKE SA we are.
    fn psk_auth(
        &mut self,
        sa: Handle,
        psk: Handle,
        real_message: &[u8],
        nonce: &[u8],
        id_body: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    /// Whether the peer's AUTH data `auth` verifies with `psk` (section
    /// 2.15). The host then holds the IKE SA as authenticated with that key:
    /// CHILD SA keys are derived only from such an IKE SA, and installed
    /// only for the connection owning the key.
    fn verify_psk_auth(
        &mut self,
        sa: Handle,
        psk: Handle,
        real_message: &[u8],
        nonce: &[u8],
        id_body: &[u8],
        auth: &[u8],
    ) -> Result<bool, CryptoError>;
    /// Derive a CHILD SA's keys (section 2.17) into the ESP keystore; with
    /// PFS from a new DH exchange as well.
    fn child_keys(&mut self, k: &ChildKeying) -> Result<ChildKeys, CryptoError>;
    /// Destroy a secret (IKE SA keys, DH value, ESP key).
    fn destroy(&mut self, h: Handle);
}
