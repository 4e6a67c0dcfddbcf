//! The engine against a fake host: a toy keyed transform stands in for the
//! AEAD so these tests check the engine's decisions (SA choice, sequence
//! numbers, replay, trailer, selectors), not crypto. Real crypto through
//! the real component is tested in the host crate.
use wasmsec_esp::*;
use wasmsec_wire::esp::HEADER_LEN;
use wasmsec_wire::ip::Address;
use wasmsec_wire::ipv4;

const IV_LEN: usize = 8;
const ICV_LEN: usize = 4;

/// Packets as plain vectors; "seal" XORs with the key byte and appends a
/// sum over header, esn-high and ciphertext as ICV.
struct FakeBatch {
    packets: Vec<Vec<u8>>,
    sealed_headers: Vec<([u8; 8], Option<u32>)>,
    /// The seal runs asked for: SPI, first sequence number, packets.
    seal_runs: Vec<(u32, u64, Vec<u32>)>,
    /// Packets the fake host refuses to seal.
    refuse: Vec<u32>,
    /// The fake host's open answer leaves out the last packet.
    short_answer: bool,
}

fn tag(key: u64, header: &[u8], esn_high: Option<u32>, ct: &[u8]) -> [u8; ICV_LEN] {
    let mut s: u32 = key as u32;
    for b in header.iter().chain(&esn_high.unwrap_or(0).to_be_bytes()).chain(ct) {
        s = s.rotate_left(5) ^ u32::from(*b);
    }
    s.to_be_bytes()
}

impl FakeBatch {
    /// Seal the batch's packet `index` as ESP with `spi` and `seq`.
    #[allow(clippy::too_many_arguments)]
    fn seal_one(&mut self, index: u32, key: u64, spi: u32, seq_low: u32, esn_high: Option<u32>, pad: u8, nh: u8) {
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&spi.to_be_bytes());
        header[4..].copy_from_slice(&seq_low.to_be_bytes());
        self.sealed_headers.push((header, esn_high));
        let p = &mut self.packets[index as usize];
        p.extend((1..=pad).chain([pad, nh]));
        p.iter_mut().for_each(|b| *b ^= key as u8);
        let mut out = header.to_vec();
        out.extend_from_slice(&[0u8; IV_LEN]);
        out.extend_from_slice(p);
        out.extend_from_slice(&tag(key, &header, esn_high, p));
        *p = out;
    }

    /// Open packet `index`: its plaintext length, Pad Length and Next Header.
    fn open_one(&mut self, index: u32, key: u64, esn_high: Option<u32>) -> Result<(u32, u8, u8), CryptoError> {
        let p = &mut self.packets[index as usize];
        if p.len() < HEADER_LEN + IV_LEN + ICV_LEN + 2 {
            return Err(CryptoError::BadLength);
        }
        let (body, icv) = p.split_at(p.len() - ICV_LEN);
        let ct = &body[HEADER_LEN + IV_LEN..];
        if tag(key, &body[..HEADER_LEN], esn_high, ct) != icv {
            return Err(CryptoError::IntegrityFailed);
        }
        let pt: Vec<u8> = ct.iter().map(|b| b ^ key as u8).collect();
        let n = pt.len();
        let opened = (n as u32, pt[n - 2], pt[n - 1]);
        *p = pt;
        Ok(opened)
    }
}

impl FakeBatch {
    /// The heads the host hands over with the batch.
    fn heads(&self, head_len: usize) -> Heads {
        Heads::of(head_len, self.packets.iter().map(Vec::as_slice))
    }
}

impl PacketBatch for FakeBatch {
    fn seal(&mut self, runs: SealRuns) -> Vec<OpFailure> {
        let mut failures = Vec::new();
        for (r, packets, pads, nhs) in runs.iter() {
            self.seal_runs.push((r.spi, r.first_seq, packets.to_vec()));
            for (k, &i) in packets.iter().enumerate() {
                if self.refuse.contains(&i) {
                    failures.push(OpFailure { packet: i, error: CryptoError::KeyExpired });
                    continue;
                }
                let seq = r.seq(k);
                self.seal_one(i, r.key.0, r.spi, seq as u32, r.esn_high(k), pads[k], nhs[k]);
            }
        }
        failures
    }
    fn open(&mut self, runs: OpenRuns) -> Opened {
        let mut o = Opened::default();
        for (r, packets, highs) in runs.iter() {
            for (k, &i) in packets.iter().enumerate() {
                let (_, pad, nh) = self.open_one(i, r.key.0, highs.get(k).copied()).unwrap_or_else(|error| {
                    o.failures.push(OpFailure { packet: i, error });
                    (0, 0, 0)
                });
                o.pad_lengths.push(pad);
                o.next_headers.push(nh);
            }
        }
        if self.short_answer {
            o.pad_lengths.pop();
        }
        o.heads = self.heads(IP_HEAD_LEN);
        o
    }
}

