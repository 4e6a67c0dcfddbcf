//! The host's IKEv2 cryptography, behind handles.
//!
//! The IKE engine (a guest) never holds a secret: DH private values, g^ir,
//! SKEYSEED, SK_* and PSKs live in a [`Vault`] and are named by random
//! 64-bit handles. The engine asks the vault to generate DH values, derive
//! an IKE SA's keys, encrypt and decrypt Encrypted payloads, compute AUTH
//! and derive CHILD SA key material; what comes back is public (DH public
//! values, ciphertext, AUTH octets) or another handle. CHILD SA key
//! material goes from here straight into the ESP keystore, host-side.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

pub mod dh;
#[cfg(feature = "ike-engine")]
pub mod ike_engine;
pub mod prf;
pub mod sk;

pub use prf::Prf;
pub use sk::{Cipher, IkeSaKeys, Sk};
pub use wasmsec_wire::crypto::{ChildKeying, ChildSuite, CryptoError, IkeSuite, KeyExchange};
use wasmsec_wire::ike::DhGroup;

/// Compare two MACs in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The "Key Pad for IKEv2" of RFC 7296 section 2.15.
const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

enum Secret {
    Dh(dh::Private),
    Psk(Zeroizing<Vec<u8>>),
    IkeSa(Box<IkeSa>),
}

/// An IKE SA's keys and what the vault holds the guest to for them.
struct IkeSa {
    keys: IkeSaKeys,
    /// Fixed when the keys were derived: we encrypt only with our own side's
    /// SK_e and decrypt only with the peer's, so a guest cannot make the
    /// vault encrypt under the peer's key (and its nonces).
    we_initiated: bool,
    /// The nonce pairs CHILD SA keys were derived from (SHA-256 of Ni | Nr):
    /// each exchange keys one CHILD SA, once; a second derivation from the
    /// same nonces would hand out the same key material again.
    children_keyed: HashSet<[u8; 32]>,
    /// The nonce pair of the IKE_SA_INIT this IKE SA was made by (as in
    /// `children_keyed`), which its first CHILD SA is keyed from in
    /// IKE_AUTH without a key exchange (section 2.17); none for an IKE SA
    /// made by a rekey, which has no first CHILD SA of its own.
    first_child: Option<[u8; 32]>,
    /// The PSK (its handle) the peer's AUTH verified with here
    /// ([`Vault::verify_psk_auth`]), and the identification payload body
    /// it covered, inherited by the IKE SAs that rekey this one (section
    /// 2.18). Until then no CHILD SA is keyed from it, and the host
    /// installs a CHILD SA only for the connection that owns this PSK and
    /// asks the policy about this identity only: the guest's word on who
    /// the peer is counts for nothing.
    authenticated: Option<Authenticated>,
}

/// Who verified an IKE SA's peer: the PSK handle and the peer's ID body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authenticated {
    psk: u64,
    peer_id: Vec<u8>,
}

/// CHILD SA key derivations one IKE SA may make: far more than any rekey
/// schedule needs, few enough that a guest cannot fill the host's memory.
pub const MAX_CHILD_DERIVATIONS: usize = 100_000;

/// CHILD SA keying material, one block per direction (encryption key, with
/// salt for AEAD, followed by the integrity key if any).
pub struct ChildKeymat {
    /// The key we seal with.
    pub outbound: Zeroizing<Vec<u8>>,
    /// The key we open with.
    pub inbound: Zeroizing<Vec<u8>>,
    /// The PSK handle the IKE SA's peer authenticated with: only its
    /// connection's CHILD SAs may use these keys.
    pub authenticated_by: u64,
    /// How the keys were keyed: the host holds a CHILD SA's key exchange
    /// to what its proposals ask (PFS).
    pub key_exchange: ChildKeyExchange,
}

/// How a CHILD SA's keys were derived (RFC 7296 section 2.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKeyExchange {
    /// The IKE SA's first CHILD SA, made in IKE_AUTH from IKE_SA_INIT's
    /// nonces without a key exchange of its own.
    First,
    /// A CHILD SA made by CREATE_CHILD_SA, from its own nonces and, for
    /// perfect forward secrecy, a key exchange of this group.
    Created(Option<DhGroup>),
}

