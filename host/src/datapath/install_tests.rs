//! A guest whose memory is full refuses an SA (reported up, so IKE deletes
//! its CHILD SA); one that traps while an SA is installed (here: the real
//! ESP component, handed more selectors than its memory holds) is replaced
//! at once from the group's recorded SAs, without waiting for traffic to
//! find it broken.

use zeroize::Zeroizing;

use std::sync::atomic::Ordering;

use super::*;
use crate::keys::{EspAlgorithm, EspKey};
use crate::wasm::esp::{EncapVerdict, Mark, SaLimits, TrafficSelector};

pub(super) fn test_loop(rt: Arc<Runtime>, ks: Arc<Keystore>) -> Loop {
    let group = group::Group::new(&rt, 0, 0, SaSet::new(ks, vec![], vec![]).expect("empty")).expect("group 0");
    Loop {
        runtime: rt,
        groups: Groups { list: vec![group], ..Default::default() },
        tuns: Vec::new(),
        udp: UdpSocket::bind("127.0.0.1:0").expect("loopback socket"),
        raw: None,
        link: None,
        peers: Peers::new(Vec::new()),
        stats: Arc::new(Stats::default()),
        batch: 64,
        inbox: None,
        up: None,
        to_outbound: None,
        floats: HashMap::new(),
        sources: Vec::new(),
        staging: Loop::staging_for(64),
        from_domain: Vec::new(),
        inner_tos: vec![0; 64],
        copy: super::tos::BySa::new(super::tos::Copy::default()),
        traffic: HashMap::new(),
        cutter: Default::default(),
        gso: Default::default(),
        raw_out: Vec::new(),
        gro: Default::default(),
        hold: Default::default(),
        tun_out: Default::default(),
        raw_first: false,
    }
}

/// A loop with the real ESP component, its keystore, the sender of its
/// inbox and the receiver of what it reports up.
pub(super) fn wired_loop() -> (Loop, Arc<Keystore>, Sender<SaCommand>, Receiver<Report>) {
    let dir = crate::daemon::built_components_dir();
    let rt = Arc::new(Runtime::new(&dir.join("esp.wasm")).expect("ESP component (cargo xtask build)"));
    let ks = Arc::new(Keystore::new());
    let mut l = test_loop(rt, ks.clone());
    let (to_loop, inbox) = channel::channel().expect("inbox");
    let (up, reports) = channel::channel().expect("up");
    l.inbox = Some(inbox);
    l.up = Some(up);
    (l, ks, to_loop, reports)
}

