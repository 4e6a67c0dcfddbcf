//! The IKE component under wasmtime: its imports (randomness and the key
//! schedule on handles, backed by [`wasmsec_crypto::Vault`] and the ESP
//! keystore) and a typed wrapper around its exports.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use wasmtime::component::HasSelf;
use wasmtime::{Engine, Store};
use zeroize::Zeroizing;

use super::bindings::ike as b;
use super::{WasmContext, sandbox, wit_error};
use crate::control::bounds::{ConnectionBounds, EspTransform, GrantBounds, limits_within};
use crate::control::children::socket_addr;
use crate::keys::{EspAlgorithm, EspKey, Keystore};
use crate::policy::{AuthorizeRequest, Decision, IdKind, Identity};
use wasmsec_wire::ike::Identification;

pub use b::exports::wasmsec::ike::engine::{
    ChildConfig, ChildDeleted, ChildSa, ChildSchedule, Connection, Counters, Datagram, DpdAction, Event, IkeSaCount,
    IkeSaState, IkeSaUp, Level, LogEvent, Output, SaChange, StartAction, Transmit,
};
use b::wasmsec::crypto::ike_keys::{ChildKeyHandles, ChildKeying, IkeSuite, KeyExchange};
use b::wasmsec::crypto::types::CryptoError as WitError;
pub use b::wasmsec::net::types::Endpoint;

/// Per-store host state of the IKE instance.
pub struct IkeState {
    limits: sandbox::GuestLimits,
    vault: wasmsec_crypto::Vault,
    esp_keys: Arc<Keystore>,
    /// Wireshark key export (opt-in): IKE SA keys appended here.
    pub keylog: Option<PathBuf>,
    /// ESP key export (opt-in): the `esp_sa` key columns of CHILD SA keys
    /// derived here, by key handle, until the control plane knows their
    /// SPIs and addresses and writes them out ([`IkeState::take_esp_export`]).
    pub esp_keylog: bool,
    esp_exports: HashMap<u64, Zeroizing<String>>,
    /// When set, every byte string the host hands the guest is recorded
    /// here (tests prove no secret is among them).
    pub transcript: Option<Vec<Vec<u8>>>,
    /// CHILD SA key pairs derived and not yet installed, by outbound handle.
    /// An install must name a pair from here, in order, once, for the
    /// connection whose PSK authenticated the IKE SA they came from.
    derived: HashMap<u64, Derived>,
    /// The connection each PSK handle was loaded for (a reload gives a
    /// changed connection a new handle and forgets the old one's).
    psk_owners: HashMap<u64, String>,
    /// The policy's answer for each IKE SA, by its keys' handle (rekeys
    /// inherit it): CHILD SA keys come only from an accepted one, and are
    /// installed only within what its grant names.
    verdicts: HashMap<u64, Verdict>,
    /// The datagram the guest is handling now: where it came from and
    /// arrived at, and its bytes. A `decrypt` of exactly these bytes that
    /// verifies proves that the IKE SA's peer sent them from there to there.
    current: Option<(Verified, Vec<u8>)>,
    /// Each IKE SA key handle's lineage: the first IKE SA of a chain of
    /// rekeys (section 2.18), whose CHILD SAs move along the chain.
    lineages: HashMap<u64, u64>,
    /// Live IKE SA handles per lineage.
    lineage_handles: HashMap<u64, u32>,
    /// Where each lineage's peer last sent an IKE message that verified,
    /// and to which address of ours: the only place its CHILD SAs' ESP may
    /// go, and the only address it may leave from.
    verified_from: HashMap<u64, Verified>,
    /// The clock the vault's COOKIE secrets rotate by.
    started: std::time::Instant,
    /// Requests the vault refused as breaking its rules (a key used for
    /// the other side or kind, nonces used twice): guest protocol errors,
    /// collected by the control thread.
    pub refusals: u64,
    /// The engine's latest checkpoint of each established IKE SA, by our
    /// SPI: what a replacement instance starts from.
    checkpoints: BTreeMap<u64, Vec<u8>>,
    /// Bytes of all `checkpoints`.
    checkpoint_bytes: usize,
    /// The policy modules that authorize peers, by connection (none: accept).
    pub policy: crate::policy::Policies,
}

/// Where an IKE message that verified came from (the peer) and arrived at
/// (our address, as the host read it: the one listened on, or with
/// `IP_PKTINFO` the one the peer sent to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verified {
    from: SocketAddr,
    at: IpAddr,
}

/// A derived CHILD SA key pair waiting for its install.
#[derive(Debug, Clone)]
struct Derived {
    inbound: u64,
    alg: EspAlgorithm,
    /// The PSK handle the IKE SA's peer authenticated with.
    authenticated_by: u64,
    /// What the policy granted the IKE SA's peer.
    grant: Arc<GrantBounds>,
    /// The IKE SA's lineage.
    lineage: u64,
    /// The first CHILD SA of its IKE SA, or one made with (or without) a
    /// key exchange of this group.
    key_exchange: wasmsec_crypto::ChildKeyExchange,
}