/// How long one COOKIE secret is used (RFC 7296 section 2.6 asks for
/// regular changes); cookies of the previous secret are still accepted.
pub const COOKIE_SECRET_MS: u64 = 120_000;

/// The responder's COOKIE secrets, rotated.
struct CookieSecrets {
    /// The secret cookies are made with now.
    current: Zeroizing<[u8; 32]>,
    /// The one before, still accepted.
    previous: Option<Zeroizing<[u8; 32]>>,
    /// Counts rotations; the cookie's first byte, so a check knows which
    /// secret made it.
    version: u8,
    /// When `current` retires (the caller's milliseconds).
    rotate_at: u64,
}

/// Holder of every IKE secret.
/// Live secrets at most before a new DH value is refused: the IKE guest
/// asks for those freely, and a broken one must not grow the host's memory
/// without end. 100,000 IKE SAs with their rekeys and half-open ones take
/// a fraction of it.
pub const MAX_SECRETS: usize = 1 << 20;

pub struct Vault {
    secrets: HashMap<u64, Secret>,
    /// [`MAX_SECRETS`], lower in tests.
    max_secrets: usize,
    rng: SystemRandom,
    /// COOKIE secrets, made at the first cookie.
    cookies: Option<CookieSecrets>,
    /// Copies of every secret created, for tests that prove no secret
    /// reaches a guest ([`Vault::new_audited`]); `None` in the daemon.
    audit: Option<Vec<Vec<u8>>>,
}

impl Default for Vault {
    fn default() -> Self {
        Vault::new()
    }
}

impl Vault {
    pub fn new() -> Vault {
        Vault {
            secrets: HashMap::new(),
            max_secrets: MAX_SECRETS,
            rng: SystemRandom::new(),
            cookies: None,
            audit: None,
        }
    }

    /// A vault that also keeps a copy of every secret it creates, so a test
    /// can search everything a guest received for them. Never used by the
    /// daemon: it defeats zeroization.
    pub fn new_audited() -> Vault {
        Vault { audit: Some(Vec::new()), ..Vault::new() }
    }

    /// The secrets recorded by an audited vault.
    pub fn audited_secrets(&self) -> &[Vec<u8>] {
        self.audit.as_deref().unwrap_or(&[])
    }

    fn record(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        if let Some(a) = &mut self.audit {
            a.push(secret.to_vec());
        }
    }

    /// Random bytes from the OS CSPRNG.
    pub fn random(&self, buf: &mut [u8]) {
        self.rng.fill(buf).expect("OS random number generator failed");
    }

    fn insert(&mut self, s: Secret) -> u64 {
        loop {
            let mut b = [0u8; 8];
            self.random(&mut b);
            let h = u64::from_ne_bytes(b);
            if h != 0 && !self.secrets.contains_key(&h) {
                self.secrets.insert(h, s);
                return h;
            }
        }
    }

    /// Number of live secrets (tests check nothing leaks).
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn insert_psk(&mut self, psk: Zeroizing<Vec<u8>>) -> u64 {
        self.record(&psk);
        self.insert(Secret::Psk(psk))
    }

    /// Put a new PSK under the handle of an old one (a reload found the
    /// key file changed): IKE SAs authenticated from then on use it,
    /// established ones are not touched (the PSK is used only in AUTH).
    /// Returns whether the key differed; `None` if `h` is not a PSK.
    pub fn replace_psk(&mut self, h: u64, psk: Zeroizing<Vec<u8>>) -> Option<bool> {
        // Not peer-reachable timing: both keys come from the operator.
        match self.secrets.get(&h) {
            Some(Secret::Psk(old)) if **old == *psk => return Some(false),
            Some(Secret::Psk(_)) => {}
            _ => return None,
        }
        self.record(&psk);
        self.secrets.insert(h, Secret::Psk(psk));
        Some(true)
    }

    /// Whether handle `h` names a live secret.
    pub fn contains(&self, h: u64) -> bool {
        self.secrets.contains_key(&h)
    }

    /// The handles of every live secret, PSKs included.
    pub fn handles(&self) -> Vec<u64> {
        self.secrets.keys().copied().collect()
    }

    /// Destroy a secret; true if it existed.
    pub fn destroy(&mut self, h: u64) -> bool {
        self.secrets.remove(&h).is_some()
    }