fn batch(packets: Vec<Vec<u8>>) -> FakeBatch {
    FakeBatch { packets, sealed_headers: Vec::new(), seal_runs: Vec::new(), refuse: Vec::new(), short_answer: false }
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload_len];
    ipv4::Repr { src_addr: src, dst_addr: dst, protocol: 1, payload_len, ttl: 64, dscp_ecn: 0 }.emit(&mut p).unwrap();
    p[20] = 8; // ICMP echo request
    p
}

fn prefix(a: [u8; 4], len: u8) -> TrafficSelector {
    TrafficSelector::from_prefix(Address::V4(a), len).unwrap()
}

const LAN_A: [u8; 4] = [198, 18, 1, 0];
const LAN_B: [u8; 4] = [198, 18, 2, 0];
const HOST_A: [u8; 4] = [198, 18, 1, 10];
const HOST_B: [u8; 4] = [198, 18, 2, 10];

/// One SA from engine A (LAN_A) to engine B (LAN_B).
struct PairSpec {
    spi: u32,
    key: u64,
    esn: bool,
    next_seq: u64,
    window: u32,
    limits: SaLimits,
}

fn install_pair(a: &mut Engine, b: &mut Engine, p: PairSpec) {
    a.install_outbound(OutboundSa {
        spi: p.spi,
        key: KeyHandle(p.key),
        peer: 7,
        esn: p.esn,
        next_seq: p.next_seq,
        pad_align: 4,
        local_ts: vec![prefix(LAN_A, 24)].into(),
        remote_ts: vec![prefix(LAN_B, 24)].into(),
        limits: p.limits,
    })
    .unwrap();
    b.install_inbound(InboundSa {
        spi: p.spi,
        key: KeyHandle(p.key),
        esn: p.esn,
        replay_window: p.window,
        highest_seq: p.next_seq - 1,
        replay_missing: 0,
        local_ts: vec![prefix(LAN_B, 24)].into(),
        remote_ts: vec![prefix(LAN_A, 24)].into(),
        limits: p.limits,
    })
    .unwrap();
}

/// Engine A sends with SPI 0x1001 to engine B.
fn pair(esn: bool, next_seq: u64, window: u32) -> (Engine, Engine) {
    let (mut a, mut b) = (Engine::new(), Engine::new());
    let spec = PairSpec { spi: 0x1001, key: 0x5a, esn, next_seq, window, limits: SaLimits::default() };
    install_pair(&mut a, &mut b, spec);
    (a, b)
}

fn encap(e: &mut Engine, packets: Vec<Vec<u8>>) -> (FakeBatch, Vec<EncapVerdict>) {
    let mut b = batch(packets);
    let v = e.encap(&b.heads(IP_HEAD_LEN), &mut b).verdicts();
    (b, v)
}

fn decap(e: &mut Engine, packets: Vec<Vec<u8>>) -> (FakeBatch, Vec<DecapVerdict>) {
    let mut b = batch(packets);
    let v = e.decap(&b.heads(ESP_HEAD_LEN), &mut b).verdicts();
    (b, v)
}

#[test]
fn round_trip_assigns_increasing_sequence_numbers() {
    let (mut a, mut b) = pair(false, 1, 1024);
    let inner: Vec<Vec<u8>> = (0..5).map(|n| ipv4_packet(HOST_A, HOST_B, 8 + n)).collect();
    let (sealed, v) = encap(&mut a, inner.clone());
    assert!(v.iter().all(|v| *v == EncapVerdict::Send(7)));
    let seqs: Vec<u32> =
        sealed.sealed_headers.iter().map(|(h, _)| u32::from_be_bytes(h[4..8].try_into().unwrap())).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(sealed.sealed_headers.iter().all(|(h, e)| h[..4] == 0x1001u32.to_be_bytes() && e.is_none()));
    let (opened, v) = decap(&mut b, sealed.packets);
    for (i, (v, p)) in v.iter().zip(&opened.packets).enumerate() {
        assert_eq!(*v, DecapVerdict::Deliver(inner[i].len() as u32));
        assert_eq!(&p[..inner[i].len()], &inner[i][..]);
    }
    let st = b.sa_states();
    assert_eq!((st[0].packets, st[0].seq), (5, 5));
}

