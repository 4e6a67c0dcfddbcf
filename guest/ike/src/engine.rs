//! The IKEv2 state machine (RFC 7296), sans-IO.
//!
//! Datagrams, time and admin commands go in; [`Action`]s come out through
//! [`Engine::poll_action`]: datagrams to send, CHILD SAs to install or
//! delete, events for the log. Time is a millisecond counter the host
//! passes in, so tests run two engines against each other on virtual time.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use wasmsec_wire::ike::{
    self, Delete, Header, Identification, Message, Notify, Payload, TrafficSelector as Ts, auth_method, exchange,
    notify, payload, protocol,
};

use crate::crypto::{ChildKeys, ChildSuite, CryptoError, Handle, IkeCrypto, IkeSuite};
use crate::identity::{Identity, Show};
use crate::proposal::{self, Chosen, Kind};
use crate::ts;

/// A UDP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

pub const IKE_PORT: u16 = 500;
/// How long the responder of a rekey keeps sending on the old SA if the
/// initiator's DELETE of it does not come.
const DEFERRED_OUTBOUND_MS: u64 = 2000;
pub const NAT_T_PORT: u16 = 4500;
/// How long the inbound half of a CHILD SA deleted by a DELETE exchange
/// (after a rekey, or by the peer) still accepts packets: those the peer
/// sent before it processed the exchange can arrive after it (they travel
/// through another queue than IKE). strongSwan keeps rekeyed inbound SAs
/// 5 s (`delete_rekeyed_delay`).
pub const DELETED_INBOUND_LINGER_MS: u32 = 5000;

/// An IKE datagram (without the non-ESP marker on port 4500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub data: Vec<u8>,
}

/// What to do when a connection is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAction {
    /// Wait for the peer or an admin command.
    None,
    /// Initiate at once.
    Start,
}

/// What to do when dead peer detection finds the peer gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpdAction {
    /// Delete the SAs and wait.
    Clear,
    /// Delete the SAs and initiate again.
    Restart,
}

/// A CHILD SA's configuration.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub name: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub esp_proposals: String,
    /// Rekey the CHILD SA this long after it was created (RFC 7296 section
    /// 1.3.3); 0: never initiate a rekey (the peer's rekeys are answered).
    pub rekey_time_ms: u64,
    /// Rekey once either SA of the pair carried this many bytes or
    /// packets; 0: no such limit.
    pub rekey_bytes: u64,
    pub rekey_packets: u64,
    /// Hard limits: the CHILD SA is deleted (and created anew) when one is
    /// reached before the rekey replaced it; 0: 110 % of the matching
    /// rekey limit (by time at least the retransmission span above it), or
    /// none without one.
    pub life_time_ms: u64,
    pub life_bytes: u64,
    pub life_packets: u64,
}

/// A connection as the host's config describes it (swanctl.conf-like).
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub name: String,
    /// Our addresses (empty: any).
    pub local_addrs: Vec<IpAddr>,
    /// The peer's addresses (empty: any; then we cannot initiate).
    pub remote_addrs: Vec<IpAddr>,
    pub local_id: String,
    pub remote_id: String,
    /// The pre-shared key's handle in the host keystore.
    pub psk: Handle,
    pub ike_proposals: String,
    pub children: Vec<ChildConfig>,
    pub start_action: StartAction,
    /// Always use UDP encapsulation for ESP, NAT or not.
    pub force_encap: bool,
    /// NAT keepalive interval when we are behind a NAT (RFC 3948 section
    /// 2.3); 0 turns keepalives off.
    pub keepalive_ms: u64,
    /// Liveness check after this long without hearing from the peer
    /// (section 2.4); 0 turns it off.
    pub dpd_delay_ms: u64,
    pub dpd_action: DpdAction,
    /// Rekey the IKE SA this long after it was created (section 2.18);
    /// 0: only answer the peer's rekeys.
    pub rekey_time_ms: u64,
    /// Reauthenticate this long after the IKE SA was created: a new IKE SA
    /// from scratch with new CHILD SAs, then the old one is deleted
    /// (make-before-break); 0: never.
    pub reauth_time_ms: u64,
}

/// A CHILD SA's lifetimes after defaults (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lifetimes {
    rekey_time: u64,
    rekey_bytes: u64,
    rekey_packets: u64,
    life_time: u64,
    life_bytes: u64,
    life_packets: u64,
}

impl Lifetimes {
    /// strongSwan's convention: without a hard limit, 110 % of the soft one;
    /// by time at least `margin_ms` more, so that a rekey that needs all its
    /// retransmissions still finishes before the hard limit.
    fn from_config(c: &ChildConfig, margin_ms: u64) -> Result<Lifetimes, String> {
        let hard = |soft: u64, hard: u64, what: &str, margin: u64| -> Result<u64, String> {
            match (soft, hard) {
                (0, 0) => Ok(0),
                (s, 0) => Ok(s.saturating_add((s / 10).max(margin).max(1))),
                (s, h) if s != 0 && h <= s => Err(format!("life_{what} ({h}) must be above rekey_{what} ({s})")),
                (_, h) => Ok(h),
            }
        };
        Ok(Lifetimes {
            rekey_time: c.rekey_time_ms,
            rekey_bytes: c.rekey_bytes,
            rekey_packets: c.rekey_packets,
            life_time: hard(c.rekey_time_ms, c.life_time_ms, "time", margin_ms)?,
            life_bytes: hard(c.rekey_bytes, c.life_bytes, "bytes", 0)?,
            life_packets: hard(c.rekey_packets, c.life_packets, "packets", 0)?,
        })
    }
}

/// Volume limits for the data plane, per SA (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub soft_bytes: u64,
    pub soft_packets: u64,
    pub hard_bytes: u64,
    pub hard_packets: u64,
}

struct ChildCfg {
    name: String,
    local_ts: Vec<Ts>,
    remote_ts: Vec<Ts>,
    esp: Vec<proposal::Config>,
    life: Lifetimes,
}

struct Connection {
    cfg: ConnectionConfig,
    local_id: Identity,
    remote_id: Identity,
    ike: Vec<proposal::Config>,
    children: Vec<ChildCfg>,
}

/// A CHILD SA to install in the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    pub connection: String,
    pub child: String,
    /// Our IKE SPI of the IKE SA this CHILD SA belongs to.
    pub ike_spi: u64,
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub inbound_key: Handle,
    pub outbound_key: Handle,
    pub suite: ChildSuite,
    pub local_ts: Vec<Ts>,
    pub remote_ts: Vec<Ts>,
    pub local: Endpoint,
    pub remote: Endpoint,
    /// ESP in UDP (RFC 3948) to the peer's port 4500.
    pub encap: bool,
    /// Install only the inbound SA now; the outbound one waits for
    /// [`Action::ActivateOutbound`] (the responder of a rekey must not send
    /// on the new SA before the initiator can receive on it, section 2.8).
    pub outbound_deferred: bool,
    /// Volume lifetimes; passing one is reported with [`Engine::child_expired`].
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Datagram),
    /// Start sending on the deferred outbound SA with this SPI.
    ActivateOutbound {
        outbound_spi: u32,
    },
    /// The peer now sends from `remote` (its NAT mapping changed): the
    /// ESP of these outbound SAs must go there too.
    PeerMoved {
        outbound_spis: Vec<u32>,
        remote: Endpoint,
    },
    /// Send a NAT keepalive (one 0xFF byte, RFC 3948 section 2.3) on this path.
    Keepalive {
        local: Endpoint,
        remote: Endpoint,
    },
    InstallChild(ChildSa),
    /// The CHILD SA is gone: stop sending on it at once; keep accepting on
    /// its inbound half for `keep_inbound_ms` more (packets the peer sent
    /// before it processed the DELETE may still be on the way).
    DeleteChild {
        ike_spi: u64,
        inbound_spi: u32,
        outbound_spi: u32,
        inbound_key: Handle,
        outbound_key: Handle,
        keep_inbound_ms: u32,
    },
    /// An IKE SA came up: connection, our SPI, the negotiated proposal
    /// (strongSwan's names), our role and the path.
    IkeUp {
        connection: String,
        ike_spi: u64,
        proposal: String,
        initiator: bool,
        local: Endpoint,
        remote: Endpoint,
    },
    /// An IKE SA is gone.
    IkeDown {
        connection: String,
        ike_spi: u64,
    },
    Log {
        level: Level,
        connection: String,
        message: String,
    },
}

/// Counters the host exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx: u64,
    pub tx: u64,
    pub retransmits: u64,
    pub replayed_responses: u64,
    /// Unparseable datagrams (dropped, or answered INVALID_SYNTAX when authenticated).
    pub malformed: u64,
    /// No IKE SA with that SPI.
    pub unknown_spi: u64,
    /// Messages that failed the integrity check.
    pub integrity_failed: u64,
    /// Message IDs out of window, unsolicited responses.
    pub unexpected: u64,
    pub ike_established: u64,
    pub child_installed: u64,
    pub auth_failed: u64,
    pub no_proposal: u64,
    pub ts_unacceptable: u64,
    pub timeouts: u64,
    pub keepalives: u64,
    pub dpd_checks: u64,
    pub dead_peers: u64,
    /// COOKIE notifies sent (section 2.6).
    pub cookies_sent: u64,
    /// Simultaneous CHILD SA rekeys resolved (section 2.8.1), by outcome.
    pub rekey_collisions_won: u64,
    pub rekey_collisions_lost: u64,
    /// Simultaneous IKE SA rekeys resolved (section 2.8.2), by outcome.
    pub ike_rekey_collisions_won: u64,
    pub ike_rekey_collisions_lost: u64,
    /// Requests answered TEMPORARY_FAILURE (section 2.25).
    pub temporary_failures: u64,
    /// CHILD SAs that reached a soft lifetime (rekey started) or a hard one
    /// (deleted before a rekey replaced them).
    pub lifetime_soft: u64,
    pub lifetime_hard: u64,
    /// Reauthentications started.
    pub reauths: u64,
    /// IKE_SA_INIT requests dropped at the half-open cap.
    pub half_open_drops: u64,
    /// IKE_SA_INIT requests dropped by the per-source rate limit.
    pub rate_limited: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    InitDone,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    Established,
    /// DELETE for the IKE SA sent.
    Deleting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Init,
    Auth,
    CreateChild,
    DeleteIke,
    Liveness,
    /// DELETE of the CHILD SA with this inbound SPI (after a rekey).
    DeleteChild(u32),
    /// CREATE_CHILD_SA rekeying the IKE SA.
    RekeyIke,
    /// DELETE of the CHILD SAs in `delete_queue` (hard lifetime).
    DeleteExpired,
}

struct Request {
    kind: Pending,
    mid: u32,
    datagram: Datagram,
    tries: u32,
    next_at: u64,
}

struct Child {
    cfg: usize,
    inbound_spi: u32,
    outbound_spi: u32,
    keys: ChildKeys,
    local_ts: Vec<Ts>,
    remote_ts: Vec<Ts>,
    /// When to rekey (0: not by us, or already under way).
    rekey_at: u64,
    /// Hard lifetime: when the SA is deleted if still here (0: never).
    expire_at: u64,
    /// A rekey made a successor; this SA only waits for its DELETE.
    replaced: bool,
}

/// A CHILD SA we proposed and wait to hear about.
struct PendingChild {
    cfg: usize,
    inbound_spi: u32,
    local_ts: Vec<Ts>,
    remote_ts: Vec<Ts>,
    /// Nonce of a CREATE_CHILD_SA request.
    nonce: Option<Vec<u8>>,
    /// The inbound SPI of the CHILD SA this one replaces (a rekey).
    rekeys: Option<u32>,
    /// Our DH value and its group for PFS (KE in CREATE_CHILD_SA, section 1.3.1).
    dh: Option<(Handle, u16)>,
    /// Creating anew a CHILD SA whose predecessor expired: retried if refused.
    recreate: bool,
}

struct IkeSa {
    conn: usize,
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    local: Endpoint,
    remote: Endpoint,
    state: State,
    suite: Option<Chosen>,
    keys: Option<Handle>,
    dh: Option<Handle>,
    dh_group: u16,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// RealMessage1 and RealMessage2 (section 2.15).
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    nat_local: bool,
    nat_remote: bool,
    next_mid: u32,
    request: Option<Request>,
    peer_next_mid: u32,
    last_response: Option<(u32, Datagram)>,
    children: Vec<Child>,
    pending_child: Option<PendingChild>,
    /// CHILD configs already requested on this IKE SA (initiator).
    children_tried: Vec<usize>,
    /// Rekeyed outbound SAs waiting for the old SA's DELETE (or a deadline).
    deferred: Vec<(u32, u64)>,
    /// When to rekey the IKE SA (0: not by us, or under way).
    rekey_ike_at: u64,
    /// Our rekey of this IKE SA in flight: new SPI, DH value, nonce; and
    /// the DH group of that KE.
    ike_rekey: Option<(u64, Handle, Vec<u8>)>,
    rekey_group: u16,
    /// The peer rekeyed a CHILD SA we are rekeying too (section 2.8.1):
    /// our inbound SPI of that SA and the nonces of the peer's exchange.
    collision: Option<(u32, Vec<u8>, Vec<u8>)>,
    /// The peer rekeyed this IKE SA while we were rekeying it (section
    /// 2.8.2): our SPI of the peer's new IKE SA and that exchange's nonces.
    ike_collision: Option<(u64, Vec<u8>, Vec<u8>)>,
    /// CHILD SAs past their hard lifetime, already gone here, that the peer
    /// must be told about: (inbound SPI, outbound SPI, DELETE sent).
    delete_queue: Vec<(u32, u32, bool)>,
    /// Delete this IKE SA as soon as no exchange of ours is in flight.
    close_when_idle: bool,
    /// The peer's half of a simultaneous IKE rekey that lost: the peer
    /// should delete it; if it has not by then (it may have lost track when
    /// messages were lost), we do.
    redundant_at: u64,
    /// CHILD configs to create again (their SA expired before a rekey), not
    /// before `recreate_at`.
    recreate: Vec<usize>,
    recreate_at: u64,
    /// When to reauthenticate (0: not by us, or under way). On the side
    /// that did not send IKE_AUTH: when the peer must have reauthenticated
    /// (RFC 4478 AUTH_LIFETIME), else the IKE SA is deleted.
    reauth_at: u64,
    /// We sent the IKE_AUTH request of the authentication this IKE SA stems
    /// from (kept across rekeys): only that side reauthenticates, so the two
    /// ends never replace the same IKE SA twice.
    auth_initiator: bool,
    /// Reauthentication: the IKE SA (our SPI) this one replaces once its
    /// CHILD SAs are up.
    replaces: Option<u64>,
    cookie: Option<Vec<u8>>,
    created_at: u64,
    /// Last time an authentic message came from the peer.
    last_rx: u64,
    next_keepalive: u64,
}

impl IkeSa {
    /// A new IKE SA with nothing negotiated yet; callers set what they know.
    fn fresh(conn: usize, local: Endpoint, remote: Endpoint, now: u64) -> IkeSa {
        IkeSa {
            conn,
            initiator: false,
            spi_i: 0,
            spi_r: 0,
            local,
            remote,
            state: State::InitSent,
            suite: None,
            keys: None,
            dh: None,
            dh_group: 0,
            ni: Vec::new(),
            nr: Vec::new(),
            init_req: Vec::new(),
            init_resp: Vec::new(),
            nat_local: false,
            nat_remote: false,
            next_mid: 0,
            request: None,
            peer_next_mid: 0,
            last_response: None,
            children: Vec::new(),
            pending_child: None,
            children_tried: Vec::new(),
            deferred: Vec::new(),
            rekey_ike_at: 0,
            ike_rekey: None,
            rekey_group: 0,
            collision: None,
            ike_collision: None,
            delete_queue: Vec::new(),
            close_when_idle: false,
            redundant_at: 0,
            recreate: Vec::new(),
            recreate_at: 0,
            reauth_at: 0,
            auth_initiator: false,
            replaces: None,
            cookie: None,
            created_at: now,
            last_rx: now,
            next_keepalive: 0,
        }
    }

    fn our_spi(&self) -> u64 {
        if self.initiator { self.spi_i } else { self.spi_r }
    }

    fn encap(&self, force: bool) -> bool {
        force || self.nat_local || self.nat_remote
    }
}

/// Retransmission timing (section 2.1): first after `base`, doubling, at
/// most `tries` sends in all.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub retransmit_base_ms: u64,
    pub retransmit_tries: u32,
    /// A responder's half-open IKE SA is dropped after this long.
    pub half_open_ms: u64,
    /// With this many half-open IKE SAs, new initiators must return a
    /// COOKIE first (section 2.6).
    pub cookie_threshold: usize,
    /// Above this many half-open IKE SAs, IKE_SA_INIT requests are dropped.
    pub max_half_open: usize,
    /// IKE_SA_INIT requests accepted per second from one source address
    /// (and the burst allowed); the rest are dropped and counted.
    pub init_per_source: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            retransmit_base_ms: 1000,
            retransmit_tries: 6,
            half_open_ms: 30_000,
            cookie_threshold: 64,
            max_half_open: 4096,
            init_per_source: 20,
        }
    }
}

