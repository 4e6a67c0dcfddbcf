//! The IKE engine's SA changes turned into the data path's ESP SAs: a
//! negotiated CHILD SA becomes an inbound and an outbound ESP SA (the one
//! place that translates between them), deferred outbound SAs wait for
//! their activation, deleted inbound SAs linger a while, and the admin
//! view of IKE and CHILD SAs is kept.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tracing::warn;

use super::bounds::ConnectionBounds;
use crate::by_spi::BySpi;
use crate::config::Encapsulation;
use crate::datapath::channel::{SaCommand, Sender};
use crate::datapath::{Kept, Peer};
use crate::keylog;
use crate::keys::{EspAlgorithm, Keystore};
use crate::ops::page::{Page, Selected};
use crate::stats::{SaPairTraffic, SaTraffic, TRAFFIC_FIELDS, Traffic, traffic};
use crate::wasm::esp::{InboundSa, OutboundSa, SaLimits};
use crate::wasm::ike::{ChildDeleted, ChildSa, ChildSchedule, Endpoint, IkeSaUp, IkeState, KeyClaim};
use crate::wasm::selectors::{self, SaSelectors};
use crate::wasm::{GUEST_REASON_CHARS, guest_text};

/// A WIT endpoint as a socket address.
pub fn socket_addr(e: &Endpoint) -> Option<SocketAddr> {
    let a: IpAddr = match e.address.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(&e.address[..]).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(&e.address[..]).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(a, e.port))
}

/// A WIT endpoint's address as text, for logs and key files (empty if it
/// has none).
pub fn address_text(e: &Endpoint) -> String {
    socket_addr(e).map(|a| a.ip().to_string()).unwrap_or_default()
}

fn hex32<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:08x}"))
}

fn as_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn alg_name<S: serde::Serializer>(v: &EspAlgorithm, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.name())
}

fn hex64<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// An IKE SA as the admin view shows it. A PoP holds one per tunnel, so
/// the names are the copies [`Children`] keeps once for all and the
/// addresses are kept as addresses; they are rendered when shown.
#[derive(Debug, Clone, Serialize)]
pub struct IkeInfo {
    /// The connection's name.
    #[serde(serialize_with = "as_str")]
    pub connection: Arc<str>,
    /// Our IKE SPI.
    #[serde(serialize_with = "hex64")]
    pub spi: u64,
    /// The negotiated proposal, strongSwan syntax.
    #[serde(serialize_with = "as_str")]
    pub proposal: Arc<str>,
    /// We initiated it (for a rekeyed SA: the rekey).
    pub initiator: bool,
    /// Our address and port (shown "" if the guest named none).
    #[serde(serialize_with = "address")]
    pub local: Option<SocketAddr>,
    /// The peer's address and port; follows its NAT mapping.
    #[serde(serialize_with = "address")]
    pub remote: Option<SocketAddr>,
    /// The peer's identity as IKE_AUTH authenticated it, as the IKE guest
    /// shows it (made fit for the log where it leaves the guest: the peer
    /// chose it).
    pub remote_id: Box<str>,
    /// NAT detected in front of us, or in front of the peer (RFC 7296 2.23).
    pub nat_local: bool,
    pub nat_remote: bool,
    /// The tenant of its connection ("" for none).
    #[serde(serialize_with = "as_str")]
    pub tenant: Arc<str>,
    /// Which load of its connection it came up under
    /// (`connections::History::load_of`).
    #[serde(skip)]
    pub load: u64,
}

/// An address and port as the admin view has always shown them (`""`
/// for none).
fn address<S: serde::Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(a) => s.collect_str(a),
        None => s.serialize_str(""),
    }
}