#[test]
fn no_policy_and_malformed_outbound() {
    let (mut a, _) = pair(false, 1, 64);
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_B, HOST_A, 8), vec![0x45, 0, 0], vec![], vec![0x70; 40]]);
    assert_eq!(
        v,
        [
            EncapVerdict::Drop(DropReason::NoPolicy),
            EncapVerdict::Drop(DropReason::Malformed),
            EncapVerdict::Drop(DropReason::Malformed),
            EncapVerdict::Drop(DropReason::Malformed)
        ]
    );
}

#[test]
fn replay_wrong_spi_bad_icv_and_truncation_are_dropped() {
    let (mut a, mut b) = pair(false, 1, 64);
    let (sealed, _) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    let good = sealed.packets[0].clone();
    let mut wrong_spi = good.clone();
    wrong_spi[3] ^= 0xff;
    let mut bad_icv = good.clone();
    *bad_icv.last_mut().unwrap() ^= 1;
    let (_, v) = decap(
        &mut b,
        vec![bad_icv, good[..20].to_vec(), good.clone(), good.clone(), wrong_spi, good[..7].to_vec(), vec![]],
    );
    assert_eq!(
        v,
        [
            DecapVerdict::Drop(DropReason::IntegrityFailed),
            DecapVerdict::Drop(DropReason::Malformed),
            DecapVerdict::Deliver(28),
            DecapVerdict::Drop(DropReason::Replay),
            DecapVerdict::Drop(DropReason::UnknownSpi),
            DecapVerdict::Drop(DropReason::Malformed),
            DecapVerdict::Drop(DropReason::Malformed),
        ]
    );
}

#[test]
fn failed_icv_does_not_advance_the_window() {
    let (mut a, mut b) = pair(false, 1, 64);
    let (sealed, _) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    // A forged packet with a huge sequence number must not move the window.
    let mut forged = sealed.packets[0].clone();
    forged[4..8].copy_from_slice(&1_000_000u32.to_be_bytes());
    let (_, v) = decap(&mut b, vec![forged, sealed.packets[0].clone()]);
    assert_eq!(v, [DecapVerdict::Drop(DropReason::IntegrityFailed), DecapVerdict::Deliver(28)]);
}

#[test]
fn inner_packet_outside_selectors_is_dropped() {
    // B's SA accepts only LAN_A -> LAN_B; A sends with a wider outbound SA.
    let mut a = Engine::new();
    a.install_outbound(OutboundSa {
        spi: 0x1001,
        key: KeyHandle(0x5a),
        peer: 1,
        esn: false,
        next_seq: 1,
        pad_align: 4,
        local_ts: vec![TrafficSelector::any_v4()].into(),
        remote_ts: vec![TrafficSelector::any_v4()].into(),
        limits: Default::default(),
    })
    .unwrap();
    let (_, mut b) = pair(false, 1, 64);
    let (sealed, _) = encap(&mut a, vec![ipv4_packet([10, 9, 9, 9], HOST_B, 8), ipv4_packet(HOST_A, HOST_B, 8)]);
    let (_, v) = decap(&mut b, sealed.packets);
    assert_eq!(v, [DecapVerdict::Drop(DropReason::SelectorMismatch), DecapVerdict::Deliver(28)]);
    // A flow that matched once (the engine remembers it) lets no other
    // flow through after it, in one batch or the next.
    let outside = || ipv4_packet([10, 9, 9, 9], HOST_B, 8);
    let (sealed, _) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8), outside(), ipv4_packet(HOST_A, HOST_B, 8)]);
    let (_, v) = decap(&mut b, sealed.packets);
    let mismatch = DecapVerdict::Drop(DropReason::SelectorMismatch);
    assert_eq!(v, [DecapVerdict::Deliver(28), mismatch, DecapVerdict::Deliver(28)]);
    let (sealed, _) = encap(&mut a, vec![outside()]);
    assert_eq!(decap(&mut b, sealed.packets).1, [mismatch]);
    // The SPI comes back with other selectors: what matched before is
    // checked again.
    let (sealed, _) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(decap(&mut b, sealed.packets.clone()).1, [DecapVerdict::Deliver(28)]);
    assert!(b.remove_inbound(0x1001));
    b.install_inbound(InboundSa {
        spi: 0x1001,
        key: KeyHandle(0x5a),
        esn: false,
        replay_window: 64,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![prefix(LAN_B, 24)].into(),
        remote_ts: vec![prefix([10, 9, 9, 9], 32)].into(),
        limits: Default::default(),
    })
    .unwrap();
    let (sealed, _) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8), outside()]);
    assert_eq!(decap(&mut b, sealed.packets).1, [mismatch, DecapVerdict::Deliver(28)]);
}