/// What the host's policy said of an IKE SA's peer.
#[derive(Debug, Clone)]
enum Verdict {
    Accepted(Arc<GrantBounds>),
    Rejected,
}

/// Why the host refuses the keys a CHILD SA install names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClaim {
    /// The pair came from one derivation, for this transform and
    /// connection: the IKE SA lineage it belongs to, the CHILD SA's hard
    /// lifetime in ms (0: none), which the host holds it to, and its
    /// child's anti-replay window.
    Granted { lineage: u64, life_ms: u64, replay_window: u32, tos: crate::datapath::tos::Override },
    /// Not a pair derived here (or installed already, swapped, another
    /// transform): the guest lies about its keys.
    NotDerived,
    /// Derived from an IKE SA whose peer authenticated with another
    /// connection's key: the guest would put the peer's SA into a
    /// connection (and tenant) the peer has no key for.
    OtherConnection,
    /// Selectors beyond the configured `local_ts` and `remote_ts` of the
    /// child the install names (or a connection or child the
    /// configuration does not have).
    OutsideConnection,
    /// Selectors beyond the subnets the policy granted the peer.
    OutsideGrant,
    /// An ESP transform that neither the policy's grant (where it names
    /// proposals) nor the connection offers.
    TransformNotOffered,
    /// A CHILD SA made by CREATE_CHILD_SA without the key exchange (PFS)
    /// its transform's proposals ask for, or with a group they lack.
    KeyExchangeNotOffered,
    /// Hard byte or packet limits beyond the grant's or the connection's
    /// (or none where they set one).
    BeyondLifetime,
    /// ESP to another address than the one the IKE SA's peer last sent a
    /// verified message from.
    ElsewhereThanPeer,
    /// ESP from another address of ours than the one that message was
    /// sent to: one the peer (or a firewall in front of it) admits no ESP
    /// from, so the tunnel would look up and carry nothing.
    ElsewhereThanUs,
}

/// Derived CHILD SA key pairs that may wait for their install at once.
pub const MAX_PENDING_CHILD_KEYS: usize = 4096;

/// Largest checkpoint of one IKE SA the host keeps: an SA's state with its
/// CHILD SAs is a few KiB; a megabyte is no SA's.
pub const MAX_CHECKPOINT_BYTES: usize = 1 << 20;
/// All checkpoints together: twice the guest's memory, which holds the
/// state they describe.
pub const MAX_CHECKPOINTS_BYTES: usize = 2 * sandbox::GUEST_MEMORY_LIMIT;

impl IkeState {
    /// The host side of a new IKE instance: the vault with every IKE secret
    /// and the keystore CHILD SA keys go to.
    pub fn new(vault: wasmsec_crypto::Vault, esp_keys: Arc<Keystore>) -> IkeState {
        IkeState {
            limits: sandbox::store_limits(),
            vault,
            esp_keys,
            keylog: None,
            esp_keylog: false,
            esp_exports: HashMap::new(),
            transcript: None,
            derived: HashMap::new(),
            psk_owners: HashMap::new(),
            verdicts: HashMap::new(),
            current: None,
            lineages: HashMap::new(),
            lineage_handles: HashMap::new(),
            verified_from: HashMap::new(),
            started: std::time::Instant::now(),
            checkpoints: BTreeMap::new(),
            checkpoint_bytes: 0,
            refusals: 0,
            policy: Default::default(),
        }
    }

    /// Answer a refused request, counting it if it broke a rule (as opposed
    /// to, say, a bad value from the peer).
    fn refused(&mut self, e: wasmsec_crypto::CryptoError) -> WitError {
        if e == wasmsec_crypto::CryptoError::WrongKeyKind {
            self.refusals += 1;
        }
        wit_error(e)
    }

    /// Keep the engine's latest checkpoints (`None`: the SA is gone). The
    /// guest is untrusted and host memory is not its to fill: a checkpoint
    /// beyond the bounds is refused (a protocol error), and the SA's older
    /// one goes too, so that a replacement never restores stale state.
    pub fn keep_checkpoints(&mut self, changes: Vec<(u64, Option<Vec<u8>>)>) {
        for (spi, c) in changes {
            if let Some(old) = self.checkpoints.remove(&spi) {
                self.checkpoint_bytes -= old.len();
            }
            let Some(bytes) = c else { continue };
            if bytes.len() > MAX_CHECKPOINT_BYTES || self.checkpoint_bytes + bytes.len() > MAX_CHECKPOINTS_BYTES {
                self.refusals += 1;
                continue;
            }
            self.checkpoint_bytes += bytes.len();
            self.checkpoints.insert(spi, bytes);
        }
    }

    /// Whether a checkpoint is kept for the IKE SA of our SPI `spi`.
    pub fn has_checkpoint(&self, spi: u64) -> bool {
        self.checkpoints.contains_key(&spi)
    }

    /// The checkpoints kept, one per established IKE SA.
    pub fn checkpoints(&self) -> Vec<Vec<u8>> {
        self.checkpoints.values().cloned().collect()
    }