/// A CHILD SA as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildInfo {
    /// The connection's name (one copy for all its CHILD SAs: a PoP holds
    /// 100,000, see `Children::name`).
    #[serde(serialize_with = "as_str")]
    pub connection: Arc<str>,
    /// The CHILD config's name within the connection.
    #[serde(serialize_with = "as_str")]
    pub child: Arc<str>,
    /// The ESP transform, shown in strongSwan syntax (`aes256gcm16`).
    #[serde(serialize_with = "alg_name")]
    pub proposal: EspAlgorithm,
    /// Our SPI of the IKE SA it belongs to.
    #[serde(serialize_with = "hex64")]
    pub ike_spi: u64,
    /// Our SPI: the peer writes it into the ESP it sends us.
    #[serde(serialize_with = "hex32")]
    pub inbound_spi: u32,
    /// The peer's SPI: we write it into the ESP we send.
    #[serde(serialize_with = "hex32")]
    pub outbound_spi: u32,
    /// Both sides' traffic selectors, shared with the data path's two
    /// halves; shown as `local_ts` and `remote_ts`.
    #[serde(skip)]
    pub selectors: Arc<SaSelectors>,
    /// The peer's address and port; follows its NAT mapping.
    pub peer: SocketAddr,
    /// ESP in UDP (false: raw ESP).
    pub encap: bool,
    /// Traffic of the inbound and the outbound SA, counted by the data path.
    #[serde(skip)]
    pub traffic: SaPairTraffic,
    /// The keystore handles of the inbound and the outbound key.
    #[serde(skip)]
    keys: (u64, u64),
    /// The lineage of the IKE SA whose keys made it (the host's, not the
    /// guest's word): its ESP goes where that lineage's peer is.
    #[serde(skip)]
    lineage: u64,
    /// When the host removes it if the guest has not (0: no hard lifetime
    /// by time; see `Children::overdue`).
    #[serde(skip)]
    due: u64,
}

impl ChildInfo {
    /// The admin view: the fields above, the traffic of both halves, and
    /// the seconds left to the rekey and the hard expiry as the engine
    /// schedules them now (null: not by time, or a rekey under way).
    pub fn json(&self, schedule: Option<&ChildSchedule>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["local_ts"] = selectors::show(&self.selectors.local).into();
        v["remote_ts"] = selectors::show(&self.selectors.remote).into();
        let secs = |ms: Option<u64>| ms.map(|ms| ms / 1000);
        v["rekey_in_s"] = secs(schedule.and_then(|s| s.rekey_in_ms)).into();
        v["expire_in_s"] = secs(schedule.and_then(|s| s.expire_in_ms)).into();
        for (k, n) in TRAFFIC_FIELDS.iter().zip(traffic(&self.traffic)) {
            v[*k] = n.into();
        }
        v
    }
}

/// `map`'s entry for `key`, made if absent: a lookup first, so that
/// counting 100,000 CHILD SAs by their few connections does not make a
/// `String` for each (the metrics do it every scrape).
pub fn tally<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// Names (connections, CHILD configs, tenants, IKE proposals) kept once for
/// all SAs.
const MAX_NAMES: usize = 4096;