#[test]
fn esn_rollover_carries_high_bits() {
    let start = 0xffff_fffe;
    let (mut a, mut b) = pair(true, start, 1024);
    let (sealed, v) = encap(&mut a, (0..4).map(|_| ipv4_packet(HOST_A, HOST_B, 8)).collect());
    assert!(v.iter().all(|v| matches!(v, EncapVerdict::Send(_))));
    let highs: Vec<Option<u32>> = sealed.sealed_headers.iter().map(|(_, e)| *e).collect();
    assert_eq!(highs, [Some(0), Some(0), Some(1), Some(1)]);
    let (_, v) = decap(&mut b, sealed.packets.clone());
    assert!(v.iter().all(|v| *v == DecapVerdict::Deliver(28)), "{v:?}");
    assert_eq!(b.sa_states()[0].seq, (1 << 32) | 1);
    // Replaying the pre-wrap packets is caught in the old subspace.
    let (_, v) = decap(&mut b, sealed.packets[..2].to_vec());
    assert!(v.iter().all(|v| *v == DecapVerdict::Drop(DropReason::Replay)));
}

#[test]
fn sequence_exhaustion_without_esn() {
    let (mut a, _) = pair(false, u64::from(u32::MAX), 64);
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8), ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(7), EncapVerdict::Drop(DropReason::SeqExhausted)]);
}

#[test]
fn tfc_padding_and_dummy_packets() {
    let (mut a, mut b) = pair(false, 1, 64);
    // An inner packet followed by 12 bytes of TFC padding delivers the inner length.
    let mut padded = ipv4_packet(HOST_A, HOST_B, 8);
    padded.extend_from_slice(&[0u8; 12]);
    let (sealed, _) = encap(&mut a, vec![padded]);
    let (_, v) = decap(&mut b, sealed.packets);
    assert_eq!(v, [DecapVerdict::Deliver(28)]);
    // A packet of the flow just sent or delivered (which skips parsing) is
    // still held to its own lengths: one claiming less than its header is
    // not sent, one claiming more than it carries not delivered.
    let (mut long, mut short) = (ipv4_packet(HOST_A, HOST_B, 8), ipv4_packet(HOST_A, HOST_B, 8));
    long[2..4].copy_from_slice(&200u16.to_be_bytes());
    short[2..4].copy_from_slice(&19u16.to_be_bytes());
    let good = || ipv4_packet(HOST_A, HOST_B, 8);
    let (sealed, v) = encap(&mut a, vec![good(), short, good(), long, good()]);
    let (send, malformed) = (EncapVerdict::Send(7), EncapVerdict::Drop(DropReason::Malformed));
    assert_eq!(v, [send, malformed, send, send, send]);
    let sent = sealed.packets.into_iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, p)| p).collect();
    let (_, v) = decap(&mut b, sent);
    let (deliver, malformed) = (DecapVerdict::Deliver(28), DecapVerdict::Drop(DropReason::Malformed));
    assert_eq!(v, [deliver, deliver, malformed, deliver]);
    // Next Header 59 is a dummy: authenticated, then dropped and counted.
    let (mut sealed, _) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    let p = &mut sealed.packets[0];
    let n = p.len();
    // Rewrite the plaintext next header under the toy cipher and fix the tag.
    p[n - ICV_LEN - 1] = 59 ^ 0x5a;
    let t = tag(0x5a, &p[..8], None, &p[16..n - ICV_LEN]);
    p[n - ICV_LEN..].copy_from_slice(&t);
    let (_, v) = decap(&mut b, sealed.packets);
    assert_eq!(v, [DecapVerdict::Drop(DropReason::Dummy)]);
}

#[test]
fn install_validation() {
    let mut e = Engine::new();
    let good = InboundSa {
        spi: 0x100,
        key: KeyHandle(1),
        esn: false,
        replay_window: 64,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![prefix(LAN_B, 24)].into(),
        remote_ts: vec![prefix(LAN_A, 24)].into(),
        limits: Default::default(),
    };
    assert_eq!(e.install_inbound(InboundSa { spi: 255, ..good.clone() }), Err(SaError::ReservedSpi(255)));
    assert_eq!(e.install_inbound(InboundSa { local_ts: vec![].into(), ..good.clone() }), Err(SaError::NoSelectors));
    assert_eq!(e.install_inbound(good.clone()), Ok(()));
    assert_eq!(e.install_inbound(good.clone()), Err(SaError::DuplicateSpi(0x100)));
    // The host's prefetch hints: the SA, and its window of 64 packets
    // (two words: one more than the window needs).
    let state = e.inbound_state(0x100);
    assert_eq!(state.len(), 2);
    assert_eq!(state[1].1, 16);
    assert!(e.inbound_state(0x101).is_empty());
    assert!(e.remove_inbound(0x100));
    assert!(!e.remove_inbound(0x100));
    assert!(e.inbound_state(0x100).is_empty());
    e.install_inbound(InboundSa { replay_window: 0, ..good }).unwrap();
    assert_eq!(e.inbound_state(0x100).len(), 1, "no window, no bits");
}