    /// Keep only the checkpoints of the SPIs `keep` takes; returns how
    /// many went.
    pub fn retain_checkpoints(&mut self, keep: impl Fn(u64) -> bool) -> usize {
        let before = self.checkpoints.len();
        let mut bytes = 0;
        self.checkpoints.retain(|spi, c| {
            let kept = keep(*spi);
            if !kept {
                bytes += c.len();
            }
            kept
        });
        self.checkpoint_bytes -= bytes;
        before - self.checkpoints.len()
    }

    /// Forget every checkpoint (they did not restore).
    pub fn clear_checkpoints(&mut self) {
        self.checkpoints.clear();
        self.checkpoint_bytes = 0;
    }

    /// Put connection `owner`'s pre-shared key in the vault; returns its handle.
    pub fn insert_psk(&mut self, owner: &str, psk: Zeroizing<Vec<u8>>) -> u64 {
        let h = self.vault.insert_psk(psk);
        self.psk_owners.insert(h, owner.to_string());
        h
    }

    /// A reload read the connection's key file again: see
    /// [`wasmsec_crypto::Vault::replace_psk`].
    pub fn replace_psk(&mut self, handle: u64, psk: Zeroizing<Vec<u8>>) -> Option<bool> {
        self.vault.replace_psk(handle, psk)
    }

    /// Forget a PSK whose connection never came to be (a refused reload)
    /// or is gone: IKE SAs authenticated with it key no more CHILD SAs
    /// that any connection takes.
    pub fn forget_psk(&mut self, handle: u64) {
        self.vault.destroy(handle);
        self.psk_owners.remove(&handle);
    }

    /// Take the derived key pair a CHILD SA install names: granted if
    /// `outbound` and `inbound` came from one derivation, in that order,
    /// for `alg`, were not installed before, the IKE SA they came from was
    /// authenticated with the PSK of the install's connection, and the
    /// install's selectors lie within the configured ones of the child it
    /// names (`bounds`: its connection's, `None` for a connection the
    /// configuration lacks; a child the connection lacks allows nothing)
    /// and within what the policy granted its peer, and its ESP transform
    /// is one the grant or else that child proposes, keyed with the key
    /// exchange (PFS) that proposal asks for unless it is the IKE SA's
    /// first CHILD SA, with hard limits within the grant's or else that
    /// child's, and its ESP goes between the addresses the IKE SA's last
    /// verified message came from and arrived at. Anything else is a guest
    /// lying about its keys, its peer, our address or its selectors; a pair
    /// refused for those is gone (its keys destroyed), as the guest cannot
    /// be trusted to name it again.
    pub fn claim_child_keys(&mut self, c: &ChildSa, alg: EspAlgorithm, bounds: Option<&ConnectionBounds>) -> KeyClaim {
        let (outbound, inbound) = (c.outbound_key, c.inbound_key);
        let transform = EspTransform { encr: c.encr, key_bits: c.key_bits, integ: c.integ, esn: c.esn };
        let Some(d) = self.derived.get(&outbound).filter(|d| d.inbound == inbound && d.alg == alg).cloned() else {
            return KeyClaim::NotDerived;
        };
        self.derived.remove(&outbound);
        let (peer, ours) = (socket_addr(&c.remote), socket_addr(&c.local));
        let verified = self.verified_from.get(&d.lineage).copied();
        // Held to the child it names, not to the union of its connection's.
        let bounds = bounds.and_then(|b| b.child(&c.child));
        let life = bounds.and_then(|b| b.hard_limits(&d.grant));
        // Raw ESP goes to the address alone; ESP in UDP to the port too.
        let at_peer = match (peer, verified) {
            (Some(p), Some(v)) => p.ip() == v.from.ip() && (!c.encap || p.port() == v.from.port()),
            _ => false,
        };
        // Our end by address alone: ESP in UDP leaves from the NAT-T
        // socket's port whatever the guest names.
        let at_us = matches!((ours, verified), (Some(o), Some(v)) if o.ip() == v.at);
        let claim = if self.psk_owners.get(&d.authenticated_by) != Some(&c.connection) {
            KeyClaim::OtherConnection
        } else if !bounds.is_some_and(|b| b.hold(&c.local_ts, &c.remote_ts)) {
            KeyClaim::OutsideConnection
        } else if !d.grant.hold(&c.local_ts, &c.remote_ts) {
            KeyClaim::OutsideGrant
        } else if !bounds.is_some_and(|b| b.allow_transform(&d.grant, transform)) {
            KeyClaim::TransformNotOffered
        } else if !bounds.is_some_and(|b| b.allow_key_exchange(&d.grant, transform, d.key_exchange)) {
            KeyClaim::KeyExchangeNotOffered
        } else if !life.is_some_and(|l| limits_within(&l, c.limits.hard_bytes, c.limits.hard_packets)) {
            KeyClaim::BeyondLifetime
        } else if !at_peer {
            KeyClaim::ElsewhereThanPeer
        } else if !at_us {
            KeyClaim::ElsewhereThanUs
        } else {
            let (life_ms, replay_window, tos) = (
                life.map_or(0, |l| l.time_ms),
                bounds.map_or(crate::config::DEFAULT_REPLAY_WINDOW, |b| b.replay_window()),
                bounds.map(|b| b.tos()).unwrap_or_default(),
            );
            return KeyClaim::Granted { lineage: d.lineage, life_ms, replay_window, tos };
        };
        self.destroy_child_keys(outbound, inbound);
        claim
    }

