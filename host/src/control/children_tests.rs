//! Tests of the control thread's record of IKE and CHILD SAs ([`super`]):
//! names, peers, forgetting, peer moves, and the removal of CHILD SAs kept
//! past their hard lifetimes.
use super::*;
use crate::datapath::channel::{Receiver, channel};

/// An empty record with the receiving ends of its channels to the data
/// path (outbound, inbound).
fn children() -> (Children, Receiver<SaCommand>, Receiver<SaCommand>) {
    let (out_tx, out_rx) = channel().unwrap();
    let (in_tx, in_rx) = channel().unwrap();
    (Children::new(out_tx, in_tx, Arc::new(Keystore::new())), out_rx, in_rx)
}

fn ike(spi: u64) -> IkeInfo {
    IkeInfo {
        connection: format!("c{spi}").into(),
        spi,
        proposal: "".into(),
        initiator: true,
        local: None,
        remote: None,
        remote_id: "".into(),
        nat_local: false,
        nat_remote: false,
        tenant: "".into(),
        load: 0,
    }
}

fn child(ike_spi: u64, inbound_spi: u32) -> ChildInfo {
    ChildInfo {
        connection: format!("c{ike_spi}").into(),
        child: "lan".into(),
        proposal: EspAlgorithm::Aes256Gcm16,
        ike_spi,
        inbound_spi,
        outbound_spi: inbound_spi + 0x1000,
        selectors: SaSelectors::of(&[], &[]).expect("no selectors"),
        peer: SocketAddr::from(([192, 0, 2, 1], 4500)),
        encap: true,
        traffic: Default::default(),
        keys: (0, 0),
        lineage: 0,
        due: 0,
    }
}

#[test]
fn an_ike_sa_keeps_names_once_and_shows_its_addresses_as_text() {
    let (mut c, _out_rx, _in_rx) = children();
    let up = |spi: u64, remote: [u8; 4]| IkeSaUp {
        connection: "pop".into(),
        ike_spi: spi,
        proposal: "aes256gcm16-prfsha256-x25519".into(),
        initiator: false,
        local: Endpoint { address: vec![198, 18, 0, 2], port: 4500 },
        remote: Endpoint { address: remote.to_vec(), port: 4500 },
        nat_local: false,
        nat_remote: true,
        rekeyed: false,
        remote_id: format!("gw{spi}.example"),
    };
    let v = serde_json::to_value(c.ike_up(up(1, [198, 19, 0, 1]), "t1", 1)).unwrap();
    assert_eq!((&v["local"], &v["remote"]), (&"198.18.0.2:4500".into(), &"198.19.0.1:4500".into()));
    assert_eq!((&v["connection"], &v["tenant"], &v["spi"]), (&"pop".into(), &"t1".into(), &"0000000000000001".into()));
    assert_eq!(v["remote_id"], "gw1.example");
    c.ike_up(up(2, [198, 19, 0, 2]), "t1", 1);
    let (a, b) = (&c.ike_sas[&1], &c.ike_sas[&2]);
    assert!(Arc::ptr_eq(&a.connection, &b.connection) && Arc::ptr_eq(&a.proposal, &b.proposal), "one copy");
    assert!(c.has_ike_peer(Ipv4Addr::new(198, 19, 0, 2)), "the peer counted from its address");
    // Up again under the same SPI (a guest's word): counted once.
    c.ike_up(up(2, [198, 19, 0, 2]), "t1", 1);
    assert_eq!(c.counts_of("pop"), (2, 0), "the connection's count for the admin view");
    c.ike_down(2);
    assert_eq!((c.counts_of("pop"), c.counts_of("other")), ((1, 0), (0, 0)));
    assert!(!c.has_ike_peer(Ipv4Addr::new(198, 19, 0, 2)) && c.has_ike_peer(Ipv4Addr::new(198, 19, 0, 1)));
    // An address the guest did not give as 4 or 16 bytes shows as "".
    let mut odd = up(3, [0; 4]);
    odd.remote.address = vec![1, 2, 3];
    assert_eq!(serde_json::to_value(c.ike_up(odd, "", 1)).unwrap()["remote"], "");
}

