//! The real ESP component under wasmtime with real keys (ring): what the
//! daemon runs, without sockets. Needs `cargo xtask build` first (the
//! README's test command does it); WASMSEC_COMPONENTS names the directory.
use std::sync::Arc;

use wasmsec::datapath::SaSet;
use wasmsec::keys::{EspAlgorithm, EspKey, KeyUse, Keystore};
use wasmsec::packet::PacketBuf;
use wasmsec::wasm::esp::{
    DecapVerdict, DropReason, EncapVerdict, EspInstance, ExpiryCause, InboundSa, Mark, OutboundSa, SaLimits,
    TrafficSelector,
};
use wasmsec::wasm::{EspMemory, Runtime};
use zeroize::Zeroizing;

fn runtime() -> Runtime {
    let dir = wasmsec::daemon::built_components_dir();
    Runtime::new(&dir.join("esp.wasm")).expect("ESP component (run `cargo xtask build` first)")
}

/// An outbound SA for peer 0 from the /24 at `local` to the /24 at `remote`.
fn outbound_sa(spi: u32, key: u64, local: [u8; 4], remote: [u8; 4]) -> OutboundSa {
    let net = |a: [u8; 4]| ts(a, [a[0], a[1], a[2], 255]);
    OutboundSa {
        spi,
        key,
        peer: 0,
        esn: false,
        next_seq: 1,
        pad_align: 4,
        local_ts: vec![net(local)],
        remote_ts: vec![net(remote)],
        limits: SaLimits::default(),
    }
}

/// Any protocol and port between two IPv4 addresses.
fn ts(a: [u8; 4], b: [u8; 4]) -> TrafficSelector {
    TrafficSelector::addresses(a.to_vec(), b.to_vec())
}

fn lan_a() -> TrafficSelector {
    ts([198, 18, 1, 0], [198, 18, 1, 255])
}

fn lan_b() -> TrafficSelector {
    ts([198, 18, 2, 0], [198, 18, 2, 255])
}

fn icmp(len: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; len];
    wasmsec_wire::ipv4::Repr { src_addr: src, dst_addr: dst, protocol: 1, payload_len: len - 20, ttl: 64, dscp_ecn: 0 }
        .emit(&mut p)
        .unwrap();
    p[20] = 8;
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// A sender and a receiver instance sharing one SA (SPI 0x2001), as a
/// tenant's (in memory slots).
fn pair(rt: &Runtime, alg: EspAlgorithm, esn: bool) -> (EspInstance, EspInstance, Arc<Keystore>) {
    pair_in(rt, alg, esn, EspMemory::Slot)
}

fn pair_in(rt: &Runtime, alg: EspAlgorithm, esn: bool, memory: EspMemory) -> (EspInstance, EspInstance, Arc<Keystore>) {
    let (out, inb, ks) = sa_sets(alg, esn);
    (out.instantiate(rt, 0, memory).unwrap(), inb.instantiate(rt, 0, memory).unwrap(), ks)
}

/// Live ESP instances, as the metrics count them.
fn esp_instances(rt: &Runtime) -> usize {
    rt.instances().iter().find(|(e, _)| *e == "esp").map_or(0, |(_, n)| *n)
}

/// The host-side SA records for `pair`, as the daemon keeps them.
fn sa_sets(alg: EspAlgorithm, esn: bool) -> (SaSet, SaSet, Arc<Keystore>) {
    let ks = Arc::new(Keystore::new());
    let keymat = vec![0x42u8; alg.keymat_len()];
    let h_out = ks.insert(EspKey::new(alg, Zeroizing::new(keymat.clone())).unwrap());
    let h_in = ks.insert(EspKey::new(alg, Zeroizing::new(keymat)).unwrap());
    let out = SaSet::new(
        ks.clone(),
        vec![OutboundSa {
            spi: 0x2001,
            key: h_out,
            peer: 3,
            esn,
            next_seq: 1,
            pad_align: alg.pad_align(),
            local_ts: vec![lan_a()],
            remote_ts: vec![lan_b()],
            limits: Default::default(),
        }],
        vec![],
    )
    .unwrap();
    let inb = SaSet::new(
        ks.clone(),
        vec![],
        vec![InboundSa {
            spi: 0x2001,
            key: h_in,
            esn,
            replay_window: 1024,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: vec![lan_b()],
            remote_ts: vec![lan_a()],
            limits: Default::default(),
        }],
    )
    .unwrap();
    (out, inb, ks)
}

