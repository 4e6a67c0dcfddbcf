//! IKE_SA_INIT and IKE_AUTH with every algorithm, retransmission, the response cache, refusals with their notifies, several CHILD SAs, DELETE, a silent peer, and a corpus of malformed input.
mod harness;

use harness::*;

#[test]
fn every_algorithm_combination_establishes() {
    let encrs = ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes256-sha384", "aes256-sha512"];
    let prfs = ["prfsha256", "prfsha384", "prfsha512"];
    let dhs = ["x25519", "ecp256", "ecp384", "modp2048"];
    let esps = ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes256-sha512"];
    let mut n = 0;
    for e in encrs {
        for p in prfs {
            for d in dhs {
                let ike = format!("{e}-{p}-{d}");
                let esp = esps[n % esps.len()];
                n += 1;
                let conf = Conf { ike: &ike, esp, ..Default::default() };
                let (a, b) = connect(&conf, &conf, &mut all);
                assert_eq!((a.up, b.up), (1, 1), "{ike}: {:?} {:?}", a.logs, b.logs);
                assert_child_pair(&a, &b);
                assert_eq!(a.engine.established(), (1, 1));
                assert_eq!(b.engine.established(), (1, 1));
            }
        }
    }
    assert_eq!(n, 72);
}

#[test]
fn lost_requests_are_retransmitted() {
    // Drop the first IKE_SA_INIT and the first IKE_AUTH request.
    let mut keep = |n: usize, _: &Datagram| n != 0 && n != 3;
    let (a, b) = connect(&Conf::default(), &Conf::default(), &mut keep);
    assert_eq!((a.up, b.up), (1, 1));
    assert_child_pair(&a, &b);
    assert_eq!(a.engine.stats().retransmits, 2);
}

#[test]
fn lost_responses_are_replayed_from_cache() {
    // Drop the IKE_SA_INIT response and the IKE_AUTH response: the
    // initiator retransmits, the responder answers from its cache and does
    // not process anything twice.
    let mut keep = |n: usize, _: &Datagram| n != 1 && n != 5;
    let (a, b) = connect(&Conf::default(), &Conf::default(), &mut keep);
    assert_eq!((a.up, b.up), (1, 1), "{:?} {:?}", a.logs, b.logs);
    assert_child_pair(&a, &b);
    assert_eq!(b.engine.stats().replayed_responses, 2);
    assert_eq!(b.engine.ike_sa_count(), 1);
}

#[test]
fn duplicated_messages_change_nothing() {
    let mut a = side(A, B, &Conf::default());
    let mut b = side(B, A, &Conf::default());
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    a.drain();
    let init = a.outbox.remove(0);
    b.deliver(0, init.clone());
    b.deliver(0, init.clone());
    assert_eq!(b.outbox.len(), 2);
    assert_eq!(b.outbox[0].data, b.outbox[1].data, "same response twice");
    assert_eq!(b.engine.ike_sa_count(), 1);
    assert_eq!(b.engine.ike_sa_states(), [("site".to_string(), wasmsec_ike::SaPhase::HalfOpen, 1)]);
    assert_eq!(a.engine.ike_sa_states(), [("site".to_string(), wasmsec_ike::SaPhase::Connecting, 1)]);
    let resp = b.outbox.remove(0);
    b.outbox.clear();
    a.deliver(0, resp.clone());
    a.deliver(0, resp); // a duplicate response is ignored
    assert_eq!(a.outbox.len(), 1);
    let auth = a.outbox.remove(0);
    b.deliver(0, auth.clone());
    b.deliver(0, auth);
    assert_eq!(b.installed.len(), 1);
    assert_eq!(b.outbox.len(), 2);
    assert_eq!(b.engine.stats().replayed_responses, 2);
    assert_eq!(b.engine.ike_sa_states(), [("site".to_string(), wasmsec_ike::SaPhase::Established, 1)]);
}

