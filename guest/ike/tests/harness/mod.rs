//! The engine tests' harness: two engines against each other on virtual
//! time, with the host's real key schedule (wasmsec-crypto's vault, through
//! its `EngineCrypto`) behind the crypto trait, and no sockets. `Side`
//! plays the host: it drains the engine's queues and applies what a data
//! plane would (keys die with their SA).
#![allow(dead_code, unused_imports)]

pub use std::collections::BTreeMap;
pub use std::net::{IpAddr, Ipv4Addr};

pub use wasmsec_crypto::Vault;
pub use wasmsec_crypto::ike_engine::EngineCrypto;
pub use wasmsec_ike::*;
pub use wasmsec_wire::ike::{ExchangeType, Message, NotifyType, Payload, PayloadType};
pub use zeroize::Zeroizing;

/// One end: an engine and what its host would have seen.
pub struct Side {
    /// The engine under test.
    pub engine: Engine,
    /// The host's key schedule, as the component's imports reach it.
    pub crypto: EngineCrypto,
    /// This side's address.
    pub addr: IpAddr,
    /// A second address of this side, where the peer may send too.
    pub also: Option<IpAddr>,
    /// The handle of its pre-shared key in `crypto`.
    pub psk: u64,
    /// CHILD SAs installed and not yet deleted.
    pub installed: Vec<ChildSa>,
    /// CHILD SAs deleted so far.
    pub deleted: usize,
    /// `ike-up` events.
    pub up: usize,
    /// `ike-down` events.
    pub down: usize,
    /// `ike-up` events of IKE SAs that replaced one by a rekey.
    pub rekeyed_up: usize,
    /// Every log line, for assertions on what was said.
    pub logs: Vec<String>,
    /// Datagrams sent and not yet delivered.
    pub outbox: Vec<Datagram>,
    /// This side is behind a NAT that rewrites its address and port.
    pub nat: bool,
    /// NAT keepalives sent.
    pub keepalives: usize,
    /// Outbound SPIs activated after a deferred install (the engine names
    /// each by its CHILD SA's inbound SPI; the harness looks it up).
    pub activated: Vec<u32>,
    /// Inbound SPIs the data path was told to expect, each before the
    /// request offering it went out.
    pub expected: Vec<u32>,
    /// Fewest CHILD SAs installed at once after one was deleted.
    pub live_min: usize,
    /// What the data path was told, in order: `+out SPI` (start sending,
    /// at install or activation) and `-out SPI linger MS` (stop sending;
    /// the inbound half stays MS longer).
    pub datapath: Vec<String>,
    /// The engine's latest checkpoint of each IKE SA, as the host keeps them.
    pub checkpoints: BTreeMap<u64, Vec<u8>>,
}

/// A's address and port offset as B sees them when A is behind a NAT.
pub const NAT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
pub const NAT_PORT_SHIFT: u16 = 30000;

pub const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
pub const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

/// How to configure a side's connection; `Default` is one `net` CHILD between the LANs.
pub struct Conf<'a> {
    /// IKE proposals, strongSwan's syntax.
    pub ike: &'a str,
    /// ESP proposals of every CHILD config.
    pub esp: &'a str,
    /// The pre-shared key.
    pub psk: &'a str,
    /// Local subnets of the `net` CHILD (empty: this side's LAN).
    pub local_ts: &'a [&'a str],
    /// Remote subnets of the `net` CHILD (empty: the peer's LAN).
    pub remote_ts: &'a [&'a str],
    /// A second CHILD config, `extra`: A's local and remote subnets (B swaps them).
    pub extra_child: Option<(&'a [&'a str], &'a [&'a str])>,
    /// A sits behind a NAT: B sees it as NAT_IP, ports shifted.
    pub nat: bool,
    /// Liveness check delay in milliseconds (0: off).
    pub dpd_ms: u64,
    /// What to do when the peer is found dead.
    pub dpd_action: DpdAction,
    /// CHILD SA rekey time in milliseconds (0: none).
    pub rekey_ms: u64,
    /// IKE SA rekey time in milliseconds (0: none).
    pub ike_rekey_ms: u64,
    /// The engine's timers and flood limits (the test harness adds the
    /// rekey and DPD settings above to a copy).
    pub timing: Timing,
    /// B accepts initiators from any address (remote_addrs = %any).
    pub any_peer: bool,
    /// CHILD SA rekey by packets and hard lifetime by time.
    pub rekey_packets: u64,
    /// CHILD SA hard lifetime in milliseconds (0: derived from `rekey_ms`, or none).
    pub life_ms: u64,
    /// Reauthentication time in milliseconds (0: never).
    pub reauth_ms: u64,
}