fn load(inst: &mut EspInstance, packets: &[Vec<u8>]) {
    let st = inst.store.data_mut();
    st.batch = packets.iter().map(|p| PacketBuf::with_payload(p)).collect();
    st.count = packets.len();
}

fn take(inst: &EspInstance) -> Vec<Vec<u8>> {
    let st = inst.store.data();
    st.batch[..st.count].iter().map(|p| p.data().to_vec()).collect()
}

#[test]
fn round_trip_through_the_component_for_every_algorithm() {
    let rt = runtime();
    // Tenants' instances in memory slots, the daemon's own with guarded
    // memory: the same component, each instance counted while it lives.
    for memory in [EspMemory::Slot, EspMemory::Guarded] {
        round_trips(&rt, memory);
        assert_eq!(esp_instances(&rt), 0, "{memory:?}: every instance dropped is uncounted");
    }
}

fn round_trips(rt: &Runtime, memory: EspMemory) {
    for alg in EspAlgorithm::ALL {
        for esn in [false, true] {
            let (mut tx, mut rx, _ks) = pair_in(rt, alg, esn, memory);
            assert_eq!(esp_instances(rt), 2, "{memory:?}: both instances counted");
            let inner: Vec<Vec<u8>> = (0..40).map(|i| icmp(60 + i * 31, [198, 18, 1, 10], [198, 18, 2, 10])).collect();
            load(&mut tx, &inner);
            let v = tx.encap(tx.store.data().count).unwrap();
            assert!(v.iter().all(|v| matches!(v, EncapVerdict::Send(3))), "{alg:?}: {v:?}");
            let wire = take(&tx);
            for (w, i) in wire.iter().zip(&inner) {
                assert_eq!(&w[..4], &0x2001u32.to_be_bytes());
                assert!(
                    w.len() > i.len() + alg.headroom() + 2 && w.len() <= i.len() + alg.overhead(),
                    "ESP adds header, IV, trailer, ICV"
                );
                assert!(!w.windows(16).any(|x| x == &i[28..44]), "{alg:?}: payload visible on the wire");
            }
            load(&mut rx, &wire);
            let v = rx.decap(rx.store.data().count).unwrap();
            let out = take(&rx);
            for ((v, o), i) in v.iter().zip(&out).zip(&inner) {
                assert_eq!(*v, DecapVerdict::Deliver(i.len() as u32), "{alg:?} esn={esn}");
                assert_eq!(&o[..i.len()], &i[..]);
            }
        }
    }
}

#[test]
fn hostile_input_is_dropped_with_a_reason_and_never_traps() {
    let rt = runtime();
    let (mut tx, mut rx, _ks) = pair(&rt, EspAlgorithm::Aes256Gcm16, false);
    load(&mut tx, &[icmp(100, [198, 18, 1, 10], [198, 18, 2, 10])]);
    tx.encap(tx.store.data().count).unwrap();
    let good = take(&tx).remove(0);
    let mut bad_icv = good.clone();
    *bad_icv.last_mut().unwrap() ^= 0x80;
    let mut wrong_spi = good.clone();
    wrong_spi[0] ^= 0x10;
    let batch = vec![bad_icv, good[..30].to_vec(), good.clone(), good.clone(), wrong_spi, vec![]];
    load(&mut rx, &batch);
    let v = rx.decap(rx.store.data().count).unwrap();
    assert_eq!(
        v,
        [
            DecapVerdict::Drop(DropReason::IntegrityFailed),
            DecapVerdict::Drop(DropReason::Malformed),
            DecapVerdict::Deliver(100),
            DecapVerdict::Drop(DropReason::Replay),
            DecapVerdict::Drop(DropReason::UnknownSpi),
            DecapVerdict::Drop(DropReason::Malformed),
        ]
    );
    // The copy passed the guest's window (it commits after the open) and
    // the host refused to open it.
    assert_eq!(rx.store.data().replays_refused, 1);
    // A corpus of garbage: every packet gets a verdict, the guest survives.
    let mut seed = 0x1234_5678u32;
    let mut garbage = Vec::new();
    for n in 0..200usize {
        let mut p = vec![0u8; n * 7 % 1500];
        for b in p.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = seed as u8;
        }
        if n % 3 == 0 && p.len() >= 4 {
            p[..4].copy_from_slice(&0x2001u32.to_be_bytes()); // known SPI, random rest
        }
        garbage.push(p);
    }
    load(&mut rx, &garbage);
    let v = rx.decap(rx.store.data().count).unwrap();
    assert_eq!(v.len(), garbage.len());
    assert!(v.iter().all(|v| matches!(v, DecapVerdict::Drop(_))));
    load(&mut tx, &garbage);
    let v = tx.encap(tx.store.data().count).unwrap();
    assert!(v.iter().all(|v| matches!(v, EncapVerdict::Drop(_))), "garbage is not an inner IPv4 packet of LAN A");
}