    /// An install refused before its claim (an address or a transform the
    /// data plane cannot take): the pair it names, if derived here and not
    /// installed yet, is gone as a refused claim's is.
    pub fn forfeit_child_keys(&mut self, c: &ChildSa) {
        if self.derived.get(&c.outbound_key).is_some_and(|d| d.inbound == c.inbound_key) {
            self.derived.remove(&c.outbound_key);
            self.destroy_child_keys(c.outbound_key, c.inbound_key);
        }
    }

    fn destroy_child_keys(&mut self, outbound: u64, inbound: u64) {
        self.esp_keys.remove(outbound);
        self.esp_keys.remove(inbound);
        self.esp_exports.remove(&outbound);
        self.esp_exports.remove(&inbound);
    }

    /// Where the peer of IKE SA lineage `lineage` last sent an IKE message
    /// that verified.
    pub fn verified_source(&self, lineage: u64) -> Option<SocketAddr> {
        self.verified_from.get(&lineage).map(|v| v.from)
    }

    /// Tests: as if lineage `lineage`'s peer had sent a message that
    /// verified from `from`.
    #[cfg(test)]
    pub fn verified_at(&mut self, lineage: u64, from: SocketAddr, at: IpAddr) {
        self.verified_from.insert(lineage, Verified { from, at });
    }

    /// The guest is about to handle datagram `d` (`None`: done with it).
    fn handling(&mut self, d: Option<&Datagram>) {
        self.current = d.and_then(|d| {
            let verified = Verified { from: socket_addr(&d.remote)?, at: socket_addr(&d.local)?.ip() };
            Some((verified, d.data.clone()))
        });
    }

    /// The policy's answer for the peer of IKE SA `ike_sa` (its keys'
    /// handle): asked only for the connection and the identity the host
    /// verified its AUTH with, and once; the answer binds the IKE SA.
    fn authorize_peer(&mut self, ike_sa: u64, request: &AuthorizeRequest) -> Result<Decision, &'static str> {
        let (psk, peer_id) = self.vault.authenticated_by(ike_sa).ok_or("the host verified no AUTH of this IKE SA")?;
        if self.psk_owners.get(&psk) != Some(&request.connection) {
            return Err("the IKE SA's peer authenticated with another connection's key");
        }
        if !Identification::from_body(peer_id).is_some_and(|id| same_identity(&id, &request.peer)) {
            return Err("the identity is not the one the peer's AUTH covered");
        }
        if self.verdicts.contains_key(&ike_sa) {
            return Err("the policy was asked for this IKE SA already");
        }
        let d = match self.policy.authorize(request) {
            Decision::Accept(g) => match GrantBounds::of(&g) {
                Ok(b) => {
                    self.verdicts.insert(ike_sa, Verdict::Accepted(Arc::new(b)));
                    return Ok(Decision::Accept(g));
                }
                Err(e) => Decision::Reject(format!("policy granted a subnet or proposal that does not parse: {e}")),
            },
            r => r,
        };
        self.verdicts.insert(ike_sa, Verdict::Rejected);
        Ok(d)
    }

    /// The most linear memory the IKE guest has held, in bytes.
    pub fn memory_peak(&self) -> usize {
        self.limits.peak()
    }

    /// Live secrets in the vault (IKE SAs, DH values, PSKs).
    pub fn secrets(&self) -> usize {
        self.vault.len()
    }

    /// Whether the guest holds no SA, by the host's records (the guest is
    /// not asked): no secret in the vault but the pre-shared keys (an IKE
    /// SA's keys, or the DH value of an exchange in flight, would be one),
    /// no CHILD SA keys waiting for their install, no checkpoint.
    pub fn holds_no_sa(&self) -> bool {
        self.vault.len() == self.psk_owners.len() && self.derived.is_empty() && self.checkpoints.is_empty()
    }

    /// After a replacement: destroy every secret of the instance it
    /// replaced that the new one's IKE SAs do not hold (`held`, the
    /// guest's `held-keys`), the connections' PSKs apart: the DH values and
    /// keys of setups and exchanges a trap lost, the IKE SAs not restored,
    /// CHILD SA keys derived and never installed. Nothing else would ever
    /// destroy them. The guest is untrusted: naming a handle only keeps a
    /// secret that exists, for as long as without this; one it leaves out
    /// is its own IKE SA's loss. Returns how many went.
    pub fn destroy_unheld(&mut self, mut held: Vec<u64>) -> usize {
        // The guest's list may be as long as its memory allows: only the
        // handles that name a secret here count, sorted to look up.
        let derived_inbound: std::collections::HashSet<u64> = self.derived.values().map(|d| d.inbound).collect();
        held.retain(|h| self.vault.contains(*h) || self.derived.contains_key(h) || derived_inbound.contains(h));
        held.sort_unstable();
        held.dedup();
        let kept = |h: &u64| held.binary_search(h).is_ok() || self.psk_owners.contains_key(h);
        let mut lost: Vec<u64> = self.vault.handles().into_iter().filter(|h| !kept(h)).collect();
        lost.extend(self.derived.iter().filter(|(o, d)| !kept(o) && !kept(&d.inbound)).map(|(o, _)| *o));
        lost.iter().for_each(|&h| self.release(h));
        lost.len()
    }

    /// Secrets the host holds beyond one per checkpointed IKE SA and the
    /// pre-shared keys: a DH value or the keys of a setup not yet
    /// established, CHILD SA keys waiting for their install. 0 when every
    /// IKE SA the guest holds would come back from its checkpoint (less
    /// when a checkpoint was kept of an SA whose keys went).
    pub fn unrestorable_secrets(&self) -> i64 {
        let held = self.vault.len() + self.derived.len();
        held as i64 - (self.psk_owners.len() + self.checkpoints.len()) as i64
    }

    /// How much the current instance's linear memory grew since it was made.
    pub fn memory_grown(&self) -> usize {
        self.limits.grown()
    }

    pub fn vault(&self) -> &wasmsec_crypto::Vault {
        &self.vault
    }

    /// The `esp_sa` key columns of a CHILD SA key, once (export on).
    pub fn take_esp_export(&mut self, key: u64) -> Option<Zeroizing<String>> {
        self.esp_exports.remove(&key)
    }

    /// Append the IKE SA's keys to the Wireshark key log, if one is set.
    fn export_keys(&self, h: u64) {
        if let (Some(path), Some(line)) = (&self.keylog, self.vault.wireshark_line(h))
            && let Err(e) = crate::keylog::append_secret_line(path, &line)
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the IKE key log");
        }
    }

    /// Record what goes to the guest, if a transcript is being kept.
    fn seen_by_guest<T: AsRef<[u8]>>(&mut self, v: T) -> T {
        if let Some(t) = &mut self.transcript {
            t.push(v.as_ref().to_vec());
        }
        v
    }
}