#[test]
fn a_full_guest_refuses_and_one_that_traps_installing_is_replaced_at_once() {
    let dir = crate::daemon::built_components_dir();
    let rt = Arc::new(Runtime::new(&dir.join("esp.wasm")).expect("ESP component (cargo xtask build)"));
    let ks = Arc::new(Keystore::new());
    let mut l = test_loop(rt, ks.clone());
    let alg = EspAlgorithm::Aes256Gcm16;
    let ts = |a: u32| TrafficSelector::addresses(a.to_be_bytes().to_vec(), (a | 0xff).to_be_bytes().to_vec());
    let sa = |spi: u32, selectors: u32| {
        let mut k = vec![1u8; alg.keymat_len()];
        k[..4].copy_from_slice(&spi.to_be_bytes());
        let key = ks.insert(EspKey::new(alg, Zeroizing::new(k)).expect("key"));
        InboundSa {
            spi,
            key,
            esn: false,
            replay_window: 1024,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: vec![ts(0xc612_0100)],
            remote_ts: (0..selectors).map(|k| ts(0x0a00_0000 + (k << 8))).collect(),
            limits: Default::default(),
        }
    };
    // Inbound SAs of 500 selectors each until the guest's memory is full
    // (some 6,000 of them): it must refuse, not trap (a trap replaces the
    // instance and reinstalls every SA, and repeated, suspends the group).
    let mut installed = 0u32;
    let err = loop {
        assert!(installed < 100_000, "the guest's memory never ran out");
        match l.install(0, None, Kept::of_full(sa(0x1000 + installed, 500))) {
            Ok(Installed::Yes) => installed += 1,
            Ok(Installed::Gone) => panic!("its key is there"),
            Err(e) => break e,
        }
    };
    assert!(format!("{err:#}").contains("no room for another SA"), "{err:#}");
    assert_eq!(l.stats.guest_restarts.load(Ordering::Relaxed), 0, "refused, not trapped");
    assert_eq!(l.groups.list[0].sas.inbound.values().count(), installed as usize);

    // Selector lists larger than the headroom are copied into the guest
    // before it can check anything: that allocation traps. The instance is
    // replaced at once with the group's recorded SAs, which this one has
    // not joined.
    let err = l.install(0, None, Kept::of_full(sa(0x9000_0000, 20_000))).expect_err("no room for 20,000 selectors");
    assert!(format!("{err:#}").contains("trapped"), "{err:#}");
    assert_eq!(l.stats.guest_restarts.load(Ordering::Relaxed), 1);
    let group = &mut l.groups.list[0];
    assert_eq!(group.sas.inbound.values().count(), installed as usize, "the SA that trapped is not recorded");
    assert!(group.suspended_until.is_none(), "the first replacement is immediate");
    // The replacement answers (a call that allocates nothing: it holds
    // every SA recorded before, so it is as full as before).
    let inst = group.inst.as_mut().expect("an instance");
    assert!(inst.take_expiries().expect("the replacement answers").is_empty());
    // With the last 20 SAs gone, it takes a new one and lists them all.
    for spi in 0x1000 + installed - 20..0x1000 + installed {
        let key = l.groups.list[0].sas.inbound.get(spi).expect("recorded").sa.key;
        let (gone, r) =
            l.remove(spi, key, Direction::Inbound, |sas| &mut sas.inbound, |k| k.sa.key, EspInstance::remove_inbound);
        assert!(gone.len() == 1 && r.is_ok(), "SA {spi:#x} removed: {r:?}");
    }
    let mut one = sa(0x9999_0000, 1);
    one.remote_ts = vec![ts(0x0b00_0000)];
    l.install(0, None, Kept::of_full(one)).expect("installed in the replacement");
    let inst = l.groups.list[0].inst.as_mut().expect("an instance");
    assert_eq!(inst.sa_states().expect("states").len(), installed as usize - 19);
    assert_eq!(l.stats.guest_restarts.load(Ordering::Relaxed), 1, "no further replacement");
}

/// An inbound SA for 10.0.0.0/24 both ways, with a key of `fill` bytes in
/// `ks`, as the command that installs it in `group`; and its key.
pub(super) fn add_inbound(ks: &Keystore, spi: u32, fill: u8, group: usize) -> (u64, SaCommand) {
    let alg = EspAlgorithm::Aes256Gcm16;
    let ts = TrafficSelector::addresses(vec![10, 0, 0, 0], vec![10, 0, 0, 255]);
    let key = ks.insert(EspKey::new(alg, Zeroizing::new(vec![fill; alg.keymat_len()])).expect("key"));
    let sa = InboundSa {
        spi,
        key,
        esn: false,
        replay_window: 64,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![ts.clone()],
        remote_ts: vec![ts],
        limits: Default::default(),
    };
    (
        key,
        SaCommand::AddInbound {
            sa: Kept::of_full(sa).expect("selectors"),
            peer: None,
            group,
            traffic: Default::default(),
        },
    )
}