#[test]
fn forgetting_some_ike_sas_deletes_only_their_child_sas() {
    let (mut c, out_rx, in_rx) = children();
    for spi in [1, 2] {
        c.ike_sas.insert(spi, ike(spi));
    }
    // A CHILD SA of an IKE SA the view no longer has is kept.
    for (ike_spi, spi) in [(1, 0x10), (2, 0x20), (2, 0x21), (3, 0x30)] {
        c.insert_child(child(ike_spi, spi));
    }
    let (gone, n) = c.forget(0, 0, |spi| spi == 1);
    assert_eq!((gone.iter().map(|i| i.spi).collect::<Vec<_>>(), n), (vec![2], 2));
    // The admin view's counts follow: c1 keeps its IKE SA and CHILD
    // SA, c2 has none left, c3's CHILD SA stays.
    assert_eq!((c.counts_of("c1"), c.counts_of("c2"), c.counts_of("c3")), ((1, 1), (0, 0), (0, 1)));
    assert_eq!(c.ike_sas.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(c.installed().map(|c| c.inbound_spi).collect::<Vec<_>>(), [0x10, 0x30]);
    let removed = |cmds: Vec<SaCommand>| {
        let mut spis: Vec<u32> = cmds
            .into_iter()
            .filter_map(|m| match m {
                SaCommand::RemoveOutbound { spi, .. } | SaCommand::RemoveInbound { spi, .. } => Some(spi),
                _ => None,
            })
            .collect();
        spis.sort();
        spis
    };
    // Both halves by the inbound SPI: the outbound one's name.
    assert_eq!(removed(out_rx.take_queued()), [0x20, 0x21]);
    assert_eq!(removed(in_rx.take_queued()), [0x20, 0x21]);
    // The rest go with forget_all.
    let (gone, n) = c.forget_all(0, 0);
    assert_eq!((gone.len(), n, c.ike_sas.len()), (1, 2, 0));
    assert_eq!(c.counts_of("c1"), (0, 0));
}

#[test]
fn a_peer_move_goes_by_our_inbound_spi_and_spares_a_peer_that_chose_the_same_spi() {
    let (mut c, out_rx, _in_rx) = children();
    // Two peers chose the same SPI for the halves we send on.
    for (ike_spi, spi) in [(1, 0x10), (2, 0x20)] {
        c.insert_child(ChildInfo { outbound_spi: 0xc000_0001, lineage: ike_spi, ..child(ike_spi, spi) });
    }
    let mut ike = IkeState::new(wasmsec_crypto::Vault::new(), Arc::new(Keystore::new()));
    let to = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 7), 4501);
    ike.verified_at(1, SocketAddr::V4(to), Ipv4Addr::new(198, 18, 0, 2).into());
    // Peer 1 moved: only its SA follows (named twice, and with an SPI
    // nothing has), not peer 2's, which is not there.
    assert!(c.peer_moved(&[0x10, 0x10, 0x99], to, &ike));
    let moves: Vec<u32> = out_rx
        .take_queued()
        .into_iter()
        .filter_map(|m| match m {
            SaCommand::MovePeer { spi, to } => Some(spi).filter(|_| to.port() == 4501),
            _ => None,
        })
        .collect();
    assert_eq!(moves, [0x10]);
    assert_eq!((c.list.get(0x10).unwrap().peer, c.list.get(0x20).unwrap().peer.port()), (SocketAddr::V4(to), 4500));
    // Peer 2's SA may not go where peer 2 did not send from.
    assert!(!c.peer_moved(&[0x20], to, &ike));
    assert!(out_rx.take_queued().is_empty());
    assert_eq!(c.list.get(0x20).unwrap().peer.port(), 4500);
}

#[test]
fn a_child_sa_past_its_hard_lifetime_and_grace_is_removed() {
    let (mut c, out_rx, in_rx) = children();
    for (spi, due) in [(0x10, 5000), (0x20, 9000), (0x40, 6000)] {
        c.insert_child(ChildInfo { due, ..child(1, spi) });
    }
    // Due at 5 s, 9 s and 6 s; one gone without a Delete the host saw
    // (as for a forgotten IKE SA); one whose SPI now names an SA with
    // another key.
    for (when, spi, key) in [(5000, 0x10, 0), (9000, 0x20, 0), (6000, 0x40, 0), (4000, 0x30, 0), (4500, 0x20, 7)] {
        c.overdue.insert((when, spi, key));
    }
    // A Delete takes its SA's entry with it.
    let d = ChildDeleted {
        ike_spi: 1,
        inbound_spi: 0x40,
        outbound_spi: 0x1040,
        inbound_key: 0,
        outbound_key: 0,
        keep_inbound_ms: 0,
    };
    assert!(c.delete(d, 0));
    assert!(!c.overdue.iter().any(|o| o.1 == 0x40));
    out_rx.take_queued();
    in_rx.take_queued();
    assert_eq!(c.next_deadline(), Some(4000));
    assert!(c.end_overdue(4999).is_empty(), "nothing of its own is due yet");
    assert_eq!(c.next_deadline(), Some(5000));
    assert_eq!(c.end_overdue(5000), [("c1".to_string(), 0x10)]);
    assert_eq!(c.installed().map(|c| c.inbound_spi).collect::<Vec<_>>(), [0x20]);
    let spis = |cmds: Vec<SaCommand>| -> Vec<u32> {
        cmds.into_iter()
            .filter_map(|m| match m {
                SaCommand::RemoveOutbound { spi, .. } | SaCommand::RemoveInbound { spi, .. } => Some(spi),
                _ => None,
            })
            .collect()
    };
    assert_eq!(spis(out_rx.take_queued()), [0x10]);
    assert_eq!(spis(in_rx.take_queued()), [0x10], "at once, no linger");
    assert_eq!(c.end_overdue(9000).len(), 1);
    assert_eq!((c.installed().count(), c.next_deadline()), (0, None));
}