fn vault_suite(s: IkeSuite) -> wasmsec_crypto::IkeSuite {
    wasmsec_crypto::IkeSuite {
        encr: s.encr.into(),
        key_bits: s.key_bits,
        prf: s.prf.into(),
        integ: s.integ.into(),
        dh: s.dh.into(),
    }
}

impl sandbox::Limited for IkeState {
    fn limits(&mut self) -> &mut sandbox::GuestLimits {
        &mut self.limits
    }
}

impl b::wasmsec::crypto::random::Host for IkeState {
    fn fill(&mut self, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; len.min(256) as usize];
        self.vault.random(&mut b);
        self.seen_by_guest(b)
    }
}

impl b::wasmsec::crypto::ike_keys::Host for IkeState {
    fn cookie(&mut self, spi_i: u64, ni: Vec<u8>, initiator: Vec<u8>, offered: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let now = self.started.elapsed().as_millis() as u64;
        let c = self.vault.cookie(now, spi_i, &ni, &initiator, offered.as_deref());
        c.map(|c| self.seen_by_guest(c))
    }

    fn dh_generate(&mut self, group: u16) -> Result<(u64, Vec<u8>), WitError> {
        let (h, public) = self.vault.dh_generate(group.into()).map_err(wit_error)?;
        Ok((h, self.seen_by_guest(public)))
    }

    fn derive_ike_sa(&mut self, old: Option<u64>, x: KeyExchange) -> Result<u64, WitError> {
        let suite = vault_suite(x.suite);
        let kx = wasmsec_crypto::KeyExchange {
            suite: &suite,
            dh: x.dh,
            peer_public: &x.peer_public,
            ni: &x.ni,
            nr: &x.nr,
            spi_i: x.spi_i,
            spi_r: x.spi_r,
            we_initiated: x.we_initiated,
        };
        let h = self.vault.derive_ike_sa(old, &kx).map_err(|e| self.refused(e))?;
        // A rekeyed IKE SA is its predecessor's peer (section 2.18): the
        // same policy answer.
        if let Some(v) = old.and_then(|o| self.verdicts.get(&o)).cloned() {
            self.verdicts.insert(h, v);
        }
        let lineage = old.and_then(|o| self.lineages.get(&o).copied()).unwrap_or(h);
        self.lineages.insert(h, lineage);
        *self.lineage_handles.entry(lineage).or_default() += 1;
        self.export_keys(h);
        Ok(h)
    }

    fn encrypt(
        &mut self,
        sa: u64,
        from_initiator: bool,
        header: Vec<u8>,
        first: u8,
        inner: Vec<u8>,
    ) -> Result<Vec<u8>, WitError> {
        let h: [u8; 28] = header.as_slice().try_into().map_err(|_| WitError::BadLength)?;
        let m = self.vault.encrypt(sa, from_initiator, &h, first, &inner).map_err(|e| self.refused(e))?;
        Ok(self.seen_by_guest(m))
    }