impl Default for Conf<'_> {
    fn default() -> Self {
        Conf {
            ike: "aes256gcm16-prfsha256-x25519",
            esp: "aes256gcm16",
            psk: "secret-psk",
            local_ts: &[],
            remote_ts: &[],
            extra_child: None,
            nat: false,
            dpd_ms: 0,
            dpd_action: DpdAction::Clear,
            rekey_ms: 0,
            ike_rekey_ms: 0,
            timing: Timing::default(),
            any_peer: false,
            rekey_packets: 0,
            life_ms: 0,
            reauth_ms: 0,
        }
    }
}

pub fn side(me: IpAddr, peer: IpAddr, conf: &Conf) -> Side {
    let mut crypto = EngineCrypto::new(Vault::new());
    let psk = crypto.vault.insert_psk(Zeroizing::new(conf.psk.as_bytes().to_vec()));
    Side {
        engine: engine(me, peer, conf, psk),
        crypto,
        addr: me,
        also: None,
        psk,
        installed: vec![],
        deleted: 0,
        up: 0,
        down: 0,
        logs: vec![],
        outbox: vec![],
        nat: conf.nat,
        keepalives: 0,
        rekeyed_up: 0,
        activated: vec![],
        expected: vec![],
        live_min: usize::MAX,
        datapath: vec![],
        checkpoints: BTreeMap::new(),
    }
}

/// The engine of `side`, with its one connection `site` (PSK handle `psk`):
/// a test that replaces a side's engine builds the new one here.
pub fn engine(me: IpAddr, peer: IpAddr, conf: &Conf, psk: u64) -> Engine {
    let mut engine = Engine::new(conf.timing);
    engine.add_connection(connection(me, peer, conf, psk)).unwrap();
    engine
}

/// The connection `site` of the side at `me`.
pub fn connection(me: IpAddr, peer: IpAddr, conf: &Conf, psk: u64) -> ConnectionConfig {
    let (my_id, peer_id, my_lan, peer_lan) = if me == A {
        ("gwa.interop.test", "gwb.interop.test", "198.18.1.0/24", "198.18.2.0/24")
    } else {
        ("gwb.interop.test", "gwa.interop.test", "198.18.2.0/24", "198.18.1.0/24")
    };
    let s = |v: &[&str], d: &str| {
        if v.is_empty() { vec![d.to_string()] } else { v.iter().map(|x| x.to_string()).collect() }
    };
    let mut children = vec![ChildConfig {
        name: "net".into(),
        local_ts: s(conf.local_ts, my_lan),
        remote_ts: s(conf.remote_ts, peer_lan),
        esp_proposals: conf.esp.into(),
        rekey_time_ms: conf.rekey_ms,
        rekey_bytes: 0,
        rekey_packets: conf.rekey_packets,
        life_time_ms: conf.life_ms,
        life_bytes: 0,
        life_packets: 0,
    }];
    if let Some((l, r)) = conf.extra_child {
        let (l, r) = if me == A { (l, r) } else { (r, l) };
        children.push(ChildConfig {
            name: "extra".into(),
            local_ts: s(l, ""),
            remote_ts: s(r, ""),
            esp_proposals: conf.esp.into(),
            ..ChildConfig::default()
        });
    }
    ConnectionConfig {
        name: "site".into(),
        local_addrs: vec![me],
        // Behind a NAT the peer arrives from an address we cannot know: %any.
        remote_addrs: if (conf.nat || conf.any_peer) && me == B { vec![] } else { vec![peer] },
        local_id: my_id.into(),
        remote_id: peer_id.into(),
        psk,
        ike_proposals: conf.ike.into(),
        children,
        start_action: StartAction::None,
        force_encap: false,
        keepalive_ms: 20_000,
        dpd_delay_ms: conf.dpd_ms,
        dpd_action: conf.dpd_action,
        rekey_time_ms: conf.ike_rekey_ms,
        reauth_time_ms: conf.reauth_ms,
    }
}