#[test]
fn an_sa_the_guest_refuses_is_reported_up_and_its_key_revoked() {
    // Without the report, IKE would keep the CHILD SA up while the data
    // path had nothing for it: its traffic silently black-holed.
    let (mut l, ks, to_loop, reports) = wired_loop();
    let add = |spi, fill| add_inbound(&ks, spi, fill, 0);
    let (_, first) = add(0x2000, 1);
    assert!(to_loop.send(first));
    l.apply_commands(true);
    assert!(reports.drain().is_empty(), "the first SA is installed");
    // An SPI of the range RFC 4303 section 2.1 reserves: the ESP engine
    // refuses it.
    let (key, again) = add(0x80, 2);
    assert!(to_loop.send(again));
    l.apply_commands(true);
    let got = reports.drain();
    match got.as_slice() {
        [Report::NotInstalled { spi: 0x80, error }] => {
            assert!(error.contains("inbound SA 0x00000080 refused by the guest"), "{error}")
        }
        other => panic!("expected one NotInstalled report, got {other:?}"),
    }
    assert_eq!(l.stats.sa_install_failures.load(Ordering::Relaxed), 1);
    assert_eq!(l.stats.guest_restarts.load(Ordering::Relaxed), 0, "a refusal is not a trap");
    let inst = l.groups.list[0].inst.as_mut().expect("the instance stays, with its first SA");
    assert!(inst.store.data_mut().keys.get(key).is_err(), "the refused SA's key is not left granted");
    assert_eq!(inst.sa_states().expect("states").len(), 1);
}

#[test]
fn an_sa_deleted_before_its_install_came_is_no_failure() {
    // Installs wait quietly for the data-path thread to wake; a CHILD SA
    // may be set up and deleted (its keys destroyed) within that. Its
    // install then finds no key: that is not an SA the data path failed
    // to carry, so IKE must not be told to delete it again.
    let (mut l, ks, to_loop, reports) = wired_loop();
    let alg = EspAlgorithm::Aes256Gcm16;
    let ts = TrafficSelector::addresses(vec![10, 0, 0, 0], vec![10, 0, 0, 255]);
    let key = ks.insert(EspKey::new(alg, Zeroizing::new(vec![3; alg.keymat_len()])).expect("key"));
    let sa = OutboundSa {
        spi: 0x3000,
        key,
        peer: 0,
        esn: false,
        next_seq: 1,
        pad_align: alg.pad_align(),
        local_ts: vec![ts.clone()],
        remote_ts: vec![ts],
        limits: Default::default(),
    };
    let peer = Peer {
        address: std::net::Ipv4Addr::new(192, 0, 2, 1),
        port: 4500,
        encapsulation: crate::config::Encapsulation::Udp,
        source: std::net::Ipv4Addr::UNSPECIFIED,
    };
    assert!(to_loop.send(SaCommand::AddOutbound {
        sa: Kept::of_full(sa).expect("selectors"),
        peer,
        group: 0,
        traffic: Default::default()
    }));
    assert!(to_loop.send(SaCommand::RemoveOutbound { spi: 0x3000, key }));
    assert!(ks.remove(key), "the control thread destroys the key at the delete");
    l.apply_commands(true);
    assert!(reports.drain().is_empty(), "nothing reported up");
    assert_eq!(l.stats.sa_install_failures.load(Ordering::Relaxed), 0);
    assert_eq!(l.peers.in_use(), 0, "the peer's entry is released");
    assert!(l.groups.by_spi.is_empty(), "no SA left indexed");
}

#[test]
fn an_spi_another_group_holds_is_refused_and_its_sa_keeps_its_packets() {
    // Each group's guest refuses a duplicate of its own; across groups (a
    // tenant's and the daemon's own domain, or a manual tunnel's) only the
    // host can: without the check, the new SA took the SPI's routing and
    // its removal left the first one without any.
    let (mut l, ks, to_loop, reports) = wired_loop();
    let other =
        group::Group::new(&l.runtime, 0, 1, SaSet::new(ks.clone(), vec![], vec![]).expect("empty")).expect("group 1");
    l.groups.list.push(other);
    let add = |group, fill| add_inbound(&ks, 0x4000, fill, group);
    let (first, add_first) = add(0, 1);
    assert!(to_loop.send(add_first));
    l.apply_commands(true);
    assert!(reports.drain().is_empty(), "the first SA is installed");
    let (refused, add_second) = add(1, 2);
    assert!(to_loop.send(add_second));
    l.apply_commands(true);
    match reports.drain().as_slice() {
        [Report::NotInstalled { spi: 0x4000, error }] => assert!(error.contains("already in use"), "{error}"),
        other => panic!("expected one NotInstalled report, got {other:?}"),
    }
    assert_eq!(l.groups.by_spi.get(&0x4000), Some(&0), "the SPI's packets still go to the first SA's group");
    assert!(l.groups.list[1].inst.is_none(), "the other group got no instance for the refused SA");
    // IKE deletes the refused CHILD SA: its removal, under its own key,
    // leaves the first SA in place.
    assert!(to_loop.send(SaCommand::RemoveInbound { spi: 0x4000, key: refused }));
    l.apply_commands(true);
    assert_eq!(l.groups.by_spi.get(&0x4000), Some(&0), "still routed");
    assert_eq!(l.groups.list[0].sas.inbound.get(0x4000).map(|k| k.sa.key), Some(first), "still recorded");
    let inst = l.groups.list[0].inst.as_mut().expect("the first group's instance");
    assert_eq!(inst.sa_states().expect("states").len(), 1, "still in the guest");
    // Its own removal takes it.
    assert!(to_loop.send(SaCommand::RemoveInbound { spi: 0x4000, key: first }));
    l.apply_commands(true);
    assert!(!l.groups.by_spi.contains_key(&0x4000));
}