#[test]
fn the_newest_outbound_sa_for_the_same_selectors_wins() {
    let (mut a, _) = pair(false, 1, 64);
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(7)]);
    a.install_outbound(OutboundSa {
        spi: 0x2002,
        key: KeyHandle(0x33),
        peer: 8,
        esn: false,
        next_seq: 1,
        pad_align: 4,
        local_ts: vec![prefix(LAN_A, 24)].into(),
        remote_ts: vec![prefix(LAN_B, 24)].into(),
        limits: Default::default(),
    })
    .unwrap();
    let (sealed, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(8)], "the rekeyed SA carries traffic at once");
    assert_eq!(&sealed.sealed_headers[0].0[..4], &0x2002u32.to_be_bytes());
    assert!(a.remove_outbound(0x1001));
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(8)]);
    // A newer one again (peer 7); with it gone, 0x2002 carries the
    // traffic again.
    let spec = PairSpec { spi: 0x3003, key: 1, esn: false, next_seq: 1, window: 0, limits: SaLimits::default() };
    install_pair(&mut a, &mut Engine::new(), spec);
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(7)]);
    assert!(a.remove_outbound(0x3003));
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(8)]);
}

/// `pair` and a second SA (0x2002) with volume limits on both halves.
fn limited_pair(esn: bool, next_seq: u64, limits: SaLimits) -> (Engine, Engine) {
    let (mut a, mut b) = pair(esn, next_seq, 1024);
    install_pair(&mut a, &mut b, PairSpec { spi: 0x2002, key: 0x33, esn, next_seq, window: 1024, limits });
    (a, b)
}