#[test]
fn wrong_psk_gives_authentication_failed() {
    let (a, b) = connect(&Conf::default(), &Conf { psk: "another-psk", ..Default::default() }, &mut all);
    assert_eq!((a.up, b.up), (0, 0));
    assert!(a.installed.is_empty() && b.installed.is_empty());
    assert_eq!(b.engine.stats().auth_failed, 1);
    assert_eq!(a.engine.stats().auth_failed, 1);
    assert!(a.log_has("AUTHENTICATION_FAILED"), "{:?}", a.logs);
    assert!(b.log_has("wrong pre-shared key"), "{:?}", b.logs);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0));
    assert!(a.crypto.vault.len() <= 1 && b.crypto.vault.len() <= 1, "only the PSKs remain");
}

#[test]
fn negotiation_counters_are_kept_by_connection() {
    let (mut a, mut b) = connect(&Conf::default(), &Conf { psk: "another-psk", ..Default::default() }, &mut all);
    let changed = b.engine.poll_connection_stats();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].0, "site");
    assert_eq!((changed[0].1.handshakes_started, changed[0].1.auth_failed), (1, 1));
    assert!(b.engine.poll_connection_stats().is_empty(), "nothing changed since");
    assert_eq!(a.engine.connection_stats("site").unwrap().auth_failed, 1);
    // Removed and added again by a reload: the counters go on, not back.
    let cfg = connection(A, B, &Conf::default(), a.psk);
    a.engine.remove_connection(0, "site", &mut a.crypto).unwrap();
    a.engine.add_connection(cfg).unwrap();
    assert_eq!(a.engine.connection_stats("site").unwrap().auth_failed, 1);
    assert!(b.engine.connection_stats("elsewhere").is_err());
}

#[test]
fn the_policy_refuses_an_authenticated_peer() {
    let mut a = side(A, B, &Conf::default());
    let mut b = side(B, A, &Conf::default());
    let asked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = asked.clone();
    b.crypto.policy = Some(Box::new(move |r: &wasmsec_ike::AuthorizeRequest| {
        seen.borrow_mut().push(r.clone());
        wasmsec_ike::Decision::Reject("not on the list".into())
    }));
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    pump(&mut a, &mut b, 0, &mut all, &mut 0);
    assert_eq!((a.up, b.up), (0, 0));
    let asked = asked.borrow();
    assert_eq!(asked.len(), 1, "asked once, after AUTH verified");
    assert_eq!((asked[0].connection.as_str(), asked[0].peer.data.as_slice()), ("site", &b"gwa.interop.test"[..]));
    assert_eq!(wasmsec_ike::ts::show_all(&asked[0].peer_ts), "198.18.1.0/24");
    assert!(b.log_has("policy refused gwa.interop.test (198.18.0.1): not on the list"), "{:?}", b.logs);
    assert!(a.log_has("AUTHENTICATION_FAILED"), "{:?}", a.logs);
    assert_eq!(b.engine.connection_stats("site").unwrap().policy_rejected, 1);
}

/// The initiator's policy decides too (the host derives no CHILD SA keys
/// from an IKE SA it did not accept, whichever side started it): refused,
/// the initiator installs nothing and deletes the IKE SA, which the
/// responder had up, so that neither end keeps it.
#[test]
fn the_initiators_policy_refuses_the_responder() {
    let mut a = side(A, B, &Conf::default());
    let mut b = side(B, A, &Conf::default());
    a.crypto.policy = Some(Box::new(|r: &wasmsec_ike::AuthorizeRequest| {
        assert_eq!(wasmsec_ike::ts::show_all(&r.peer_ts), "198.18.2.0/24", "the responder's side");
        wasmsec_ike::Decision::Reject("not on the list".into())
    }));
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    pump(&mut a, &mut b, 0, &mut all, &mut 0);
    assert!(a.installed.is_empty(), "{:?}", a.logs);
    assert!(
        a.log_has("policy refused gwb.interop.test (198.18.0.2): not on the list; deleting the IKE SA"),
        "{:?}",
        a.logs
    );
    assert_eq!(a.engine.connection_stats("site").unwrap().policy_rejected, 1);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0), "{:?}", b.logs);
}