    fn decrypt(
        &mut self,
        sa: u64,
        from_initiator: bool,
        message: Vec<u8>,
        sk_offset: u32,
    ) -> Result<Vec<u8>, WitError> {
        let p = self.vault.decrypt(sa, from_initiator, &message, sk_offset as usize).map_err(|e| self.refused(e))?;
        // The datagram being handled verified under this IKE SA's keys:
        // its source is where the peer is.
        if let (Some((verified, bytes)), Some(lineage)) = (&self.current, self.lineages.get(&sa))
            && *bytes == message
        {
            self.verified_from.insert(*lineage, *verified);
        }
        Ok(self.seen_by_guest(p.to_vec()))
    }

    fn psk_auth(
        &mut self,
        sa: u64,
        psk: u64,
        real_message: Vec<u8>,
        nonce: Vec<u8>,
        id_body: Vec<u8>,
    ) -> Result<Vec<u8>, WitError> {
        let a = self.vault.psk_auth(sa, psk, &real_message, &nonce, &id_body).map_err(|e| self.refused(e))?;
        Ok(self.seen_by_guest(a))
    }

    fn verify_psk_auth(
        &mut self,
        sa: u64,
        psk: u64,
        real_message: Vec<u8>,
        nonce: Vec<u8>,
        id_body: Vec<u8>,
        auth: Vec<u8>,
    ) -> Result<bool, WitError> {
        self.vault.verify_psk_auth(sa, psk, &real_message, &nonce, &id_body, &auth).map_err(|e| self.refused(e))
    }

    fn derive_child(&mut self, k: ChildKeying) -> Result<ChildKeyHandles, WitError> {
        let s = &k.suite;
        let alg = EspAlgorithm::from_iana(s.encr, s.key_bits, s.integ).ok_or(WitError::Unsupported)?;
        // No CHILD SA for a peer the policy did not accept (or was not
        // asked about): a guest cannot go past the answer.
        let lineage = self.lineages.get(&k.ike_sa).copied().unwrap_or_default();
        let Some(Verdict::Accepted(grant)) = self.verdicts.get(&k.ike_sa).cloned() else {
            self.refusals += 1;
            tracing::warn!(
                "IKE guest asked for CHILD SA keys of an IKE SA whose peer the policy did not accept: refused"
            );
            return Err(WitError::WrongKeyKind);
        };
        let suite =
            wasmsec_crypto::ChildSuite { encr: s.encr.into(), key_bits: s.key_bits, integ: s.integ.into(), esn: s.esn };
        let keying = wasmsec_crypto::ChildKeying {
            ike_sa: k.ike_sa,
            suite: &suite,
            ni: &k.ni,
            nr: &k.nr,
            we_initiated: k.we_initiated,
            pfs: k.pfs.as_ref().map(|(dh, public)| (*dh, &public[..])),
        };
        let km = self.vault.child_keymat(&keying).map_err(|e| self.refused(e))?;
        let (out, inb, authenticated_by, key_exchange) =
            (km.outbound, km.inbound, km.authenticated_by, km.key_exchange);
        let exports = if self.esp_keylog {
            Some((crate::keylog::esp_sa_keys(alg, &out), crate::keylog::esp_sa_keys(alg, &inb)))
        } else {
            None
        };
        let out = EspKey::new(alg, out).map_err(|_| WitError::Internal)?;
        let inb = EspKey::new(alg, inb).map_err(|_| WitError::Internal)?;
        if self.derived.len() >= MAX_PENDING_CHILD_KEYS {
            return Err(WitError::Internal);
        }
        let handles = ChildKeyHandles { outbound: self.esp_keys.insert(out), inbound: self.esp_keys.insert(inb) };
        self.derived.insert(
            handles.outbound,
            Derived { inbound: handles.inbound, alg, authenticated_by, grant, lineage, key_exchange },
        );
        if let Some((o, i)) = exports {
            let pairs = [(handles.outbound, o), (handles.inbound, i)];
            self.esp_exports.extend(pairs.into_iter().filter_map(|(h, k)| Some((h, k?))));
        }
        Ok(handles)
    }

    fn destroy(&mut self, key: u64) {
        // Not a connection's PSK: those are the operator's, and go with
        // their connection.
        if self.psk_owners.contains_key(&key) {
            self.refusals += 1;
            return;
        }
        self.release(key);
    }
}

impl IkeState {
    /// Destroy the secret of handle `key` (not a PSK: callers check), and
    /// what the host keeps about it.
    fn release(&mut self, key: u64) {
        // An ESP key only while it is derived and not installed: the keys
        // of an installed CHILD SA (or another tenant's, or a manual
        // tunnel's, in the same keystore) go with the SA's Delete, which
        // the host checks against what it installed.
        if self.vault.destroy(key) {
            self.verdicts.remove(&key);
            if let Some(l) = self.lineages.remove(&key) {
                let left = self.lineage_handles.get_mut(&l).map(|n| {
                    *n -= 1;
                    *n
                });
                if left == Some(0) {
                    self.lineage_handles.remove(&l);
                    self.verified_from.remove(&l);
                }
            }
        } else if let Some(o) = self.derived.iter().find(|(o, d)| **o == key || d.inbound == key).map(|(o, _)| *o) {
            // Either key of a pair ends the pair: it can no longer be
            // installed, so its other key goes from the keystore too
            // (before 2026-12-06 it stayed there until restart).
            if let Some(d) = self.derived.remove(&o) {
                self.destroy_child_keys(o, d.inbound);
            }
        }
    }
}