#[test]
fn volume_limits_report_soft_then_hard_once_and_stop_the_sa() {
    // 28-byte packets: soft at 10 packets, hard at 300 bytes (the 11th packet).
    let limits = SaLimits { soft_bytes: 0, soft_packets: 10, hard_bytes: 300, hard_packets: 0 };
    let (mut a, mut b) = limited_pair(false, 1, limits);
    let mut delivered = 0;
    let mut expiries = Vec::new();
    for round in 0..4 {
        let (sealed, v) = encap(&mut a, (0..4).map(|_| ipv4_packet(HOST_A, HOST_B, 8)).collect());
        let sent: Vec<Vec<u8>> =
            sealed.packets.into_iter().zip(&v).filter(|(_, v)| **v == EncapVerdict::Send(7)).map(|x| x.0).collect();
        let (_, dv) = decap(&mut b, sent);
        delivered += dv.iter().filter(|v| matches!(v, DecapVerdict::Deliver(_))).count();
        expiries.extend(a.take_expiries().into_iter().map(|x| (round, x)));
        expiries.extend(b.take_expiries().into_iter().map(|x| (round, x)));
        if round == 3 {
            // Hard: the outbound SA refuses traffic instead of sending it.
            assert!(v.iter().all(|v| *v == EncapVerdict::Drop(DropReason::SaExpired)), "{v:?}");
        }
    }
    assert_eq!(delivered, 11, "the 11th packet reaches the hard byte limit; nothing after it is sent");
    let kinds: Vec<(usize, bool, bool, ExpiryCause)> =
        expiries.iter().map(|(r, x)| (*r, x.outbound, x.hard, x.cause)).collect();
    assert_eq!(
        kinds,
        [
            (2, true, false, ExpiryCause::Packets),
            (2, true, true, ExpiryCause::Bytes),
            (2, false, false, ExpiryCause::Packets),
            (2, false, true, ExpiryCause::Bytes),
        ]
    );
    assert!(expiries.iter().all(|(_, x)| x.spi == 0x2002));
    // The inbound SA past its hard limit drops even authentic packets.
    let (mut a2, _) = limited_pair(false, 100, SaLimits::default());
    let (sealed, _) = encap(&mut a2, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    let (_, v) = decap(&mut b, sealed.packets);
    assert_eq!(v, [DecapVerdict::Drop(DropReason::SaExpired)]);
    assert!(a.take_expiries().is_empty() && b.take_expiries().is_empty(), "each expiry is reported once");
}

#[test]
fn an_inbound_sa_delivers_nothing_past_its_hard_limit_within_one_batch() {
    // The sender has no limit; the receiver's SA carries 3 packets.
    let (mut a, _) = limited_pair(false, 1, SaLimits::default());
    let (_, mut b) = limited_pair(false, 1, SaLimits { hard_packets: 3, ..SaLimits::default() });
    let (sealed, _) = encap(&mut a, (0..6).map(|_| ipv4_packet(HOST_A, HOST_B, 8)).collect());
    let (_, v) = decap(&mut b, sealed.packets);
    let delivered = v.iter().filter(|v| matches!(v, DecapVerdict::Deliver(_))).count();
    assert_eq!(delivered, 3, "{v:?}");
    assert!(v[3..].iter().all(|v| *v == DecapVerdict::Drop(DropReason::SaExpired)), "{v:?}");
    let x = b.take_expiries();
    assert_eq!(x.iter().map(|x| (x.outbound, x.hard)).collect::<Vec<_>>(), [(false, true)]);
}

#[test]
fn sequence_space_asks_for_a_rekey_before_it_runs_out() {
    // Without ESN: soft expiry SEQ_SOFT_MARGIN packets before 2^32, hard at 2^32.
    let end = u64::from(u32::MAX);
    let (mut a, _) = limited_pair(false, end - SEQ_SOFT_MARGIN - 1, SaLimits::default());
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(7)]);
    assert!(a.take_expiries().is_empty());
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(7)]);
    let x = a.take_expiries();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].spi, x[0].outbound, x[0].hard, x[0].cause), (0x2002, true, false, ExpiryCause::Sequence));
    // The last numbers are still used, then the SA stops and says so once.
    let (mut a, _) = limited_pair(false, end - 1, SaLimits::default());
    let (sealed, v) = encap(&mut a, (0..4).map(|_| ipv4_packet(HOST_A, HOST_B, 8)).collect());
    assert_eq!(&v[..2], [EncapVerdict::Send(7), EncapVerdict::Send(7)]);
    assert_eq!(&v[2..], [EncapVerdict::Drop(DropReason::SeqExhausted), EncapVerdict::Drop(DropReason::SaExpired)]);
    let last = u32::from_be_bytes(sealed.sealed_headers[1].0[4..8].try_into().unwrap());
    assert_eq!(last, u32::MAX, "no wrap to 0");
    let x = a.take_expiries();
    let kinds: Vec<(bool, ExpiryCause)> = x.iter().map(|x| (x.hard, x.cause)).collect();
    assert_eq!(kinds, [(false, ExpiryCause::Sequence), (true, ExpiryCause::Sequence)]);
    // With ESN the margin is 2^32 packets before 2^64.
    let (mut a, _) = limited_pair(true, u64::MAX - SEQ_SOFT_MARGIN_ESN, SaLimits::default());
    let (_, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8)]);
    assert_eq!(v, [EncapVerdict::Send(7)]);
    assert_eq!(
        a.take_expiries().iter().map(|x| (x.hard, x.cause)).collect::<Vec<_>>(),
        [(false, ExpiryCause::Sequence)]
    );
}

fn outbound_to(spi: u32, peer: u32, remote: TrafficSelector) -> OutboundSa {
    OutboundSa {
        spi,
        key: KeyHandle(0x44),
        peer,
        esn: false,
        next_seq: 1,
        pad_align: 4,
        local_ts: vec![prefix(LAN_A, 24)].into(),
        remote_ts: vec![remote].into(),
        limits: Default::default(),
    }
}