/// How often the COOKIE secret changes (section 2.6); cookies made with the
/// previous secret are still accepted.
const COOKIE_SECRET_MS: u64 = 120_000;

/// The IKEv2 engine: connections, IKE SAs and what to do next.
pub struct Engine {
    conns: Vec<Connection>,
    sas: HashMap<u64, IkeSa>,
    /// Responder SAs by (peer endpoint, SPIi), to spot IKE_SA_INIT retransmits.
    half_open: HashMap<(Endpoint, u64), u64>,
    actions: VecDeque<Action>,
    stats: Stats,
    timing: Timing,
    /// The time of the call being processed.
    now: u64,
    /// Set while answering a rekey: the new outbound SA waits.
    defer_outbound: bool,
    /// COOKIE secrets: current, previous, and when the current one expires.
    cookie_secret: Option<([u8; 16], [u8; 16], u64)>,
    /// Per-source token buckets for IKE_SA_INIT: tokens (x1000) and last refill.
    init_buckets: HashMap<IpAddr, (u64, u64)>,
}

/// Why an exchange failed, with the notify to send if any.
struct Fail {
    notify: Option<(u16, Vec<u8>)>,
    message: String,
}

impl Fail {
    fn with(n: u16, message: impl Into<String>) -> Fail {
        Fail { notify: Some((n, Vec::new())), message: message.into() }
    }

    fn quiet(message: impl Into<String>) -> Fail {
        Fail { notify: None, message: message.into() }
    }
}

fn notify_payload(kind: u16, data: Vec<u8>) -> Payload {
    Payload::Notify(Notify { protocol: 0, spi: Vec::new(), kind, data })
}

fn find_notify(ps: &[Payload], kind: u16) -> Option<&Notify> {
    ps.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind == kind => Some(n),
        _ => None,
    })
}

fn first_error(ps: &[Payload]) -> Option<u16> {
    ps.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind < notify::FIRST_STATUS => Some(n.kind),
        _ => None,
    })
}

fn notify_name(n: u16) -> String {
    match n {
        notify::UNSUPPORTED_CRITICAL_PAYLOAD => "UNSUPPORTED_CRITICAL_PAYLOAD".into(),
        notify::INVALID_SYNTAX => "INVALID_SYNTAX".into(),
        notify::NO_PROPOSAL_CHOSEN => "NO_PROPOSAL_CHOSEN".into(),
        notify::INVALID_KE_PAYLOAD => "INVALID_KE_PAYLOAD".into(),
        notify::AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED".into(),
        notify::TS_UNACCEPTABLE => "TS_UNACCEPTABLE".into(),
        notify::NO_ADDITIONAL_SAS => "NO_ADDITIONAL_SAS".into(),
        notify::INTERNAL_ADDRESS_FAILURE => "INTERNAL_ADDRESS_FAILURE".into(),
        notify::TEMPORARY_FAILURE => "TEMPORARY_FAILURE".into(),
        n => format!("notify {n}"),
    }
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | Port) (section 2.23).
fn nat_hash(spi_i: u64, spi_r: u64, ep: &Endpoint) -> Vec<u8> {
    let mut h = sha1_smol::Sha1::new();
    h.update(&spi_i.to_be_bytes());
    h.update(&spi_r.to_be_bytes());
    match ep.addr {
        IpAddr::V4(a) => h.update(&a.octets()),
        IpAddr::V6(a) => h.update(&a.octets()),
    }
    h.update(&ep.port.to_be_bytes());
    h.digest().bytes().to_vec()
}