/// A policy grant narrows the selectors, replaces the ESP proposals and
/// the CHILD SA lifetimes of the peer it accepts; a grant that leaves no
/// selector refuses the CHILD SA with TS_UNACCEPTABLE, naming the grant.
#[test]
fn the_policy_grant_narrows_selectors_and_sets_proposals_and_lifetimes() {
    let a_conf = Conf { esp: "aes256gcm16,chacha20poly1305", ..Default::default() };
    let b_conf = Conf { esp: "aes256gcm16,chacha20poly1305", ..Default::default() };
    let mut a = side(A, B, &a_conf);
    let mut b = side(B, A, &b_conf);
    b.crypto.policy = Some(Box::new(|_: &wasmsec_ike::AuthorizeRequest| {
        wasmsec_ike::Decision::Accept(wasmsec_ike::Grant {
            peer_ts: vec![wasmsec_ike::ts::from_cidr("198.18.1.128/25").unwrap()],
            local_ts: vec![wasmsec_ike::ts::from_cidr("198.18.2.0/28").unwrap()],
            esp_proposals: "chacha20poly1305".into(),
            child_rekey_time_ms: 600_000,
            ..Default::default()
        })
    }));
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    pump(&mut a, &mut b, 0, &mut all, &mut 0);
    assert_eq!((a.installed.len(), b.installed.len()), (1, 1), "{:?}", b.logs);
    let (ca, cb) = (&a.installed[0], &b.installed[0]);
    use wasmsec_ike::ts::show_all;
    assert_eq!((show_all(&cb.remote_ts), show_all(&cb.local_ts)), ("198.18.1.128/25".into(), "198.18.2.0/28".into()));
    assert_eq!((show_all(&ca.local_ts), show_all(&ca.remote_ts)), ("198.18.1.128/25".into(), "198.18.2.0/28".into()));
    assert!(b.log_has("chacha20poly1305"), "the grant's proposal was chosen: {:?}", b.logs);
    let schedule = b.engine.child_schedules(0, &[cb.inbound_spi]);
    let rekey_in = schedule[0].1.expect("rekeyed by time");
    assert!((540_000..=600_000).contains(&rekey_in), "the grant's rekey time, less jitter: {rekey_in}");

    // A grant outside the connection's selectors leaves nothing.
    let mut a = side(A, B, &Conf::default());
    let mut b = side(B, A, &Conf::default());
    b.crypto.policy = Some(Box::new(|_: &wasmsec_ike::AuthorizeRequest| {
        wasmsec_ike::Decision::Accept(wasmsec_ike::Grant {
            peer_ts: vec![wasmsec_ike::ts::from_cidr("10.9.0.0/16").unwrap()],
            ..Default::default()
        })
    }));
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    pump(&mut a, &mut b, 0, &mut all, &mut 0);
    assert!(b.installed.is_empty() && a.installed.is_empty());
    assert!(b.log_has("within what the policy granted this peer: local any remote 10.9.0.0/16"), "{:?}", b.logs);
}

/// The responder loaded a `%any` connection for other subnets before the
/// one that names the initiator: IKE_SA_INIT matches the first by
/// address, IKE_AUTH moves to the one naming the identity (a wildcard
/// would refuse the selectors with TS_UNACCEPTABLE).
#[test]
fn a_connection_naming_the_peer_wins_over_a_wildcard_one() {
    let mut a = side(A, B, &Conf::default());
    let mut b = side(B, A, &Conf::default());
    let mut wildcard = connection(
        B,
        A,
        &Conf { local_ts: &["10.9.0.0/24"], remote_ts: &["10.8.0.0/24"], ..Default::default() },
        b.psk,
    );
    wildcard.name = "wildcard".into();
    wildcard.remote_id = "%any".into();
    b.engine = Engine::new(Timing::default());
    b.engine.add_connection(wildcard).unwrap();
    b.engine.add_connection(connection(B, A, &Conf::default(), b.psk)).unwrap();
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    pump(&mut a, &mut b, 0, &mut all, &mut 0);
    assert_eq!((a.up, b.up), (1, 1), "{:?}", b.logs);
    assert_child_pair(&a, &b);
    assert_eq!(b.engine.connection_stats("site").unwrap().child_installed, 1);
    assert_eq!(b.engine.connection_stats("wildcard").unwrap().child_installed, 0);
    // An identity no connection names still gets the wildcard.
    let mut c = side(A, B, &Conf { remote_ts: &["10.9.0.0/24"], local_ts: &["10.8.0.0/24"], ..Default::default() });
    let mut cfg = connection(
        A,
        B,
        &Conf { remote_ts: &["10.9.0.0/24"], local_ts: &["10.8.0.0/24"], ..Default::default() },
        c.psk,
    );
    cfg.local_id = "other.interop.test".into();
    c.engine = Engine::new(Timing::default());
    c.engine.add_connection(cfg).unwrap();
    c.engine.initiate(0, "site", &mut c.crypto).unwrap();
    pump(&mut c, &mut b, 0, &mut all, &mut 0);
    assert_eq!(b.engine.connection_stats("wildcard").unwrap().child_installed, 1, "{:?}", b.logs);
}