/// The data path's SAs as the control thread tracks them.
pub struct Children {
    /// SA commands to the outbound data path thread.
    pub outbound: Sender<SaCommand>,
    /// SA commands to the inbound data path thread.
    pub inbound: Sender<SaCommand>,
    /// The ESP keystore; keys are removed with their SA.
    pub esp_keys: Arc<Keystore>,
    /// Wireshark `esp_sa` export of every CHILD SA (debugging only).
    pub esp_keylog: Option<PathBuf>,
    /// The daemon listens on every address: each CHILD SA's ESP leaves
    /// from its own (`Peer::source`).
    pub any_address: bool,
    /// Outbound SAs of rekeys we answered, waiting for their activation,
    /// by their CHILD SA's inbound SPI (their name in the data path).
    deferred: HashMap<u32, (Kept<OutboundSa>, Peer, usize, Arc<SaTraffic>)>,
    /// The traffic of deleted CHILD SAs, by connection, so that the totals
    /// per connection never go back.
    retired: BTreeMap<String, Traffic>,
    /// The guest group serving each connection's tunnels (absent: group 0).
    pub groups: HashMap<String, usize>,
    /// What each loaded connection's CHILD SAs may carry (absent: the
    /// connection is not loaded, and none of its SAs is installed).
    pub bounds: HashMap<String, ConnectionBounds>,
    /// Inbound halves of deleted CHILD SAs that still accept packets until
    /// their time (control-loop milliseconds): (until, SPI, key), the
    /// earliest first (a heap: thousands linger under a handshake load,
    /// and the loop asks for the earliest every round).
    lingering: BinaryHeap<Reverse<(u64, u32, u64)>>,
    /// When each installed CHILD SA with a hard lifetime by time must be
    /// gone (control-loop ms: the lifetime, then `overdue_grace_ms`):
    /// (when, inbound SPI, inbound key), the earliest first. The IKE guest
    /// deletes it at its hard lifetime; one that does not is not trusted
    /// to, and the host removes it. A deleted SA's entry goes with it (a
    /// set, not a heap: a peer that creates and deletes CHILD SAs in a
    /// loop must not grow it).
    overdue: BTreeSet<(u64, u32, u64)>,
    /// How long past its hard lifetime a CHILD SA may stay: the engine
    /// deletes it on time while its IKE SA is up, and with its IKE SA,
    /// which may take the retransmissions of a Delete, otherwise.
    overdue_grace_ms: u64,
    /// IKE SAs that are up, by our SPI.
    pub ike_sas: BTreeMap<u64, IkeInfo>,
    /// How many of them each peer address has: the IKE guest may send
    /// there (`destinations.rs`).
    ike_peers: HashMap<Ipv4Addr, u32>,
    /// Installed CHILD SAs, by our inbound SPI.
    list: BySpi<ChildInfo>,
    /// Their inbound SPIs by their IKE SA (our SPI): an IKE rekey moves
    /// its own, where a pass over every CHILD SA (a PoP's 100,000) was made
    /// for each until 2026-12-07. A list per IKE SA, 4 bytes per CHILD SA
    /// where an IKE SA has many (a set of pairs cost ~50 B per CHILD SA at
    /// 100,000 in `cargo xtask bench-memory`).
    by_ike: HashMap<u64, Vec<u32>>,
    /// How many IKE SAs (up) and CHILD SAs (installed) each connection
    /// has: a page of the admin view's connections asks for its own
    /// instead of passing over every SA (a PoP's 100,000).
    per_connection: HashMap<Arc<str>, (usize, usize)>,
    /// The names the SAs show, one copy each (at most [`MAX_NAMES`]; the
    /// guest names them).
    names: HashSet<Arc<str>>,
    /// Tests only: inbound SPIs of requests of ours awaiting their answer.
    expected: HashSet<u32>,
    /// Tests only: how long to wait before installing a CHILD SA we asked
    /// for, to widen the window in which the peer's first ESP arrives
    /// before the SA (`WASMSEC_TEST_DELAY_INITIATED_INSTALL_MS`).
    test_install_delay: Option<std::time::Duration>,
}

