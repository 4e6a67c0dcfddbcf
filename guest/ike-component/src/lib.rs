//! The IKEv2 engine as a WebAssembly component: a thin shell mapping the
//! `wasmsec:ike/engine` exports onto [`wasmsec_ike::Engine`] and its crypto
//! trait onto the host's `wasmsec:crypto/ike-keys` imports.
#![deny(unsafe_code)] // generated bindings below are the only exception

use std::cell::RefCell;
use std::net::IpAddr;

#[cfg(feature = "hostile")]
mod hostile;
mod policy;

use wasmsec_ike::crypto::{ChildKeying, ChildKeys, CryptoError, Handle, IkeCrypto, IkeSuite, KeyExchange};
use wasmsec_ike::{self as ike, Engine, Timing};
use wasmsec_wire::ike::{DhGroup, PayloadType};

#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ike-engine",
        pub_export_macro: true,
        generate_all,
    });
}
use bindings::*;

use exports::wasmsec::ike::engine as wit;
use wasmsec::crypto::ike_keys as keys;
use wasmsec::crypto::types::CryptoError as WitError;
use wasmsec::net::types as net;

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(new_engine());
}

/// The engine, made after the tables a peer fills (half-open SAs by its
/// SPI, rate limits by its address) are keyed with the host's randomness:
/// this target gives std's own hash maps none (`wasmsec_wire::peer_keys`).
fn new_engine() -> Engine {
    let seed = wasmsec::crypto::random::fill(wasmsec_wire::peer_keys::SEED_BYTES);
    wasmsec_wire::peer_keys::seed_from(&seed);
    Engine::new(Timing::default())
}

/// The host's keystore seen through the engine's crypto trait.
struct HostCrypto;

fn err(e: WitError) -> CryptoError {
    CryptoError::from_wit(e as u8)
}

impl IkeCrypto for HostCrypto {
    fn authorize(&mut self, sa: Handle, ike_spi: u64, request: &ike::AuthorizeRequest) -> ike::Decision {
        let decision = policy::authorize(sa, ike_spi, request);
        #[cfg(feature = "hostile")]
        if hostile::attack() == hostile::Attack::IgnorePolicy {
            return ike::Decision::Accept(Default::default());
        }
        decision
    }