#[test]
fn unacceptable_selectors_give_ts_unacceptable() {
    let a_conf = Conf { local_ts: &["10.1.0.0/16"], remote_ts: &["10.2.0.0/16"], ..Default::default() };
    let (a, b) = connect(&a_conf, &Conf::default(), &mut all);
    assert_eq!((a.up, b.up), (1, 1), "the IKE SA stands");
    assert!(a.installed.is_empty() && b.installed.is_empty());
    assert_eq!(b.engine.stats().ts_unacceptable, 1);
    assert!(a.log_has("TS_UNACCEPTABLE"), "{:?}", a.logs);
    assert!(b.log_has("peer proposed TSi 10.1.0.0/16 TSr 10.2.0.0/16"), "{:?}", b.logs);
}

#[test]
fn responder_narrows_selectors() {
    let a_conf = Conf { local_ts: &["198.18.0.0/16"], remote_ts: &["198.18.0.0/16"], ..Default::default() };
    let (a, b) = connect(&a_conf, &Conf::default(), &mut all);
    assert_child_pair(&a, &b);
    assert_eq!(wasmsec_ike::ts::show_all(&a.installed[0].local_ts), "198.18.1.0/24");
    assert_eq!(wasmsec_ike::ts::show_all(&a.installed[0].remote_ts), "198.18.2.0/24");
}

#[test]
fn invalid_ke_payload_is_retried_with_the_requested_group() {
    let a_conf = Conf { ike: "aes256gcm16-prfsha256-x25519-ecp384", ..Default::default() };
    let b_conf = Conf { ike: "aes256gcm16-prfsha256-ecp384", ..Default::default() };
    let (a, b) = connect(&a_conf, &b_conf, &mut all);
    assert_eq!((a.up, b.up), (1, 1), "{:?} {:?}", a.logs, b.logs);
    assert!(a.log_has("INVALID_KE_PAYLOAD"));
    assert_child_pair(&a, &b);
}

#[test]
fn no_common_proposal_gives_no_proposal_chosen() {
    let (a, b) = connect(&Conf::default(), &Conf { ike: "aes128-sha512-modp2048", ..Default::default() }, &mut all);
    assert_eq!((a.up, b.up), (0, 0));
    assert!(
        b.log_has("peer 198.18.0.1 offered aes256gcm16-prfsha256-x25519, we accept aes128-prfsha512-sha512-modp2048"),
        "{:?}",
        b.logs
    );
    assert!(a.log_has("NO_PROPOSAL_CHOSEN"), "{:?}", a.logs);
    let (a, b) = connect(&Conf::default(), &Conf { esp: "chacha20poly1305", ..Default::default() }, &mut all);
    assert_eq!((a.up, b.up), (1, 1));
    assert!(a.installed.is_empty() && b.installed.is_empty());
    assert!(a.log_has("NO_PROPOSAL_CHOSEN"));
}

