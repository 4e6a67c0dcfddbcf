//! NAT traversal (the move to port 4500, keepalives) and dead peer detection.
mod harness;

use harness::*;

#[test]
fn behind_a_nat_the_initiator_floats_to_4500_and_sends_keepalives() {
    let conf = Conf { nat: true, ..Default::default() };
    let (a, b) = connect(&conf, &conf, &mut all);
    assert_child_pair(&a, &b);
    let (ca, cb) = (&a.installed[0], &b.installed[0]);
    assert!(ca.encap && cb.encap, "ESP goes in UDP across the NAT");
    assert_eq!((ca.local.port, ca.remote.port), (4500, 4500), "IKE and ESP moved to 4500 (section 2.23)");
    assert_eq!(cb.remote, Endpoint { addr: NAT_IP, port: 4500 + NAT_PORT_SHIFT }, "B follows A's mapped address");
    assert!(b.log_has("peer is behind a NAT"), "{:?}", b.logs);
    // 120 s of virtual time at a 20 s interval: A (behind the NAT) keeps the mapping alive, B does not.
    assert!(a.keepalives >= 5, "{}", a.keepalives);
    assert_eq!(b.keepalives, 0);
    // Without a NAT there are no keepalives and no encapsulation.
    let (a, b) = connect(&Conf::default(), &Conf::default(), &mut all);
    assert_eq!((a.keepalives, b.keepalives), (0, 0));
    assert!(!a.installed[0].encap);
}

/// `encap = true` on one end only, either role: the other end sees a NAT
/// in front of it (its NAT_DETECTION_SOURCE_IP matches no address) and
/// puts its ESP in UDP too, as strongSwan's `encap = yes` makes its peer
/// do. Before, the forcing end sent ESP in UDP and got raw ESP back.
#[test]
fn forced_encapsulation_makes_the_peer_encapsulate_too() {
    for forced_initiator in [true, false] {
        let conf = Conf::default();
        let mut a = side(A, B, &conf);
        let mut b = side(B, A, &conf);
        let forcing = if forced_initiator { &mut a } else { &mut b };
        let (at, peer) = if forced_initiator { (A, B) } else { (B, A) };
        let mut cfg = connection(at, peer, &conf, forcing.psk);
        cfg.force_encap = true;
        forcing.engine = Engine::new(conf.timing);
        forcing.engine.add_connection(cfg).unwrap();
        a.engine.initiate(0, "site", &mut a.crypto).unwrap();
        run(&mut a, &mut b, 60_000, &mut all);
        assert_child_pair(&a, &b);
        let (ca, cb) = (&a.installed[0], &b.installed[0]);
        assert!(ca.encap && cb.encap, "forced by the initiator {forced_initiator}: {:?}\n{:?}", a.logs, b.logs);
        assert_eq!((ca.local.port, cb.local.port), (4500, 4500));
        // The responder says what it detected (the initiator does not log it).
        if forced_initiator {
            assert!(b.log_has("peer is behind a NAT"), "{:?}", b.logs);
        } else {
            assert!(!b.log_has("behind a NAT"), "no NAT is seen at the forcing end: {:?}", b.logs);
        }
    }
}

#[test]
fn dead_peer_detection_clears_or_restarts() {
    for action in [DpdAction::Clear, DpdAction::Restart] {
        let conf = Conf { dpd_ms: 10_000, dpd_action: action, ..Default::default() };
        let (mut a, mut b) = connect(&conf, &Conf::default(), &mut all);
        assert_child_pair(&a, &b);
        // While the peer answers, liveness checks keep the SA.
        run_from(&mut a, &mut b, 1, 35_000, &mut all);
        assert!(a.engine.stats().dpd_checks >= 2, "{:?}", a.engine.stats());
        assert_eq!(a.engine.established(), (1, 1));
        // Then B goes silent.
        let mut silent_b = |_: usize, d: &Datagram| d.local.addr != B;
        run_from(&mut a, &mut b, 35_000, 200_000, &mut silent_b);
        assert_eq!(a.engine.stats().dead_peers, 1, "{:?}", a.logs);
        assert_eq!(a.deleted, 1, "the CHILD SA is removed from the data plane");
        match action {
            DpdAction::Clear => assert_eq!(a.engine.ike_sa_count(), 0),
            DpdAction::Restart => assert!(a.log_has("re-initiating"), "{:?}", a.logs),
        }
    }
}