/// An IKE instance that could not be made: why, and the host state it
/// was to hold, given back.
pub type NotMade = Box<(anyhow::Error, IkeState)>;

/// The compiled IKE component, linked and ready to instantiate.
pub(crate) struct IkePre(b::IkeEnginePre<IkeState>);

impl IkePre {
    pub fn load(engine: &Engine, component: &wasmtime::component::Component) -> Result<IkePre> {
        let pre = sandbox::link(engine, component, "IKE", |l| b::IkeEngine::add_to_linker::<_, HasSelf<_>>(l, |s| s))?;
        Ok(IkePre(b::IkeEnginePre::new(pre).context("IKE component does not export wasmsec:ike/engine")?))
    }

    /// A new instance holding `state`; on failure the state comes back,
    /// so a failed replacement can be tried again with the same vault,
    /// keys and checkpoints.
    pub fn instantiate(&self, engine: &Engine, state: IkeState) -> Result<IkeInstance, NotMade> {
        let mut store = sandbox::new_store(engine, state);
        match self.0.instantiate(&mut store) {
            Ok(bindings) => Ok(IkeInstance { store, bindings, faults_pending: 0, next_fault: None }),
            Err(e) => Err(Box::new((anyhow::Error::from(e).context("instantiating IKE component"), store.into_data()))),
        }
    }
}

/// One IKE engine instance and its store. Every call's outer `Err` is a
/// trap (the instance is then unusable), the inner one the engine's answer.
pub struct IkeInstance {
    pub store: Store<IkeState>,
    bindings: b::IkeEngine,
    /// Fault injection for tests: this many of the next calls trap (their
    /// epoch deadline is already past), real traps that exercise the
    /// replacement; what is left carries over to the replacement, so a
    /// count above one traps the replacement too.
    pub faults_pending: u32,
    /// Fault injection for tests: `Output`, the next `poll` traps, losing
    /// the output of the calls before it; `Call(n)`, the nth call from
    /// now traps.
    pub next_fault: Option<crate::ops::FaultPoint>,
}

impl IkeInstance {
    /// One call into the engine, under its deadline, timed and counted
    /// (`wasmsec_guest_call_duration_seconds`); an `Err` is a trap.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&b::exports::wasmsec::ike::engine::Guest, &mut Store<IkeState>) -> wasmtime::Result<T>,
    ) -> Result<T> {
        if let Some(crate::ops::FaultPoint::Call(n)) = self.next_fault {
            self.next_fault = n.checked_sub(1).filter(|&n| n > 0).map(crate::ops::FaultPoint::Call);
            if n <= 1 {
                self.faults_pending += 1;
            }
        }
        let deadline = if self.faults_pending > 0 {
            self.faults_pending -= 1;
            0
        } else {
            sandbox::CALL_DEADLINE_TICKS
        };
        self.store.set_epoch_deadline(deadline);
        let (e, s) = (self.bindings.wasmsec_ike_engine(), &mut self.store);
        Ok(crate::telemetry::guest_call(crate::telemetry::Guest::Ike, || f(e, s))?)
    }

    /// Replace a trapped instance by a new one with the same host state
    /// (vault, keystore, checkpoints); the caller adds the connections and
    /// restores the checkpoints. If no new instance can be made, this one
    /// keeps the state for the next try.
    pub fn replace(&mut self, rt: &super::Runtime) -> Result<()> {
        let placeholder = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
        let state = std::mem::replace(self.store.data_mut(), placeholder);
        match rt.ike_instance_from(state) {
            Ok(new) => {
                let faults_pending = self.faults_pending;
                *self = new;
                self.faults_pending = faults_pending;
                Ok(())
            }
            Err(not_made) => {
                let (e, state) = *not_made;
                *self.store.data_mut() = state;
                Err(e)
            }
        }
    }

    /// Take up the IKE SAs of the instance this one replaces.
    pub fn restore(&mut self, checkpoints: &[Vec<u8>]) -> Result<Result<u32, String>> {
        refusal(self.call(|e, s| e.call_restore(s, checkpoints)))
    }

    /// The handles on the vault's and keystore's secrets its IKE SAs hold.
    pub fn held_keys(&mut self) -> Result<Vec<u64>> {
        self.call(|e, s| e.call_held_keys(s))
    }

    pub fn add_connection(&mut self, c: &Connection) -> Result<Result<Vec<String>, String>> {
        let added = refusal(self.call(|e, s| e.call_add_connection(s, c)))?;
        Ok(added.map(|notes| notes.iter().map(|n| super::guest_text(n, super::GUEST_LOG_CHARS).into_owned()).collect()))
    }

    pub fn autostart(&mut self) -> Result<Vec<String>> {
        self.call(|e, s| e.call_autostart(s))
    }

    pub fn initiate(&mut self, now: u64, name: &str) -> Result<Result<(), String>> {
        refusal(self.call(|e, s| e.call_initiate(s, now, name)))
    }

    pub fn remove_connection(&mut self, now: u64, name: &str) -> Result<Result<u32, String>> {
        refusal(self.call(|e, s| e.call_remove_connection(s, now, name)))
    }

    pub fn terminate(&mut self, now: u64, name: &str) -> Result<Result<u32, String>> {
        refusal(self.call(|e, s| e.call_terminate(s, now, name)))
    }

    pub fn handle_datagram(&mut self, now: u64, d: &Datagram) -> Result<()> {
        self.store.data_mut().handling(Some(d));
        let r = self.call(|e, s| e.call_handle_datagram(s, now, d));
        self.store.data_mut().handling(None);
        r
    }

    pub fn tick(&mut self, now: u64) -> Result<()> {
        self.call(|e, s| e.call_tick(s, now))
    }

    pub fn child_expired(&mut self, now: u64, spi: u32, hard: bool) -> Result<()> {
        self.call(|e, s| e.call_child_expired(s, now, spi, hard))
    }

    pub fn child_failed(&mut self, now: u64, spi: u32, reason: &str) -> Result<()> {
        self.call(|e, s| e.call_child_failed(s, now, spi, reason))
    }

    /// Everything the engine queued: SA changes, transmits, events.
    /// The guest's words come back fit for the log ([`fit_for_log`]).
    pub fn poll(&mut self) -> Result<Output> {
        if self.next_fault == Some(crate::ops::FaultPoint::Output) {
            self.next_fault = None;
            self.faults_pending += 1;
        }
        let mut out = self.call(|e, s| e.call_poll(s))?;
        out.events.iter_mut().for_each(fit_for_log);
        Ok(out)
    }

    pub fn next_timeout(&mut self) -> Result<Option<u64>> {
        self.call(|e, s| e.call_next_timeout(s))
    }

    pub fn stats(&mut self) -> Result<Counters> {
        self.call(|e, s| e.call_stats(s))
    }

    pub fn ike_sa_states(&mut self) -> Result<Vec<IkeSaCount>> {
        self.call(|e, s| e.call_ike_sa_states(s))
    }

    /// The rekey and expiry of the CHILD SAs with these inbound SPIs, as
    /// the engine holds them at `now` (the guest's word: shown, not acted on).
    pub fn child_schedules(&mut self, now: u64, inbound_spis: &[u32]) -> Result<Vec<ChildSchedule>> {
        self.call(|e, s| e.call_child_schedules(s, now, inbound_spis))
    }

    pub fn active(&mut self, name: &str) -> Result<bool> {
        self.call(|e, s| e.call_active(s, name))
    }
}