#[test]
fn several_child_sas_per_ike_sa() {
    let extra: (&[&str], &[&str]) = (&["10.1.0.0/16"], &["10.2.0.0/16"]);
    let conf = Conf { extra_child: Some(extra), ..Default::default() };
    let (a, b) = connect(&conf, &conf, &mut all);
    assert_eq!(a.installed.len(), 2, "{:?}", a.logs);
    assert_eq!(b.installed.len(), 2, "{:?}", b.logs);
    assert_eq!(a.engine.established(), (1, 2));
    let extra_a = a.installed.iter().find(|c| c.child == "extra").unwrap();
    let extra_b = b.installed.iter().find(|c| c.child == "extra").unwrap();
    assert_eq!(a.crypto.esp[&extra_a.outbound_key], b.crypto.esp[&extra_b.inbound_key]);
    assert_ne!(a.crypto.esp[&extra_a.outbound_key], a.crypto.esp[&a.installed[0].outbound_key]);
}

#[test]
fn delete_tears_down_both_sides_without_leaks() {
    let (mut a, mut b) = connect(&Conf::default(), &Conf::default(), &mut all);
    a.engine.terminate(1000, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 10_000, &mut all);
    assert_eq!((a.down, b.down), (1, 1));
    assert_eq!((a.deleted, b.deleted), (1, 1));
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (1, 1), "only the PSK is left");
}

/// A connection's IKE SAs are found through an index: `active` and
/// `terminate` see those of the connection asked for, none of another's.
#[test]
fn terminate_and_active_see_only_the_connections_own_ike_sas() {
    let conf = Conf::default();
    let mut a = side(A, B, &conf);
    let mut other = connection(A, B, &conf, a.psk);
    other.name = "other".into();
    other.remote_addrs = vec!["192.0.2.9".parse().unwrap()];
    a.engine.add_connection(other).unwrap();
    let mut b = side(B, A, &conf);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 5_000, &mut all);
    assert!(a.engine.active("site") && !a.engine.active("other") && !a.engine.active("nonesuch"));
    assert_eq!(a.engine.terminate(6_000, "other", &mut a.crypto).unwrap(), 0);
    run_from(&mut a, &mut b, 6_000, 8_000, &mut all);
    assert_eq!(a.engine.ike_sa_count(), 1, "site's IKE SA stays");
    assert_eq!(a.engine.terminate(9_000, "site", &mut a.crypto).unwrap(), 1);
    run_from(&mut a, &mut b, 9_000, 20_000, &mut all);
    assert!(!a.engine.active("site"));
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0));
}

/// RFC 7296 section 2.4: an initiator that lost its state (a restart)
/// sends INITIAL_CONTACT, and the responder drops the IKE SAs it still
/// holds with that peer. Twice, so that the second round finds the SA the
/// first one made.
#[test]
fn initial_contact_replaces_the_stale_ike_sa() {
    let (mut a, mut b) = connect(&Conf::default(), &Conf::default(), &mut all);
    assert_eq!(b.engine.ike_sa_count(), 1);
    for round in 1..=2 {
        // A restarts: a new engine at the same address, B keeps its SA.
        let mut fresh = side(A, B, &Conf::default());
        let t = round * 200_000;
        fresh.engine.initiate(t, "site", &mut fresh.crypto).unwrap();
        run_from(&mut fresh, &mut b, t, t + 60_000, &mut all);
        assert_eq!(fresh.up, 1, "round {round}: the new IKE SA is up");
        assert_eq!(b.engine.ike_sa_count(), 1, "round {round}: the stale one is gone: {:?}", b.engine.describe());
        assert!(b.log_has("sent INITIAL_CONTACT"), "round {round}");
        a = fresh;
    }
    assert_eq!(b.engine.established().0, 1);
    drop(a);
}

/// An initiator that the responder B (one connection for any peer
/// address and identity) sees at `seen`, its ports moved by `shift` (as a
/// NAT maps them): several may share an address.
struct Behind {
    side: Side,
    seen: IpAddr,
    shift: u16,
}

fn behind(id: &str, seen: IpAddr, shift: u16) -> Behind {
    let mut side = side(A, B, &Conf::default());
    let mut cfg = connection(A, B, &Conf::default(), side.psk);
    cfg.local_id = id.into();
    side.engine = Engine::new(Timing::default());
    side.engine.add_connection(cfg).unwrap();
    Behind { side, seen, shift }
}

impl Behind {
    fn initiate(&mut self, now: u64) {
        self.side.engine.initiate(now, "site", &mut self.side.crypto).unwrap();
    }
}