#[test]
fn outbound_sas_whose_peers_chose_one_spi_both_send_under_it() {
    // Two peers may choose the same SPI for the halves we send on (each
    // picks its own inbound SPIs). Named by our inbound SPI, both install
    // in one group, each seals under the peer's SPI, and each goes alone.
    let (mut l, ks, to_loop, reports) = wired_loop();
    const WIRE: u32 = 0xc000_0001;
    let mut keys = Vec::new();
    for (name, net, fill) in [(0x5001, 1, 4), (0x5002, 2, 5)] {
        let (key, command) = add_outbound(&ks, (name, WIRE), net, fill, Default::default());
        assert!(to_loop.send(command));
        keys.push(key);
    }
    l.apply_commands(true);
    assert!(reports.drain().is_empty(), "both installed");
    assert_eq!((l.groups.by_spi.get(&0x5001), l.groups.by_spi.get(&0x5002)), (Some(&0), Some(&0)));

    // One packet to each peer's network: each sealed under the peer's SPI,
    // by the SA the host named.
    let packet = udp_to_net;
    let inst = l.groups.list[0].inst.as_mut().expect("the group's instance");
    inst.store.data_mut().batch = vec![packet(1), packet(2)];
    let verdicts = inst.encap(2).expect("no trap");
    assert!(verdicts.iter().all(|v| matches!(v, EncapVerdict::Send(_))), "{verdicts:?}");
    let st = inst.store.data();
    for (i, name) in [(0, 0x5001), (1, 0x5002)] {
        assert_eq!(st.batch[i].data()[..4], WIRE.to_be_bytes(), "packet {i} carries the peer's SPI");
        assert!(matches!(st.marks[i], Mark::Sealed { spi, .. } if spi == name), "{:?}", st.marks[i]);
    }

    // Removing one, by its name and key, leaves the other sending.
    assert!(to_loop.send(SaCommand::RemoveOutbound { spi: 0x5001, key: keys[0] }));
    l.apply_commands(true);
    assert!(reports.drain().is_empty());
    assert_eq!((l.groups.by_spi.get(&0x5001), l.groups.by_spi.get(&0x5002)), (None, Some(&0)));
    let inst = l.groups.list[0].inst.as_mut().expect("the group's instance");
    inst.store.data_mut().batch = vec![packet(1), packet(2)];
    let verdicts = inst.encap(2).expect("no trap");
    assert!(matches!(verdicts[..], [EncapVerdict::Drop(_), EncapVerdict::Send(_)]), "{verdicts:?}");
}