impl super::bindings::esp::wasmsec::crypto::types::Host for IkeState {}
impl super::bindings::policy::wasmsec::policy::types::Host for IkeState {}

impl b::wasmsec::ike::authorizer::Host for IkeState {
    fn authorize(&mut self, ike_sa: u64, _ike_spi: u64, request: AuthorizeRequest) -> Decision {
        match self.authorize_peer(ike_sa, &request) {
            Ok(d) => d,
            Err(why) => {
                self.refusals += 1;
                Decision::Reject(format!("refused by the host: {why}"))
            }
        }
    }
}
impl super::bindings::esp::wasmsec::net::types::Host for IkeState {}

/// The guest's reason for refusing an operator's request, fit for the log
/// and the admin API (`guest_text`).
fn refusal<T>(answer: Result<Result<T, String>>) -> Result<Result<T, String>> {
    answer.map(|r| r.map_err(|why| super::guest_text(&why, super::GUEST_LOG_CHARS).into_owned()))
}

/// Whether the identity a guest asks the policy about is `id`, said as the
/// component says it (`wasmsec_ike::identity::for_policy`).
fn same_identity(id: &Identification, asked: &Identity) -> bool {
    use wasmsec_ike::identity::{PolicyIdKind as K, for_policy};
    let (kind, value) = for_policy(id);
    let kind = match kind {
        K::Ipv4 => IdKind::Ipv4,
        K::Ipv6 => IdKind::Ipv6,
        K::Fqdn => IdKind::Fqdn,
        K::Rfc822 => IdKind::Rfc822,
        K::DerDn => IdKind::DerDn,
        K::KeyId => IdKind::KeyId,
    };
    asked.kind == kind && asked.value == value
}

/// The IKE guest's words in an event, made fit for the log and the admin
/// view (`guest_text`): its log lines, and a peer's identity, which the
/// peer chose (a line break in it would forge a row of `list-sas`).
fn fit_for_log(event: &mut Event) {
    let fit = |s: &mut String, max: usize| {
        if let Cow::Owned(t) = super::guest_text(s, max) {
            *s = t;
        }
    };
    match event {
        Event::Log(l) => {
            fit(&mut l.message, super::GUEST_LOG_CHARS);
            fit(&mut l.connection, super::GUEST_REASON_CHARS);
        }
        Event::IkeUp(up) => fit(&mut up.remote_id, super::GUEST_ID_CHARS),
        Event::IkeDown(_) => {}
    }
}

#[cfg(test)]
#[path = "ike_tests.rs"]
mod tests;