/// Thousands of SAs, each to its own subnet (the PoP's case, #16): every
/// packet takes its subnet's SA, removed SAs' slots are reused, and where
/// SAs overlap the newest still wins.
#[test]
fn many_sas_each_packet_finds_its_own() {
    let mut a = Engine::new();
    let subnet = |i: u32| [10, (i >> 8) as u8, i as u8, 0];
    let host = |i: u32| [10, (i >> 8) as u8, i as u8, 9];
    for i in 0..2000 {
        a.install_outbound(outbound_to(0x1_0000 + i, i, prefix(subnet(i), 24))).unwrap();
    }
    let all = |a: &mut Engine| encap(a, (0..2000).map(|i| ipv4_packet(HOST_A, host(i), 8)).collect()).1;
    assert!(all(&mut a).iter().enumerate().all(|(i, v)| *v == EncapVerdict::Send(i as u32)));
    for i in (0..2000).step_by(2) {
        assert!(a.remove_outbound(0x1_0000 + i));
    }
    assert!(!a.remove_outbound(0x1_0000), "already gone");
    let v = all(&mut a);
    for (i, v) in v.iter().enumerate() {
        let want = if i % 2 == 0 { EncapVerdict::Drop(DropReason::NoPolicy) } else { EncapVerdict::Send(i as u32) };
        assert_eq!(*v, want, "packet to subnet {i}");
    }
    // A range over 10.0.0.0 - 10.3.255.255 (installed last, so it wins
    // where it overlaps), then the even subnets back in free slots.
    let range =
        TrafficSelector { start: Address::V4([10, 0, 0, 0]), end: Address::V4([10, 3, 255, 255]), ..prefix(LAN_B, 24) };
    a.install_outbound(outbound_to(0x9999, 9999, range)).unwrap();
    let v = all(&mut a);
    assert!(v[..1024].iter().all(|v| *v == EncapVerdict::Send(9999)));
    assert!(v[1024..].iter().enumerate().all(|(k, v)| {
        let i = 1024 + k as u32;
        *v == if i.is_multiple_of(2) { EncapVerdict::Drop(DropReason::NoPolicy) } else { EncapVerdict::Send(i) }
    }));
    for i in (0..2000).step_by(2) {
        a.install_outbound(outbound_to(0x2_0000 + i, 20_000 + i, prefix(subnet(i), 24))).unwrap();
    }
    let v = all(&mut a);
    for (i, v) in v.iter().enumerate().map(|(i, v)| (i as u32, v)) {
        let want = match (i % 2, i < 1024) {
            (0, _) => 20_000 + i,
            (_, true) => 9999,
            _ => i,
        };
        assert_eq!(*v, EncapVerdict::Send(want), "packet to subnet {i}");
    }
}

/// Thousands of SAs with one destination (peers that each negotiated the
/// same remote subnet): the newest SA whose full selectors match wins,
/// also when a newer one in the same index bucket does not match, and
/// SAs leave from the middle and from the end.
#[test]
fn thousands_of_sas_for_one_destination_newest_match_wins() {
    let mut a = Engine::new();
    for i in 0..3000 {
        a.install_outbound(outbound_to(0x1_0000 + i, i, prefix(LAN_B, 24))).unwrap();
    }
    // The newest of all carries only TCP: ICMP takes the one before it.
    let tcp_only = TrafficSelector { protocol: 6, ..prefix(LAN_B, 24) };
    a.install_outbound(outbound_to(0x9999, 9999, tcp_only)).unwrap();
    let send = |a: &mut Engine| encap(a, vec![ipv4_packet(HOST_A, HOST_B, 8)]).1;
    assert_eq!(send(&mut a), [EncapVerdict::Send(2999)]);
    for i in (1000..2000).chain([2999, 2998]) {
        assert!(a.remove_outbound(0x1_0000 + i));
    }
    assert_eq!(send(&mut a), [EncapVerdict::Send(2997)]);
    for i in (0..1000).chain(2000..2998) {
        assert!(a.remove_outbound(0x1_0000 + i));
    }
    assert_eq!(send(&mut a), [EncapVerdict::Drop(DropReason::NoPolicy)], "only the TCP one is left");
}

/// The engine hands the host runs: one per stretch of one SA's packets,
/// with the sequence numbers following on. A packet the host does not
/// seal is dropped, and the drops stay in packet order.
#[test]
fn seal_runs_follow_the_sas_and_refusals_are_drops() {
    let (mut a, _) = pair(false, 1, 64);
    let lan_c = [198, 18, 3, 0];
    a.install_outbound(OutboundSa {
        spi: 0x2002,
        key: KeyHandle(0x33),
        peer: 9,
        esn: false,
        next_seq: 100,
        pad_align: 4,
        local_ts: vec![prefix(LAN_A, 24)].into(),
        remote_ts: vec![prefix(lan_c, 24)].into(),
        limits: Default::default(),
    })
    .unwrap();
    let (b, c) = (ipv4_packet(HOST_A, HOST_B, 8), ipv4_packet(HOST_A, [198, 18, 3, 10], 8));
    let packets = vec![b.clone(), b.clone(), c.clone(), b.clone(), c.clone(), c, vec![0x45, 0, 0]];
    let mut fake = batch(packets);
    fake.refuse = vec![3];
    let out = a.encap(&fake.heads(IP_HEAD_LEN), &mut fake);
    assert_eq!(
        fake.seal_runs,
        [(0x1001, 1, vec![0, 1]), (0x2002, 100, vec![2]), (0x1001, 3, vec![3]), (0x2002, 101, vec![4, 5])]
    );
    assert_eq!(out.peers, [7, 7, 9, 0, 9, 9, 0]);
    assert_eq!(
        out.drops,
        [
            Dropped { packet: 3, reason: DropReason::CryptoRefused },
            Dropped { packet: 6, reason: DropReason::Malformed }
        ]
    );
}

