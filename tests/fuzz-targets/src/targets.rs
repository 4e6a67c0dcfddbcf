//! The four targets. Inputs that hold several packets or datagrams are
//! records: a 2-byte big-endian length, then that many bytes (a short tail
//! is the last record).
use std::net::{IpAddr, Ipv4Addr};

use wasmsec_esp::{DecapVerdict, Engine as EspEngine, InboundSa, KeyHandle, SaLimits, TrafficSelector};
use wasmsec_ike::{ChildConfig, ConnectionConfig, Datagram, DpdAction, Endpoint, Engine, StartAction, Timing};
use wasmsec_wire::ike::{Message, Packet};
use wasmsec_wire::ip::Address;

use crate::alloc_meter;
use crate::esp_batch::ClearBatch;
use crate::ike_crypto::ClearCrypto;

/// Split `data` into length-prefixed records.
pub fn records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        out.push(&data[2..2 + n]);
        data = &data[2 + n..];
    }
    out
}

/// An IKE message that parses emits bytes that parse to the same message,
/// and emitting that again gives the same bytes.
pub fn ike_message(data: &[u8]) {
    let _ = Packet::new_checked(data);
    let (parsed, allocated) = alloc_meter::allocated_by(|| Message::parse(data));
    let most = data.len() * alloc_meter::PER_INPUT_BYTE + alloc_meter::BESIDES;
    assert!(allocated <= most, "parsing {} bytes allocated {allocated} (at most {most})", data.len());
    let Ok(m) = parsed else { return };
    let bytes = m.emit();
    let again = Message::parse(&bytes).expect("what we emit parses");
    assert_eq!(again, m, "parse(emit(m)) == m");
    assert_eq!(again.emit(), bytes, "emit is stable");
}

/// Our address in the IKE responder target.
pub const RESPONDER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

/// Both ends of the fuzz negotiation.
pub struct End<'a> {
    /// Our address (the peer's: `remote`, empty to accept any).
    pub local: IpAddr,
    /// The peer's addresses.
    pub remote: Vec<IpAddr>,
    /// Our identity and the peer's.
    pub ids: (&'a str, &'a str),
    /// Our subnet and the peer's.
    pub subnets: (&'a str, &'a str),
    /// IKE and ESP proposals.
    pub proposals: (&'a str, &'a str),
    /// Initiate at start.
    pub start: StartAction,
}

/// An engine with the one connection `fuzz` for `end`: rekeys every 30 s
/// (CHILD) and 45 s (IKE), liveness checks every 10 s.
pub fn engine(end: End<'_>, timing: Timing) -> Engine {
    let mut e = Engine::new(timing);
    e.add_connection(ConnectionConfig {
        name: "fuzz".into(),
        local_addrs: vec![end.local],
        remote_addrs: end.remote,
        local_id: end.ids.0.into(),
        remote_id: end.ids.1.into(),
        psk: 1,
        ike_proposals: end.proposals.0.into(),
        children: vec![ChildConfig {
            name: "net".into(),
            local_ts: vec![end.subnets.0.into()],
            remote_ts: vec![end.subnets.1.into()],
            esp_proposals: end.proposals.1.into(),
            rekey_time_ms: 30_000,
            ..ChildConfig::default()
        }],
        start_action: end.start,
        force_encap: false,
        keepalive_ms: 20_000,
        dpd_delay_ms: 10_000,
        dpd_action: DpdAction::Clear,
        rekey_time_ms: 45_000,
        reauth_time_ms: 0,
    })
    .expect("the fuzz connection is valid");
    e
}

/// The responder engine of the `ike_responder` target: one connection that
/// accepts any peer, with the proposals the seeds use.
pub fn responder() -> Engine {
    let end = End {
        local: RESPONDER,
        remote: vec![],
        ids: ("responder.fuzz", "%any"),
        subnets: ("10.2.0.0/16", "10.1.0.0/16"),
        proposals: ("aes256gcm16-prfsha256-x25519,aes128-sha256-modp2048", "aes256gcm16,aes128gcm16-x25519"),
        start: StartAction::None,
    };
    engine(end, Timing { cookie_threshold: 4, max_half_open: 64, ..Timing::default() })
}