/// The component keys its tables of peer-chosen values (outbound SAs by
/// SPI, the destination index by selector prefix) with the host's
/// randomness, drawn once as its engine is made: each instance its own.
#[test]
fn each_instance_keys_its_tables_with_the_hosts_randomness() {
    let rt = runtime();
    let (mut tx, mut rx, _ks) = pair(&rt, EspAlgorithm::Aes128Gcm16, false);
    load(&mut tx, &[icmp(64, [10, 0, 0, 1], [10, 0, 1, 1])]);
    tx.encap(tx.store.data().count).unwrap();
    load(&mut tx, &[icmp(64, [10, 0, 0, 1], [10, 0, 1, 1])]);
    tx.encap(tx.store.data().count).unwrap();
    load(&mut rx, &[icmp(64, [10, 0, 0, 1], [10, 0, 1, 1])]);
    rx.decap(rx.store.data().count).unwrap();
    assert_eq!((tx.store.data().random_drawn, rx.store.data().random_drawn), (16, 16));
}

#[test]
fn a_guest_cannot_use_a_key_it_was_not_granted() {
    let rt = runtime();
    let (mut tx, _rx, ks) = pair(&rt, EspAlgorithm::Aes128Gcm16, false);
    // A key that exists in the keystore but was never granted to `tx`.
    let other = ks.insert(EspKey::new(EspAlgorithm::Aes128Gcm16, Zeroizing::new(vec![1; 20])).unwrap());
    tx.install_outbound(&outbound_sa(0x3001, other, [10, 0, 0, 0], [10, 0, 1, 0])).unwrap().unwrap();
    load(&mut tx, &[icmp(64, [10, 0, 0, 1], [10, 0, 1, 1])]);
    assert_eq!(tx.encap(tx.store.data().count).unwrap(), [EncapVerdict::Drop(DropReason::CryptoRefused)]);
}

#[test]
fn a_restarted_instance_resumes_sequence_numbers_from_the_keystore() {
    let rt = runtime();
    let (out_set, in_set, _ks) = sa_sets(EspAlgorithm::Aes256Gcm16, false);
    let (mut tx, mut rx) =
        (out_set.instantiate(&rt, 0, EspMemory::Slot).unwrap(), in_set.instantiate(&rt, 0, EspMemory::Slot).unwrap());
    let pkt = icmp(80, [198, 18, 1, 10], [198, 18, 2, 10]);
    load(&mut tx, &vec![pkt.clone(); 5]);
    tx.encap(tx.store.data().count).unwrap();
    let mut first = take(&tx);
    // Number 3 is delayed behind 4 and 5 when the instances go.
    let delayed = first.remove(2);
    load(&mut rx, &first);
    assert!(rx.decap(rx.store.data().count).unwrap().iter().all(|v| matches!(v, DecapVerdict::Deliver(_))));
    assert_eq!(tx.sa_states().unwrap()[0].seq, 6);

    // Replace both instances from host state, as the daemon does after a trap.
    drop((tx, rx));
    let (mut tx, mut rx) =
        (out_set.instantiate(&rt, 0, EspMemory::Slot).unwrap(), in_set.instantiate(&rt, 0, EspMemory::Slot).unwrap());
    load(&mut tx, &[pkt]);
    tx.encap(tx.store.data().count).unwrap();
    let next = take(&tx);
    assert_eq!(&next[0][4..8], &6u32.to_be_bytes(), "sequence numbers continue after a restart");
    // The new receiver still refuses what the old one accepted, takes
    // the new packet, and the delayed one once: the keystore knows which
    // numbers up to the highest were authenticated.
    let mut batch = first.clone();
    batch.extend(next);
    batch.extend([delayed.clone(), delayed]);
    load(&mut rx, &batch);
    let v = rx.decap(rx.store.data().count).unwrap();
    assert!(v[..4].iter().all(|v| *v == DecapVerdict::Drop(DropReason::Replay)), "{v:?}");
    assert_eq!(v[4..], [DecapVerdict::Deliver(80), DecapVerdict::Deliver(80), DecapVerdict::Drop(DropReason::Replay)]);
    assert_eq!(rx.store.data().replays_refused, 1, "the delayed packet's copy, by the host");

    // A record whose key is gone is left out: the control thread destroys
    // an SA's keys when it deletes it, and the removal waits in the data
    // path's queue. Its packets find no SA, and no key is conjured up.
    let deleted =
        SaSet::new(Arc::new(Keystore::new()), out_set.outbound.values().map(|k| k.full()).collect(), vec![]).unwrap();
    let mut tx = deleted.instantiate(&rt, 0, EspMemory::Slot).unwrap();
    assert!(tx.sa_states().unwrap().is_empty(), "no SA without its key");
    load(&mut tx, &[icmp(80, [198, 18, 1, 10], [198, 18, 2, 10])]);
    assert_eq!(tx.encap(tx.store.data().count).unwrap(), [EncapVerdict::Drop(DropReason::NoPolicy)]);
}