    /// The COOKIE check of RFC 7296 section 2.6 at time `now_ms`: `None` if
    /// `offered` is the cookie for this initiator (its SPI, nonce and
    /// address octets) under the current or the previous secret, else the
    /// cookie to send. A cookie is a version byte and HMAC-SHA256(secret,
    /// Ni | IPi | SPIi); the secret changes every [`COOKIE_SECRET_MS`].
    pub fn cookie(
        &mut self,
        now_ms: u64,
        spi_i: u64,
        ni: &[u8],
        initiator: &[u8],
        offered: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let rotate = self.cookies.as_ref().is_none_or(|c| now_ms >= c.rotate_at);
        if rotate {
            let mut fresh = Zeroizing::new([0u8; 32]);
            self.random(&mut fresh[..]);
            self.record(&fresh[..]);
            let old = self.cookies.take();
            let version = old.as_ref().map_or(0, |c| c.version.wrapping_add(1));
            self.cookies = Some(CookieSecrets {
                current: fresh,
                previous: old.map(|c| c.current),
                version,
                rotate_at: now_ms + COOKIE_SECRET_MS,
            });
        }
        let c = self.cookies.as_ref()?;
        let make = |secret: &[u8; 32], version: u8| {
            let mut ctx = ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret));
            ctx.update(ni);
            ctx.update(initiator);
            ctx.update(&spi_i.to_be_bytes());
            let mut cookie = vec![version];
            cookie.extend_from_slice(ctx.sign().as_ref());
            cookie
        };
        let current = make(&c.current, c.version);
        let valid = offered.is_some_and(|o| {
            let previous = c.previous.as_ref().map(|p| make(p, c.version.wrapping_sub(1)));
            ct_eq(o, &current) || previous.is_some_and(|p| ct_eq(o, &p))
        });
        if valid { None } else { Some(current) }
    }

    /// A fresh DH private value (kept here) and its public value.
    pub fn dh_generate(&mut self, group: DhGroup) -> Result<(u64, Vec<u8>), CryptoError> {
        if self.secrets.len() >= self.max_secrets {
            return Err(CryptoError::Internal);
        }
        let (private, public) = dh::generate(group, &self.rng)?;
        Ok((self.insert(Secret::Dh(private)), public))
    }

    /// Complete DH with the peer's public value and derive the IKE SA's keys
    /// (section 2.14), or with `old` the keys of the IKE SA that replaces it
    /// (section 2.18; `old` stays until it is destroyed). The DH private
    /// value is consumed and destroyed.
    pub fn derive_ike_sa(&mut self, old: Option<u64>, kx: &KeyExchange) -> Result<u64, CryptoError> {
        if let Some(o) = old {
            self.ike_sa(o)?;
        }
        let shared = self.complete_dh(kx.dh, Some(kx.suite.dh), kx.peer_public)?;
        let first_child = if old.is_none() { Some(nonce_pair(kx.ni, kx.nr)) } else { None };
        let old = old.map(|o| self.ike_sa_entry(o)).transpose()?;
        // A rekeyed IKE SA is authenticated as the one it replaces (no AUTH
        // is exchanged again, section 2.18); a new one not until its peer's
        // AUTH verifies.
        let authenticated = old.and_then(|o| o.authenticated.clone());
        let keys = IkeSaKeys::derive(old.map(|o| &o.keys), kx.suite, &shared, kx.ni, kx.nr, kx.spi_i, kx.spi_r)?;
        for k in keys.all_keys() {
            self.record(k);
        }
        let sa =
            IkeSa { keys, we_initiated: kx.we_initiated, children_keyed: HashSet::new(), first_child, authenticated };
        Ok(self.insert(Secret::IkeSa(Box::new(sa))))
    }

    /// Take DH private value `dh` (of `group`, if given) out of the vault and
    /// complete the exchange. The private value is gone afterwards, whatever
    /// the outcome, unless `dh` names another kind of secret.
    fn complete_dh(
        &mut self,
        dh: u64,
        group: Option<DhGroup>,
        peer_public: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let private = match self.secrets.remove(&dh) {
            Some(Secret::Dh(p)) => p,
            Some(other) => {
                self.secrets.insert(dh, other);
                return Err(CryptoError::WrongKeyKind);
            }
            None => return Err(CryptoError::UnknownKey),
        };
        if group.is_some_and(|g| g != private.group()) {
            return Err(CryptoError::WrongKeyKind);
        }
        let shared = dh::complete(private, peer_public)?;
        self.record(&shared);
        Ok(shared)
    }

    fn ike_sa(&self, h: u64) -> Result<&IkeSaKeys, CryptoError> {
        self.ike_sa_entry(h).map(|sa| &sa.keys)
    }

    fn ike_sa_entry(&self, h: u64) -> Result<&IkeSa, CryptoError> {
        match self.secrets.get(&h) {
            Some(Secret::IkeSa(k)) => Ok(k),
            Some(_) => Err(CryptoError::WrongKeyKind),
            None => Err(CryptoError::UnknownKey),
        }
    }

    /// Encrypt a message of IKE SA `sa` (see [`IkeSaKeys::encrypt`]).
    pub fn encrypt(
        &mut self,
        sa: u64,
        from_initiator: bool,
        header: &[u8; 28],
        first: u8,
        inner: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let rng = &self.rng;
        match self.secrets.get_mut(&sa) {
            // Our messages, under our own side's keys only.
            Some(Secret::IkeSa(k)) if k.we_initiated != from_initiator => Err(CryptoError::WrongKeyKind),
            Some(Secret::IkeSa(k)) => k.keys.encrypt(rng, from_initiator, header, first, inner),
            Some(_) => Err(CryptoError::WrongKeyKind),
            None => Err(CryptoError::UnknownKey),
        }
    }

    /// Decrypt a message of IKE SA `sa` (see [`IkeSaKeys::decrypt`]).
    pub fn decrypt(
        &self,
        sa: u64,
        from_initiator: bool,
        msg: &[u8],
        sk_offset: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let sa = self.ike_sa_entry(sa)?;
        // The peer's messages, under the peer's side's keys only.
        if sa.we_initiated == from_initiator {
            return Err(CryptoError::WrongKeyKind);
        }
        sa.keys.decrypt(from_initiator, msg, sk_offset)
    }

    /// Our AUTH payload data for PSK authentication (section 2.15):
    /// prf(prf(PSK, "Key Pad for IKEv2"), RealMessage | Nonce | prf(SK_p, ID)),
    /// with our side's SK_p (SK_pi if we initiated the IKE SA, else SK_pr).
    /// Never the peer's: a guest that could have the peer's AUTH computed
    /// could hand it to [`Vault::verify_psk_auth`] and authenticate any
    /// peer with any connection's key.
    pub fn psk_auth(
        &self,
        sa: u64,
        psk: u64,
        real_message: &[u8],
        nonce: &[u8],
        id_body: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let sa = self.ike_sa_entry(sa)?;
        Ok(self.auth_octets(sa, psk, sa.we_initiated, real_message, nonce, id_body)?.to_vec())
    }

    /// Whether the peer's AUTH payload data `auth` is what its side's SK_p
    /// and the PSK make of `real_message`, `nonce` and `id_body` (section
    /// 2.15), compared in constant time. If it is, the IKE SA is from now
    /// on authenticated with `psk` and `id_body` (see
    /// [`IkeSa::authenticated`]); asking with another PSK or identity
    /// afterwards is `WrongKeyKind`, as is it for a rekeyed IKE SA with
    /// other ones than the SA it replaced.
    pub fn verify_psk_auth(
        &mut self,
        h: u64,
        psk: u64,
        real_message: &[u8],
        nonce: &[u8],
        id_body: &[u8],
        auth: &[u8],
    ) -> Result<bool, CryptoError> {
        let sa = self.ike_sa_entry(h)?;
        if sa.authenticated.as_ref().is_some_and(|a| a.psk != psk || a.peer_id != id_body) {
            return Err(CryptoError::WrongKeyKind);
        }
        let expected = self.auth_octets(sa, psk, !sa.we_initiated, real_message, nonce, id_body)?;
        if !ct_eq(&expected, auth) {
            return Ok(false);
        }
        if let Some(Secret::IkeSa(sa)) = self.secrets.get_mut(&h) {
            sa.authenticated = Some(Authenticated { psk, peer_id: id_body.to_vec() });
        }
        Ok(true)
    }

    /// The PSK (its handle) IKE SA `sa` is authenticated with, if any, and
    /// the body of the identification payload its peer's AUTH covered.
    pub fn authenticated_by(&self, sa: u64) -> Option<(u64, &[u8])> {
        self.ike_sa_entry(sa).ok()?.authenticated.as_ref().map(|a| (a.psk, &a.peer_id[..]))
    }

    /// The AUTH octets of one side (`for_initiator`) of `sa`.
    fn auth_octets(
        &self,
        sa: &IkeSa,
        psk: u64,
        for_initiator: bool,
        real_message: &[u8],
        nonce: &[u8],
        id_body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let k = &sa.keys;
        let psk = match self.secrets.get(&psk) {
            Some(Secret::Psk(p)) => p,
            Some(_) => return Err(CryptoError::WrongKeyKind),
            None => return Err(CryptoError::UnknownKey),
        };
        let sk_p = k.sk(if for_initiator { Sk::Pi } else { Sk::Pr });
        let maced_id = k.prf.prf(sk_p, &[id_body]);
        let pad_key = k.prf.prf(psk, &[KEY_PAD]);
        Ok(Zeroizing::new(k.prf.prf(&pad_key, &[real_message, nonce, &maced_id]).to_vec()))
    }

    /// CHILD SA keying material (section 2.17): prf+(SK_d, Ni | Nr), the
    /// initiator-to-responder SA's keys first, handed out as ours and the
    /// peer's by `we_initiated`. With PFS (our DH value, consumed, and the
    /// peer's public value) the new shared secret goes in front of the
    /// nonces: KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr).
    /// Each nonce pair keys one CHILD SA: asking again is `WrongKeyKind`,
    /// as is asking before the IKE SA's peer authenticated.
    pub fn child_keymat(&mut self, k: &ChildKeying) -> Result<ChildKeymat, CryptoError> {
        let c = Cipher::from_ids(k.suite.encr, k.suite.key_bits, k.suite.integ)?;
        let nonces = nonce_pair(k.ni, k.nr);
        let group = match k.pfs {
            None => None,
            Some((dh, _)) => match self.secrets.get(&dh) {
                Some(Secret::Dh(p)) => Some(p.group()),
                Some(_) => return Err(CryptoError::WrongKeyKind),
                None => return Err(CryptoError::UnknownKey),
            },
        };
        let (authenticated_by, first) = match self.secrets.get_mut(&k.ike_sa) {
            Some(Secret::IkeSa(sa)) => {
                let Some(psk) = sa.authenticated.as_ref().map(|a| a.psk) else { return Err(CryptoError::WrongKeyKind) };
                if sa.children_keyed.len() >= MAX_CHILD_DERIVATIONS || !sa.children_keyed.insert(nonces) {
                    return Err(CryptoError::WrongKeyKind);
                }
                (psk, sa.first_child == Some(nonces))
            }
            Some(_) => return Err(CryptoError::WrongKeyKind),
            None => return Err(CryptoError::UnknownKey),
        };
        let key_exchange =
            if first && group.is_none() { ChildKeyExchange::First } else { ChildKeyExchange::Created(group) };
        let one = c.encr_keymat_len() + c.integ_key_len();
        let mut seed = Zeroizing::new(Vec::with_capacity(k.ni.len() + k.nr.len()));
        if let Some((dh, peer_public)) = k.pfs {
            seed.extend_from_slice(&self.complete_dh(dh, None, peer_public)?);
        }
        seed.extend_from_slice(k.ni);
        seed.extend_from_slice(k.nr);
        let sa = self.ike_sa(k.ike_sa)?;
        let km = sa.prf.prf_plus(sa.sk(Sk::D), &seed, 2 * one);
        self.record(&km);
        let (i_to_r, r_to_i) = (Zeroizing::new(km[..one].to_vec()), Zeroizing::new(km[one..].to_vec()));
        let (outbound, inbound) = if k.we_initiated { (i_to_r, r_to_i) } else { (r_to_i, i_to_r) };
        Ok(ChildKeymat { outbound, inbound, authenticated_by, key_exchange })
    }

    /// Wireshark `ikev2_decryption_table` line for an IKE SA (key export).
    pub fn wireshark_line(&self, sa: u64) -> Option<Zeroizing<String>> {
        self.ike_sa(sa).ok()?.wireshark_line()
    }
}