#[test]
fn an_sa_sends_with_its_childs_outer_header_until_it_goes() {
    // The daemon copies DSCP out (the default); one SA's child says "in"
    // and no ECN, another's nothing. A third SA, refused for an SPI the
    // first holds, must not take the first's over.
    let (mut l, ks, to_loop, reports) = wired_loop();
    let own = tos::Override { dscp: Some(crate::config::CopyDscp::In), ecn: Some(false) };
    let (k1, first) = add_outbound(&ks, (0x6001, 0xc000_0101), 1, 4, Default::default());
    let (_, second) = add_outbound(&ks, (0x6002, 0xc000_0102), 2, 5, Default::default());
    let (_, same_name) = add_outbound(&ks, (0x6001, 0xc000_0103), 3, 6, Default::default());
    let with_own = |c: SaCommand| match c {
        SaCommand::AddOutbound { sa, peer, group, traffic } => {
            SaCommand::AddOutbound { sa: sa.with_tos(own), peer, group, traffic }
        }
        other => other,
    };
    assert!(to_loop.send(with_own(first)));
    assert!(to_loop.send(second));
    l.apply_commands(true);
    assert!(reports.drain().is_empty(), "both installed");
    let daemon = tos::Copy::default();
    let child = tos::Copy { dscp_out: false, dscp_in: true, ecn_out: false };
    assert_eq!((l.copy.of(0x6001), l.copy.of(0x6002)), (child, daemon));
    // EF with ECT(0) inside: 0 outside for the first SA, all of it for the other.
    assert_eq!((tos::outer(0xba, l.copy.of(0x6001)), tos::outer(0xba, l.copy.of(0x6002))), (0, 0xba));

    assert!(to_loop.send(same_name));
    l.apply_commands(true);
    assert_eq!(reports.drain().len(), 1, "the duplicate is refused and reported");
    assert_eq!(l.copy.of(0x6001), child, "the installed SA keeps its child's");

    assert!(to_loop.send(SaCommand::RemoveOutbound { spi: 0x6001, key: k1 }));
    l.apply_commands(true);
    assert_eq!(l.copy.of(0x6001), daemon, "gone with its SA");
}

/// An outbound AES-GCM SA named `name`, sealing under `wire`, from
/// 10.0.0.0/24 to 10.0.`net`.0/24 for peer 192.0.2.`net`, with a key of
/// `fill` bytes in `ks`, as the command that installs it in group 0; and
/// its key.
pub(super) fn add_outbound(
    ks: &Keystore,
    (name, wire): (u32, u32),
    net: u8,
    fill: u8,
    limits: SaLimits,
) -> (u64, SaCommand) {
    let alg = EspAlgorithm::Aes256Gcm16;
    let local = TrafficSelector::addresses(vec![10, 0, 0, 0], vec![10, 0, 0, 255]);
    let remote = TrafficSelector::addresses(vec![10, 0, net, 0], vec![10, 0, net, 255]);
    let key = ks.insert(EspKey::new(alg, Zeroizing::new(vec![fill; alg.keymat_len()])).expect("key"));
    let sa = OutboundSa {
        spi: name,
        key,
        peer: 0,
        esn: false,
        next_seq: 1,
        pad_align: alg.pad_align(),
        local_ts: vec![local.clone()],
        remote_ts: vec![remote.clone()],
        limits,
    };
    let selectors = crate::wasm::selectors::SaSelectors::of(&[local], &[remote]).expect("selectors");
    let peer = Peer {
        address: std::net::Ipv4Addr::new(192, 0, 2, net),
        port: 4500,
        encapsulation: crate::config::Encapsulation::Udp,
        source: std::net::Ipv4Addr::UNSPECIFIED,
    };
    let sa = Kept::outbound(sa, wire, selectors);
    (key, SaCommand::AddOutbound { sa, peer, group: 0, traffic: Default::default() })
}

/// A 60-byte UDP packet from 10.0.0.7 to 10.0.`net`.9.
pub(super) fn udp_to_net(net: u8) -> PacketBuf {
    let mut p = PacketBuf::new();
    let repr = wasmsec_wire::ipv4::Repr {
        src_addr: [10, 0, 0, 7],
        dst_addr: [10, 0, net, 9],
        protocol: 17,
        payload_len: 40,
        ttl: 64,
        dscp_ecn: 0,
    };
    repr.emit(&mut p.recv_area()[..60]).expect("IPv4 header");
    p.set_received(60);
    p
}