impl Side {
    pub fn drain(&mut self) {
        for (spi, c) in self.engine.poll_checkpoints() {
            match c {
                Some(bytes) => self.checkpoints.insert(spi, bytes),
                None => self.checkpoints.remove(&spi),
            };
        }
        // As the host: SA changes first, then what goes on the wire.
        while let Some(c) = self.engine.poll_sa_change() {
            match c {
                SaChange::Install(c) => {
                    if !c.outbound_deferred {
                        self.datapath.push(format!("+out {:08x}", c.outbound_spi));
                    }
                    self.installed.push(c)
                }
                SaChange::Delete { inbound_key, outbound_key, outbound_spi, keep_inbound_ms, .. } => {
                    self.datapath.push(format!("-out {outbound_spi:08x} linger {keep_inbound_ms}"));
                    // What the host does: the keys die with the SA.
                    self.crypto.esp.remove(&inbound_key);
                    self.crypto.esp.remove(&outbound_key);
                    self.deleted += 1;
                    self.live_min = self.live_min.min(self.installed.len() - self.deleted);
                }
                SaChange::PeerMoved { .. } | SaChange::ChildrenMoved { .. } => {}
                SaChange::ExpectInbound { inbound_spi } => {
                    // The request offering it is among this drain's
                    // transmits: the host must know the SPI before it leaves.
                    // Not the SPI of a live inbound SA (its key still
                    // exists): one SPI names one SA (RFC 4301 section 4.1).
                    let live = |c: &&ChildSa| self.crypto.esp.contains_key(&c.inbound_key);
                    assert!(!self.installed.iter().filter(live).any(|c| c.inbound_spi == inbound_spi));
                    self.expected.push(inbound_spi)
                }
                SaChange::ActivateOutbound { inbound_spi } => {
                    // As the host: the deferred SA is named by its pair's
                    // inbound SPI; one the engine never installed is a bug.
                    let c = self.installed.iter().rev().find(|c| c.inbound_spi == inbound_spi);
                    let outbound_spi = c.expect("activated a CHILD SA that was installed").outbound_spi;
                    self.datapath.push(format!("+out {outbound_spi:08x}"));
                    self.activated.push(outbound_spi)
                }
            }
        }
        while let Some(t) = self.engine.poll_transmit() {
            match t {
                Transmit::Datagram(d) => {
                    let mine = d.local.addr == self.addr || Some(d.local.addr) == self.also;
                    assert!(mine || d.local.addr.is_unspecified());
                    self.outbox.push(d);
                }
                Transmit::Keepalive { local, .. } => {
                    assert_eq!(local.port, 4500);
                    self.keepalives += 1;
                }
            }
        }
        while let Some(e) = self.engine.poll_event() {
            match e {
                Event::IkeUp { rekeyed, .. } => {
                    self.up += 1;
                    self.rekeyed_up += usize::from(rekeyed);
                }
                Event::IkeDown { .. } => self.down += 1,
                Event::Log { message, .. } => self.logs.push(message),
            }
        }
    }

    pub fn deliver(&mut self, now: u64, d: Datagram) {
        // From the address the peer sent from, to the one it sent to.
        let peer = if self.addr == A { B } else { A };
        let from = if d.local.addr.is_unspecified() { peer } else { d.local.addr };
        let to = if Some(d.remote.addr) == self.also { d.remote.addr } else { self.addr };
        let mut local = Endpoint { addr: to, port: d.remote.port };
        let mut remote = Endpoint { addr: from, port: d.local.port };
        if self.nat && self.addr == B {
            remote = Endpoint { addr: NAT_IP, port: d.local.port + NAT_PORT_SHIFT };
        }
        if self.nat && self.addr == A {
            assert_eq!(d.remote.addr, NAT_IP, "B answers the NAT's outside address");
            local = Endpoint { addr: A, port: d.remote.port - NAT_PORT_SHIFT };
        }
        let d = Datagram { local, remote, data: d.data };
        self.engine.handle_datagram(now, d, &mut self.crypto);
        self.drain();
    }

    pub fn log_has(&self, s: &str) -> bool {
        self.logs.iter().any(|l| l.contains(s))
    }
}

/// Exchange datagrams until both sides are quiet; `keep(n, d)` decides
/// whether the n-th datagram (counting from 0) is delivered.
pub fn pump(a: &mut Side, b: &mut Side, now: u64, keep: &mut dyn FnMut(usize, &Datagram) -> bool, n: &mut usize) {
    a.drain();
    b.drain();
    for _ in 0..100 {
        if a.outbox.is_empty() && b.outbox.is_empty() {
            return;
        }
        for d in std::mem::take(&mut a.outbox) {
            *n += 1;
            if keep(*n - 1, &d) {
                b.deliver(now, d);
            }
        }
        for d in std::mem::take(&mut b.outbox) {
            *n += 1;
            if keep(*n - 1, &d) {
                a.deliver(now, d);
            }
        }
    }
    panic!("endless exchange");
}