#[test]
fn a_child_sa_past_a_hard_byte_limit_is_removed_after_the_grace() {
    let (mut c, _out_rx, _in_rx) = children();
    c.overdue_grace_ms = 1000;
    // No lifetime by time (0), a lifetime due at 9 s, one due at 1.5 s.
    for (spi, due) in [(0x10, 0), (0x20, 9000), (0x30, 1500)] {
        c.insert_child(ChildInfo { due, ..child(1, spi) });
        if due > 0 {
            c.overdue.insert((due, spi, 0));
        }
    }
    for spi in [0x10, 0x20, 0x30, 0x99] {
        c.hard_expired(1000, spi);
    }
    // Each once, at the earlier of its own and now + grace; an SPI the
    // host did not install (a manual tunnel's) is not scheduled.
    let due: Vec<(u64, u32)> = c.overdue.iter().map(|o| (o.0, o.1)).collect();
    assert_eq!(due, [(1500, 0x30), (2000, 0x10), (2000, 0x20)]);
    c.hard_expired(1800, 0x10);
    assert_eq!(c.overdue.len(), 3, "a second report moves nothing later");
    assert!(c.end_overdue(1999).iter().all(|g| g.1 == 0x30));
    let mut gone: Vec<u32> = c.end_overdue(2000).into_iter().map(|g| g.1).collect();
    gone.sort_unstable();
    assert_eq!(gone, [0x10, 0x20]);
    assert_eq!(c.installed_count(), 0);
}

#[test]
fn an_ike_rekey_moves_its_own_child_sas_and_no_other() {
    let (mut c, _out_rx, _in_rx) = children();
    // IKE SA 1 has two CHILD SAs, 2 one; 0x10 is named twice (a guest's
    // word), once for each.
    for (ike_spi, spi) in [(1, 0x10), (1, 0x11), (2, 0x20)] {
        c.insert_child(child(ike_spi, spi));
    }
    c.insert_child(ChildInfo { outbound_spi: 0xc000_0001, ..child(2, 0x10) });
    let of = |c: &Children, ike_spi: u64| {
        let mut v: Vec<u32> = c.installed().filter(|x| x.ike_spi == ike_spi).map(|x| x.inbound_spi).collect();
        v.sort();
        v
    };
    let index = |c: &Children| {
        let mut v: Vec<(u64, u32)> = c.by_ike.iter().flat_map(|(&i, s)| s.iter().map(move |&s| (i, s))).collect();
        v.sort();
        v
    };
    c.moved(1, 3);
    assert_eq!((of(&c, 1), of(&c, 2), of(&c, 3)), (vec![], vec![0x10, 0x20], vec![0x10, 0x11]));
    // Moved again (the successor rekeyed), and one deleted on the way.
    c.delete(
        ChildDeleted {
            ike_spi: 3,
            inbound_spi: 0x11,
            outbound_spi: 0x1011,
            inbound_key: 0,
            outbound_key: 0,
            keep_inbound_ms: 0,
        },
        0,
    );
    c.moved(3, 4);
    assert_eq!((of(&c, 3), of(&c, 4), of(&c, 2)), (vec![], vec![0x10], vec![0x10, 0x20]));
    assert_eq!(index(&c), [(2, 0x10), (2, 0x20), (4, 0x10)]);
    // IKE SA 2's go with it; the index keeps nothing of them.
    for spi in [2, 4] {
        c.ike_sas.insert(spi, ike(spi));
    }
    let (_, n) = c.forget(0, 0, |spi| spi != 2);
    assert_eq!(n, 2);
    assert_eq!(index(&c), [(4, 0x10)]);
}