/// A packet the host leaves out of its open answer is not delivered.
#[test]
fn a_packet_missing_from_the_open_answer_is_dropped() {
    let (mut a, mut b) = pair(false, 1, 64);
    let (sealed, v) = encap(&mut a, vec![ipv4_packet(HOST_A, HOST_B, 8); 3]);
    assert!(v.iter().all(|v| *v == EncapVerdict::Send(7)));
    let mut fake = batch(sealed.packets);
    fake.short_answer = true;
    let out = b.decap(&fake.heads(ESP_HEAD_LEN), &mut fake);
    assert_eq!(out.lengths, [28, 28, 0]);
    assert_eq!(out.drops, [Dropped { packet: 2, reason: DropReason::CryptoRefused }]);
}

/// An IPv6 UDP packet from `fd00:1::<src>` to `fd00:2::<dst>` with
/// `payload_len` bytes after the fixed header.
fn ipv6_packet(src: u8, dst: u8, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..10].copy_from_slice(&[0xfd, 0]);
    p[10..12].copy_from_slice(&[0, 1]);
    p[23] = src;
    p[24..26].copy_from_slice(&[0xfd, 0]);
    p[26..28].copy_from_slice(&[0, 2]);
    p[39] = dst;
    p[40..44].copy_from_slice(&[0x13, 0x88, 0x00, 0x35]);
    p
}

fn prefix6(net: u8, len: u8) -> TrafficSelector {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0xfd, 0, 0, net]);
    TrafficSelector::from_prefix(Address::V6(a), len).unwrap()
}

#[test]
fn ipv6_flows_are_held_to_their_selectors_and_lengths() {
    // fd00:1::/64 -> fd00:2::/120 (hosts up to ::ff), and a packet of a flow
    // just sent or delivered (which skips parsing) is still checked.
    let (mut a, mut b) = (Engine::new(), Engine::new());
    let (local, remote) = (prefix6(1, 64), prefix6(2, 120));
    let limits = SaLimits::default();
    a.install_outbound(OutboundSa {
        spi: 0x6001,
        key: KeyHandle(0x5a),
        peer: 6,
        esn: false,
        next_seq: 1,
        pad_align: 4,
        local_ts: vec![local.clone()].into(),
        remote_ts: vec![TrafficSelector::from_prefix(Address::V6([0; 16]), 0).unwrap()].into(),
        limits,
    })
    .unwrap();
    let inbound = |remote_ts: TrafficSelector| InboundSa {
        spi: 0x6001,
        key: KeyHandle(0x5a),
        esn: false,
        replay_window: 64,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![remote.clone()].into(),
        remote_ts: vec![remote_ts].into(),
        limits,
    };
    b.install_inbound(inbound(local.clone())).unwrap();
    let good = || ipv6_packet(1, 9, 16);
    // One claiming more than it carries, inside the flow.
    let mut long = good();
    long[4..6].copy_from_slice(&400u16.to_be_bytes());
    // Within the flow's addresses but another destination port.
    let mut port = good();
    port[43] = 0x36;
    let (sealed, v) = encap(&mut a, vec![good(), good(), long, good(), port, good()]);
    assert!(v.iter().all(|v| *v == EncapVerdict::Send(6)), "{v:?}");
    let (_, v) = decap(&mut b, sealed.packets);
    let (deliver, malformed) = (DecapVerdict::Deliver(56), DecapVerdict::Drop(DropReason::Malformed));
    assert_eq!(v, [deliver, deliver, malformed, deliver, deliver, deliver]);
    // A destination outside B's /120 right after a delivered flow is
    // parsed and refused, and the flow goes on after it.
    let outside = ipv6_packet(1, 9, 16).iter().copied().enumerate().map(|(i, x)| if i == 38 { 1 } else { x }).collect();
    let (sealed, _) = encap(&mut a, vec![good(), outside, good()]);
    let (_, v) = decap(&mut b, sealed.packets);
    assert_eq!(v, [deliver, DecapVerdict::Drop(DropReason::SelectorMismatch), deliver]);
    // So is another source, for an SA whose remote side is one host.
    assert!(b.remove_inbound(0x6001));
    let mut one = [0u8; 16];
    one[..4].copy_from_slice(&[0xfd, 0, 0, 1]);
    one[15] = 1;
    b.install_inbound(inbound(TrafficSelector::from_prefix(Address::V6(one), 128).unwrap())).unwrap();
    let (sealed, _) = encap(&mut a, vec![good(), ipv6_packet(2, 9, 16), good()]);
    let (_, v) = decap(&mut b, sealed.packets);
    assert_eq!(v, [deliver, DecapVerdict::Drop(DropReason::SelectorMismatch), deliver]);
}