impl Children {
    pub fn new(outbound: Sender<SaCommand>, inbound: Sender<SaCommand>, esp_keys: Arc<Keystore>) -> Children {
        Children {
            outbound,
            inbound,
            esp_keys,
            esp_keylog: None,
            any_address: false,
            deferred: HashMap::new(),
            retired: BTreeMap::new(),
            groups: HashMap::new(),
            bounds: HashMap::new(),
            lingering: BinaryHeap::new(),
            overdue: BTreeSet::new(),
            overdue_grace_ms: std::env::var("WASMSEC_TEST_LIFETIME_GRACE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(wasmsec_ike::Timing::default().retransmit_span() + 10_000),
            ike_sas: BTreeMap::new(),
            ike_peers: HashMap::new(),
            list: BySpi::default(),
            by_ike: HashMap::new(),
            per_connection: HashMap::new(),
            names: HashSet::new(),
            expected: HashSet::new(),
            test_install_delay: std::env::var("WASMSEC_TEST_DELAY_INITIATED_INSTALL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis),
        }
    }

    /// `name` (a connection, CHILD config, tenant or IKE proposal) as the
    /// SAs keep it: the copy already kept, or a new
    /// one, kept while there are fewer than [`MAX_NAMES`] (names a guest
    /// made up beyond those are each the SA's own).
    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if self.names.len() < MAX_NAMES {
            self.names.insert(n.clone());
        }
        n
    }

    /// When the next lingering inbound SA ends, or a CHILD SA is due to
    /// have gone.
    pub fn next_deadline(&self) -> Option<u64> {
        let (l, o) = (self.lingering.peek().map(|l| l.0.0), self.overdue.first().map(|o| o.0));
        l.into_iter().chain(o).min()
    }

    /// The data path reported CHILD SA `spi` (our inbound SPI, which also
    /// names its outbound half) past a hard byte, packet or sequence
    /// number limit: RFC 4301 section 4.4.2.1 has it deleted. The IKE
    /// guest deletes it, with a Delete to the peer; one that does not is
    /// not trusted to, and the host removes it after the same grace as one
    /// past its hard lifetime by time, instead of keeping its keys and
    /// records until that lifetime (none, where the child limits only
    /// bytes or packets). A manual tunnel's SA, not listed here, stays.
    pub fn hard_expired(&mut self, now: u64, spi: u32) {
        let when = now.saturating_add(self.overdue_grace_ms);
        let Some(c) = self.list.get_mut(spi) else { return };
        if c.due != 0 && c.due <= when {
            return;
        }
        self.overdue.remove(&(c.due, spi, c.keys.0));
        c.due = when;
        self.overdue.insert((when, spi, c.keys.0));
    }

    /// Remove the CHILD SAs still installed past their hard lifetime and
    /// its grace, as the engine deletes one (no inbound linger); returns
    /// them (connection, inbound SPI) for the log and the count of guest
    /// protocol errors.
    pub fn end_overdue(&mut self, now: u64) -> Vec<(String, u32)> {
        let mut gone = Vec::new();
        while let Some(&(when, spi, key)) = self.overdue.first() {
            if when > now {
                break;
            }
            self.overdue.pop_first();
            let Some(c) = self.list.get(spi).filter(|c| c.keys.0 == key) else { continue };
            gone.push((c.connection.to_string(), spi));
            let d = ChildDeleted {
                ike_spi: c.ike_spi,
                inbound_spi: spi,
                outbound_spi: c.outbound_spi,
                inbound_key: key,
                outbound_key: c.keys.1,
                keep_inbound_ms: 0,
            };
            self.delete(d, now);
        }
        gone
    }

    /// Remove the lingering inbound SAs whose time is up, and their keys.
    pub fn end_lingering(&mut self, now: u64) {
        while let Some(&Reverse((until, spi, key))) = self.lingering.peek() {
            if until > now {
                break;
            }
            self.lingering.pop();
            self.inbound.send_quiet(SaCommand::RemoveInbound { spi, key });
            self.esp_keys.remove(key);
        }
    }

    pub fn ike_up(&mut self, up: IkeSaUp, tenant: &str, load: u64) -> &IkeInfo {
        let info = IkeInfo {
            connection: self.name(&up.connection),
            spi: up.ike_spi,
            proposal: self.name(&up.proposal),
            initiator: up.initiator,
            local: socket_addr(&up.local),
            remote: socket_addr(&up.remote),
            remote_id: up.remote_id.into_boxed_str(),
            nat_local: up.nat_local,
            nat_remote: up.nat_remote,
            tenant: self.name(tenant),
            load,
        };
        self.count_peer(&info, true);
        self.tally(&info.connection, (1, 0), true);
        if let Some(was) = self.ike_sas.insert(up.ike_spi, info) {
            self.count_peer(&was, false);
            self.tally(&was.connection, (1, 0), false);
        }
        &self.ike_sas[&up.ike_spi]
    }

    pub fn ike_down(&mut self, spi: u64) -> Option<IkeInfo> {
        let gone = self.ike_sas.remove(&spi);
        if let Some(i) = &gone {
            self.count_peer(i, false);
            self.tally(&i.connection, (1, 0), false);
        }
        gone
    }

    /// Count `n` (IKE SAs, CHILD SAs) more or fewer for `connection`.
    fn tally(&mut self, connection: &Arc<str>, n: (usize, usize), up: bool) {
        let c = self.per_connection.entry(connection.clone()).or_default();
        *c = if up { (c.0 + n.0, c.1 + n.1) } else { (c.0.saturating_sub(n.0), c.1.saturating_sub(n.1)) };
        if *c == (0, 0) {
            self.per_connection.remove(connection);
        }
    }

    /// How many IKE SAs are up and CHILD SAs installed for connection `name`.
    pub fn counts_of(&self, name: &str) -> (usize, usize) {
        self.per_connection.get(name).copied().unwrap_or_default()
    }

    /// Whether an IKE SA that is up has its peer at `a`.
    pub fn has_ike_peer(&self, a: Ipv4Addr) -> bool {
        self.ike_peers.contains_key(&a)
    }

    fn count_peer(&mut self, i: &IkeInfo, up: bool) {
        let Some(SocketAddr::V4(a)) = i.remote else { return };
        let n = self.ike_peers.entry(*a.ip()).or_default();
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
        if *n == 0 {
            self.ike_peers.remove(a.ip());
        }
    }

    /// `ike_peers` again from `ike_sas`, after many left at once.
    fn recount_peers(&mut self) {
        self.ike_peers.clear();
        for i in self.ike_sas.values() {
            if let Some(SocketAddr::V4(a)) = i.remote {
                *self.ike_peers.entry(*a.ip()).or_default() += 1;
            }
        }
    }

    /// A negotiated CHILD SA: inbound first (the peer may send ESP as soon
    /// as it has our answer), then outbound unless it waits for activation.
    /// Hand a negotiated CHILD SA to the data path. False if the guest
    /// named keys that did not come from one derivation for this transform
    /// (a guest protocol error: nothing is installed).
    pub fn install(&mut self, c: ChildSa, ike: &mut IkeState, now: u64) -> bool {
        let Some(remote) = socket_addr(&c.remote) else {
            ike.forfeit_child_keys(&c);
            return false;
        };
        let IpAddr::V4(peer_addr) = remote.ip() else {
            warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), "IPv6 peers are not supported by the data plane yet");
            // Nothing is installed, so no Delete will free its keys.
            if let Some(alg) = EspAlgorithm::from_iana(c.encr, c.key_bits, c.integ)
                && matches!(ike.claim_child_keys(&c, alg, self.bounds.get(&c.connection)), KeyClaim::Granted { .. })
            {
                self.esp_keys.remove(c.outbound_key);
                self.esp_keys.remove(c.inbound_key);
            }
            return true;
        };
        let Some(alg) = EspAlgorithm::from_iana(c.encr, c.key_bits, c.integ) else {
            warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), encr = c.encr, integ = c.integ, "CHILD SA with a transform the data plane lacks");
            ike.forfeit_child_keys(&c);
            return false;
        };
        let Some(selectors) = SaSelectors::of(&c.local_ts, &c.remote_ts) else {
            warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), "IKE guest installed a CHILD SA with a malformed traffic selector: refused");
            ike.forfeit_child_keys(&c);
            return false;
        };
        let (lineage, life_ms, replay_window, tos) = match ike.claim_child_keys(&c, alg, self.bounds.get(&c.connection))
        {
            KeyClaim::Granted { lineage, life_ms, replay_window, tos } => (lineage, life_ms, replay_window, tos),
            KeyClaim::NotDerived => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), "IKE guest installed keys that were not derived for this CHILD SA: refused");
                return false;
            }
            KeyClaim::OtherConnection => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), "IKE guest installed a CHILD SA for a connection whose key did not authenticate its IKE SA's peer: refused");
                return false;
            }
            KeyClaim::OutsideConnection => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), child = %guest_text(&c.child, GUEST_REASON_CHARS), local_ts = %super::bounds::shown(&c.local_ts), remote_ts = %super::bounds::shown(&c.remote_ts), "IKE guest installed a CHILD SA beyond its child's local_ts and remote_ts (or for a child its connection lacks): refused");
                return false;
            }
            KeyClaim::OutsideGrant => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), local_ts = %super::bounds::shown(&c.local_ts), remote_ts = %super::bounds::shown(&c.remote_ts), "IKE guest installed a CHILD SA beyond the subnets the policy granted its peer: refused");
                return false;
            }
            KeyClaim::TransformNotOffered => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), proposal = alg.name(), esn = c.esn, "IKE guest installed a CHILD SA with an ESP transform neither its child nor the policy's grant proposes: refused");
                return false;
            }
            KeyClaim::KeyExchangeNotOffered => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), proposal = alg.name(), "IKE guest installed a CHILD SA made without the key exchange (PFS group) its child's or the policy's grant's proposal asks for: refused");
                return false;
            }
            KeyClaim::BeyondLifetime => {
                let l = c.limits;
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), hard_bytes = l.hard_bytes, hard_packets = l.hard_packets, "IKE guest installed a CHILD SA with hard limits beyond its child's or the policy's grant: refused");
                return false;
            }
            KeyClaim::ElsewhereThanPeer => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), remote = %remote, "IKE guest installed a CHILD SA whose ESP would go elsewhere than its IKE SA's peer: refused");
                return false;
            }
            KeyClaim::ElsewhereThanUs => {
                warn!(connection = %guest_text(&c.connection, GUEST_REASON_CHARS), local = %address_text(&c.local), "IKE guest installed a CHILD SA whose ESP would leave from another address of ours than its IKE SA's peer sent to: refused");
                return false;
            }
        };
        // Our address as the guest named it, which the claim held to the
        // one the IKE SA's peer sends to.
        let peer = Peer {
            address: peer_addr,
            port: if c.encap { remote.port() } else { 0 },
            encapsulation: if c.encap { Encapsulation::Udp } else { Encapsulation::None },
            source: super::sockets::source(&c.local, self.any_address),
        };
        let float_peer = match remote {
            SocketAddr::V4(a) if c.encap => Some(a),
            _ => None,
        };
        if self.expected.remove(&c.inbound_spi)
            && let Some(d) = self.test_install_delay
        {
            warn!(spi = format_args!("{:08x}", c.inbound_spi), ms = d.as_millis() as u64, "test: delaying the install");
            std::thread::sleep(d);
        }
        let limits: SaLimits = c.limits;
        let group = self.groups.get(&c.connection).copied().unwrap_or(0);
        let traffic = SaPairTraffic::default();
        let inbound = InboundSa {
            spi: c.inbound_spi,
            key: c.inbound_key,
            esn: c.esn,
            replay_window,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            limits,
        };
        self.inbound.send_quiet(SaCommand::AddInbound {
            group,
            traffic: traffic[0].clone(),
            peer: float_peer,
            sa: Kept::new(inbound, selectors.clone()).with_tos(tos),
        });
        // Named by our inbound SPI, not the peer's: see `Kept::wire_spi`.
        let out = OutboundSa {
            spi: c.inbound_spi,
            key: c.outbound_key,
            peer: 0,
            esn: c.esn,
            next_seq: 1,
            pad_align: alg.pad_align(),
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            limits,
        };
        let out = Kept::outbound(out, c.outbound_spi, selectors.clone()).with_tos(tos);
        self.export_keys(&c, remote, ike);
        if c.outbound_deferred {
            self.deferred.insert(c.inbound_spi, (out, peer, group, traffic[1].clone()));
        } else {
            self.outbound.send_quiet(SaCommand::AddOutbound { sa: out, peer, group, traffic: traffic[1].clone() });
        }
        let due = if life_ms > 0 { now.saturating_add(life_ms).saturating_add(self.overdue_grace_ms) } else { 0 };
        if due > 0 {
            self.overdue.insert((due, c.inbound_spi, c.inbound_key));
        }
        let (connection, child) = (self.name(&c.connection), self.name(&c.child));
        self.tally(&connection, (0, 1), true);
        self.insert_child(ChildInfo {
            connection,
            child,
            proposal: alg,
            ike_spi: c.ike_spi,
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
            selectors,
            peer: remote,
            encap: c.encap,
            traffic,
            keys: (c.inbound_key, c.outbound_key),
            lineage,
            due,
        });
        true
    }

    /// Record an installed CHILD SA.
    fn insert_child(&mut self, c: ChildInfo) {
        // An SPI named twice is listed twice, which moves and deletes
        // take as once.
        self.by_ike.entry(c.ike_spi).or_default().push(c.inbound_spi);
        self.list.insert(c.inbound_spi, c);
    }

    /// A request offering inbound SPI `spi` is about to leave: the inbound
    /// data path holds ESP for it until the answer's SA is installed.
    pub fn expect(&mut self, spi: u32) {
        // Kept for the test delay only (bounded: a guest that never
        // installs what it announced cannot grow it past the cap).
        if self.test_install_delay.is_some() && self.expected.len() < 4096 {
            self.expected.insert(spi);
        }
        self.inbound.send_quiet(SaCommand::ExpectInbound { spi });
    }

    /// Start sending on the deferred outbound SA of the CHILD SA with
    /// inbound SPI `spi`.
    pub fn activate(&mut self, spi: u32) {
        if let Some((sa, peer, group, traffic)) = self.deferred.remove(&spi) {
            self.outbound.send_quiet(SaCommand::AddOutbound { sa, peer, group, traffic });
        }
    }

    /// The peer's NAT mapping changed: the outbound halves of these CHILD
    /// SAs (by our inbound SPI, the data path's name for both) follow.
    /// Only to where the peer of each SA's IKE SA sent a message that
    /// verified (RFC 7296 section 2.23 moves on authenticated messages
    /// only): false, and nothing moved, if any of them would go elsewhere.
    /// A lookup per SPI named, not a pass over every CHILD SA (a PoP has
    /// 100,000; a guest may name SPIs twice or that are not installed).
    pub fn peer_moved(&mut self, spis: &[u32], to: SocketAddrV4, ike: &IkeState) -> bool {
        let mut spis = spis.to_vec();
        spis.sort_unstable();
        spis.dedup();
        spis.retain(|&spi| self.list.get(spi).is_some_and(|c| c.encap));
        let elsewhere = spis
            .iter()
            .filter_map(|&spi| self.list.get(spi))
            .any(|c| ike.verified_source(c.lineage) != Some(SocketAddr::V4(to)));
        if elsewhere {
            return false;
        }
        let mut their_ike_sas = Vec::new();
        for &spi in &spis {
            let Some(c) = self.list.get_mut(spi) else { continue };
            c.peer = SocketAddr::V4(to);
            their_ike_sas.push(c.ike_spi);
            self.outbound.send_quiet(SaCommand::MovePeer { spi, to });
        }
        // Their IKE SA's peer moved too: the guest may send there
        // (`destinations.rs`) however long the peer stays quiet.
        their_ike_sas.sort_unstable();
        their_ike_sas.dedup();
        for spi in their_ike_sas {
            if let Some(mut ike) = self.ike_sas.remove(&spi) {
                self.count_peer(&ike, false);
                ike.remote = Some(SocketAddr::V4(to));
                self.count_peer(&ike, true);
                self.ike_sas.insert(spi, ike);
            }
        }
        true
    }

    /// An IKE SA rekey: the CHILD SAs of IKE SA `from` belong to `to` now.
    pub fn moved(&mut self, from: u64, to: u64) {
        let Some(spis) = self.by_ike.remove(&from) else { return };
        for &spi in &spis {
            self.list.change_all(spi, |c| {
                if c.ike_spi == from {
                    c.ike_spi = to;
                }
            });
        }
        self.by_ike.entry(to).or_default().extend(spis);
    }

    /// A CHILD SA is gone: its outbound half at once, its inbound half after
    /// `keep_inbound_ms` (`now` in control-loop milliseconds). Only one
    /// this host installed for the IKE guest, with the keys it recorded:
    /// the guest is untrusted, and its SPIs and key handles could name
    /// another tenant's SA or a manual tunnel's. False if there is none.
    pub fn delete(&mut self, d: ChildDeleted, now: u64) -> bool {
        let gone = self.list.remove(d.inbound_spi, |c| c.outbound_spi == d.outbound_spi);
        for c in &gone {
            // Unless a record left (a guest may have named an SPI twice)
            // is of the same IKE SA.
            if !self.list.all(c.inbound_spi).any(|o| o.ike_spi == c.ike_spi)
                && let Some(spis) = self.by_ike.get_mut(&c.ike_spi)
            {
                spis.retain(|&s| s != c.inbound_spi);
                if spis.is_empty() {
                    self.by_ike.remove(&c.ike_spi);
                }
            }
            self.tally(&c.connection, (0, 1), false);
            let (inbound_key, outbound_key) = c.keys;
            self.overdue.remove(&(c.due, c.inbound_spi, inbound_key));
            // Only this SA's: a guest may have named its inbound SPI twice.
            if self.deferred.get(&c.inbound_spi).is_some_and(|d| d.0.sa.key == outbound_key) {
                self.deferred.remove(&c.inbound_spi);
            }
            self.outbound.send_quiet(SaCommand::RemoveOutbound { spi: c.inbound_spi, key: outbound_key });
            self.esp_keys.remove(outbound_key);
            if d.keep_inbound_ms == 0 {
                self.inbound.send_quiet(SaCommand::RemoveInbound { spi: c.inbound_spi, key: inbound_key });
                self.esp_keys.remove(inbound_key);
            } else {
                self.lingering.push(Reverse((now + u64::from(d.keep_inbound_ms), c.inbound_spi, inbound_key)));
            }
            let r = self.retired.entry(c.connection.to_string()).or_default();
            for (total, n) in r.iter_mut().zip(traffic(&c.traffic)) {
                *total += n;
            }
        }
        !gone.is_empty()
    }

    /// The IKE guest started over without its checkpoints, so it knows
    /// none of these SAs and no one would rekey or delete them: every
    /// CHILD SA is deleted as the engine deletes one (its inbound half
    /// accepts what the peer sends for `keep_inbound_ms` more), and the IKE
    /// SAs leave the view. Returns the IKE SAs and the number of CHILD SAs.
    pub fn forget_all(&mut self, now: u64, keep_inbound_ms: u32) -> (Vec<IkeInfo>, usize) {
        let n = self.delete_where(now, keep_inbound_ms, |_| true);
        self.ike_peers.clear();
        let gone = std::mem::take(&mut self.ike_sas).into_values().collect();
        self.recount_connections();
        (gone, n)
    }

    /// As [`Children::forget_all`], for the IKE SAs of the view that
    /// `keep` (given our SPI) does not keep, and their CHILD SAs: those a
    /// new guest did not take up (a checkpoint the host refused). A CHILD
    /// SA that names an IKE SA no longer in the view is kept.
    pub fn forget(&mut self, now: u64, keep_inbound_ms: u32, keep: impl Fn(u64) -> bool) -> (Vec<IkeInfo>, usize) {
        let (kept, forgotten): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.ike_sas).into_iter().partition(|(spi, _)| keep(*spi));
        self.ike_sas = kept;
        self.recount_peers();
        let n = self.delete_where(now, keep_inbound_ms, |c| forgotten.contains_key(&c.ike_spi));
        self.recount_connections();
        (forgotten.into_values().collect(), n)
    }

    /// Count each connection's SAs again, after IKE SAs left the view
    /// wholesale (a replacement that forgot them).
    fn recount_connections(&mut self) {
        let mut n: HashMap<Arc<str>, (usize, usize)> = HashMap::new();
        for i in self.ike_sas.values() {
            n.entry(i.connection.clone()).or_default().0 += 1;
        }
        for c in self.list.values() {
            n.entry(c.connection.clone()).or_default().1 += 1;
        }
        self.per_connection = n;
    }

    /// Delete the CHILD SAs `which` picks as the engine deletes one.
    fn delete_where(&mut self, now: u64, keep_inbound_ms: u32, which: impl Fn(&ChildInfo) -> bool) -> usize {
        let gone: Vec<ChildDeleted> = self
            .list
            .values()
            .filter(|c| which(c))
            .map(|c| ChildDeleted {
                ike_spi: c.ike_spi,
                inbound_spi: c.inbound_spi,
                outbound_spi: c.outbound_spi,
                inbound_key: c.keys.0,
                outbound_key: c.keys.1,
                keep_inbound_ms,
            })
            .collect();
        let n = gone.len();
        for d in gone {
            self.delete(d, now);
        }
        n
    }

    /// The installed CHILD SAs, in installation order.
    pub fn installed(&self) -> impl Iterator<Item = &ChildInfo> {
        self.list.values()
    }

    /// How many CHILD SAs are installed.
    pub fn installed_count(&self) -> usize {
        self.list.len()
    }

    /// A page of the IKE SAs and installed CHILD SAs for the admin view,
    /// of the connections `keep` holds (by name).
    pub fn page(&self, page: &Page, keep: impl Fn(&str) -> bool) -> Selected<'_, IkeInfo, ChildInfo> {
        page.select(&self.ike_sas, &self.list, |i| keep(&i.connection), |c| keep(&c.connection))
    }

    /// Traffic per connection over the daemon's life: live and deleted
    /// CHILD SAs.
    pub fn traffic_by_connection(&self) -> BTreeMap<String, Traffic> {
        let mut t = self.retired.clone();
        for c in self.installed() {
            let r = tally(&mut t, &c.connection);
            for (total, n) in r.iter_mut().zip(traffic(&c.traffic)) {
                *total += n;
            }
        }
        t
    }

    /// Append the CHILD SA's keys to the `esp_sa` file, if export is on.
    fn export_keys(&mut self, c: &ChildSa, remote: SocketAddr, ike: &mut IkeState) {
        let Some(path) = &self.esp_keylog else { return };
        let local = address_text(&c.local);
        let remote = remote.ip().to_string();
        let lines = [
            (local.as_str(), remote.as_str(), c.outbound_spi, ike.take_esp_export(c.outbound_key)),
            (remote.as_str(), local.as_str(), c.inbound_spi, ike.take_esp_export(c.inbound_key)),
        ];
        for (src, dst, spi, keys) in lines {
            let Some(keys) = keys else { continue };
            if let Err(e) = keylog::append_secret_line(path, &keylog::esp_sa_line(src, dst, spi, &keys)) {
                warn!(file = %path.display(), error = %e, "cannot write the ESP key log");
            }
        }
    }
}

#[cfg(test)]
#[path = "children_tests.rs"]
mod tests;