#[test]
fn the_component_reports_volume_limits_and_sequence_numbers_running_out() {
    let rt = runtime();
    let (mut tx, _rx, ks) = pair(&rt, EspAlgorithm::Aes256Gcm16, false);
    let key = ks.insert(EspKey::new(EspAlgorithm::Aes256Gcm16, Zeroizing::new(vec![7; 36])).unwrap());
    tx.store.data_mut().keys.grant(
        key,
        ks.get(key).unwrap(),
        KeyUse::Seal { spi: 0x4001, wire_spi: 0x4001, peer: 0 },
        SaLimits::default(),
    );
    // Without ESN, 2^28 + 1 numbers before the end: the second packet asks for a rekey.
    let sa = OutboundSa {
        next_seq: u64::from(u32::MAX) - (1 << 28) - 1,
        limits: SaLimits { soft_bytes: 0, soft_packets: 0, hard_bytes: 250, hard_packets: 0 },
        ..outbound_sa(0x4001, key, [10, 9, 0, 0], [10, 9, 1, 0])
    };
    tx.install_outbound(&sa).unwrap().unwrap();
    let pkt = icmp(100, [10, 9, 0, 1], [10, 9, 1, 1]);
    load(&mut tx, std::slice::from_ref(&pkt));
    assert_eq!(tx.encap(tx.store.data().count).unwrap(), [EncapVerdict::Send(0)]);
    assert!(tx.take_expiries().unwrap().is_empty());
    load(&mut tx, std::slice::from_ref(&pkt));
    assert_eq!(tx.encap(tx.store.data().count).unwrap(), [EncapVerdict::Send(0)]);
    let x = tx.take_expiries().unwrap();
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].spi, x[0].outbound, x[0].hard, x[0].cause), (0x4001, true, false, ExpiryCause::Sequence));
    // The third packet passes 250 bytes: the hard limit; the fourth is refused.
    load(&mut tx, &[pkt.clone(), pkt]);
    assert_eq!(
        tx.encap(tx.store.data().count).unwrap(),
        [EncapVerdict::Send(0), EncapVerdict::Drop(DropReason::SaExpired)]
    );
    let x = tx.take_expiries().unwrap();
    assert_eq!((x.len(), x[0].hard, x[0].cause), (1, true, ExpiryCause::Bytes));
}

#[test]
fn the_host_refuses_keys_used_for_another_sa_or_direction_and_marks_what_it_did() {
    let rt = runtime();
    let (mut tx, _rx, ks) = pair(&rt, EspAlgorithm::Aes256Gcm16, false);
    let pkt = icmp(100, [10, 9, 0, 1], [10, 9, 1, 1]);
    let sa = |spi, key| outbound_sa(spi, key, [10, 9, 0, 0], [10, 9, 1, 0]);
    // An outbound SA whose key the host granted for opening only.
    let opener = ks.insert(EspKey::new(EspAlgorithm::Aes256Gcm16, Zeroizing::new(vec![7; 36])).unwrap());
    tx.store.data_mut().keys.grant(
        opener,
        ks.get(opener).unwrap(),
        KeyUse::Open { spi: 0x5001, replay_window: 1024 },
        SaLimits::default(),
    );
    tx.install_outbound(&sa(0x5001, opener)).unwrap().unwrap();
    load(&mut tx, std::slice::from_ref(&pkt));
    assert_eq!(tx.encap(1).unwrap(), [EncapVerdict::Drop(DropReason::CryptoRefused)]);
    assert_eq!(tx.store.data().refusals, 1);
    assert_eq!(tx.store.data().marks, [Mark::Untouched]);
    assert_eq!(tx.store.data().batch[0].data(), &pkt[..], "the packet is untouched");
    assert!(tx.remove_outbound(0x5001).unwrap());
    // A sealing key granted for SA 0x5002, used by the guest under SPI 0x5003.
    let sealer = ks.insert(EspKey::new(EspAlgorithm::Aes256Gcm16, Zeroizing::new(vec![8; 36])).unwrap());
    tx.store.data_mut().keys.grant(
        sealer,
        ks.get(sealer).unwrap(),
        KeyUse::Seal { spi: 0x5002, wire_spi: 0x5002, peer: 0 },
        SaLimits::default(),
    );
    tx.install_outbound(&sa(0x5003, sealer)).unwrap().unwrap();
    load(&mut tx, std::slice::from_ref(&pkt));
    assert_eq!(tx.encap(1).unwrap(), [EncapVerdict::Drop(DropReason::CryptoRefused)]);
    assert_eq!(tx.store.data().refusals, 1);
    assert!(tx.remove_outbound(0x5003).unwrap());
    // Granted for what it is used for: sealed, marked for its SA's peer.
    tx.install_outbound(&sa(0x5002, sealer)).unwrap().unwrap();
    load(&mut tx, std::slice::from_ref(&pkt));
    assert_eq!(tx.encap(1).unwrap(), [EncapVerdict::Send(0)]);
    assert_eq!(
        (tx.store.data().refusals, tx.store.data().marks.clone()),
        (0, vec![Mark::Sealed { peer: 0, spi: 0x5002 }])
    );
}