/// A nonce pair as the vault remembers it: SHA-256 of Ni's length, Ni
/// and Nr.
fn nonce_pair(ni: &[u8], nr: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(ni.len() as u32).to_be_bytes());
    ctx.update(ni);
    ctx.update(nr);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A string for secret text (hex of keys), zeroized on drop, with room for
/// `capacity` bytes so that growing it never leaves a copy in a freed buffer.
pub fn secret_buffer(capacity: usize) -> Zeroizing<String> {
    Zeroizing::new(String::with_capacity(capacity))
}

/// Append the hex of secret bytes, digit by digit (no temporary string).
pub fn push_hex(out: &mut Zeroizing<String>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dh_values_are_refused_once_the_vault_is_full() {
        let mut v = Vault { max_secrets: 3, ..Vault::new() };
        let handles: Vec<u64> = (0..3).map(|_| v.dh_generate(DhGroup::X25519).expect("room").0).collect();
        assert_eq!(v.dh_generate(DhGroup::X25519).err(), Some(CryptoError::Internal), "full");
        assert!(v.destroy(handles[0]));
        assert!(v.dh_generate(DhGroup::X25519).is_ok(), "room again");
    }

    #[test]
    fn a_psk_is_replaced_under_its_handle() {
        let mut v = Vault::new();
        let h = v.insert_psk(Zeroizing::new(b"old".to_vec()));
        assert_eq!(v.replace_psk(h, Zeroizing::new(b"old".to_vec())), Some(false));
        assert_eq!(v.replace_psk(h, Zeroizing::new(b"new".to_vec())), Some(true));
        assert_eq!(v.replace_psk(h + 1, Zeroizing::new(b"x".to_vec())), None, "no such handle");
        assert_eq!(v.len(), 1);
    }
    use super::*;
    use wasmsec_wire::ike::{EncrId, IntegId, PrfId};

    #[test]
    fn two_vaults_derive_the_same_ike_sa_and_auth() {
        let suite = IkeSuite {
            encr: EncrId::AesGcm16,
            key_bits: 256,
            prf: PrfId::HmacSha2_384,
            integ: IntegId::None,
            dh: DhGroup::Ecp384,
        };
        let (mut a, mut b) = (Vault::new(), Vault::new());
        let (da, pa) = a.dh_generate(suite.dh).unwrap();
        let (db, pb) = b.dh_generate(suite.dh).unwrap();
        let (ni, nr) = ([1u8; 32], [2u8; 32]);
        let kx = |dh, public, we_initiated| KeyExchange {
            suite: &suite,
            dh,
            peer_public: public,
            ni: &ni,
            nr: &nr,
            spi_i: 5,
            spi_r: 6,
            we_initiated,
        };
        let sa = a.derive_ike_sa(None, &kx(da, &pb, true)).unwrap();
        let sb = b.derive_ike_sa(None, &kx(db, &pa, false)).unwrap();
        assert_eq!(a.len(), 1, "the DH private value is destroyed");
        let msg = a.encrypt(sa, true, &[0; 28], 35, b"hello").unwrap();
        assert_eq!(&b.decrypt(sb, true, &msg, 28).unwrap()[..], b"hello");
        // Each side's role is fixed at derivation: no encrypting under the
        // peer's keys, no decrypting our own.
        assert_eq!(a.encrypt(sa, false, &[0; 28], 35, b"x").err(), Some(CryptoError::WrongKeyKind));
        assert_eq!(b.encrypt(sb, true, &[0; 28], 35, b"x").err(), Some(CryptoError::WrongKeyKind));
        assert_eq!(a.decrypt(sa, true, &msg, 28).err(), Some(CryptoError::WrongKeyKind));
        let (pska, pskb) =
            (a.insert_psk(Zeroizing::new(b"secret".to_vec())), b.insert_psk(Zeroizing::new(b"secret".to_vec())));
        let id = b"\x02\0\0\0id";
        let cs = ChildSuite { encr: EncrId::AesGcm16, key_bits: 128, integ: IntegId::None, esn: false };
        let keying =
            |ike_sa, we_initiated, pfs| ChildKeying { ike_sa, suite: &cs, ni: &ni, nr: &nr, we_initiated, pfs };
        // No CHILD SA keys before the peer authenticated.
        assert_eq!(b.child_keymat(&keying(sb, false, None)).err(), Some(CryptoError::WrongKeyKind));
        // The initiator's AUTH verifies at the responder, whose own AUTH
        // differs (the other side's SK_p), and verifies at the initiator.
        let x = a.psk_auth(sa, pska, b"msg1", &nr, id).unwrap();
        let y = b.psk_auth(sb, pskb, b"msg2", &ni, id).unwrap();
        assert_ne!(x, b.psk_auth(sb, pskb, b"msg1", &nr, id).unwrap(), "only our own side's AUTH");
        assert_eq!(b.verify_psk_auth(sb, pskb, b"msg1", &nr, id, &y), Ok(false), "ours is not the peer's");
        assert_eq!(b.verify_psk_auth(sb, pskb, b"msg1", &ni, id, &x), Ok(false), "bound to the nonce");
        assert_eq!(b.authenticated_by(sb), None);
        assert_eq!(b.verify_psk_auth(sb, pskb, b"msg1", &nr, id, &x), Ok(true));
        assert_eq!(a.verify_psk_auth(sa, pska, b"msg2", &ni, id, &y), Ok(true));
        assert_eq!((a.authenticated_by(sa), b.authenticated_by(sb)), (Some((pska, &id[..])), Some((pskb, &id[..]))));
        // Authenticated once, with one key: another PSK is refused even
        // with the AUTH it would take.
        let other = b.insert_psk(Zeroizing::new(b"another".to_vec()));
        assert_eq!(b.verify_psk_auth(sb, other, b"msg1", &nr, id, &x), Err(CryptoError::WrongKeyKind));
        assert!(b.destroy(other));
        // Nor another identity, though the same key verifies it.
        let other_id = b"\x02\0\0\0other";
        let z = a.psk_auth(sa, pska, b"msg1", &nr, other_id).unwrap();
        assert_eq!(b.verify_psk_auth(sb, pskb, b"msg1", &nr, other_id, &z), Err(CryptoError::WrongKeyKind));
        let ka = a.child_keymat(&keying(sa, true, None)).unwrap();
        let kb = b.child_keymat(&keying(sb, false, None)).unwrap();
        assert_eq!((ka.authenticated_by, kb.authenticated_by), (pska, pskb));
        // IKE_SA_INIT's nonces, no key exchange: the first CHILD SA.
        assert_eq!((ka.key_exchange, kb.key_exchange), (ChildKeyExchange::First, ChildKeyExchange::First));
        assert_eq!(*ka.outbound, *kb.inbound);
        assert_eq!(*ka.inbound, *kb.outbound);
        // The same nonces never key a second CHILD SA.
        assert_eq!(a.child_keymat(&keying(sa, true, None)).err(), Some(CryptoError::WrongKeyKind));
        // With PFS (and the nonces of another exchange) both sides agree, on
        // other keys, and the DH values are gone.
        let (ni, nr) = ([3u8; 32], [4u8; 32]);
        let keying =
            |ike_sa, we_initiated, pfs| ChildKeying { ike_sa, suite: &cs, ni: &ni, nr: &nr, we_initiated, pfs };
        let (da, pa) = a.dh_generate(DhGroup::X25519).unwrap();
        let (db, pb) = b.dh_generate(DhGroup::X25519).unwrap();
        let pa_km = a.child_keymat(&keying(sa, true, Some((da, &pb)))).unwrap();
        let pb_km = b.child_keymat(&keying(sb, false, Some((db, &pa)))).unwrap();
        assert_eq!(*pa_km.inbound, *pb_km.outbound);
        assert_ne!(*pa_km.outbound, *ka.outbound);
        assert_eq!(pa_km.key_exchange, ChildKeyExchange::Created(Some(DhGroup::X25519)));
        // Another exchange's nonces without a key exchange: no PFS, and
        // not taken for the first CHILD SA.
        let (ni, nr) = ([9u8; 32], [10u8; 32]);
        let plain = ChildKeying { ike_sa: sa, suite: &cs, ni: &ni, nr: &nr, we_initiated: true, pfs: None };
        assert_eq!(a.child_keymat(&plain).unwrap().key_exchange, ChildKeyExchange::Created(None));
        assert!(!a.destroy(da), "the PFS DH value was consumed");
        assert_eq!(ka.outbound.len(), 20);
        assert_ne!(*ka.outbound, *ka.inbound);
        assert_eq!(a.psk_auth(sa, sa, b"", b"", b"").err(), Some(CryptoError::WrongKeyKind));
        // A rekeyed IKE SA (section 2.18) is authenticated as the old one.
        let (da, pa) = a.dh_generate(suite.dh).unwrap();
        let (db, pb) = b.dh_generate(suite.dh).unwrap();
        let (ni, nr) = ([5u8; 32], [6u8; 32]);
        let rekey = |dh, public, we_initiated| KeyExchange {
            suite: &suite,
            dh,
            peer_public: public,
            ni: &ni,
            nr: &nr,
            spi_i: 7,
            spi_r: 8,
            we_initiated,
        };
        let sa2 = a.derive_ike_sa(Some(sa), &rekey(da, &pb, true)).unwrap();
        assert_eq!(a.authenticated_by(sa2), Some((pska, &id[..])));
        // Its own nonces key no first CHILD SA: a rekeyed IKE SA has none.
        let own = ChildKeying { ike_sa: sa2, suite: &cs, ni: &ni, nr: &nr, we_initiated: true, pfs: None };
        assert_eq!(a.child_keymat(&own).unwrap().key_exchange, ChildKeyExchange::Created(None));
        let fresh = b.derive_ike_sa(None, &rekey(db, &pa, false)).unwrap();
        assert_eq!(b.authenticated_by(fresh), None, "a new IKE SA is not");
        assert!(a.destroy(sa) && a.destroy(sa2) && a.destroy(pska) && a.is_empty());
    }

    #[test]
    fn cookies_check_against_the_current_and_previous_secret_only() {
        let mut v = Vault::new();
        let ip = [198, 18, 0, 1];
        let c = v.cookie(0, 7, b"nonce", &ip, None).expect("a cookie to send");
        assert_eq!(c.len(), 33);
        assert_eq!(v.cookie(10, 7, b"nonce", &ip, Some(&c)), None, "accepted");
        assert!(v.cookie(10, 8, b"nonce", &ip, Some(&c)).is_some(), "bound to SPIi");
        assert!(v.cookie(10, 7, b"other", &ip, Some(&c)).is_some(), "bound to Ni");
        assert!(v.cookie(10, 7, b"nonce", &[198, 18, 0, 2], Some(&c)).is_some(), "bound to the address");
        let t1 = COOKIE_SECRET_MS + 1;
        let c2 = v.cookie(t1, 7, b"nonce", &ip, None).unwrap();
        assert_ne!(c, c2, "a new secret");
        assert_eq!(v.cookie(t1, 7, b"nonce", &ip, Some(&c)), None, "the previous secret still counts");
        let t2 = 2 * COOKIE_SECRET_MS + 2;
        assert!(v.cookie(t2, 7, b"nonce", &ip, Some(&c)).is_some(), "two secrets ago no longer");
        assert!(v.is_empty(), "cookie secrets are not handles");
    }

    #[test]
    fn mismatched_group_or_handle_is_refused() {
        let mut v = Vault::new();
        let suite = IkeSuite {
            encr: EncrId::AesGcm16,
            key_bits: 256,
            prf: PrfId::HmacSha2_256,
            integ: IntegId::None,
            dh: DhGroup::X25519,
        };
        let (d, p) = v.dh_generate(DhGroup::Ecp256).unwrap();
        let kx = |dh| KeyExchange {
            suite: &suite,
            dh,
            peer_public: &p,
            ni: &[0; 16],
            nr: &[0; 16],
            spi_i: 1,
            spi_r: 2,
            we_initiated: true,
        };
        assert_eq!(v.derive_ike_sa(None, &kx(d)).err(), Some(CryptoError::WrongKeyKind));
        assert_eq!(v.derive_ike_sa(None, &kx(12345)).err(), Some(CryptoError::UnknownKey));
    }
}