fn responder_for_anyone() -> Side {
    let conf = Conf { any_peer: true, ..Default::default() };
    let mut b = side(B, A, &conf);
    let mut cfg = connection(B, A, &conf, b.psk);
    cfg.remote_id = "%any".into();
    b.engine = Engine::new(conf.timing);
    b.engine.add_connection(cfg).unwrap();
    b
}

/// Run virtual time from `from` until quiet or `until` ms between the
/// initiators and B; what B sends to none of them (a peer gone) is lost.
fn run_behind(peers: &mut [Behind], b: &mut Side, from: u64, until: u64) {
    let mut now = from;
    loop {
        for _ in 0..100 {
            let mut quiet = true;
            for p in peers.iter_mut() {
                p.side.drain();
                for d in std::mem::take(&mut p.side.outbox) {
                    quiet = false;
                    let local = Endpoint { addr: B, port: d.remote.port };
                    let remote = Endpoint { addr: p.seen, port: d.local.port + p.shift };
                    b.engine.handle_datagram(now, Datagram { local, remote, data: d.data }, &mut b.crypto);
                    b.drain();
                }
            }
            b.drain();
            for d in std::mem::take(&mut b.outbox) {
                quiet = false;
                let port = |p: &Behind| d.remote.port.checked_sub(p.shift).filter(|x| *x == 500 || *x == 4500);
                if let Some(p) = peers.iter_mut().find(|p| p.seen == d.remote.addr && port(p).is_some()) {
                    let local = Endpoint { addr: A, port: port(p).unwrap() };
                    let remote = Endpoint { addr: B, port: d.local.port };
                    p.side.engine.handle_datagram(now, Datagram { local, remote, data: d.data }, &mut p.side.crypto);
                    p.side.drain();
                }
            }
            if quiet {
                break;
            }
        }
        let timeouts = peers.iter_mut().map(|p| p.side.engine.next_timeout()).chain([b.engine.next_timeout()]);
        let Some(t) = timeouts.flatten().min().filter(|t| *t <= until) else { return };
        now = t.max(now);
        for p in peers.iter_mut() {
            p.side.engine.tick(now, &mut p.side.crypto);
        }
        b.engine.tick(now, &mut b.crypto);
    }
}

/// Section 2.4: INITIAL_CONTACT concerns the IKE SAs between the
/// authenticated identities. Two peers behind one NAT address (branches
/// behind a carrier's NAT) each send it when they start; neither replaces
/// the other's IKE SA, and one that restarts replaces only its own.
#[test]
fn initial_contact_replaces_only_its_own_identity_behind_a_shared_nat() {
    let mut b = responder_for_anyone();
    let mut peers = vec![behind("gwa.interop.test", NAT_IP, 0), behind("gwc.interop.test", NAT_IP, 10_000)];
    for p in peers.iter_mut() {
        p.initiate(0);
    }
    run_behind(&mut peers, &mut b, 0, 60_000);
    assert_eq!((peers[0].side.up, peers[1].side.up), (1, 1));
    assert_eq!(b.engine.established(), (2, 2), "both peers' IKE SAs stay: {:?}", b.logs);
    // gwc restarts; the NAT maps it to other ports.
    peers[1] = behind("gwc.interop.test", NAT_IP, 20_000);
    peers[1].initiate(200_000);
    run_behind(&mut peers, &mut b, 200_000, 260_000);
    assert_eq!(peers[1].side.up, 1);
    assert_eq!(b.engine.established(), (2, 2), "{:?}", b.logs);
    assert_eq!(b.logs.iter().filter(|l| l.contains("sent INITIAL_CONTACT")).count(), 1, "{:?}", b.logs);
    assert!(b.log_has("gwc.interop.test sent INITIAL_CONTACT"), "{:?}", b.logs);
    assert_eq!(peers[0].side.engine.established(), (1, 1));
}