/// A batch that interleaves two SAs' packets, each SA with extended
/// sequence numbers crossing 2^32 within the batch: the guest hands the
/// host one run per SA and stretch of consecutive numbers, and the high
/// bits change inside a run.
#[test]
fn interleaved_sas_across_the_esn_boundary_in_one_batch() {
    let rt = runtime();
    let alg = EspAlgorithm::Aes256Gcm16;
    let ks = Arc::new(Keystore::new());
    let key = || ks.insert(EspKey::new(alg, Zeroizing::new(vec![0x42; alg.keymat_len()])).unwrap());
    let lan_c = ts([198, 18, 3, 0], [198, 18, 3, 255]);
    let start = (1u64 << 32) - 2;
    let (mut outs, mut ins) = (Vec::new(), Vec::new());
    for (spi, remote) in [(0x2001, lan_b()), (0x2002, lan_c.clone())] {
        outs.push(OutboundSa {
            spi,
            key: key(),
            peer: spi - 0x2000,
            esn: true,
            next_seq: start,
            pad_align: alg.pad_align(),
            local_ts: vec![lan_a()],
            remote_ts: vec![remote.clone()],
            limits: Default::default(),
        });
        ins.push(InboundSa {
            spi,
            key: key(),
            esn: true,
            replay_window: 64,
            highest_seq: start - 1,
            replay_missing: 0,
            local_ts: vec![remote],
            remote_ts: vec![lan_a()],
            limits: Default::default(),
        });
    }
    let mut tx = SaSet::new(ks.clone(), outs, vec![]).unwrap().instantiate(&rt, 0, EspMemory::Slot).unwrap();
    let mut rx = SaSet::new(ks.clone(), vec![], ins).unwrap().instantiate(&rt, 0, EspMemory::Slot).unwrap();
    let inner: Vec<Vec<u8>> =
        (0..8u8).map(|i| icmp(80 + usize::from(i), [198, 18, 1, 10], [198, 18, 2 + i % 2, 10])).collect();
    load(&mut tx, &inner);
    let v = tx.encap(inner.len()).unwrap();
    let want: Vec<EncapVerdict> = (0..8).map(|i| EncapVerdict::Send(1 + i % 2)).collect();
    assert_eq!(v, want);
    let wire = take(&tx);
    for (i, w) in wire.iter().enumerate() {
        let (spi, seq) =
            (u32::from_be_bytes(w[..4].try_into().unwrap()), u32::from_be_bytes(w[4..8].try_into().unwrap()));
        assert_eq!(spi, 0x2001 + (i as u32 % 2));
        assert_eq!(seq, (start + i as u64 / 2) as u32, "packet {i}: the low 32 bits on the wire");
    }
    load(&mut rx, &wire);
    let v = rx.decap(wire.len()).unwrap();
    let want: Vec<DecapVerdict> = inner.iter().map(|p| DecapVerdict::Deliver(p.len() as u32)).collect();
    assert_eq!(v, want, "the ICVs cover the high bits each packet's number has");
    for (o, i) in take(&rx).iter().zip(&inner) {
        assert_eq!(&o[..i.len()], &i[..]);
    }
}