/// A rekey time less up to 10 %, so that SAs created together (and the two
/// ends of a tunnel with the same setting) do not all rekey at once. The
/// random SPI is the source of the spread.
fn jittered(t: u64, spi: u64) -> u64 {
    let spread = t / 10;
    if spread == 0 { t } else { t - (spi.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % spread }
}

/// The Nonce payload's data (empty if there is none).
fn nr_of(ps: &[Payload]) -> Vec<u8> {
    ps.iter()
        .find_map(|p| match p {
            Payload::Nonce(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The SA, KE and Nonce payloads of an IKE_SA_INIT message.
fn sa_ke_nonce(ps: &[Payload]) -> Option<(Vec<ike::Proposal>, u16, Vec<u8>, Vec<u8>)> {
    let (mut sa, mut ke, mut nonce) = (None, None, None);
    for p in ps {
        match p {
            Payload::Sa(props) => sa = Some(props.clone()),
            Payload::Ke { group, data } => ke = Some((*group, data.clone())),
            Payload::Nonce(n) => nonce = Some(n.clone()),
            _ => {}
        }
    }
    let (group, public) = ke?;
    Some((sa?, group, public, nonce?))
}

/// The SA, TSi and TSr payloads of a CHILD SA request or answer.
fn sa_tsi_tsr(ps: &[Payload]) -> Option<(Vec<ike::Proposal>, Vec<Ts>, Vec<Ts>)> {
    let (mut sa, mut tsi, mut tsr) = (None, None, None);
    for p in ps {
        match p {
            Payload::Sa(x) => sa = Some(x.clone()),
            Payload::TsI(x) => tsi = Some(x.clone()),
            Payload::TsR(x) => tsr = Some(x.clone()),
            _ => {}
        }
    }
    Some((sa?, tsi?, tsr?))
}

/// A received PSK AUTH payload against the value we computed, in constant time.
fn auth_ok(method: u8, expected: &Result<Vec<u8>, CryptoError>, got: &[u8]) -> bool {
    method == auth_method::SHARED_KEY_MIC
        && expected
            .as_ref()
            .is_ok_and(|e| e.len() == got.len() && e.iter().zip(got).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0)
}

fn esp_spi(spi: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(spi.try_into().ok()?))
}

fn crypto_fail(e: CryptoError) -> Fail {
    Fail::quiet(format!("crypto operation failed: {e:?}"))
}

impl Engine {
    pub fn new(timing: Timing) -> Engine {
        Engine {
            conns: Vec::new(),
            sas: HashMap::new(),
            half_open: HashMap::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
            timing,
            now: 0,
            defer_outbound: false,
            cookie_secret: None,
            init_buckets: HashMap::new(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Half-open IKE SAs (responder, waiting for IKE_AUTH).
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    /// Number of IKE SAs in any state.
    pub fn ike_sa_count(&self) -> usize {
        self.sas.len()
    }

    /// Number of established IKE SAs and their CHILD SAs.
    pub fn established(&self) -> (usize, usize) {
        let up = self.sas.values().filter(|s| s.state == State::Established);
        up.fold((0, 0), |(i, c), s| (i + 1, c + s.children.len()))
    }

    /// One line per IKE SA: SPI, state, role, CHILD SAs and the exchange
    /// in flight (for diagnostics and tests).
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sas
            .values()
            .map(|s| {
                format!(
                    "{:016x} {:?} {} children={} request={:?} replaces={:?} close={} collision={:?}",
                    s.our_spi(),
                    s.state,
                    if s.initiator { "I" } else { "R" },
                    s.children.len(),
                    s.request.as_ref().map(|r| r.kind),
                    s.replaces,
                    s.close_when_idle,
                    s.ike_collision.as_ref().map(|c| c.0),
                )
            })
            .collect();
        v.sort();
        v
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn ike_up(&mut self, sa: &IkeSa) {
        self.actions.push_back(Action::IkeUp {
            connection: self.conns[sa.conn].cfg.name.clone(),
            ike_spi: sa.our_spi(),
            proposal: sa.suite.map(|s| s.name(Kind::Ike)).unwrap_or_default(),
            initiator: sa.initiator,
            local: sa.local,
            remote: sa.remote,
        });
    }

    fn log(&mut self, level: Level, conn: usize, message: String) {
        let connection = self.conns.get(conn).map(|c| c.cfg.name.clone()).unwrap_or_default();
        self.actions.push_back(Action::Log { level, connection, message });
    }

    /// Load a connection. Errors name what is wrong.
    pub fn add_connection(&mut self, cfg: ConnectionConfig) -> Result<Vec<String>, String> {
        let at = |k: &str, e: String| format!("connection {:?}: {k}: {e}", cfg.name);
        if self.conns.iter().any(|c| c.cfg.name == cfg.name) {
            return Err(format!("connection {:?} is defined twice", cfg.name));
        }
        let (ike, mut warnings) = proposal::parse(&cfg.ike_proposals, Kind::Ike).map_err(|e| at("proposals", e))?;
        let local_id = Identity::parse(&cfg.local_id).map_err(|e| at("local id", e))?;
        if local_id == Identity::Any {
            return Err(at("local id", "must name us, not %any".into()));
        }
        let remote_id = Identity::parse(&cfg.remote_id).map_err(|e| at("remote id", e))?;
        if cfg.children.is_empty() {
            return Err(at("children", "at least one CHILD SA is needed".into()));
        }
        let mut children = Vec::new();
        for c in &cfg.children {
            let ch = |k: &str, e: String| format!("connection {:?}: child {:?}: {k}: {e}", cfg.name, c.name);
            let (esp, w) = proposal::parse(&c.esp_proposals, Kind::Esp).map_err(|e| ch("esp_proposals", e))?;
            warnings.extend(w);
            let parse_ts = |v: &[String], k: &str| -> Result<Vec<Ts>, String> {
                if v.is_empty() {
                    return Err(ch(k, "at least one subnet is needed".into()));
                }
                v.iter().map(|s| ts::from_cidr(s).map_err(|e| ch(k, e))).collect()
            };
            children.push(ChildCfg {
                name: c.name.clone(),
                local_ts: parse_ts(&c.local_ts, "local_ts")?,
                remote_ts: parse_ts(&c.remote_ts, "remote_ts")?,
                esp,
                life: Lifetimes::from_config(c, self.retransmit_span()).map_err(|e| ch("lifetimes", e))?,
            });
        }
        self.conns.push(Connection { cfg, local_id, remote_id, ike, children });
        Ok(warnings)
    }

    /// Is an IKE SA of connection `name` up or being set up?
    pub fn active(&self, name: &str) -> bool {
        self.conns
            .iter()
            .position(|c| c.cfg.name == name)
            .is_some_and(|i| self.sas.values().any(|s| s.conn == i && s.state != State::Deleting))
    }

    /// Connections whose start action is `Start`.
    pub fn autostart(&self) -> Vec<String> {
        self.conns.iter().filter(|c| c.cfg.start_action == StartAction::Start).map(|c| c.cfg.name.clone()).collect()
    }

    fn new_spi(&self, crypto: &mut dyn IkeCrypto) -> u64 {
        loop {
            let mut b = [0u8; 8];
            crypto.random(&mut b);
            let s = u64::from_be_bytes(b);
            if s != 0 && !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    fn new_esp_spi(crypto: &mut dyn IkeCrypto) -> u32 {
        let mut b = [0u8; 4];
        crypto.random(&mut b);
        // Above the reserved 0-255, and recognisably ours in captures.
        u32::from_be_bytes(b) | 0xc000_0000
    }

    fn nonce(crypto: &mut dyn IkeCrypto) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        crypto.random(&mut n);
        n
    }

    // ---- sending ----------------------------------------------------------

    fn emit(&mut self, d: Datagram) {
        self.stats.tx += 1;
        self.actions.push_back(Action::Send(d));
    }

    fn header(sa: &IkeSa, exch: u8, response: bool, mid: u32) -> Header {
        let mut flags = ike::FLAG_INITIATOR * u8::from(sa.initiator);
        if response {
            flags |= ike::FLAG_RESPONSE;
        }
        Header {
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            next_payload: 0,
            version: ike::VERSION,
            exchange: exch,
            flags,
            message_id: mid,
            length: 0,
        }
    }

    fn encrypted(
        sa: &IkeSa,
        exch: u8,
        response: bool,
        mid: u32,
        ps: &[Payload],
        crypto: &mut dyn IkeCrypto,
    ) -> Result<Datagram, Fail> {
        let keys = sa.keys.ok_or_else(|| Fail::quiet("no keys yet"))?;
        let mut inner = Vec::new();
        let first = ike::emit_chain(ps, &mut inner);
        let mut h = Vec::with_capacity(ike::HEADER_LEN);
        Self::header(sa, exch, response, mid).emit(&mut h);
        let h: [u8; 28] = h.try_into().map_err(|_| Fail::quiet("header"))?;
        let data = crypto.encrypt(keys, sa.initiator, &h, first, &inner).map_err(crypto_fail)?;
        Ok(Datagram { local: sa.local, remote: sa.remote, data })
    }

    /// Send a request and arm its retransmission.
    fn request(&mut self, sa: &mut IkeSa, now: u64, kind: Pending, datagram: Datagram) {
        let mid = sa.next_mid;
        sa.next_mid += 1;
        self.emit(datagram.clone());
        sa.request = Some(Request { kind, mid, datagram, tries: 1, next_at: now + self.timing.retransmit_base_ms });
    }

    fn respond(&mut self, sa: &mut IkeSa, mid: u32, d: Datagram) {
        sa.last_response = Some((mid, d.clone()));
        sa.peer_next_mid = mid + 1;
        self.emit(d);
    }

    fn respond_encrypted(&mut self, sa: &mut IkeSa, exch: u8, mid: u32, ps: &[Payload], crypto: &mut dyn IkeCrypto) {
        match Self::encrypted(sa, exch, true, mid, ps, crypto) {
            Ok(d) => self.respond(sa, mid, d),
            Err(f) => self.log(Level::Warn, sa.conn, format!("cannot build response: {}", f.message)),
        }
    }

    // ---- admin ------------------------------------------------------------

    /// Start connection `name` as initiator.
    pub fn initiate(&mut self, now: u64, name: &str, crypto: &mut dyn IkeCrypto) -> Result<(), String> {
        self.now = now;
        let conn = self.conns.iter().position(|c| c.cfg.name == name).ok_or(format!("no connection {name:?}"))?;
        let c = &self.conns[conn];
        let remote =
            *c.cfg.remote_addrs.first().ok_or(format!("connection {name:?} has no remote address to initiate to"))?;
        let local = c.cfg.local_addrs.first().copied().unwrap_or(match remote {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        self.start_ike(now, conn, local, remote, None, crypto)
    }

    /// A new IKE SA as initiator; `replaces`: the IKE SA (our SPI) that it
    /// reauthenticates.
    fn start_ike(
        &mut self,
        now: u64,
        conn: usize,
        local: IpAddr,
        remote: IpAddr,
        replaces: Option<u64>,
        crypto: &mut dyn IkeCrypto,
    ) -> Result<(), String> {
        let group = self.conns[conn].ike[0].dh[0];
        let spi = self.new_spi(crypto);
        let mut sa = IkeSa {
            initiator: true,
            spi_i: spi,
            spi_r: 0,
            state: State::InitSent,
            dh_group: group,
            ni: Self::nonce(crypto),
            replaces,
            ..IkeSa::fresh(
                conn,
                Endpoint { addr: local, port: IKE_PORT },
                Endpoint { addr: remote, port: IKE_PORT },
                now,
            )
        };
        self.log(Level::Info, conn, format!("initiating IKE_SA to {remote}"));
        match self.send_init(&mut sa, now, crypto) {
            Ok(()) => {
                self.sas.insert(spi, sa);
                Ok(())
            }
            Err(f) => Err(f.message),
        }
    }

    fn send_init(&mut self, sa: &mut IkeSa, now: u64, crypto: &mut dyn IkeCrypto) -> Result<(), Fail> {
        if let Some(old) = sa.dh.take() {
            crypto.destroy(old);
        }
        let (dh, public) = crypto.dh_generate(sa.dh_group).map_err(crypto_fail)?;
        sa.dh = Some(dh);
        let c = &self.conns[sa.conn];
        let mut ps = Vec::new();
        if let Some(cookie) = &sa.cookie {
            ps.push(notify_payload(notify::COOKIE, cookie.clone()));
        }
        ps.push(Payload::Sa(proposal::to_wire(&c.ike, Kind::Ike, &[], true)));
        ps.push(Payload::Ke { group: sa.dh_group, data: public });
        ps.push(Payload::Nonce(sa.ni.clone()));
        ps.push(notify_payload(notify::NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, 0, &sa.local)));
        ps.push(notify_payload(notify::NAT_DETECTION_DESTINATION_IP, nat_hash(sa.spi_i, 0, &sa.remote)));
        let m = Message { header: Self::header(sa, exchange::IKE_SA_INIT, false, 0), payloads: ps };
        let data = m.emit();
        sa.init_req = data.clone();
        sa.next_mid = 0;
        sa.state = State::InitSent;
        self.request(sa, now, Pending::Init, Datagram { local: sa.local, remote: sa.remote, data });
        Ok(())
    }

    /// Delete every IKE SA of connection `name` (DELETE, section 1.4.1).
    pub fn terminate(&mut self, now: u64, name: &str, crypto: &mut dyn IkeCrypto) -> Result<usize, String> {
        self.now = now;
        let conn = self.conns.iter().position(|c| c.cfg.name == name).ok_or(format!("no connection {name:?}"))?;
        let ids: Vec<u64> = self.sas.iter().filter(|(_, s)| s.conn == conn).map(|(k, _)| *k).collect();
        for id in &ids {
            let Some(mut sa) = self.sas.remove(id) else {
                continue;
            };
            if sa.state == State::Established {
                // After the exchange in flight, if any (one at a time, section 2.3).
                if sa.request.is_none() {
                    self.send_delete_ike(&mut sa, now, crypto);
                } else {
                    sa.close_when_idle = true;
                    sa.rekey_ike_at = 0;
                    sa.reauth_at = 0;
                }
                if sa.state == State::Deleting || sa.close_when_idle {
                    self.sas.insert(*id, sa);
                    continue;
                }
            }
            self.drop_sa(sa, crypto, "terminated");
        }
        Ok(ids.len())
    }

    /// Send DELETE for the IKE SA itself (section 1.4.1).
    fn send_delete_ike(&mut self, sa: &mut IkeSa, now: u64, crypto: &mut dyn IkeCrypto) {
        let del = [Payload::Delete(Delete { protocol: protocol::IKE, spi_size: 0, spis: Vec::new() })];
        match Self::encrypted(sa, exchange::INFORMATIONAL, false, sa.next_mid, &del, crypto) {
            Ok(d) => {
                self.request(sa, now, Pending::DeleteIke, d);
                sa.state = State::Deleting;
            }
            Err(f) => self.log(Level::Warn, sa.conn, format!("cannot send DELETE: {}", f.message)),
        }
    }

    /// Forget an IKE SA and its CHILD SAs, telling the host.
    fn drop_sa(&mut self, mut sa: IkeSa, crypto: &mut dyn IkeCrypto, why: &str) {
        let spi = sa.our_spi();
        for c in sa.children.drain(..) {
            self.actions.push_back(Action::DeleteChild {
                ike_spi: spi,
                inbound_spi: c.inbound_spi,
                outbound_spi: c.outbound_spi,
                inbound_key: c.keys.inbound,
                outbound_key: c.keys.outbound,
                keep_inbound_ms: 0,
            });
        }
        // Our half of a simultaneous IKE rekey dies with us: the peer's new
        // IKE SA (no CHILD SAs yet) is now redundant unless the peer uses it.
        if let Some((theirs, _, _)) = sa.ike_collision.take() {
            let at = self.now + self.retransmit_span();
            if let Some(t) = self.sas.get_mut(&theirs).filter(|t| t.children.is_empty()) {
                t.redundant_at = at;
            }
        }
        let rekey_dh = sa.ike_rekey.take().map(|r| r.1);
        let child_dh = sa.pending_child.take().and_then(|p| p.dh).map(|d| d.0);
        for h in [sa.keys.take(), sa.dh.take(), rekey_dh, child_dh].into_iter().flatten() {
            crypto.destroy(h);
        }
        self.half_open.retain(|_, v| *v != spi);
        let was_up = sa.state == State::Established || sa.state == State::Deleting;
        self.log(Level::Info, sa.conn, format!("IKE_SA {spi:016x} with {} deleted: {why}", sa.remote.addr));
        if was_up {
            let connection = self.conns[sa.conn].cfg.name.clone();
            self.actions.push_back(Action::IkeDown { connection, ike_spi: spi });
        }
        // A failed reauthentication: the old IKE SA stays and tries again later.
        if let Some(old) = sa.replaces {
            let retry = self.retry_delay(self.conns[sa.conn].cfg.reauth_time_ms, crypto);
            if let Some(o) = self.sas.get_mut(&old) {
                o.reauth_at = self.now + retry;
            }
        }
    }

    // ---- time ------------------------------------------------------------

    /// When `tick` must be called next, if ever.
    pub fn next_timeout(&self) -> Option<u64> {
        let half_open = self.timing.half_open_ms;
        self.sas
            .values()
            .flat_map(|s| {
                let c = &self.conns[s.conn].cfg;
                let r = s.request.as_ref().map(|r| r.next_at);
                let h = (s.state == State::InitDone).then_some(s.created_at + half_open);
                let up = s.state == State::Established;
                let idle = up && s.request.is_none();
                let k = (up && self.wants_keepalive(s)).then_some(s.next_keepalive);
                let d = (idle && c.dpd_delay_ms > 0).then_some(s.last_rx + c.dpd_delay_ms);
                let rk = s.children.iter().filter(|c| idle && c.rekey_at != 0).map(|c| c.rekey_at).min();
                let ex = s.children.iter().filter(|c| up && c.expire_at != 0).map(|c| c.expire_at).min();
                let df = s.deferred.iter().map(|x| x.1).min();
                let ik = (idle && s.rekey_ike_at != 0).then_some(s.rekey_ike_at);
                let ra =
                    (up && s.reauth_at != 0 && s.replaces.is_none() && s.ike_rekey.is_none()).then_some(s.reauth_at);
                let rd = (up && s.redundant_at != 0).then_some(s.redundant_at);
                // Exchanges owed as soon as the SA is idle.
                let owed = s.close_when_idle || s.delete_queue.iter().any(|q| !q.2);
                let now = (idle && owed).then_some(self.now);
                let rc = (idle && !s.recreate.is_empty()).then_some(s.recreate_at.max(self.now));
                [r, h, k, d, rk, ex, df, ik, ra, rd, now, rc].into_iter().flatten()
            })
            .min()
    }

    /// How long a peer keeps retransmitting a request before it gives up.
    fn retransmit_span(&self) -> u64 {
        let t = &self.timing;
        t.retransmit_base_ms.saturating_mul((1u64 << t.retransmit_tries.min(16)) - 1)
    }

    /// Start the next exchange this IKE SA owes, if any (one at a time).
    fn next_request(&mut self, sa: &mut IkeSa, now: u64, crypto: &mut dyn IkeCrypto) {
        if sa.close_when_idle {
            sa.close_when_idle = false;
            return self.send_delete_ike(sa, now, crypto);
        }
        let expired: Vec<Vec<u8>> =
            sa.delete_queue.iter().filter(|q| !q.2).map(|q| q.0.to_be_bytes().to_vec()).collect();
        if !expired.is_empty() {
            let del = [Payload::Delete(Delete { protocol: protocol::ESP, spi_size: 4, spis: expired })];
            match Self::encrypted(sa, exchange::INFORMATIONAL, false, sa.next_mid, &del, crypto) {
                Ok(d) => {
                    sa.delete_queue.iter_mut().for_each(|q| q.2 = true);
                    self.request(sa, now, Pending::DeleteExpired, d);
                }
                Err(f) => {
                    sa.delete_queue.clear();
                    self.log(Level::Warn, sa.conn, format!("cannot send DELETE: {}", f.message));
                }
            }
            return;
        }
        if sa.rekey_ike_at != 0 && now >= sa.rekey_ike_at {
            return self.start_ike_rekey(sa, None, now, crypto);
        }
        if let Some(pos) = sa.children.iter().position(|c| c.rekey_at != 0 && now >= c.rekey_at) {
            return self.start_child_rekey(sa, pos, now, crypto);
        }
        while !sa.recreate.is_empty() && now >= sa.recreate_at {
            let cfg = sa.recreate.remove(0);
            if !sa.children.iter().any(|c| c.cfg == cfg) {
                self.request_child(sa, cfg, None, None, now, crypto);
                match sa.pending_child.as_mut() {
                    Some(p) => p.recreate = true,
                    None => {
                        // Not even sent (a local failure): later.
                        sa.recreate.push(cfg);
                        sa.recreate_at =
                            now + self.retry_delay(self.conns[sa.conn].children[cfg].life.rekey_time, crypto);
                    }
                }
                return;
            }
        }
        // CHILD configs not brought up yet (an IKE rekey took the slot).
        self.create_next_child(sa, now, crypto);
    }

    /// Reauthentication: a new IKE SA from scratch (IKE_SA_INIT, IKE_AUTH)
    /// with new CHILD SAs; the old one is deleted once they are up
    /// (make-before-break).
    fn start_reauth(&mut self, old: &mut IkeSa, now: u64, crypto: &mut dyn IkeCrypto) {
        old.reauth_at = 0;
        old.rekey_ike_at = 0;
        self.stats.reauths += 1;
        let msg = format!("reauthenticating IKE_SA {:016x}: new IKE_SA from scratch", old.our_spi());
        self.log(Level::Info, old.conn, msg);
        if let Err(e) = self.start_ike(now, old.conn, old.local.addr, old.remote.addr, Some(old.our_spi()), crypto) {
            self.log(Level::Warn, old.conn, format!("cannot reauthenticate: {e}"));
            old.reauth_at = now + self.retry_delay(self.conns[old.conn].cfg.reauth_time_ms, crypto);
        }
    }

    /// IKE SA `from` handed over to `to`: references to it follow. A
    /// reauthentication under way must replace the successor (or both would
    /// live on), and a collision record naming it waits on the successor.
    fn follow_successor(&mut self, from: u64, to: u64) {
        for s in self.sas.values_mut() {
            if s.replaces == Some(from) {
                s.replaces = Some(to);
            }
            if let Some(c) = s.ike_collision.as_mut().filter(|c| c.0 == from) {
                c.0 = to;
            }
        }
    }

    /// The reauthenticated IKE SA has its CHILD SAs: delete the old one.
    fn finish_reauth(&mut self, new: &IkeSa, old: u64, now: u64, crypto: &mut dyn IkeCrypto) {
        let Some(mut o) = self.sas.remove(&old) else { return };
        let msg = format!("reauthenticated: IKE_SA {:016x} replaces {old:016x}", new.our_spi());
        self.log(Level::Info, new.conn, msg);
        o.rekey_ike_at = 0;
        o.children.iter_mut().for_each(|c| c.rekey_at = 0);
        o.recreate.clear();
        if o.state == State::Established && o.request.is_none() {
            self.send_delete_ike(&mut o, now, crypto);
        } else {
            o.close_when_idle = true;
        }
        self.sas.insert(old, o);
    }

    /// Behind a NAT, on the NAT-T port, with keepalives configured.
    fn wants_keepalive(&self, s: &IkeSa) -> bool {
        s.nat_local && s.local.port == NAT_T_PORT && self.conns[s.conn].cfg.keepalive_ms > 0
    }

    /// Retransmit what is due, give up on silent peers, expire half-open SAs.
    pub fn tick(&mut self, now: u64, crypto: &mut dyn IkeCrypto) {
        self.now = now;
        let ids: Vec<u64> = self.sas.keys().copied().collect();
        for id in ids {
            let Some(mut sa) = self.sas.remove(&id) else {
                continue;
            };
            if sa.state == State::InitDone && now >= sa.created_at + self.timing.half_open_ms {
                self.stats.timeouts += 1;
                self.drop_sa(sa, crypto, "half-open IKE_SA timed out waiting for IKE_AUTH");
                continue;
            }
            if sa.state == State::Established {
                let c = &self.conns[sa.conn].cfg;
                let (keepalive, dpd) = (c.keepalive_ms, c.dpd_delay_ms);
                if self.wants_keepalive(&sa) && now >= sa.next_keepalive {
                    sa.next_keepalive = now + keepalive;
                    self.stats.keepalives += 1;
                    self.actions.push_back(Action::Keepalive { local: sa.local, remote: sa.remote });
                }
                // Section 2.4: an empty INFORMATIONAL request proves the peer alive.
                if dpd > 0 && sa.request.is_none() && now >= sa.last_rx + dpd {
                    self.stats.dpd_checks += 1;
                    match Self::encrypted(&sa, exchange::INFORMATIONAL, false, sa.next_mid, &[], crypto) {
                        Ok(d) => self.request(&mut sa, now, Pending::Liveness, d),
                        Err(f) => self.log(Level::Warn, sa.conn, format!("cannot send liveness check: {}", f.message)),
                    }
                }
            }
            if sa.state == State::Established {
                // Hard lifetimes by time (the data plane reports volume ones).
                let due: Vec<u32> = sa
                    .children
                    .iter()
                    .filter(|c| c.expire_at != 0 && now >= c.expire_at)
                    .map(|c| c.inbound_spi)
                    .collect();
                for x in due {
                    self.expire_child(&mut sa, x, "hard lifetime (life_time) reached");
                }
                // Not while our rekey of this IKE SA is in flight: its
                // successor inherits the due reauthentication.
                if sa.reauth_at != 0 && now >= sa.reauth_at && sa.replaces.is_none() && sa.ike_rekey.is_none() {
                    if sa.auth_initiator {
                        self.start_reauth(&mut sa, now, crypto);
                    } else {
                        sa.reauth_at = 0;
                        let msg = format!(
                            "the peer did not reauthenticate IKE_SA {:016x} as asked (AUTH_LIFETIME): deleting it",
                            sa.our_spi()
                        );
                        self.log(Level::Warn, sa.conn, msg);
                        sa.close_when_idle = true;
                        sa.rekey_ike_at = 0;
                    }
                }
                if sa.redundant_at != 0 && now >= sa.redundant_at {
                    sa.redundant_at = 0;
                    if sa.children.is_empty() {
                        let msg = format!(
                            "the peer did not delete the redundant or replaced IKE_SA {:016x}: deleting it",
                            sa.our_spi()
                        );
                        self.log(Level::Info, sa.conn, msg);
                        sa.close_when_idle = true;
                    }
                }
            }
            self.activate_deferred(&mut sa, now);
            if sa.state == State::Established && sa.request.is_none() {
                self.next_request(&mut sa, now, crypto);
            }
            let mut give_up = false;
            if let Some(r) = sa.request.as_mut() {
                if now >= r.next_at {
                    if r.tries >= self.timing.retransmit_tries {
                        give_up = true;
                    } else {
                        r.tries += 1;
                        r.next_at = now + (self.timing.retransmit_base_ms << (r.tries - 1).min(16));
                        let d = r.datagram.clone();
                        self.stats.retransmits += 1;
                        self.emit(d);
                    }
                }
            }
            if give_up {
                self.stats.timeouts += 1;
                let tries = self.timing.retransmit_tries;
                let was_up = sa.state == State::Established;
                let conn = sa.conn;
                self.drop_sa(sa, crypto, &format!("peer did not answer after {tries} transmissions"));
                if was_up {
                    self.stats.dead_peers += 1;
                    let c = &self.conns[conn].cfg;
                    // Not when another IKE SA of the connection is up (a stale
                    // one timed out): our INITIAL_CONTACT would make the peer
                    // drop the good one.
                    let other = self
                        .sas
                        .values()
                        .any(|s| s.conn == conn && s.state == State::Established && s.redundant_at == 0);
                    if c.dpd_action == DpdAction::Restart && !c.remote_addrs.is_empty() && !other {
                        let name = c.name.clone();
                        self.log(Level::Info, conn, "peer is dead: re-initiating (dpd_action = restart)".into());
                        if let Err(e) = self.initiate(now, &name, crypto) {
                            self.log(Level::Warn, conn, format!("cannot re-initiate: {e}"));
                        }
                    }
                }
                continue;
            }
            self.sas.insert(id, sa);
        }
    }

    // ---- receiving -------------------------------------------------------

    /// Process one IKE datagram.
    pub fn handle_datagram(&mut self, now: u64, d: Datagram, crypto: &mut dyn IkeCrypto) {
        self.now = now;
        self.stats.rx += 1;
        let h = match Header::parse(&d.data) {
            Ok(h) if h.length as usize == d.data.len() => h,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        if h.version >> 4 != 2 {
            // Section 2.5: only a major version we do not speak gets
            // INVALID_MAJOR_VERSION; we simply drop, as we keep no state.
            self.stats.malformed += 1;
            return;
        }
        if h.exchange == exchange::IKE_SA_INIT && !h.is_response() && h.spi_r == 0 && h.message_id == 0 {
            return self.responder_init(now, h, d, crypto);
        }
        let ours = if h.is_initiator() { h.spi_r } else { h.spi_i };
        let Some(sa) = self.sas.remove(&ours) else {
            self.stats.unknown_spi += 1;
            return;
        };
        let theirs_ok = if h.is_initiator() { h.spi_i == sa.spi_i } else { sa.spi_r == 0 || h.spi_r == sa.spi_r };
        if !theirs_ok || h.is_initiator() == sa.initiator {
            self.stats.unknown_spi += 1;
            self.sas.insert(ours, sa);
            return;
        }
        if h.exchange == exchange::IKE_SA_INIT {
            if sa.state == State::InitSent && h.is_response() {
                self.initiator_init_response(now, sa, h, d, crypto);
            } else {
                self.stats.unexpected += 1;
                self.sas.insert(ours, sa);
            }
            return;
        }
        if h.is_response() {
            self.handle_response(now, sa, h, d, crypto);
        } else {
            self.handle_request(now, sa, h, d, crypto);
        }
    }

    /// Decrypt an Encrypted message; `Err(true)` if it was not authentic.
    fn open(
        &mut self,
        sa: &IkeSa,
        h: &Header,
        d: &Datagram,
        crypto: &mut dyn IkeCrypto,
    ) -> Result<Result<Vec<Payload>, ()>, bool> {
        let Some(keys) = sa.keys else {
            return Err(false);
        };
        if h.next_payload != payload::SK || d.data.len() < ike::HEADER_LEN + 4 {
            self.stats.malformed += 1;
            return Err(false);
        }
        let inner = match crypto.decrypt(keys, h.is_initiator(), &d.data, ike::HEADER_LEN) {
            Ok(i) => i,
            Err(_) => {
                self.stats.integrity_failed += 1;
                return Err(true);
            }
        };
        let first = d.data[ike::HEADER_LEN];
        Ok(ike::parse_chain(first, &inner).map_err(|_| {
            self.stats.malformed += 1;
        }))
    }

    fn handle_request(&mut self, now: u64, mut sa: IkeSa, h: Header, d: Datagram, crypto: &mut dyn IkeCrypto) {
        let id = sa.our_spi();
        // Section 2.2: a retransmitted request gets the same response again.
        if let Some((mid, resp)) = &sa.last_response {
            if h.message_id == *mid {
                let resp = resp.clone();
                self.stats.replayed_responses += 1;
                self.emit(resp);
                self.sas.insert(id, sa);
                return;
            }
        }
        if h.message_id != sa.peer_next_mid {
            self.stats.unexpected += 1;
            self.sas.insert(id, sa);
            return;
        }
        let ps = match self.open(&sa, &h, &d, crypto) {
            Ok(Ok(ps)) => {
                sa.last_rx = now;
                ps
            }
            Ok(Err(())) => {
                // Authentic but unparseable: INVALID_SYNTAX (section 2.21.2).
                self.respond_encrypted(
                    &mut sa,
                    h.exchange,
                    h.message_id,
                    &[notify_payload(notify::INVALID_SYNTAX, Vec::new())],
                    crypto,
                );
                self.sas.insert(id, sa);
                return;
            }
            Err(_) => {
                self.sas.insert(id, sa);
                return;
            }
        };
        if let Some(k) = ps.iter().find_map(|p| match p {
            Payload::Unknown { kind, critical: true, .. } => Some(*kind),
            _ => None,
        }) {
            self.stats.malformed += 1;
            self.respond_encrypted(
                &mut sa,
                h.exchange,
                h.message_id,
                &[notify_payload(notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![k])],
                crypto,
            );
            self.sas.insert(id, sa);
            return;
        }
        // NAT-T (RFC 3948 / section 2.23): follow the peer to where it sends from.
        // With a NAT in front of the peer, its public address may change too.
        if sa.remote != d.remote && (sa.remote.addr == d.remote.addr || sa.nat_remote) {
            let old = sa.remote;
            sa.remote = d.remote;
            sa.local = d.local;
            if sa.state == State::Established {
                let outbound_spis = sa.children.iter().map(|c| c.outbound_spi).collect();
                self.actions.push_back(Action::PeerMoved { outbound_spis, remote: d.remote });
                let msg = format!(
                    "peer moved from {}:{} to {}:{} (NAT mapping changed)",
                    old.addr, old.port, d.remote.addr, d.remote.port
                );
                self.log(Level::Info, sa.conn, msg);
            }
        }
        match (h.exchange, sa.state) {
            (exchange::IKE_AUTH, State::InitDone) => {
                return self.responder_auth(now, sa, h, d, ps, crypto);
            }
            (exchange::INFORMATIONAL, State::Established | State::Deleting) => {
                return self.informational(sa, h, ps, crypto);
            }
            (exchange::CREATE_CHILD_SA, State::Established) => {
                return self.responder_create_child(sa, h, ps, crypto);
            }
            (exchange::CREATE_CHILD_SA, State::Deleting) => {
                // Section 2.25.2: we are closing this IKE SA.
                self.stats.temporary_failures += 1;
                let tf = [notify_payload(notify::TEMPORARY_FAILURE, Vec::new())];
                self.respond_encrypted(&mut sa, exchange::CREATE_CHILD_SA, h.message_id, &tf, crypto);
            }
            _ => {
                self.stats.unexpected += 1;
                self.log(Level::Warn, sa.conn, format!("unexpected exchange {} in state {:?}", h.exchange, sa.state));
            }
        }
        self.sas.insert(id, sa);
    }

    fn handle_response(&mut self, now: u64, mut sa: IkeSa, h: Header, d: Datagram, crypto: &mut dyn IkeCrypto) {
        let id = sa.our_spi();
        let Some(req) = sa.request.as_ref().filter(|r| r.mid == h.message_id) else {
            self.stats.unexpected += 1;
            self.sas.insert(id, sa);
            return;
        };
        let kind = req.kind;
        let ps = match self.open(&sa, &h, &d, crypto) {
            Ok(Ok(ps)) => {
                sa.last_rx = now;
                ps
            }
            _ => {
                self.sas.insert(id, sa);
                return;
            }
        };
        sa.request = None;
        match kind {
            Pending::Auth => self.initiator_auth_response(now, sa, ps, crypto),
            Pending::DeleteIke => self.drop_sa(sa, crypto, "DELETE acknowledged"),
            Pending::RekeyIke => self.initiator_ike_rekey_response(now, sa, ps, crypto),
            Pending::DeleteChild(old) => {
                self.remove_child(&mut sa, old, "replaced by its rekeyed successor", DELETED_INBOUND_LINGER_MS);
                self.sas.insert(id, sa);
            }
            Pending::CreateChild => self.initiator_create_child_response(now, sa, ps, crypto),
            Pending::DeleteExpired => {
                sa.delete_queue.retain(|q| !q.2);
                self.sas.insert(id, sa);
            }
            Pending::Init | Pending::Liveness => {
                self.sas.insert(id, sa);
            }
        }
    }

    // ---- IKE_SA_INIT -------------------------------------------------------

    fn connection_for(&self, local: &Endpoint, remote: &Endpoint) -> Option<usize> {
        self.conns.iter().position(|c| {
            (c.cfg.local_addrs.is_empty() || c.cfg.local_addrs.contains(&local.addr))
                && (c.cfg.remote_addrs.is_empty() || c.cfg.remote_addrs.contains(&remote.addr))
        })
    }

    /// Token bucket per source address (`init_per_source` per second, the
    /// same as burst). The table is bounded: when full, idle sources go.
    fn allow_init_from(&mut self, from: IpAddr) -> bool {
        const MAX_SOURCES: usize = 16_384;
        let rate = u64::from(self.timing.init_per_source);
        if rate == 0 {
            return true;
        }
        let now = self.now;
        if self.init_buckets.len() >= MAX_SOURCES && !self.init_buckets.contains_key(&from) {
            self.init_buckets.retain(|_, (_, last)| now.saturating_sub(*last) < 1000);
            if self.init_buckets.len() >= MAX_SOURCES {
                self.init_buckets.clear();
            }
        }
        let full = rate * 1000;
        let (tokens, last) = self.init_buckets.entry(from).or_insert((full, now));
        *tokens = (*tokens + now.saturating_sub(*last) * rate).min(full);
        *last = now;
        if *tokens >= 1000 {
            *tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// The cookie for this initiator under the current and previous secret:
    /// version | SHA-1(Ni | IPi | SPIi | secret) (section 2.6).
    fn cookies(
        &mut self,
        spi_i: u64,
        ni: &[u8],
        from: &Endpoint,
        crypto: &mut dyn IkeCrypto,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let now = self.now;
        let fresh = |crypto: &mut dyn IkeCrypto| {
            let mut k = [0u8; 16];
            crypto.random(&mut k);
            k
        };
        let (cur, prev, until) = match self.cookie_secret {
            Some((c, p, until)) if now < until => (c, Some(p), until),
            Some((c, _, _)) => (fresh(crypto), Some(c), now + COOKIE_SECRET_MS),
            None => (fresh(crypto), None, now + COOKIE_SECRET_MS),
        };
        self.cookie_secret = Some((cur, prev.unwrap_or(cur), until));
        let make = |secret: &[u8; 16], version: u8| {
            let mut h = sha1_smol::Sha1::new();
            h.update(ni);
            match from.addr {
                IpAddr::V4(a) => h.update(&a.octets()),
                IpAddr::V6(a) => h.update(&a.octets()),
            }
            h.update(&spi_i.to_be_bytes());
            h.update(secret);
            let mut c = vec![version];
            c.extend_from_slice(&h.digest().bytes());
            c
        };
        // The version byte tells which secret made a cookie.
        let version = ((until / COOKIE_SECRET_MS) & 0xff) as u8;
        (make(&cur, version), prev.map(|p| make(&p, version.wrapping_sub(1))))
    }

    /// An unencrypted error response to an IKE_SA_INIT request.
    fn init_error(&mut self, h: &Header, d: &Datagram, n: u16, data: Vec<u8>) {
        let hdr = Header { spi_r: 0, flags: ike::FLAG_RESPONSE, ..*h };
        let m = Message { header: hdr, payloads: vec![notify_payload(n, data)] };
        self.emit(Datagram { local: d.local, remote: d.remote, data: m.emit() });
    }

    fn responder_init(&mut self, now: u64, h: Header, d: Datagram, crypto: &mut dyn IkeCrypto) {
        if let Some(id) = self.half_open.get(&(d.remote, h.spi_i)).copied() {
            if let Some(sa) = self.sas.get(&id) {
                if sa.init_req == d.data {
                    let resp = Datagram { local: d.local, remote: d.remote, data: sa.init_resp.clone() };
                    self.stats.replayed_responses += 1;
                    self.emit(resp);
                } else {
                    self.stats.unexpected += 1;
                }
                return;
            }
        }
        if !self.allow_init_from(d.remote.addr) {
            self.stats.rate_limited += 1;
            return;
        }
        let m = match Message::parse(&d.data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if let Some(k) = m.payloads.iter().find_map(|p| match p {
            Payload::Unknown { kind, critical: true, .. } => Some(*kind),
            _ => None,
        }) {
            self.stats.malformed += 1;
            return self.init_error(&h, &d, notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![k]);
        }
        let Some(conn) = self.connection_for(&d.local, &d.remote) else {
            self.stats.no_proposal += 1;
            self.actions.push_back(Action::Log {
                level: Level::Warn,
                connection: String::new(),
                message: format!(
                    "IKE_SA_INIT from {}:{} matches no connection (local {})",
                    d.remote.addr, d.remote.port, d.local.addr
                ),
            });
            return self.init_error(&h, &d, notify::NO_PROPOSAL_CHOSEN, Vec::new());
        };
        let Some((offered, group, their_public, ni)) = sa_ke_nonce(&m.payloads) else {
            self.stats.malformed += 1;
            return;
        };
        // Section 2.6: under load, state is only created for initiators that
        // prove they receive at their address, before any DH work.
        if self.half_open.len() >= self.timing.max_half_open {
            self.stats.half_open_drops += 1;
            return;
        }
        if self.half_open.len() >= self.timing.cookie_threshold {
            let got = match m.payloads.first() {
                Some(Payload::Notify(n)) if n.kind == notify::COOKIE => Some(n.data.clone()),
                _ => None,
            };
            let (current, previous) = self.cookies(h.spi_i, &ni, &d.remote, crypto);
            if got.as_ref().is_none_or(|c| *c != current && Some(c) != previous.as_ref()) {
                self.stats.cookies_sent += 1;
                return self.init_error(&h, &d, notify::COOKIE, current);
            }
        }
        let ours = &self.conns[conn].ike;
        let Some((chosen, num, _)) = proposal::select(&offered, ours, Kind::Ike, false) else {
            self.stats.no_proposal += 1;
            let msg = format!(
                "no acceptable IKE proposal: peer {} offered {}, we accept {}",
                d.remote.addr,
                proposal::Display(&offered),
                proposal::Display(&proposal::to_wire(ours, Kind::Ike, &[], true))
            );
            self.log(Level::Warn, conn, msg);
            return self.init_error(&h, &d, notify::NO_PROPOSAL_CHOSEN, Vec::new());
        };
        if group != chosen.dh {
            // Section 1.2: tell the initiator which group we want.
            self.log(
                Level::Info,
                conn,
                format!("peer sent KE for group {group}, we chose {}: INVALID_KE_PAYLOAD", chosen.dh),
            );
            return self.init_error(&h, &d, notify::INVALID_KE_PAYLOAD, chosen.dh.to_be_bytes().to_vec());
        }
        let spi_r = self.new_spi(crypto);
        let nat_src = find_notify(&m.payloads, notify::NAT_DETECTION_SOURCE_IP).map(|n| n.data.clone());
        let nat_dst = find_notify(&m.payloads, notify::NAT_DETECTION_DESTINATION_IP).map(|n| n.data.clone());
        let nat_remote = nat_src.is_some_and(|x| x != nat_hash(h.spi_i, 0, &d.remote));
        let nat_local = nat_dst.is_some_and(|x| x != nat_hash(h.spi_i, 0, &d.local));
        let nr = Self::nonce(crypto);
        let (dh, public) = match crypto.dh_generate(chosen.dh) {
            Ok(x) => x,
            Err(e) => {
                return self.log(Level::Warn, conn, format!("DH group {} failed: {e:?}", chosen.dh));
            }
        };
        let suite = IkeSuite {
            encr: chosen.encr.id,
            key_bits: chosen.encr.key_bits.unwrap_or(256),
            prf: chosen.prf,
            integ: chosen.integ,
            dh: chosen.dh,
        };
        let keys = match crypto.derive_ike_sa(&suite, dh, &their_public, &ni, &nr, h.spi_i, spi_r) {
            Ok(k) => k,
            Err(e) => {
                self.stats.malformed += 1;
                self.log(
                    Level::Warn,
                    conn,
                    format!("key derivation failed ({e:?}): bad KE payload from {}", d.remote.addr),
                );
                return self.init_error(&h, &d, notify::INVALID_SYNTAX, Vec::new());
            }
        };
        let mut sa = IkeSa {
            initiator: false,
            spi_i: h.spi_i,
            spi_r,
            state: State::InitDone,
            suite: Some(chosen),
            keys: Some(keys),
            dh_group: chosen.dh,
            ni,
            nr: nr.clone(),
            init_req: d.data.clone(),
            nat_local,
            nat_remote,
            peer_next_mid: 1,
            ..IkeSa::fresh(conn, d.local, d.remote, now)
        };
        let ps = vec![
            Payload::Sa(vec![proposal::chosen_to_wire(&chosen, Kind::Ike, num, &[])]),
            Payload::Ke { group: chosen.dh, data: public },
            Payload::Nonce(nr),
            notify_payload(notify::NAT_DETECTION_SOURCE_IP, nat_hash(h.spi_i, spi_r, &d.local)),
            notify_payload(notify::NAT_DETECTION_DESTINATION_IP, nat_hash(h.spi_i, spi_r, &d.remote)),
        ];
        let resp = Message { header: Self::header(&sa, exchange::IKE_SA_INIT, true, 0), payloads: ps }.emit();
        sa.init_resp = resp.clone();
        self.log(
            Level::Info,
            conn,
            format!(
                "IKE_SA_INIT from {}:{}: chose {}{}",
                d.remote.addr,
                d.remote.port,
                chosen.name(Kind::Ike),
                match (nat_local, nat_remote) {
                    (false, false) => "",
                    (true, false) => ", we are behind a NAT",
                    (false, true) => ", peer is behind a NAT",
                    (true, true) => ", NAT on both sides",
                }
            ),
        );
        self.emit(Datagram { local: d.local, remote: d.remote, data: resp });
        self.half_open.insert((d.remote, h.spi_i), spi_r);
        self.sas.insert(spi_r, sa);
    }

    fn initiator_init_response(&mut self, now: u64, mut sa: IkeSa, h: Header, d: Datagram, crypto: &mut dyn IkeCrypto) {
        let id = sa.spi_i;
        let m = match Message::parse(&d.data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                self.sas.insert(id, sa);
                return;
            }
        };
        if let Some(n) = find_notify(&m.payloads, notify::COOKIE) {
            // Section 2.6: repeat the request with the cookie first.
            sa.cookie = Some(n.data.clone());
            if let Err(f) = self.send_init(&mut sa, now, crypto) {
                self.log(Level::Warn, sa.conn, f.message);
            }
            self.sas.insert(id, sa);
            return;
        }
        if let Some(n) = find_notify(&m.payloads, notify::INVALID_KE_PAYLOAD) {
            let want = (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]]));
            let ok =
                want.is_some_and(|g| g != sa.dh_group && self.conns[sa.conn].ike.iter().any(|p| p.dh.contains(&g)));
            if let (true, Some(g)) = (ok, want) {
                self.log(Level::Info, sa.conn, format!("peer wants DH group {g} (INVALID_KE_PAYLOAD), retrying"));
                sa.dh_group = g;
                if let Err(f) = self.send_init(&mut sa, now, crypto) {
                    self.log(Level::Warn, sa.conn, f.message);
                }
                self.sas.insert(id, sa);
            } else {
                self.stats.no_proposal += 1;
                self.drop_sa(sa, crypto, &format!("peer asked for DH group {want:?}, which we do not offer"));
            }
            return;
        }
        if let Some(e) = first_error(&m.payloads) {
            if e == notify::NO_PROPOSAL_CHOSEN {
                self.stats.no_proposal += 1;
                let ours =
                    proposal::Display(&proposal::to_wire(&self.conns[sa.conn].ike, Kind::Ike, &[], true)).to_string();
                return self.drop_sa(
                    sa,
                    crypto,
                    &format!("peer answered NO_PROPOSAL_CHOSEN to our IKE proposals {ours}"),
                );
            }
            return self.drop_sa(sa, crypto, &format!("peer answered {}", notify_name(e)));
        }
        let Some((answer, group, public, nr)) = sa_ke_nonce(&m.payloads) else {
            self.stats.malformed += 1;
            return self.drop_sa(sa, crypto, "IKE_SA_INIT response lacks SA, KE or Nonce");
        };
        let Some((chosen, _)) = proposal::check_answer(&answer, &self.conns[sa.conn].ike, Kind::Ike, false) else {
            self.stats.no_proposal += 1;
            return self.drop_sa(
                sa,
                crypto,
                &format!("peer chose {}, which we did not offer", proposal::Display(&answer)),
            );
        };
        if chosen.dh != sa.dh_group || group != sa.dh_group {
            self.stats.malformed += 1;
            return self.drop_sa(sa, crypto, "peer's KE group differs from the one we sent");
        }
        sa.spi_r = h.spi_r;
        let nat_src = find_notify(&m.payloads, notify::NAT_DETECTION_SOURCE_IP).map(|n| n.data.clone());
        let nat_dst = find_notify(&m.payloads, notify::NAT_DETECTION_DESTINATION_IP).map(|n| n.data.clone());
        sa.nat_remote = nat_src.is_some_and(|x| x != nat_hash(sa.spi_i, sa.spi_r, &d.remote));
        sa.nat_local = nat_dst.is_some_and(|x| x != nat_hash(sa.spi_i, sa.spi_r, &d.local));
        let suite = IkeSuite {
            encr: chosen.encr.id,
            key_bits: chosen.encr.key_bits.unwrap_or(256),
            prf: chosen.prf,
            integ: chosen.integ,
            dh: chosen.dh,
        };
        let Some(dh) = sa.dh.take() else {
            return self.drop_sa(sa, crypto, "no DH value");
        };
        sa.keys = match crypto.derive_ike_sa(&suite, dh, &public, &sa.ni, &nr, sa.spi_i, sa.spi_r) {
            Ok(k) => Some(k),
            Err(e) => return self.drop_sa(sa, crypto, &format!("key derivation failed: {e:?}")),
        };
        sa.nr = nr;
        sa.init_resp = d.data.clone();
        sa.suite = Some(chosen);
        sa.request = None;
        // Section 2.23: with a NAT in the path, move to port 4500.
        if sa.encap(self.conns[sa.conn].cfg.force_encap) {
            sa.local.port = NAT_T_PORT;
            sa.remote.port = NAT_T_PORT;
        }
        sa.local.addr = d.local.addr;
        self.log(Level::Info, sa.conn, format!("IKE_SA_INIT done: {}", chosen.name(Kind::Ike)));
        match self.build_auth_request(&mut sa, crypto) {
            Ok(dg) => {
                sa.state = State::AuthSent;
                self.request(&mut sa, now, Pending::Auth, dg);
                self.sas.insert(id, sa);
            }
            Err(f) => self.drop_sa(sa, crypto, &f.message),
        }
    }

    // ---- IKE_AUTH --------------------------------------------------------

    fn build_auth_request(&mut self, sa: &mut IkeSa, crypto: &mut dyn IkeCrypto) -> Result<Datagram, Fail> {
        let c = &self.conns[sa.conn];
        let Identity::Id(idi) = c.local_id.clone() else {
            return Err(Fail::quiet("no local identity"));
        };
        let keys = sa.keys.ok_or_else(|| Fail::quiet("no keys"))?;
        let auth = crypto.psk_auth(keys, c.cfg.psk, true, &sa.init_req, &sa.nr, &idi.body()).map_err(crypto_fail)?;
        let child = &c.children[0];
        let spi = Self::new_esp_spi(crypto);
        let mut ps = vec![Payload::IdI(idi)];
        // Not when reauthenticating: the old IKE SA must live until the new
        // one has its CHILD SAs (section 2.4).
        if sa.replaces.is_none() {
            ps.push(notify_payload(notify::INITIAL_CONTACT, Vec::new()));
        }
        if let Identity::Id(idr) = &c.remote_id {
            ps.push(Payload::IdR(idr.clone()));
        }
        ps.push(Payload::Auth { method: auth_method::SHARED_KEY_MIC, data: auth });
        ps.push(Payload::Sa(proposal::to_wire(&child.esp, Kind::Esp, &spi.to_be_bytes(), false)));
        ps.push(Payload::TsI(child.local_ts.clone()));
        ps.push(Payload::TsR(child.remote_ts.clone()));
        sa.children_tried = vec![0];
        sa.pending_child = Some(PendingChild {
            cfg: 0,
            inbound_spi: spi,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            nonce: None,
            rekeys: None,
            dh: None,
            recreate: false,
        });
        Self::encrypted(sa, exchange::IKE_AUTH, false, sa.next_mid, &ps, crypto)
    }

    fn responder_auth(
        &mut self,
        now: u64,
        mut sa: IkeSa,
        h: Header,
        _d: Datagram,
        ps: Vec<Payload>,
        crypto: &mut dyn IkeCrypto,
    ) {
        let _ = now;
        let id = sa.spi_r;
        let mid = h.message_id;
        let (mut idi, mut auth, mut idr_req) = (None, None, None);
        for p in &ps {
            match p {
                Payload::IdI(i) => idi = Some(i.clone()),
                Payload::IdR(i) => idr_req = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                _ => {}
            }
        }
        let (Some(idi), Some((method, auth))) = (idi, auth) else {
            self.stats.malformed += 1;
            self.respond_encrypted(
                &mut sa,
                exchange::IKE_AUTH,
                mid,
                &[notify_payload(notify::INVALID_SYNTAX, Vec::new())],
                crypto,
            );
            return self.drop_sa(sa, crypto, "IKE_AUTH without IDi or AUTH");
        };
        // Pick the connection by identity among those matching the addresses.
        if !self.conns[sa.conn].remote_id.matches(&idi) {
            let alt = self.conns.iter().position(|c| {
                c.remote_id.matches(&idi)
                    && (c.cfg.local_addrs.is_empty() || c.cfg.local_addrs.contains(&sa.local.addr))
                    && (c.cfg.remote_addrs.is_empty() || c.cfg.remote_addrs.contains(&sa.remote.addr))
                    && sa.suite.is_some_and(|s| {
                        proposal::check_answer(
                            &[proposal::chosen_to_wire(&s, Kind::Ike, 1, &[])],
                            &c.ike,
                            Kind::Ike,
                            false,
                        )
                        .is_some()
                    })
            });
            match alt {
                Some(c) => sa.conn = c,
                None => {
                    self.stats.auth_failed += 1;
                    let want = self.conns[sa.conn].remote_id.to_string();
                    self.log(
                        Level::Warn,
                        sa.conn,
                        format!("peer identity {} does not match the configured remote id {want}", Show(&idi)),
                    );
                    self.respond_encrypted(
                        &mut sa,
                        exchange::IKE_AUTH,
                        mid,
                        &[notify_payload(notify::AUTHENTICATION_FAILED, Vec::new())],
                        crypto,
                    );
                    return self.drop_sa(sa, crypto, "AUTHENTICATION_FAILED (identity)");
                }
            }
        }
        let conn = sa.conn;
        let psk = self.conns[conn].cfg.psk;
        let Some(keys) = sa.keys else {
            return self.drop_sa(sa, crypto, "no keys");
        };
        let expected = crypto.psk_auth(keys, psk, true, &sa.init_req, &sa.nr, &idi.body());
        let good = auth_ok(method, &expected, &auth);
        if !good {
            self.stats.auth_failed += 1;
            self.log(
                Level::Warn,
                conn,
                format!(
                    "AUTH from {} ({}) does not verify{}: wrong pre-shared key?",
                    Show(&idi),
                    sa.remote.addr,
                    if method != auth_method::SHARED_KEY_MIC {
                        format!(" (method {method}, we expect PSK)")
                    } else {
                        String::new()
                    }
                ),
            );
            self.respond_encrypted(
                &mut sa,
                exchange::IKE_AUTH,
                mid,
                &[notify_payload(notify::AUTHENTICATION_FAILED, Vec::new())],
                crypto,
            );
            return self.drop_sa(sa, crypto, "AUTHENTICATION_FAILED");
        }
        let _ = idr_req;
        let Identity::Id(our_id) = self.conns[conn].local_id.clone() else {
            return self.drop_sa(sa, crypto, "no local identity");
        };
        let our_auth = match crypto.psk_auth(keys, psk, false, &sa.init_resp, &sa.ni, &our_id.body()) {
            Ok(a) => a,
            Err(e) => {
                return self.drop_sa(sa, crypto, &format!("AUTH computation failed: {e:?}"));
            }
        };
        let mut out = vec![Payload::IdR(our_id), Payload::Auth { method: auth_method::SHARED_KEY_MIC, data: our_auth }];
        out.extend(self.auth_lifetime(sa.conn));
        let ni = sa.ni.clone();
        let nr = sa.nr.clone();
        // A second IKE SA from this peer without INITIAL_CONTACT: it is
        // reauthenticating. Send on the new CHILD SA only once the old IKE SA
        // is gone (or after a moment), as after a CHILD SA rekey.
        self.defer_outbound = find_notify(&ps, notify::INITIAL_CONTACT).is_none() && self.has_twin(&sa);
        let accepted = self.accept_child(&mut sa, &ps, &ni, &nr, true, crypto);
        self.defer_outbound = false;
        match accepted {
            Ok(child_payloads) => out.extend(child_payloads),
            Err(f) => {
                // Section 1.2: the IKE SA stands even if the CHILD SA fails.
                self.log(Level::Warn, conn, format!("CHILD_SA not created: {}", f.message));
                if let Some((n, data)) = f.notify {
                    out.push(notify_payload(n, data));
                }
            }
        }
        sa.state = State::Established;
        self.stats.ike_established += 1;
        self.schedule_ike_rekey(&mut sa);
        self.schedule_reauth(&mut sa);
        self.half_open.retain(|_, v| *v != id);
        if find_notify(&ps, notify::INITIAL_CONTACT).is_some() {
            self.replace_old_sas(&sa, &idi, crypto);
        }
        let suite = sa.suite.map(|s| s.name(Kind::Ike)).unwrap_or_default();
        let msg = format!(
            "IKE_SA {id:016x} established with {} ({}:{}) as responder, {suite}",
            Show(&idi),
            sa.remote.addr,
            sa.remote.port
        );
        self.log(Level::Info, conn, msg);
        self.ike_up(&sa);
        self.respond_encrypted(&mut sa, exchange::IKE_AUTH, mid, &out, crypto);
        self.sas.insert(id, sa);
    }

    /// Another established IKE SA of the same connection with the same peer.
    fn has_twin(&self, sa: &IkeSa) -> bool {
        self.sas.values().any(|s| s.conn == sa.conn && s.remote.addr == sa.remote.addr && s.state == State::Established)
    }

    /// INITIAL_CONTACT (section 2.4): the peer has no other IKE SAs with us,
    /// so ours with the same identity are stale.
    fn replace_old_sas(&mut self, new: &IkeSa, peer: &Identification, crypto: &mut dyn IkeCrypto) {
        let conn = new.conn;
        let stale: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| s.conn == conn && s.remote.addr == new.remote.addr && s.state == State::Established)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(old) = self.sas.remove(&k) {
                self.drop_sa(old, crypto, &format!("replaced: {} sent INITIAL_CONTACT", Show(peer)));
            }
        }
    }

    /// Responder side of a CHILD SA request (in IKE_AUTH or CREATE_CHILD_SA):
    /// choose the proposal, narrow the selectors, derive keys, install.
    /// Returns the SA, TSi and TSr payloads for the response.
    #[allow(clippy::too_many_arguments)]
    fn accept_child(
        &mut self,
        sa: &mut IkeSa,
        ps: &[Payload],
        ni: &[u8],
        nr: &[u8],
        in_auth: bool,
        crypto: &mut dyn IkeCrypto,
    ) -> Result<Vec<Payload>, Fail> {
        if find_notify(ps, notify::USE_TRANSPORT_MODE).is_some() {
            return Err(Fail::with(
                notify::NO_PROPOSAL_CHOSEN,
                "peer asked for transport mode, which is not supported yet",
            ));
        }
        let Some((offered, tsi, tsr)) = sa_tsi_tsr(ps) else {
            return Err(Fail::with(notify::INVALID_SYNTAX, "CHILD_SA request lacks SA, TSi or TSr"));
        };
        let conn = &self.conns[sa.conn];
        // The first CHILD config whose selectors overlap the peer's (section 2.9).
        let found = conn.children.iter().enumerate().find_map(|(i, c)| {
            let n_tsi = ts::narrow(&tsi, &c.remote_ts);
            let n_tsr = ts::narrow(&tsr, &c.local_ts);
            (!n_tsi.is_empty() && !n_tsr.is_empty()).then_some((i, n_tsi, n_tsr))
        });
        let Some((cfg, n_tsi, n_tsr)) = found else {
            self.stats.ts_unacceptable += 1;
            let allowed: Vec<String> = conn
                .children
                .iter()
                .map(|c| {
                    format!("{}: local {} remote {}", c.name, ts::show_all(&c.local_ts), ts::show_all(&c.remote_ts))
                })
                .collect();
            return Err(Fail::with(
                notify::TS_UNACCEPTABLE,
                format!(
                    "peer proposed TSi {} TSr {}; we allow {}",
                    ts::show_all(&tsi),
                    ts::show_all(&tsr),
                    allowed.join("; ")
                ),
            ));
        };
        let child = &conn.children[cfg];
        let Some((chosen, num, their_spi)) = proposal::select(&offered, &child.esp, Kind::Esp, in_auth) else {
            self.stats.no_proposal += 1;
            return Err(Fail::with(
                notify::NO_PROPOSAL_CHOSEN,
                format!(
                    "no acceptable ESP proposal: peer offered {}, we accept {}",
                    proposal::Display(&offered),
                    proposal::Display(&proposal::to_wire(&child.esp, Kind::Esp, &[], false))
                ),
            ));
        };
        let Some(outbound_spi) = esp_spi(&their_spi) else {
            return Err(Fail::with(notify::INVALID_SYNTAX, "ESP proposal SPI is not 4 bytes"));
        };
        // PFS (section 1.3.1): a KE of the chosen group, or INVALID_KE_PAYLOAD
        // naming the group we want.
        let mut ke = None;
        if !in_auth && chosen.dh != 0 {
            let theirs = ps.iter().find_map(|p| match p {
                Payload::Ke { group, data } => Some((*group, data.clone())),
                _ => None,
            });
            match theirs {
                Some((g, public)) if g == chosen.dh => {
                    let (h, ours) = crypto.dh_generate(g).map_err(crypto_fail)?;
                    ke = Some((h, public, ours));
                }
                Some((g, _)) => {
                    return Err(Fail {
                        notify: Some((notify::INVALID_KE_PAYLOAD, chosen.dh.to_be_bytes().to_vec())),
                        message: format!("peer sent KE for DH group {g}, we chose {}: INVALID_KE_PAYLOAD", chosen.dh),
                    });
                }
                None => return Err(Fail::with(notify::INVALID_SYNTAX, "PFS proposal chosen but no KE payload")),
            }
        }
        let inbound_spi = Self::new_esp_spi(crypto);
        let pfs = ke.as_ref().map(|(h, theirs, _)| (*h, theirs.as_slice()));
        let installed = self.install_child(
            sa,
            cfg,
            chosen,
            inbound_spi,
            outbound_spi,
            n_tsr.clone(),
            n_tsi.clone(),
            ni,
            nr,
            false,
            pfs,
            crypto,
        );
        if let (Err(_), Some((h, _, _))) = (&installed, &ke) {
            crypto.destroy(*h);
        }
        installed?;
        let mut out =
            vec![Payload::Sa(vec![proposal::chosen_to_wire(&chosen, Kind::Esp, num, &inbound_spi.to_be_bytes())])];
        if let Some((_, _, ours)) = ke {
            out.push(Payload::Ke { group: chosen.dh, data: ours });
        }
        out.extend([Payload::TsI(n_tsi), Payload::TsR(n_tsr)]);
        Ok(out)
    }

    /// Derive a CHILD SA's keys and tell the host to install it.
    #[allow(clippy::too_many_arguments)]
    fn install_child(
        &mut self,
        sa: &mut IkeSa,
        cfg: usize,
        chosen: Chosen,
        inbound_spi: u32,
        outbound_spi: u32,
        local_ts: Vec<Ts>,
        remote_ts: Vec<Ts>,
        ni: &[u8],
        nr: &[u8],
        we_initiated: bool,
        pfs: Option<(Handle, &[u8])>,
        crypto: &mut dyn IkeCrypto,
    ) -> Result<(), Fail> {
        let suite = ChildSuite {
            encr: chosen.encr.id,
            key_bits: chosen.encr.key_bits.unwrap_or(256),
            integ: chosen.integ,
            esn: chosen.esn,
        };
        let ike_keys = sa.keys.ok_or_else(|| Fail::quiet("no IKE keys"))?;
        let keys = crypto
            .child_keys(ike_keys, &suite, ni, nr, we_initiated, pfs)
            .map_err(|e| Fail::with(notify::NO_PROPOSAL_CHOSEN, format!("cannot derive CHILD_SA keys: {e:?}")))?;
        let c = &self.conns[sa.conn];
        let life = c.children[cfg].life;
        // Soft limits less up to 10 %, as rekey times (section 2.8.1 collisions
        // are rarer when the two ends do not count to the same number).
        let spread = u64::from(inbound_spi);
        let limits = Limits {
            soft_bytes: jittered(life.rekey_bytes, spread),
            soft_packets: jittered(life.rekey_packets, spread),
            hard_bytes: life.life_bytes,
            hard_packets: life.life_packets,
        };
        let child = ChildSa {
            connection: c.cfg.name.clone(),
            child: c.children[cfg].name.clone(),
            ike_spi: sa.our_spi(),
            inbound_spi,
            outbound_spi,
            inbound_key: keys.inbound,
            outbound_key: keys.outbound,
            suite,
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            local: sa.local,
            remote: sa.remote,
            encap: sa.encap(c.cfg.force_encap),
            outbound_deferred: self.defer_outbound,
            limits,
        };
        if self.defer_outbound {
            sa.deferred.push((outbound_spi, self.now + DEFERRED_OUTBOUND_MS));
        }
        let msg = format!(
            "CHILD_SA {} installed: SPIs in {inbound_spi:08x} out {outbound_spi:08x}, {}, {} === {}{}",
            c.children[cfg].name,
            chosen.name(Kind::Esp),
            ts::show_all(&local_ts),
            ts::show_all(&remote_ts),
            if child.encap { ", UDP-encapsulated" } else { "" }
        );
        let rekey_at = if life.rekey_time > 0 { self.now + jittered(life.rekey_time, spread) } else { 0 };
        // The hard limit moves too, within the lower half of the room above
        // the soft one, so that two ends with the same settings do not both
        // delete (and create anew) the same CHILD SA.
        let hard = if life.rekey_time > 0 && life.life_time > life.rekey_time {
            let room = (life.life_time - life.rekey_time) / 2;
            life.life_time - if room == 0 { 0 } else { (spread.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % room }
        } else {
            jittered(life.life_time, spread.rotate_left(7))
        };
        let expire_at = if life.life_time > 0 { self.now + hard } else { 0 };
        sa.children.push(Child {
            cfg,
            inbound_spi,
            outbound_spi,
            keys,
            local_ts,
            remote_ts,
            rekey_at,
            expire_at,
            replaced: false,
        });
        self.stats.child_installed += 1;
        self.actions.push_back(Action::InstallChild(child));
        self.log(Level::Info, sa.conn, msg);
        Ok(())
    }

    fn initiator_auth_response(&mut self, now: u64, mut sa: IkeSa, ps: Vec<Payload>, crypto: &mut dyn IkeCrypto) {
        let id = sa.spi_i;
        let conn = sa.conn;
        let (mut idr, mut auth) = (None, None);
        for p in &ps {
            match p {
                Payload::IdR(i) => idr = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                _ => {}
            }
        }
        let (Some(idr), Some((method, auth))) = (idr, auth) else {
            let why = match first_error(&ps) {
                Some(notify::AUTHENTICATION_FAILED) => {
                    self.stats.auth_failed += 1;
                    "peer answered AUTHENTICATION_FAILED: check the pre-shared key and both identities".to_string()
                }
                Some(n) => format!("peer answered {}", notify_name(n)),
                None => {
                    self.stats.malformed += 1;
                    "IKE_AUTH response lacks IDr or AUTH".to_string()
                }
            };
            return self.drop_sa(sa, crypto, &why);
        };
        let c = &self.conns[conn];
        if !c.remote_id.matches(&idr) {
            self.stats.auth_failed += 1;
            let msg = format!("peer identity {} does not match the configured remote id {}", Show(&idr), c.remote_id);
            return self.drop_sa(sa, crypto, &msg);
        }
        let Some(keys) = sa.keys else {
            return self.drop_sa(sa, crypto, "no keys");
        };
        let expected = crypto.psk_auth(keys, c.cfg.psk, false, &sa.init_resp, &sa.ni, &idr.body());
        let good = auth_ok(method, &expected, &auth);
        if !good {
            self.stats.auth_failed += 1;
            let msg = format!("AUTH from {} does not verify: wrong pre-shared key?", Show(&idr));
            return self.drop_sa(sa, crypto, &msg);
        }
        sa.state = State::Established;
        sa.auth_initiator = true;
        self.stats.ike_established += 1;
        self.schedule_ike_rekey(&mut sa);
        self.schedule_reauth(&mut sa);
        // RFC 4478: the responder wants a reauthentication within this many
        // seconds; we start it a little earlier (up to 10 %).
        if let Some(n) = find_notify(&ps, notify::AUTH_LIFETIME).filter(|n| n.data.len() == 4) {
            let secs = u64::from(u32::from_be_bytes([n.data[0], n.data[1], n.data[2], n.data[3]]));
            let at = self.now + jittered(secs.max(1) * 1000, sa.our_spi().rotate_left(17));
            sa.reauth_at = if sa.reauth_at == 0 { at } else { sa.reauth_at.min(at) };
        }
        let suite = sa.suite.map(|s| s.name(Kind::Ike)).unwrap_or_default();
        let msg = format!(
            "IKE_SA {id:016x} established with {} ({}:{}) as initiator, {suite}",
            Show(&idr),
            sa.remote.addr,
            sa.remote.port
        );
        self.log(Level::Info, conn, msg);
        self.ike_up(&sa);
        let (ni, nr) = (sa.ni.clone(), sa.nr.clone());
        if let Err(f) = self.complete_child(&mut sa, &ps, &ni, &nr, true, crypto) {
            self.log(Level::Warn, conn, format!("CHILD_SA not created: {}", f.message));
        }
        self.sas.insert(id, sa);
        self.next_create_child(now, id, crypto);
    }

    /// Initiator side: check the responder's answer for our pending CHILD SA
    /// and install it.
    fn complete_child(
        &mut self,
        sa: &mut IkeSa,
        ps: &[Payload],
        ni: &[u8],
        nr: &[u8],
        in_auth: bool,
        crypto: &mut dyn IkeCrypto,
    ) -> Result<(), Fail> {
        let Some(mut p) = sa.pending_child.take() else {
            return Err(Fail::quiet("no CHILD_SA was requested"));
        };
        let dh = p.dh.take();
        let r = self.complete_pending(sa, &p, dh, ps, ni, nr, in_auth, crypto);
        if let (Err(_), Some((h, _))) = (&r, dh) {
            // Not consumed by a key derivation.
            crypto.destroy(h);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn complete_pending(
        &mut self,
        sa: &mut IkeSa,
        p: &PendingChild,
        dh: Option<(Handle, u16)>,
        ps: &[Payload],
        ni: &[u8],
        nr: &[u8],
        in_auth: bool,
        crypto: &mut dyn IkeCrypto,
    ) -> Result<(), Fail> {
        let c = &self.conns[sa.conn];
        let child = &c.children[p.cfg];
        if let Some(n) = first_error(ps) {
            if n == notify::TS_UNACCEPTABLE {
                self.stats.ts_unacceptable += 1;
            }
            if n == notify::NO_PROPOSAL_CHOSEN {
                self.stats.no_proposal += 1;
            }
            return Err(Fail::quiet(format!(
                "peer answered {} to child {} (our ESP proposals {}, TSi {}, TSr {})",
                notify_name(n),
                child.name,
                proposal::Display(&proposal::to_wire(&child.esp, Kind::Esp, &[], !in_auth)),
                ts::show_all(&p.local_ts),
                ts::show_all(&p.remote_ts)
            )));
        }
        let Some((answer, tsi, tsr)) = sa_tsi_tsr(ps) else {
            return Err(Fail::quiet("answer lacks SA, TSi or TSr"));
        };
        let Some((chosen, spi)) = proposal::check_answer(&answer, &child.esp, Kind::Esp, in_auth) else {
            return Err(Fail::quiet(format!("peer chose ESP {}, which we did not offer", proposal::Display(&answer))));
        };
        let Some(outbound_spi) = esp_spi(&spi) else {
            return Err(Fail::quiet("peer's ESP SPI is not 4 bytes"));
        };
        if !ts::within(&tsi, &p.local_ts) || !ts::within(&tsr, &p.remote_ts) {
            self.stats.ts_unacceptable += 1;
            return Err(Fail::quiet(format!(
                "peer narrowed to TSi {} TSr {}, outside what we proposed ({} / {})",
                ts::show_all(&tsi),
                ts::show_all(&tsr),
                ts::show_all(&p.local_ts),
                ts::show_all(&p.remote_ts)
            )));
        }
        // PFS (section 1.3.1): the answer's KE must be of the group we sent.
        let their_ke = ps.iter().find_map(|x| match x {
            Payload::Ke { group, data } => Some((*group, data.as_slice())),
            _ => None,
        });
        let pfs = match (dh, chosen.dh) {
            (None, 0) if !in_auth => None,
            (_, _) if in_auth => None,
            // The peer chose one of our proposals without a DH group: our KE
            // is ignored (section 1.3.1) and its private value goes.
            (Some((h, _)), 0) => {
                crypto.destroy(h);
                None
            }
            (Some((h, g)), c) if c == g => match their_ke {
                Some((kg, public)) if kg == g => Some((h, public)),
                _ => return Err(Fail::quiet(format!("peer chose DH group {g} for the CHILD_SA but sent no KE of it"))),
            },
            (_, c) => {
                return Err(Fail::quiet(format!("peer chose DH group {c} for the CHILD_SA, not the one we sent")));
            }
        };
        self.install_child(sa, p.cfg, chosen, p.inbound_spi, outbound_spi, tsi, tsr, ni, nr, true, pfs, crypto)
    }

    // ---- CREATE_CHILD_SA (additional CHILD SAs, section 1.3.1) ----------------

    /// As initiator, request the connection's further CHILD SAs one by one;
    /// when all are up and this IKE SA reauthenticates another, delete that.
    fn next_create_child(&mut self, now: u64, id: u64, crypto: &mut dyn IkeCrypto) {
        let Some(mut sa) = self.sas.remove(&id) else {
            return;
        };
        if sa.state == State::Established && sa.request.is_none() {
            self.create_next_child(&mut sa, now, crypto);
        }
        self.sas.insert(id, sa);
    }

    /// Request the next CHILD config not tried yet on this IKE SA, if any
    /// (true if a request went out); once all are done, finish the
    /// reauthentication this IKE SA is part of.
    fn create_next_child(&mut self, sa: &mut IkeSa, now: u64, crypto: &mut dyn IkeCrypto) -> bool {
        let c = &self.conns[sa.conn];
        // Only the IKE SA's initiator brings up the connection's other children.
        let next = (0..c.children.len()).find(|i| sa.initiator && !sa.children_tried.contains(i));
        match next {
            Some(cfg) => {
                sa.children_tried.push(cfg);
                self.request_child(sa, cfg, None, None, now, crypto);
                true
            }
            None => {
                if let Some(old) = sa.replaces.take() {
                    if sa.children.is_empty() {
                        // Make-before-break: without a CHILD SA on the new IKE
                        // SA the old one stays, and we try again later.
                        let msg = "reauthentication brought up no CHILD SA: keeping the old IKE SA".to_string();
                        self.log(Level::Warn, sa.conn, msg);
                        let retry = self.retry_delay(self.conns[sa.conn].cfg.reauth_time_ms, crypto);
                        if let Some(o) = self.sas.get_mut(&old) {
                            o.reauth_at = now + retry;
                        }
                        sa.close_when_idle = true;
                    } else {
                        self.finish_reauth(sa, old, now, crypto);
                    }
                }
                false
            }
        }
    }

    /// CREATE_CHILD_SA for CHILD config `cfg`: a new CHILD SA, or the
    /// successor of the one with inbound SPI `rekeys` (section 1.3.3, make
    /// before break: the old SA works until the new one is in). With PFS in
    /// the ESP proposals, a KE payload of `group` (default: our first).
    fn request_child(
        &mut self,
        sa: &mut IkeSa,
        cfg: usize,
        rekeys: Option<u32>,
        group: Option<u16>,
        now: u64,
        crypto: &mut dyn IkeCrypto,
    ) {
        let (local_ts, remote_ts) = match rekeys.and_then(|old| sa.children.iter().find(|c| c.inbound_spi == old)) {
            Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
            None => {
                let c = &self.conns[sa.conn].children[cfg];
                (c.local_ts.clone(), c.remote_ts.clone())
            }
        };
        let esp = &self.conns[sa.conn].children[cfg].esp;
        let group = group.or_else(|| esp.iter().find_map(|p| p.dh.first().copied())).filter(|g| *g != 0);
        let spi = Self::new_esp_spi(crypto);
        let nonce = Self::nonce(crypto);
        let mut ps = Vec::new();
        if let Some(old) = rekeys {
            ps.push(Payload::Notify(Notify {
                protocol: protocol::ESP,
                spi: old.to_be_bytes().to_vec(),
                kind: notify::REKEY_SA,
                data: Vec::new(),
            }));
        }
        ps.push(Payload::Sa(proposal::to_wire(esp, Kind::Esp, &spi.to_be_bytes(), true)));
        ps.push(Payload::Nonce(nonce.clone()));
        let mut dh = None;
        if let Some(g) = group {
            match crypto.dh_generate(g) {
                Ok((h, public)) => {
                    dh = Some((h, g));
                    ps.push(Payload::Ke { group: g, data: public });
                }
                Err(e) => {
                    return self.log(Level::Warn, sa.conn, format!("cannot request CHILD_SA: DH group {g}: {e:?}"));
                }
            }
        }
        ps.push(Payload::TsI(local_ts.clone()));
        ps.push(Payload::TsR(remote_ts.clone()));
        match Self::encrypted(sa, exchange::CREATE_CHILD_SA, false, sa.next_mid, &ps, crypto) {
            Ok(d) => {
                let name = &self.conns[sa.conn].children[cfg].name;
                let msg = match rekeys {
                    Some(old) => format!("rekeying CHILD_SA {name} {old:08x}"),
                    None => format!("requesting CHILD_SA {name}"),
                };
                self.log(Level::Info, sa.conn, msg);
                sa.pending_child = Some(PendingChild {
                    cfg,
                    inbound_spi: spi,
                    local_ts,
                    remote_ts,
                    nonce: Some(nonce),
                    rekeys,
                    dh,
                    recreate: false,
                });
                self.request(sa, now, Pending::CreateChild, d);
            }
            Err(f) => {
                if let Some((h, _)) = dh {
                    crypto.destroy(h);
                }
                self.log(Level::Warn, sa.conn, format!("cannot request CHILD_SA: {}", f.message));
            }
        }
    }

    fn initiator_create_child_response(
        &mut self,
        now: u64,
        mut sa: IkeSa,
        ps: Vec<Payload>,
        crypto: &mut dyn IkeCrypto,
    ) {
        let id = sa.our_spi();
        // Section 1.3.1: the responder wants another DH group for PFS.
        if let (Some(n), Some(p)) = (find_notify(&ps, notify::INVALID_KE_PAYLOAD), sa.pending_child.as_ref()) {
            let want = (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]]));
            let ours = &self.conns[sa.conn].children[p.cfg].esp;
            let sent = p.dh.map(|d| d.1);
            if let Some(g) = want.filter(|g| Some(*g) != sent && ours.iter().any(|c| c.dh.contains(g))) {
                let (cfg, rekeys) = (p.cfg, p.rekeys);
                if let Some((h, _)) = sa.pending_child.take().and_then(|p| p.dh) {
                    crypto.destroy(h);
                }
                self.log(Level::Info, sa.conn, format!("peer wants DH group {g} for the CHILD_SA, retrying"));
                self.request_child(&mut sa, cfg, rekeys, Some(g), now, crypto);
                self.sas.insert(id, sa);
                return;
            }
        }
        let ni = sa.pending_child.as_ref().and_then(|p| p.nonce.clone()).unwrap_or_default();
        let rekeys = sa.pending_child.as_ref().and_then(|p| p.rekeys);
        let recreating = sa.pending_child.as_ref().is_some_and(|p| p.recreate);
        let cfg = sa.pending_child.as_ref().map_or(0, |p| p.cfg);
        let new_inbound = sa.pending_child.as_ref().map_or(0, |p| p.inbound_spi);
        let nr = ps.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.clone()),
            _ => None,
        });
        let r = match nr {
            Some(nr) => self.complete_child(&mut sa, &ps, &ni, &nr, false, crypto),
            None if first_error(&ps).is_some() => self.complete_child(&mut sa, &ps, &ni, &[], false, crypto),
            None => {
                let p = sa.pending_child.take();
                if let Some((h, _)) = p.and_then(|p| p.dh) {
                    crypto.destroy(h);
                }
                Err(Fail::quiet("CREATE_CHILD_SA response without a nonce"))
            }
        };
        match (r, rekeys) {
            (Err(f), Some(old)) => {
                self.log(Level::Warn, sa.conn, format!("CHILD_SA rekey failed, keeping the old SA: {}", f.message));
                // Try again later (section 2.25: not at once, and not in step
                // with the peer); the old SA still carries traffic.
                let retry = self.retry_delay(self.conns[sa.conn].children[cfg].life.rekey_time, crypto);
                match sa.children.iter_mut().find(|c| c.inbound_spi == old) {
                    Some(c) if !c.replaced => c.rekey_at = now + retry,
                    Some(_) => {}
                    // Our old SA expired meanwhile: create the CHILD SA anew.
                    None if sa.delete_queue.iter().any(|q| q.0 == old) => self.recreate_later(&mut sa, cfg),
                    // The peer deleted it: re-creating it is the peer's call.
                    None => {}
                }
            }
            (Err(f), None) => {
                self.log(Level::Warn, sa.conn, format!("CHILD_SA not created: {}", f.message));
                if recreating {
                    // Its predecessor expired: the tunnel needs it back.
                    self.recreate_later(&mut sa, cfg);
                    sa.recreate_at = now + self.retry_delay(self.conns[sa.conn].children[cfg].life.rekey_time, crypto);
                }
            }
            (Ok(()), Some(old)) => {
                // Section 2.8.1: after a simultaneous rekey the SA created with
                // the lowest of the four nonces is redundant; its creator
                // deletes it, and the other side deletes the old SA.
                let mut delete = old;
                if let Some((_, their_ni, our_nr)) = sa.collision.take().filter(|c| c.0 == old) {
                    let their_nr = nr_of(&ps);
                    let lowest = [&ni, &their_nr, &their_ni, &our_nr].into_iter().min().cloned().unwrap_or_default();
                    if lowest == ni || lowest == their_nr {
                        delete = new_inbound;
                        self.stats.rekey_collisions_lost += 1;
                        let msg = format!(
                            "rekey collision: our new SA {new_inbound:08x} is redundant (lowest nonce), deleting it"
                        );
                        self.log(Level::Info, sa.conn, msg);
                    } else {
                        self.stats.rekey_collisions_won += 1;
                        let msg = format!("rekey collision won: keeping {new_inbound:08x}, deleting the old SA");
                        self.log(Level::Info, sa.conn, msg);
                    }
                }
                if let Some(c) = sa.children.iter_mut().find(|c| c.inbound_spi == delete) {
                    c.replaced = true;
                    c.rekey_at = 0;
                    // Section 1.3.3: the new SA is in place; now delete the old one.
                    let del = [Payload::Delete(Delete {
                        protocol: protocol::ESP,
                        spi_size: 4,
                        spis: vec![delete.to_be_bytes().to_vec()],
                    })];
                    match Self::encrypted(&sa, exchange::INFORMATIONAL, false, sa.next_mid, &del, crypto) {
                        Ok(d) => self.request(&mut sa, now, Pending::DeleteChild(delete), d),
                        Err(f) => {
                            self.log(Level::Warn, sa.conn, format!("cannot delete the rekeyed SA: {}", f.message))
                        }
                    }
                }
                // Otherwise the old SA is gone already (the peer deleted it,
                // or it expired and its DELETE is queued).
            }
            (Ok(()), None) => {}
        }
        self.sas.insert(id, sa);
        self.next_create_child(now, id, crypto);
    }

    /// How long to wait before retrying a rekey that failed or met a
    /// TEMPORARY_FAILURE: a tenth of the rekey interval (at least a second),
    /// plus up to half that again at random so both ends do not retry in step.
    fn retry_delay(&self, interval: u64, crypto: &mut dyn IkeCrypto) -> u64 {
        let base = (interval / 10).max(1000);
        let mut r = [0u8; 4];
        crypto.random(&mut r);
        base + u64::from(u32::from_be_bytes(r)) % (base / 2 + 1)
    }

    /// Create CHILD config `cfg` again once no exchange is in flight, unless
    /// an SA of it exists.
    fn recreate_later(&mut self, sa: &mut IkeSa, cfg: usize) {
        if !sa.recreate.contains(&cfg) && !sa.children.iter().any(|c| c.cfg == cfg) {
            sa.recreate.push(cfg);
        }
    }

    fn responder_create_child(&mut self, mut sa: IkeSa, h: Header, ps: Vec<Payload>, crypto: &mut dyn IkeCrypto) {
        let id = sa.our_spi();
        let mid = h.message_id;
        let ike_rekey =
            ps.iter().any(|p| matches!(p, Payload::Sa(props) if props.iter().any(|x| x.protocol == protocol::IKE)));
        let rekey_spi =
            find_notify(&ps, notify::REKEY_SA).filter(|n| n.protocol == protocol::ESP).and_then(|n| esp_spi(&n.spi));
        let known = rekey_spi.and_then(|old| sa.children.iter().find(|c| c.outbound_spi == old));
        // Section 2.25.1: a rekey of a CHILD SA we are closing.
        let closing = rekey_spi.is_some_and(|old| {
            sa.delete_queue.iter().any(|d| d.1 == old)
                || known.is_some_and(|c| {
                    matches!(sa.request.as_ref().map(|r| r.kind), Some(Pending::DeleteChild(x)) if x == c.inbound_spi)
                })
        });
        let ni = ps.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.clone()),
            _ => None,
        });
        let out = if ike_rekey {
            self.responder_ike_rekey(&mut sa, &ps, crypto)
        } else if sa.ike_rekey.is_some() || closing {
            // Section 2.25.2: no new or rekeyed CHILD SAs while we rekey the
            // IKE SA; section 2.25.1: nor a rekey of an SA we are deleting.
            self.stats.temporary_failures += 1;
            vec![notify_payload(notify::TEMPORARY_FAILURE, Vec::new())]
        } else if let (Some(old), None) = (rekey_spi, known) {
            vec![Payload::Notify(Notify {
                protocol: protocol::ESP,
                spi: old.to_be_bytes().to_vec(),
                kind: notify::CHILD_SA_NOT_FOUND,
                data: Vec::new(),
            })]
        } else if let Some(ni) = ni {
            let nr = Self::nonce(crypto);
            // Section 2.8.1: the peer rekeys the SA we are rekeying too. Answer
            // as usual; the nonces decide later which new SA is redundant.
            let ours = known.map(|c| c.inbound_spi);
            let colliding = ours.filter(|x| sa.pending_child.as_ref().and_then(|p| p.rekeys) == Some(*x));
            self.defer_outbound = rekey_spi.is_some() || self.has_twin(&sa);
            let accepted = self.accept_child(&mut sa, &ps, &ni, &nr, false, crypto);
            self.defer_outbound = false;
            match accepted {
                Ok(mut child) => {
                    // Recorded only for an answer that made an SA: the tie-break
                    // compares the nonces of two successful exchanges.
                    if let Some(x) = colliding {
                        sa.collision = Some((x, ni.clone(), nr.clone()));
                    }
                    // The old SA now only waits for the initiator's DELETE; if
                    // that never comes (the peer gave up), it goes by itself.
                    let deadline = self.now + self.retransmit_span();
                    if let Some(c) = ours.and_then(|x| sa.children.iter_mut().find(|c| c.inbound_spi == x)) {
                        c.replaced = true;
                        c.expire_at = if c.expire_at == 0 { deadline } else { c.expire_at.min(deadline) };
                        if sa.pending_child.as_ref().and_then(|p| p.rekeys) != Some(c.inbound_spi) {
                            c.rekey_at = 0;
                        }
                    }
                    child.insert(1, Payload::Nonce(nr));
                    child
                }
                Err(f) => {
                    self.log(Level::Warn, sa.conn, format!("CHILD_SA not created: {}", f.message));
                    let (n, data) = f.notify.unwrap_or((notify::NO_PROPOSAL_CHOSEN, Vec::new()));
                    vec![notify_payload(n, data)]
                }
            }
        } else {
            self.stats.malformed += 1;
            vec![notify_payload(notify::INVALID_SYNTAX, Vec::new())]
        };
        self.respond_encrypted(&mut sa, exchange::CREATE_CHILD_SA, mid, &out, crypto);
        self.sas.insert(id, sa);
    }

    /// As the rekey's initiator: ask for a successor of CHILD SA `pos`.
    fn start_child_rekey(&mut self, sa: &mut IkeSa, pos: usize, now: u64, crypto: &mut dyn IkeCrypto) {
        let child = &mut sa.children[pos];
        child.rekey_at = 0;
        let (cfg, old) = (child.cfg, child.inbound_spi);
        self.request_child(sa, cfg, Some(old), None, now, crypto);
    }

    fn schedule_ike_rekey(&self, sa: &mut IkeSa) {
        let t = self.conns[sa.conn].cfg.rekey_time_ms;
        sa.rekey_ike_at = if t > 0 { self.now + jittered(t, sa.our_spi()) } else { 0 };
    }

    /// Reauthentication counts from when the IKE SA was authenticated. The
    /// IKE_AUTH initiator reauthenticates; a responder with `reauth_time`
    /// tells it so (AUTH_LIFETIME, RFC 4478) and gives up on the IKE SA if
    /// that has not happened a retransmission span after the time.
    fn schedule_reauth(&self, sa: &mut IkeSa) {
        let t = self.conns[sa.conn].cfg.reauth_time_ms;
        sa.reauth_at = match (t, sa.auth_initiator) {
            (0, _) => 0,
            (t, true) => self.now + jittered(t, sa.our_spi().rotate_left(17)),
            (t, false) => self.now + t + 2 * self.retransmit_span(),
        };
    }

    /// The AUTH_LIFETIME notify for our IKE_AUTH response, if we want the
    /// initiator to reauthenticate.
    fn auth_lifetime(&self, conn: usize) -> Option<Payload> {
        let t = self.conns[conn].cfg.reauth_time_ms;
        (t > 0).then(|| notify_payload(notify::AUTH_LIFETIME, ((t / 1000).max(1) as u32).to_be_bytes().to_vec()))
    }

    /// As the rekey's initiator: propose a new IKE SA (section 1.3.2).
    /// The KE is of the current IKE SA's group unless the responder asked for
    /// another one (INVALID_KE_PAYLOAD).
    fn start_ike_rekey(&mut self, sa: &mut IkeSa, group: Option<u16>, now: u64, crypto: &mut dyn IkeCrypto) {
        sa.rekey_ike_at = 0;
        let Some(group) = group.or(sa.suite.map(|c| c.dh)) else { return };
        sa.rekey_group = group;
        let (dh, public) = match crypto.dh_generate(group) {
            Ok(x) => x,
            Err(e) => return self.log(Level::Warn, sa.conn, format!("cannot rekey the IKE SA: {e:?}")),
        };
        let new_spi = self.new_spi(crypto);
        let ni = Self::nonce(crypto);
        let ps = vec![
            Payload::Sa(proposal::to_wire(&self.conns[sa.conn].ike, Kind::Ike, &new_spi.to_be_bytes(), true)),
            Payload::Nonce(ni.clone()),
            Payload::Ke { group, data: public },
        ];
        match Self::encrypted(sa, exchange::CREATE_CHILD_SA, false, sa.next_mid, &ps, crypto) {
            Ok(d) => {
                self.log(Level::Info, sa.conn, format!("rekeying IKE_SA {:016x}", sa.our_spi()));
                sa.ike_rekey = Some((new_spi, dh, ni));
                self.request(sa, now, Pending::RekeyIke, d);
            }
            Err(f) => {
                crypto.destroy(dh);
                self.log(Level::Warn, sa.conn, format!("cannot rekey the IKE SA: {}", f.message));
            }
        }
    }

    /// The IKE SA that replaces `old`; it takes over the CHILD SAs unless
    /// this is the peer's half of a simultaneous rekey (section 2.8.2),
    /// which gets them only if it wins.
    #[allow(clippy::too_many_arguments)]
    fn successor(
        &mut self,
        old: &mut IkeSa,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        chosen: Chosen,
        keys: Handle,
        ni: Vec<u8>,
        nr: Vec<u8>,
        take_children: bool,
    ) -> IkeSa {
        let mut new = IkeSa {
            initiator,
            spi_i,
            spi_r,
            state: State::Established,
            suite: Some(chosen),
            keys: Some(keys),
            dh_group: chosen.dh,
            ni,
            nr,
            nat_local: old.nat_local,
            nat_remote: old.nat_remote,
            children_tried: old.children_tried.clone(),
            next_keepalive: old.next_keepalive,
            auth_initiator: old.auth_initiator,
            ..IkeSa::fresh(old.conn, old.local, old.remote, self.now)
        };
        self.stats.ike_established += 1;
        if take_children {
            self.hand_over(old, &mut new);
            // The old SA only waits for its DELETE now; if that never comes
            // (the peer gave up on it), we delete it ourselves.
            if !initiator {
                old.redundant_at = self.now + self.retransmit_span();
            }
            let msg = format!(
                "IKE_SA {:016x} rekeyed: now {:016x}, {}",
                old.our_spi(),
                new.our_spi(),
                chosen.name(Kind::Ike)
            );
            self.log(Level::Info, new.conn, msg);
        } else {
            let msg = format!(
                "IKE_SA {:016x}: simultaneous rekey (section 2.8.2); new IKE_SA {:016x} waits for the tie-break",
                old.our_spi(),
                new.our_spi()
            );
            self.log(Level::Info, new.conn, msg);
        }
        self.ike_up(&new);
        new
    }

    /// As responder: answer a rekey of the IKE SA (section 1.3.2); the new
    /// SA takes the CHILD SAs, the old one waits for the peer's DELETE.
    fn responder_ike_rekey(&mut self, sa: &mut IkeSa, ps: &[Payload], crypto: &mut dyn IkeCrypto) -> Vec<Payload> {
        let Some((offered, group, their_public, ni)) = sa_ke_nonce(ps) else {
            self.stats.malformed += 1;
            return vec![notify_payload(notify::INVALID_SYNTAX, Vec::new())];
        };
        let Some((chosen, num, their_spi)) = proposal::select(&offered, &self.conns[sa.conn].ike, Kind::Ike, false)
        else {
            self.stats.no_proposal += 1;
            self.log(
                Level::Warn,
                sa.conn,
                format!("IKE rekey: no acceptable proposal in {}", proposal::Display(&offered)),
            );
            return vec![notify_payload(notify::NO_PROPOSAL_CHOSEN, Vec::new())];
        };
        if group != chosen.dh {
            return vec![notify_payload(notify::INVALID_KE_PAYLOAD, chosen.dh.to_be_bytes().to_vec())];
        }
        let Ok(spi_i) = <[u8; 8]>::try_from(&their_spi[..]).map(u64::from_be_bytes) else {
            return vec![notify_payload(notify::INVALID_SYNTAX, Vec::new())];
        };
        // Section 2.25.2: our own rekey of this IKE SA is no obstacle (the
        // nonces decide later, section 2.8.2), but any other exchange of ours
        // on it, a pending CHILD SA deletion, or closing it is.
        let colliding = sa.ike_rekey.is_some();
        if sa.state != State::Established
            || (sa.request.is_some() && !colliding)
            || !sa.delete_queue.is_empty()
            || sa.close_when_idle
        {
            self.stats.temporary_failures += 1;
            return vec![notify_payload(notify::TEMPORARY_FAILURE, Vec::new())];
        }
        let Some(old_keys) = sa.keys else {
            return vec![notify_payload(notify::NO_PROPOSAL_CHOSEN, Vec::new())];
        };
        let Ok((dh, public)) = crypto.dh_generate(chosen.dh) else {
            return vec![notify_payload(notify::NO_PROPOSAL_CHOSEN, Vec::new())];
        };
        let spi_r = self.new_spi(crypto);
        let nr = Self::nonce(crypto);
        let suite = IkeSuite {
            encr: chosen.encr.id,
            key_bits: chosen.encr.key_bits.unwrap_or(256),
            prf: chosen.prf,
            integ: chosen.integ,
            dh: chosen.dh,
        };
        let keys = match crypto.rekey_ike_sa(old_keys, &suite, dh, &their_public, &ni, &nr, spi_i, spi_r) {
            Ok(k) => k,
            Err(e) => {
                self.log(Level::Warn, sa.conn, format!("IKE rekey key derivation failed: {e:?}"));
                return vec![notify_payload(notify::NO_PROPOSAL_CHOSEN, Vec::new())];
            }
        };
        if colliding {
            sa.ike_collision = Some((spi_r, ni.clone(), nr.clone()));
        }
        let new = self.successor(sa, false, spi_i, spi_r, chosen, keys, ni, nr.clone(), !colliding);
        self.sas.insert(spi_r, new);
        vec![
            Payload::Sa(vec![proposal::chosen_to_wire(&chosen, Kind::Ike, num, &spi_r.to_be_bytes())]),
            Payload::Nonce(nr),
            Payload::Ke { group: chosen.dh, data: public },
        ]
    }

    fn initiator_ike_rekey_response(&mut self, now: u64, mut sa: IkeSa, ps: Vec<Payload>, crypto: &mut dyn IkeCrypto) {
        let id = sa.our_spi();
        let Some((new_spi, dh, ni)) = sa.ike_rekey.take() else {
            self.sas.insert(id, sa);
            return;
        };
        // Section 1.3.2 with 1.2: the responder wants another DH group.
        if let Some(n) = find_notify(&ps, notify::INVALID_KE_PAYLOAD) {
            let want = (n.data.len() == 2).then(|| u16::from_be_bytes([n.data[0], n.data[1]]));
            let ours = &self.conns[sa.conn].ike;
            if let Some(g) = want.filter(|g| *g != sa.rekey_group && ours.iter().any(|c| c.dh.contains(g))) {
                crypto.destroy(dh);
                self.log(Level::Info, sa.conn, format!("peer wants DH group {g} for the IKE rekey, retrying"));
                self.start_ike_rekey(&mut sa, Some(g), now, crypto);
                self.sas.insert(id, sa);
                return;
            }
        }
        let retry_at = now + self.retry_delay(self.conns[sa.conn].cfg.rekey_time_ms, crypto);
        let failure = first_error(&ps).map(|n| format!("peer answered {}", notify_name(n)));
        let answer = sa_ke_nonce(&ps).and_then(|(answer, group, public, nr)| {
            let (chosen, spi) = proposal::check_answer(&answer, &self.conns[sa.conn].ike, Kind::Ike, false)?;
            let spi_r = u64::from_be_bytes(<[u8; 8]>::try_from(&spi[..]).ok()?);
            (group == chosen.dh).then_some((chosen, spi_r, public, nr))
        });
        let suite_of = |chosen: &Chosen| IkeSuite {
            encr: chosen.encr.id,
            key_bits: chosen.encr.key_bits.unwrap_or(256),
            prf: chosen.prf,
            integ: chosen.integ,
            dh: chosen.dh,
        };
        let derived = match (answer, &failure, sa.keys) {
            (Some((chosen, spi_r, public, nr)), None, Some(old_keys)) => {
                match crypto.rekey_ike_sa(old_keys, &suite_of(&chosen), dh, &public, &ni, &nr, new_spi, spi_r) {
                    Ok(k) => Ok((chosen, spi_r, nr, k)),
                    Err(e) => Err(format!("key derivation failed: {e:?}")),
                }
            }
            (_, f, _) => {
                crypto.destroy(dh);
                Err(f.clone().unwrap_or_else(|| "malformed or unacceptable answer".into()))
            }
        };
        // The tie-break needs only the nonces: it holds even if the peer's new
        // IKE SA is gone already (the peer may have won and moved on).
        let collision = sa.ike_collision.take();
        let (chosen, spi_r, nr, keys) = match derived {
            Ok(x) => x,
            Err(why) => {
                if let Some((theirs, _, _)) = collision {
                    // Section 2.8.2: the peer finished its rekey and refused
                    // ours; its new IKE SA is the one that stays.
                    self.stats.ike_rekey_collisions_lost += 1;
                    self.log(Level::Info, sa.conn, format!("IKE rekey collision: ours failed ({why}); theirs stays"));
                    self.adopt_children(&mut sa, theirs);
                } else {
                    self.log(Level::Warn, sa.conn, format!("IKE rekey failed, keeping the IKE SA: {why}"));
                    sa.rekey_ike_at = retry_at;
                }
                self.sas.insert(id, sa);
                return;
            }
        };
        // Section 2.8.2: after a simultaneous rekey, the new IKE SA made with
        // the lowest of the four nonces is deleted by its creator; the other
        // one takes the CHILD SAs, and its creator deletes the old IKE SA.
        if let Some((theirs, their_ni, our_nr)) = collision {
            let lowest = [&ni, &nr, &their_ni, &our_nr].into_iter().min().cloned().unwrap_or_default();
            if lowest == ni || lowest == nr {
                self.stats.ike_rekey_collisions_lost += 1;
                let mut ours = self.successor(&mut sa, true, new_spi, spi_r, chosen, keys, ni, nr, false);
                let msg = format!("IKE rekey collision: our new IKE_SA {new_spi:016x} is redundant (lowest nonce)");
                self.log(Level::Info, sa.conn, msg);
                self.send_delete_ike(&mut ours, now, crypto);
                self.sas.insert(new_spi, ours);
                self.adopt_children(&mut sa, theirs);
                // The peer deletes the old IKE SA.
                self.sas.insert(id, sa);
                return;
            }
            self.stats.ike_rekey_collisions_won += 1;
            let msg = format!("IKE rekey collision won: keeping {new_spi:016x}; the peer deletes its {theirs:016x}");
            self.log(Level::Info, sa.conn, msg);
            let grace = self.retransmit_span();
            if let Some(t) = self.sas.get_mut(&theirs) {
                t.redundant_at = now + grace;
            }
        }
        let new = self.successor(&mut sa, true, new_spi, spi_r, chosen, keys, ni, nr, true);
        // Section 1.3.2: the old IKE SA is deleted by the rekey's initiator.
        self.send_delete_ike(&mut sa, now, crypto);
        if sa.state == State::Deleting {
            self.sas.insert(id, sa);
        } else {
            self.drop_sa(sa, crypto, "replaced by its rekeyed successor");
        }
        // Requests the old SA still owed (queued deletions, CHILD SAs to
        // create) go out on the new one.
        self.sas.insert(new_spi, new);
    }

    /// Start sending on deferred outbound SAs whose time has come (all of
    /// them with `now = u64::MAX`, when the old SA's DELETE arrived).
    fn activate_deferred(&mut self, sa: &mut IkeSa, now: u64) {
        let (due, wait): (Vec<_>, Vec<_>) = sa.deferred.iter().partition(|(_, at)| *at <= now);
        sa.deferred = wait;
        for (outbound_spi, _) in due {
            self.actions.push_back(Action::ActivateOutbound { outbound_spi });
        }
    }

    /// Forget the CHILD SA with inbound SPI `inbound` and tell the host,
    /// which keeps its inbound half `keep_inbound_ms` longer.
    fn remove_child(&mut self, sa: &mut IkeSa, inbound: u32, why: &str, keep_inbound_ms: u32) {
        let Some(pos) = sa.children.iter().position(|c| c.inbound_spi == inbound) else { return };
        let c = sa.children.remove(pos);
        self.actions.push_back(Action::DeleteChild {
            ike_spi: sa.our_spi(),
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
            inbound_key: c.keys.inbound,
            outbound_key: c.keys.outbound,
            keep_inbound_ms,
        });
        let name = self.conns[sa.conn].children[c.cfg].name.clone();
        self.log(
            Level::Info,
            sa.conn,
            format!("CHILD_SA {name} (SPIs in {:08x} out {:08x}) deleted: {why}", c.inbound_spi, c.outbound_spi),
        );
    }

    /// The data plane reports that the SA with this SPI (either direction)
    /// passed a soft volume limit or ran low on sequence numbers (rekey it),
    /// or a hard one (it carries no more traffic: delete it).
    pub fn child_expired(&mut self, now: u64, spi: u32, hard: bool) {
        self.now = now;
        let found = self.sas.iter().find_map(|(k, s)| {
            s.children.iter().find(|c| c.inbound_spi == spi || c.outbound_spi == spi).map(|c| (*k, c.inbound_spi))
        });
        // Gone already (deleted or replaced meanwhile): nothing to do.
        let Some((id, inbound)) = found else { return };
        let Some(mut sa) = self.sas.remove(&id) else { return };
        if hard {
            self.expire_child(&mut sa, inbound, "hard lifetime reached");
        } else {
            self.soft_expire(&mut sa, inbound, "soft lifetime reached");
        }
        self.sas.insert(id, sa);
    }

    /// Start a rekey of the CHILD SA now, unless one is under way or a
    /// successor exists.
    fn soft_expire(&mut self, sa: &mut IkeSa, inbound: u32, why: &str) {
        let rekeying = sa.pending_child.as_ref().and_then(|p| p.rekeys) == Some(inbound);
        let now = self.now;
        let Some(c) = sa.children.iter_mut().find(|c| c.inbound_spi == inbound) else { return };
        // Under way, due already, or superseded.
        if rekeying || c.replaced || (c.rekey_at != 0 && c.rekey_at <= now) {
            return;
        }
        self.stats.lifetime_soft += 1;
        c.rekey_at = now.max(1);
        self.log(Level::Info, sa.conn, format!("CHILD_SA {inbound:08x}: {why}, rekeying"));
    }

    /// Hard lifetime: the SA goes now, the peer is told (DELETE, section
    /// 1.4.1), and the CHILD SA is created anew unless a successor exists or
    /// is being made.
    fn expire_child(&mut self, sa: &mut IkeSa, inbound: u32, why: &str) {
        let Some(c) = sa.children.iter().find(|c| c.inbound_spi == inbound) else { return };
        let (cfg, outbound, replaced) = (c.cfg, c.outbound_spi, c.replaced);
        self.stats.lifetime_hard += 1;
        let msg = if replaced { why.to_string() } else { format!("{why} before a rekey replaced it") };
        self.remove_child(sa, inbound, &msg, 0);
        sa.delete_queue.push((inbound, outbound, false));
        let rekeying = sa.pending_child.as_ref().is_some_and(|p| p.rekeys == Some(inbound));
        if !replaced {
            let next = if rekeying { "its rekey in flight takes over" } else { "creating it anew" };
            self.log(Level::Warn, sa.conn, format!("CHILD_SA {inbound:08x}: {msg}; {next}"));
        }
        if !replaced && !rekeying {
            self.recreate_later(sa, cfg);
        }
    }

    // ---- INFORMATIONAL ---------------------------------------------------

    fn informational(&mut self, mut sa: IkeSa, h: Header, ps: Vec<Payload>, crypto: &mut dyn IkeCrypto) {
        let id = sa.our_spi();
        let mid = h.message_id;
        let mut delete_ike = false;
        let mut ours_deleted = Vec::new();
        let mut any_deleted = false;
        for p in &ps {
            let Payload::Delete(d) = p else { continue };
            match d.protocol {
                protocol::IKE => delete_ike = true,
                protocol::ESP => {
                    for spi in d.spis.iter().filter_map(|s| esp_spi(s)) {
                        // Section 2.25.1: an SA we are deleting ourselves is
                        // answered without a Delete payload.
                        if let Some(pos) = sa.delete_queue.iter().position(|q| q.1 == spi) {
                            if !sa.delete_queue[pos].2 {
                                sa.delete_queue.remove(pos);
                            }
                            continue;
                        }
                        // The peer names its inbound SPI: our outbound.
                        let Some(pos) = sa.children.iter().position(|c| c.outbound_spi == spi) else { continue };
                        let inbound = sa.children[pos].inbound_spi;
                        let closing = matches!(sa.request.as_ref().map(|r| r.kind), Some(Pending::DeleteChild(x)) if x == inbound);
                        if !closing {
                            ours_deleted.push(inbound.to_be_bytes().to_vec());
                        }
                        // Section 2.8: the rekey's initiator deletes the old
                        // SA once it sends on the new one; ours may start now.
                        // The new outbound SA goes in before the old one goes
                        // out, so that no packet finds neither.
                        if !any_deleted {
                            self.activate_deferred(&mut sa, u64::MAX);
                        }
                        any_deleted = true;
                        self.remove_child(&mut sa, inbound, "deleted by the peer", DELETED_INBOUND_LINGER_MS);
                    }
                }
                _ => {}
            }
        }
        let out = if delete_ike || ours_deleted.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete { protocol: protocol::ESP, spi_size: 4, spis: ours_deleted })]
        };
        self.respond_encrypted(&mut sa, exchange::INFORMATIONAL, mid, &out, crypto);
        if delete_ike {
            // Section 2.8.2: the peer won a simultaneous IKE rekey and deletes
            // the old SA; its new SA takes the CHILD SAs, if they are still here.
            if let Some((winner, _, _)) = sa.ike_collision.take() {
                self.adopt_children(&mut sa, winner);
            }
            // A reauthenticated successor may now send on its CHILD SAs.
            let twins: Vec<u64> = self
                .sas
                .iter()
                .filter(|(_, o)| o.conn == sa.conn && o.remote.addr == sa.remote.addr && !o.deferred.is_empty())
                .map(|(k, _)| *k)
                .collect();
            for k in twins {
                if let Some(mut o) = self.sas.remove(&k) {
                    self.activate_deferred(&mut o, u64::MAX);
                    self.sas.insert(k, o);
                }
            }
            self.drop_sa(sa, crypto, "peer sent DELETE");
        } else {
            self.sas.insert(id, sa);
        }
    }

    /// Everything an IKE SA carries on to its successor (a rekey, or the
    /// winner of a simultaneous rekey): CHILD SAs and what is owed for them,
    /// the reauthentication schedule, and being closed. The old SA is left
    /// with nothing to do but wait for its DELETE.
    fn hand_over(&mut self, old: &mut IkeSa, new: &mut IkeSa) {
        new.children.append(&mut old.children);
        new.deferred.append(&mut old.deferred);
        new.delete_queue.append(&mut old.delete_queue);
        new.recreate.append(&mut old.recreate);
        new.recreate_at = new.recreate_at.max(old.recreate_at);
        // The CHILD SAs are up (or were refused) already: a successor does not
        // request them again, whichever end initiated its rekey.
        new.children_tried = (0..self.conns[new.conn].children.len()).collect();
        new.reauth_at = std::mem::take(&mut old.reauth_at);
        new.auth_initiator = old.auth_initiator;
        new.replaces = new.replaces.or(old.replaces.take());
        new.close_when_idle |= std::mem::take(&mut old.close_when_idle);
        new.redundant_at = 0;
        old.rekey_ike_at = 0;
        self.follow_successor(old.our_spi(), new.our_spi());
        // No rekey of an SA that is going: closed, or replaced by a
        // reauthentication under way.
        let reauthenticated = self.sas.values().any(|s| s.replaces == Some(new.our_spi()));
        if new.close_when_idle || reauthenticated {
            new.rekey_ike_at = 0;
        } else {
            self.schedule_ike_rekey(new);
        }
    }

    /// Move the CHILD SAs of `old` to the IKE SA with our SPI `to` (the
    /// winner of a simultaneous IKE rekey), which may now rekey itself.
    fn adopt_children(&mut self, old: &mut IkeSa, to: u64) {
        let Some(mut new) = self.sas.remove(&to) else { return };
        self.hand_over(old, &mut new);
        // The old SA waits for the peer's DELETE; if that never comes, we
        // delete it ourselves.
        old.redundant_at = self.now + self.retransmit_span();
        let msg = format!("IKE_SA {:016x}: CHILD SAs moved to the peer's new IKE_SA {to:016x}", old.our_spi());
        self.log(Level::Info, new.conn, msg);
        self.sas.insert(to, new);
    }
}

#[cfg(test)]
mod tests {
    use super::jittered;

    #[test]
    fn rekey_jitter_stays_within_ten_percent_and_spreads() {
        let times: Vec<u64> = (1..200u64).map(|spi| jittered(3_600_000, spi * 7919)).collect();
        assert!(times.iter().all(|t| (3_240_001..=3_600_000).contains(t)));
        let mut distinct = times.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 150, "spread: {}", distinct.len());
        assert_eq!(jittered(5, 12345), 5);
    }
}