    fn random(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(256) {
            let r = wasmsec::crypto::random::fill(chunk.len() as u32);
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    fn cookie(&mut self, spi_i: u64, ni: &[u8], initiator: IpAddr, offered: Option<&[u8]>) -> Option<Vec<u8>> {
        let addr = match initiator {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        keys::cookie(spi_i, ni, &addr, offered)
    }

    fn dh_generate(&mut self, group: DhGroup) -> Result<(Handle, Vec<u8>), CryptoError> {
        keys::dh_generate(group.raw()).map_err(err)
    }

    fn derive_ike_sa(&mut self, old: Option<Handle>, kx: &KeyExchange) -> Result<Handle, CryptoError> {
        let exchange = keys::KeyExchange {
            suite: wit_ike_suite(kx.suite),
            dh: kx.dh,
            peer_public: kx.peer_public.to_vec(),
            ni: kx.ni.to_vec(),
            nr: kx.nr.to_vec(),
            spi_i: kx.spi_i,
            spi_r: kx.spi_r,
            we_initiated: kx.we_initiated,
        };
        keys::derive_ike_sa(old, &exchange).map_err(err)
    }

    fn encrypt(
        &mut self,
        sa: Handle,
        fi: bool,
        h: &[u8; 28],
        first: PayloadType,
        inner: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        #[cfg(feature = "hostile")]
        let fi = hostile::encrypt_as_initiator(fi);
        keys::encrypt(sa, fi, h, first.raw(), inner).map_err(err)
    }

    fn decrypt(&mut self, sa: Handle, fi: bool, msg: &[u8], off: usize) -> Result<Vec<u8>, CryptoError> {
        keys::decrypt(sa, fi, msg, off as u32).map_err(err)
    }

    fn psk_auth(&mut self, sa: Handle, psk: Handle, m: &[u8], n: &[u8], id: &[u8]) -> Result<Vec<u8>, CryptoError> {
        keys::psk_auth(sa, psk, m, n, id).map_err(err)
    }

    fn verify_psk_auth(
        &mut self,
        sa: Handle,
        psk: Handle,
        m: &[u8],
        n: &[u8],
        id: &[u8],
        auth: &[u8],
    ) -> Result<bool, CryptoError> {
        let verified = keys::verify_psk_auth(sa, psk, m, n, id, auth).map_err(err);
        #[cfg(feature = "hostile")]
        if hostile::attack() == hostile::Attack::SkipAuth {
            return Ok(true);
        }
        verified
    }

    fn child_keys(&mut self, k: &ChildKeying) -> Result<ChildKeys, CryptoError> {
        let s = k.suite;
        #[cfg(feature = "hostile")]
        let s = &hostile::weaker(*s);
        let keying = keys::ChildKeying {
            ike_sa: k.ike_sa,
            suite: keys::ChildSuite { encr: s.encr.raw(), key_bits: s.key_bits, integ: s.integ.raw(), esn: s.esn },
            ni: k.ni.to_vec(),
            nr: k.nr.to_vec(),
            we_initiated: k.we_initiated,
            pfs: k.pfs.map(|(h, public)| (h, public.to_vec())),
        };
        #[cfg(feature = "hostile")]
        let keying = match hostile::attack() {
            hostile::Attack::SkipPfs => keys::ChildKeying { pfs: None, ..keying },
            _ => keying,
        };
        let h = keys::derive_child(&keying).map_err(err)?;
        #[cfg(feature = "hostile")]
        if hostile::attack() == hostile::Attack::DeriveTwice {
            // The host must refuse: the same nonces again.
            let _ = keys::derive_child(&keying);
        }
        Ok(ChildKeys { outbound: h.outbound, inbound: h.inbound })
    }

    fn destroy(&mut self, h: Handle) {
        keys::destroy(h)
    }
}

fn wit_ike_suite(s: &IkeSuite) -> keys::IkeSuite {
    keys::IkeSuite { encr: s.encr.raw(), key_bits: s.key_bits, prf: s.prf.raw(), integ: s.integ.raw(), dh: s.dh.raw() }
}

fn addr(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn endpoint(e: &net::Endpoint) -> Option<ike::Endpoint> {
    Some(ike::Endpoint { addr: addr(&e.address)?, port: e.port })
}

fn wit_endpoint(e: &ike::Endpoint) -> net::Endpoint {
    net::Endpoint { address: addr_bytes(e.addr), port: e.port }
}

fn wit_ts(ts: &[wasmsec_wire::ike::TrafficSelector]) -> Vec<net::TrafficSelector> {
    ts.iter()
        .map(|t| net::TrafficSelector {
            ip_protocol: t.ip_protocol,
            start_port: t.start_port,
            end_port: t.end_port,
            start_address: t.start.clone(),
            end_address: t.end.clone(),
        })
        .collect()
}

fn wit_transmit(t: ike::Transmit) -> wit::Transmit {
    match t {
        ike::Transmit::Datagram(d) => wit::Transmit::Datagram(wit::Datagram {
            local: wit_endpoint(&d.local),
            remote: wit_endpoint(&d.remote),
            data: d.data,
        }),
        ike::Transmit::Keepalive { local, remote } => {
            wit::Transmit::Keepalive((wit_endpoint(&local), wit_endpoint(&remote)))
        }
    }
}

fn wit_sa_change(c: ike::SaChange) -> wit::SaChange {
    #[cfg(feature = "hostile")]
    let c = match c {
        ike::SaChange::Install(mut c) if hostile::attack() == hostile::Attack::SwapHandles => {
            std::mem::swap(&mut c.inbound_key, &mut c.outbound_key);
            ike::SaChange::Install(c)
        }
        ike::SaChange::Install(c) if hostile::attack() == hostile::Attack::MoveElsewhere => {
            hostile::installed(c.inbound_spi);
            ike::SaChange::Install(c)
        }
        ike::SaChange::Install(mut c) if hostile::attack() == hostile::Attack::OtherConnection => {
            c.connection = hostile::VICTIM.into();
            ike::SaChange::Install(c)
        }
        ike::SaChange::Install(mut c) if hostile::attack() == hostile::Attack::OtherSource => {
            c.local.addr = std::net::IpAddr::from(hostile::OTHER_SOURCE);
            ike::SaChange::Install(c)
        }
        ike::SaChange::Install(mut c) if hostile::attack() == hostile::Attack::Unlimited => {
            (c.limits.hard_bytes, c.limits.hard_packets) = (0, 0);
            ike::SaChange::Install(c)
        }
        ike::SaChange::Install(mut c) if hostile::attack() == hostile::Attack::WeakerTransform => {
            c.suite = hostile::weaker(c.suite);
            ike::SaChange::Install(c)
        }
        ike::SaChange::Install(mut c) if hostile::attack() == hostile::Attack::WidenSelectors => {
            for ts in &mut c.remote_ts {
                ts.ts_type = wasmsec_wire::ike::TsType::Ipv4AddrRange;
                (ts.start, ts.end) = (vec![0; 4], vec![255; 4]);
            }
            ike::SaChange::Install(c)
        }
        c => c,
    };
    match c {
        ike::SaChange::Install(c) => wit::SaChange::Install(wit::ChildSa {
            connection: c.connection,
            child: c.child,
            ike_spi: c.ike_spi,
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
            inbound_key: c.inbound_key,
            outbound_key: c.outbound_key,
            encr: c.suite.encr.raw(),
            key_bits: c.suite.key_bits,
            integ: c.suite.integ.raw(),
            esn: c.suite.esn,
            local_ts: wit_ts(&c.local_ts),
            remote_ts: wit_ts(&c.remote_ts),
            local: wit_endpoint(&c.local),
            remote: wit_endpoint(&c.remote),
            encap: c.encap,
            outbound_deferred: c.outbound_deferred,
            limits: net::SaLimits {
                soft_bytes: c.limits.soft_bytes,
                soft_packets: c.limits.soft_packets,
                hard_bytes: c.limits.hard_bytes,
                hard_packets: c.limits.hard_packets,
            },
        }),
        ike::SaChange::ExpectInbound { inbound_spi } => wit::SaChange::ExpectInbound(inbound_spi),
        ike::SaChange::ActivateOutbound { inbound_spi } => wit::SaChange::ActivateOutbound(inbound_spi),
        ike::SaChange::PeerMoved { inbound_spis, remote } => {
            wit::SaChange::PeerMoved((inbound_spis, wit_endpoint(&remote)))
        }
        ike::SaChange::ChildrenMoved { from, to } => wit::SaChange::ChildrenMoved((from, to)),
        ike::SaChange::Delete { ike_spi, inbound_spi, outbound_spi, inbound_key, outbound_key, keep_inbound_ms } => {
            wit::SaChange::Delete(wit::ChildDeleted {
                ike_spi,
                inbound_spi,
                outbound_spi,
                inbound_key,
                outbound_key,
                keep_inbound_ms,
            })
        }
    }
}

fn wit_event(e: ike::Event) -> wit::Event {
    match e {
        ike::Event::IkeUp {
            connection,
            ike_spi,
            proposal,
            initiator,
            local,
            remote,
            nat_local,
            nat_remote,
            rekeyed,
            remote_id,
        } => wit::Event::IkeUp(wit::IkeSaUp {
            connection,
            ike_spi,
            proposal,
            initiator,
            local: wit_endpoint(&local),
            remote: wit_endpoint(&remote),
            nat_local,
            nat_remote,
            rekeyed,
            remote_id,
        }),
        ike::Event::IkeDown { connection, ike_spi } => wit::Event::IkeDown((connection, ike_spi)),
        ike::Event::Log { level, connection, message } => wit::Event::Log(wit::LogEvent {
            level: match level {
                ike::Level::Info => wit::Level::Info,
                ike::Level::Warn => wit::Level::Warn,
            },
            connection,
            message,
        }),
    }
}

struct Component;

impl wit::Guest for Component {
    fn add_connection(c: wit::Connection) -> Result<Vec<String>, String> {
        let addrs = |v: Vec<Vec<u8>>, what: &str| -> Result<Vec<IpAddr>, String> {
            v.iter().map(|b| addr(b).ok_or(format!("{what}: address is not 4 or 16 bytes"))).collect()
        };
        #[cfg(feature = "hostile")]
        hostile::choose(&c.name);
        let cfg = ike::ConnectionConfig {
            name: c.name,
            local_addrs: addrs(c.local_addrs, "local_addrs")?,
            remote_addrs: addrs(c.remote_addrs, "remote_addrs")?,
            local_id: c.local_id,
            remote_id: c.remote_id,
            psk: c.psk,
            ike_proposals: c.ike_proposals,
            children: c
                .children
                .into_iter()
                .map(|ch| ike::ChildConfig {
                    name: ch.name,
                    local_ts: ch.local_ts,
                    remote_ts: ch.remote_ts,
                    esp_proposals: ch.esp_proposals,
                    rekey_time_ms: ch.rekey_time_ms,
                    rekey_bytes: ch.rekey_bytes,
                    rekey_packets: ch.rekey_packets,
                    life_time_ms: ch.life_time_ms,
                    life_bytes: ch.life_bytes,
                    life_packets: ch.life_packets,
                })
                .collect(),
            start_action: match c.start_action {
                wit::StartAction::None => ike::StartAction::None,
                wit::StartAction::Start => ike::StartAction::Start,
            },
            force_encap: c.force_encap,
            keepalive_ms: u64::from(c.nat_keepalive_ms),
            dpd_delay_ms: u64::from(c.dpd_delay_ms),
            dpd_action: match c.dpd_action {
                wit::DpdAction::Clear => ike::DpdAction::Clear,
                wit::DpdAction::Restart => ike::DpdAction::Restart,
            },
            rekey_time_ms: c.rekey_time_ms,
            reauth_time_ms: c.reauth_time_ms,
        };
        ENGINE.with_borrow_mut(|e| e.add_connection(cfg)).map_err(|e| e.to_string())
    }

    fn autostart() -> Vec<String> {
        ENGINE.with_borrow(|e| e.autostart())
    }

    fn initiate(now_ms: u64, connection: String) -> Result<(), String> {
        #[cfg(feature = "hostile")]
        hostile::initiated();
        ENGINE.with_borrow_mut(|e| e.initiate(now_ms, &connection, &mut HostCrypto)).map_err(|e| e.to_string())
    }

    fn remove_connection(now_ms: u64, connection: String) -> Result<u32, String> {
        ENGINE
            .with_borrow_mut(|e| e.remove_connection(now_ms, &connection, &mut HostCrypto))
            .map(|n| n as u32)
            .map_err(|e| e.to_string())
    }

    fn terminate(now_ms: u64, connection: String) -> Result<u32, String> {
        #[cfg(feature = "hostile")]
        hostile::trap_on_terminate();
        ENGINE
            .with_borrow_mut(|e| e.terminate(now_ms, &connection, &mut HostCrypto))
            .map(|n| n as u32)
            .map_err(|e| e.to_string())
    }

    fn handle_datagram(now_ms: u64, d: wit::Datagram) {
        let (Some(local), Some(remote)) = (endpoint(&d.local), endpoint(&d.remote)) else {
            return;
        };
        #[cfg(feature = "hostile")]
        hostile::trap_on_marker(&d.data);
        ENGINE.with_borrow_mut(|e| {
            e.handle_datagram(now_ms, ike::Datagram { local, remote, data: d.data }, &mut HostCrypto)
        });
    }

    fn tick(now_ms: u64) {
        ENGINE.with_borrow_mut(|e| e.tick(now_ms, &mut HostCrypto));
    }

    fn child_expired(now_ms: u64, spi: u32, hard: bool) {
        ENGINE.with_borrow_mut(|e| e.child_expired(now_ms, spi, hard, &mut HostCrypto));
    }

    fn child_failed(now_ms: u64, spi: u32, reason: String) {
        ENGINE.with_borrow_mut(|e| e.child_failed(now_ms, spi, &reason, &mut HostCrypto));
    }

    fn poll() -> wit::Output {
        #[cfg(feature = "hostile")]
        hostile::trap_after_initiate();
        #[allow(unused_mut)]
        let mut out = ENGINE.with_borrow_mut(|e| wit::Output {
            sa_changes: std::iter::from_fn(|| e.poll_sa_change()).map(wit_sa_change).collect(),
            transmits: std::iter::from_fn(|| e.poll_transmit()).map(wit_transmit).collect(),
            events: std::iter::from_fn(|| e.poll_event()).map(wit_event).collect(),
            checkpoints: e.poll_checkpoints(),
            connection_counters: e.poll_connection_stats().into_iter().map(|(n, s)| (n, wit_counters(&s, 0))).collect(),
        });
        #[cfg(feature = "hostile")]
        out.events.extend(hostile::forged_log_line());
        #[cfg(feature = "hostile")]
        out.sa_changes.retain(hostile::keeps);
        #[cfg(feature = "hostile")]
        out.sa_changes.extend(hostile::delete_others());
        #[cfg(feature = "hostile")]
        out.sa_changes.extend(hostile::move_elsewhere());
        #[cfg(feature = "hostile")]
        out.transmits.extend(hostile::send_anywhere());
        #[cfg(feature = "hostile")]
        out.transmits.extend(hostile::send_from_elsewhere());
        out
    }

    fn next_timeout() -> Option<u64> {
        ENGINE.with_borrow_mut(|e| e.next_timeout())
    }

    fn stats() -> wit::Counters {
        ENGINE.with_borrow(|e| wit_counters(&e.stats(), e.half_open_count() as u64))
    }

    fn ike_sa_states() -> Vec<wit::IkeSaCount> {
        use wasmsec_ike::SaPhase;
        let state = |p: SaPhase| match p {
            SaPhase::Connecting => wit::IkeSaState::Connecting,
            SaPhase::HalfOpen => wit::IkeSaState::HalfOpen,
            SaPhase::Established => wit::IkeSaState::Established,
            SaPhase::Deleting => wit::IkeSaState::Deleting,
        };
        let v = ENGINE.with_borrow(|e| e.ike_sa_states());
        v.into_iter().map(|(connection, p, count)| wit::IkeSaCount { connection, state: state(p), count }).collect()
    }

    fn child_schedules(now_ms: u64, inbound_spis: Vec<u32>) -> Vec<wit::ChildSchedule> {
        let v = ENGINE.with_borrow_mut(|e| e.child_schedules(now_ms, &inbound_spis));
        v.into_iter()
            .map(|(inbound_spi, rekey_in_ms, expire_in_ms)| wit::ChildSchedule {
                inbound_spi,
                rekey_in_ms,
                expire_in_ms,
            })
            .collect()
    }

    fn active(connection: String) -> bool {
        ENGINE.with_borrow_mut(|e| e.active(&connection))
    }

    fn restore(checkpoints: Vec<Vec<u8>>) -> Result<u32, String> {
        #[cfg(feature = "hostile")]
        hostile::restored();
        ENGINE.with_borrow_mut(|e| e.restore(&checkpoints)).map(|n| n as u32).map_err(|e| e.to_string())
    }

    fn held_keys() -> Vec<u64> {
        ENGINE.with_borrow(|e| e.held_keys())
    }
}

/// The engine's counters on the WIT side; `half_open` is the engine's
/// gauge (0 in one connection's counters).
fn wit_counters(s: &wasmsec_ike::Stats, half_open: u64) -> wit::Counters {
    wit::Counters {
        rx: s.rx,
        tx: s.tx,
        retransmits: s.retransmits,
        replayed_responses: s.replayed_responses,
        malformed: s.malformed,
        unknown_spi: s.unknown_spi,
        oversize: s.oversize,
        integrity_failed: s.integrity_failed,
        unexpected: s.unexpected,
        handshakes_started: s.handshakes_started,
        ike_established: s.ike_established,
        child_installed: s.child_installed,
        auth_failed: s.auth_failed,
        policy_rejected: s.policy_rejected,
        no_proposal: s.no_proposal,
        ts_unacceptable: s.ts_unacceptable,
        timeouts: s.timeouts,
        keepalives: s.keepalives,
        dpd_checks: s.dpd_checks,
        dead_peers: s.dead_peers,
        cookies_sent: s.cookies_sent,
        half_open_drops: s.half_open_drops,
        half_open,
        rate_limited: s.rate_limited,
        rekey_collisions_won: s.rekey_collisions_won,
        rekey_collisions_lost: s.rekey_collisions_lost,
        ike_rekey_collisions_won: s.ike_rekey_collisions_won,
        ike_rekey_collisions_lost: s.ike_rekey_collisions_lost,
        temporary_failures: s.temporary_failures,
        lifetime_soft: s.lifetime_soft,
        lifetime_hard: s.lifetime_hard,
        child_rekeys: s.child_rekeys,
        ike_rekeys: s.ike_rekeys,
        reauths: s.reauths,
        duplicates_deleted: s.duplicates_deleted,
    }
}

#[allow(unsafe_code)]
mod export {
    use crate::Component;
    crate::bindings::export!(Component with_types_in crate::bindings);
}