/// A peer that restarts behind a NAT that gives it another address: its
/// INITIAL_CONTACT replaces the IKE SA it left at the old one, which would
/// otherwise stay until dead peer detection found it.
#[test]
fn initial_contact_replaces_the_identitys_sa_at_its_old_address() {
    let mut b = responder_for_anyone();
    let mut peers = vec![behind("gwa.interop.test", A, 0)];
    peers[0].initiate(0);
    run_behind(&mut peers, &mut b, 0, 60_000);
    assert_eq!(b.engine.established(), (1, 1));
    peers[0] = behind("gwa.interop.test", NAT_IP, 0);
    peers[0].initiate(200_000);
    run_behind(&mut peers, &mut b, 200_000, 260_000);
    assert_eq!(peers[0].side.up, 1);
    assert_eq!(b.engine.established(), (1, 1), "the stale IKE SA is gone: {:?}", b.logs);
    assert!(b.log_has("gwa.interop.test sent INITIAL_CONTACT"), "{:?}", b.logs);
}

#[test]
fn silent_peer_times_out() {
    let mut none = |_: usize, _: &Datagram| false;
    let (a, _b) = connect(&Conf::default(), &Conf::default(), &mut none);
    assert_eq!(a.engine.ike_sa_count(), 0);
    assert_eq!(a.engine.stats().retransmits, 5);
    assert!(a.log_has("did not answer after 6 transmissions"));
}

/// Malformed IKE input never panics and is counted or answered.
#[test]
fn malformed_corpus() {
    let (mut a, mut b) = connect(&Conf::default(), &Conf::default(), &mut all);
    // A real IKE_SA_INIT request to mutate.
    let mut c = side(A, B, &Conf::default());
    c.engine.initiate(0, "site", &mut c.crypto).unwrap();
    c.drain();
    let init = c.outbox.remove(0).data;
    let before = b.engine.stats();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for n in 0..init.len() {
        corpus.push(init[..n].to_vec()); // truncated
    }
    for i in 0..init.len() {
        let mut m = init.clone();
        m[i] ^= 0xff; // every byte corrupted once
        corpus.push(m);
    }
    let mut bad_len = init.clone();
    bad_len[24..28].copy_from_slice(&9999u32.to_be_bytes());
    corpus.push(bad_len);
    // Unknown critical payload appended.
    let mut m = Message::parse(&init).unwrap();
    m.payloads.push(Payload::Unknown { kind: PayloadType::Unknown(222), critical: true, body: vec![1, 2, 3] });
    m.header.spi_i ^= 1;
    corpus.push(m.emit());
    // Wrong SPI on an encrypted exchange.
    let mut wrong = init.clone();
    wrong[18] = ExchangeType::Informational.raw();
    wrong[8..16].copy_from_slice(&[9; 8]);
    corpus.push(wrong);
    let mut seed = 7u32;
    for len in [0usize, 1, 27, 28, 29, 100, 500] {
        let mut r = vec![0u8; len];
        for x in r.iter_mut() {
            seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
            *x = (seed >> 16) as u8;
        }
        corpus.push(r);
    }
    for d in &corpus {
        b.deliver(
            5,
            Datagram {
                local: Endpoint { addr: A, port: 500 },
                remote: Endpoint { addr: B, port: 500 },
                data: d.clone(),
            },
        );
    }
    let after = b.engine.stats();
    assert!(after.malformed > before.malformed + 50, "{after:?}");
    assert!(after.unknown_spi > before.unknown_spi);
    // The unknown critical payload was answered with UNSUPPORTED_CRITICAL_PAYLOAD.
    let answered = b.outbox.iter().any(|d| {
        Message::parse(&d.data).is_ok_and(|m| m.payloads.iter().any(|p| matches!(p, Payload::Notify(n) if n.kind == NotifyType::UnsupportedCriticalPayload && n.data == [222])))
    });
    assert!(answered);
    // The established tunnel is unaffected.
    b.outbox.clear();
    assert_eq!(b.engine.established(), (1, 1));
    // And tampered encrypted traffic is an integrity failure, not a crash.
    a.engine.terminate(10, "site", &mut a.crypto).unwrap();
    a.drain();
    let mut del = a.outbox.remove(0);
    let n = del.data.len();
    del.data[n - 1] ^= 1;
    b.deliver(10, del);
    assert_eq!(b.engine.stats().integrity_failed, 1);
    assert_eq!(b.engine.established(), (1, 1));
}