/// Run virtual time from 0 until quiet or `until` ms.
pub fn run(a: &mut Side, b: &mut Side, until: u64, keep: &mut dyn FnMut(usize, &Datagram) -> bool) {
    run_from(a, b, 0, until, keep);
}

/// Run virtual time from `from` until quiet or `until` ms.
pub fn run_from(a: &mut Side, b: &mut Side, from: u64, until: u64, keep: &mut dyn FnMut(usize, &Datagram) -> bool) {
    let mut n = 0;
    let mut now = from;
    pump(a, b, now, keep, &mut n);
    while now < until {
        let next = [a.engine.next_timeout(), b.engine.next_timeout()].into_iter().flatten().min();
        let Some(t) = next.filter(|t| *t <= until) else {
            break;
        };
        now = t.max(now);
        a.engine.tick(now, &mut a.crypto);
        b.engine.tick(now, &mut b.crypto);
        pump(a, b, now, keep, &mut n);
    }
}

pub fn connect(conf_a: &Conf, conf_b: &Conf, keep: &mut dyn FnMut(usize, &Datagram) -> bool) -> (Side, Side) {
    let mut a = side(A, B, conf_a);
    let mut b = side(B, A, conf_b);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 120_000, keep);
    (a, b)
}

pub fn all(_: usize, _: &Datagram) -> bool {
    true
}

pub fn assert_child_pair(a: &Side, b: &Side) {
    assert_eq!(a.installed.len(), 1, "{:?}", a.logs);
    assert_eq!(b.installed.len(), 1, "{:?}", b.logs);
    let (ca, cb) = (&a.installed[0], &b.installed[0]);
    assert_eq!(ca.outbound_spi, cb.inbound_spi);
    assert_eq!(ca.inbound_spi, cb.outbound_spi);
    assert_eq!(a.crypto.esp[&ca.outbound_key], b.crypto.esp[&cb.inbound_key], "A->B keys agree");
    assert_eq!(a.crypto.esp[&ca.inbound_key], b.crypto.esp[&cb.outbound_key], "B->A keys agree");
    assert_ne!(a.crypto.esp[&ca.outbound_key], a.crypto.esp[&ca.inbound_key]);
    assert_eq!(ca.local_ts, cb.remote_ts);
    assert_eq!(ca.suite, cb.suite);
}

/// Both ends' live CHILD SA pairs: exactly `n`, with keys that agree and
/// no other ESP key left in either keystore.
pub fn assert_live_pairs(a: &Side, b: &Side, n: usize) {
    let live_a: Vec<&ChildSa> = a.installed.iter().filter(|c| a.crypto.esp.contains_key(&c.inbound_key)).collect();
    assert_eq!(live_a.len(), n, "{:?}", a.logs.iter().rev().take(12).collect::<Vec<_>>());
    for ca in live_a {
        let cb = b.installed.iter().find(|c| c.inbound_spi == ca.outbound_spi).expect("B has the pair");
        assert_eq!(ca.inbound_spi, cb.outbound_spi);
        assert_eq!(a.crypto.esp[&ca.outbound_key], b.crypto.esp[&cb.inbound_key], "A->B keys agree");
        assert_eq!(a.crypto.esp[&ca.inbound_key], b.crypto.esp[&cb.outbound_key], "B->A keys agree");
    }
    assert_eq!((a.crypto.esp.len(), b.crypto.esp.len()), (2 * n, 2 * n), "no leaked ESP key");
    assert_eq!((a.installed.len() - a.deleted, b.installed.len() - b.deleted), (n, n));
}

/// The data path had an outbound SA at every moment after the first one
/// came: each new one started before the old one stopped. (A deferred
/// SA deleted before it was activated never sent, so its `-out` stops
/// nothing.)
pub fn assert_always_sending(side: &Side) {
    let mut live = std::collections::BTreeSet::new();
    for (i, step) in side.datapath.iter().enumerate() {
        let spi = step.split_whitespace().nth(1).unwrap_or_default();
        if step.starts_with('+') {
            live.insert(spi);
        } else {
            live.remove(spi);
        }
        assert!(!live.is_empty() || i == 0, "no outbound SA after {step:?}: {:?}", side.datapath);
    }
}

/// Deliver `from`'s queued datagrams to `to` (one direction only).
pub fn deliver_all(from: &mut Side, to: &mut Side, now: u64) {
    from.drain();
    for d in std::mem::take(&mut from.outbox) {
        to.deliver(now, d);
    }
}