/// The responder fed a sequence of records: the first byte of each picks
/// the source (one of four addresses), the port (500 or 4500) and how far
/// time moves on; the rest is the datagram. Whatever arrives, the engine
/// must neither panic nor hold more than its caps allow.
pub fn ike_responder(data: &[u8]) {
    let (mut e, mut crypto, now) = replay_responder(data);
    e.tick(now + 3_600_000, &mut crypto);
}

/// The responder after `data`, with its crypto and clock (for tests).
pub fn replay_responder(data: &[u8]) -> (Engine, ClearCrypto, u64) {
    let mut e = responder();
    let mut crypto = ClearCrypto::default();
    let mut now = 0u64;
    for r in records(data) {
        let Some((&ctl, datagram)) = r.split_first() else { continue };
        now += u64::from(ctl >> 4) * 250;
        let port = if ctl & 8 != 0 { 4500 } else { 500 };
        let remote = Endpoint { addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1 + (ctl & 3))), port };
        let local = Endpoint { addr: RESPONDER, port };
        e.handle_datagram(now, Datagram { local, remote, data: datagram.to_vec() }, &mut crypto);
        if ctl & 4 != 0 {
            e.tick(now, &mut crypto);
        }
        while e.poll_transmit().is_some() {}
        while e.poll_sa_change().is_some() {}
        while e.poll_event().is_some() {}
        assert!(e.half_open_count() <= 64 && e.half_open_bytes() <= Timing::default().half_open_budget);
    }
    (e, crypto, now)
}

fn prefix(a: [u8; 4], len: u8) -> TrafficSelector {
    TrafficSelector::from_prefix(Address::V4(a), len).expect("a valid prefix")
}

/// Inbound ESP for two SAs (0x1001 without ESN, 0x1002 with), in batches
/// of up to 8 records: one verdict per packet, never a panic.
pub fn esp_decap(data: &[u8]) {
    let mut e = EspEngine::new();
    for (spi, esn) in [(0x1001, false), (0x1002, true)] {
        e.install_inbound(InboundSa {
            spi,
            key: KeyHandle(spi.into()),
            esn,
            replay_window: 64,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: vec![prefix([10, 2, 0, 0], 16)].into(),
            remote_ts: vec![prefix([10, 1, 0, 0], 16)].into(),
            limits: SaLimits { soft_bytes: 0, soft_packets: 0, hard_bytes: 0, hard_packets: 1000 },
        })
        .expect("the fuzz SAs are valid");
    }
    // An SA for IPv6 inner packets, fd00:1::/32 to fd00:2::/32, so that
    // IPv6 flows are delivered and the flow shortcut meets them too.
    let v6 = |net: u8| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0xfd, 0, 0, net]);
        TrafficSelector::from_prefix(Address::V6(a), 32).expect("a valid prefix")
    };
    e.install_inbound(InboundSa {
        spi: 0x1003,
        key: KeyHandle(0x1003),
        esn: false,
        replay_window: 64,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![v6(2)].into(),
        remote_ts: vec![v6(1)].into(),
        limits: SaLimits { soft_bytes: 0, soft_packets: 0, hard_bytes: 0, hard_packets: 1000 },
    })
    .expect("the fuzz SAs are valid");
    let packets = records(data);
    for chunk in packets.chunks(8) {
        let mut batch = ClearBatch { packets: chunk.iter().map(|p| p.to_vec()).collect() };
        let out = e.decap(&batch.heads(wasmsec_esp::ESP_HEAD_LEN), &mut batch);
        assert_eq!(out.lengths.len(), chunk.len(), "one length per packet");
        assert!(out.drops.windows(2).all(|w| w[0].packet < w[1].packet), "drops in order, each once");
        let verdicts = out.verdicts();
        for (v, p) in verdicts.iter().zip(&batch.packets) {
            if let DecapVerdict::Deliver(n) = v {
                assert!(*n as usize <= p.len(), "never more than the plaintext");
            }
        }
    }
    let _ = e.take_expiries();
}

/// Any text as a config file: an error or a config, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = wasmsec::config::Config::parse(text, "fuzz.toml");
    }
}
