//! CHILD and IKE SA rekeys (make before break, PFS), simultaneous rekeys and rekeys racing a DELETE (RFC 7296 sections 2.8.1, 2.8.2, 2.25), and reauthentication.
mod harness;

use harness::*;

#[test]
fn child_sas_are_rekeyed_make_before_break_without_leaks() {
    let conf = Conf { rekey_ms: 10_000, ..Default::default() };
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &Conf::default());
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    // Each generation's keys are checked while both sides still hold them.
    let mut generations = 0;
    let mut now = 0;
    let mut n = 0;
    while now < 125_000 {
        pump(&mut a, &mut b, now, &mut all, &mut n);
        while generations < a.installed.len().min(b.installed.len()) {
            let (ca, cb) = (&a.installed[generations], &b.installed[generations]);
            assert_eq!((ca.outbound_spi, ca.inbound_spi), (cb.inbound_spi, cb.outbound_spi));
            assert_eq!(a.crypto.esp[&ca.outbound_key], b.crypto.esp[&cb.inbound_key]);
            assert_eq!(a.crypto.esp[&ca.inbound_key], b.crypto.esp[&cb.outbound_key]);
            generations += 1;
        }
        let next = [a.engine.next_timeout(), b.engine.next_timeout()].into_iter().flatten().min();
        now = next.unwrap_or(now + 1000).max(now + 1);
        a.engine.tick(now, &mut a.crypto);
        b.engine.tick(now, &mut b.crypto);
    }
    assert!(generations >= 12, "{generations} generations: {:?}", a.logs);
    // The default hard lifetime (110 % of rekey_time) never struck: every
    // SA was replaced in time.
    assert_eq!((a.engine.stats().lifetime_hard, b.engine.stats().lifetime_hard), (0, 0));
    // Exactly one live CHILD SA pair at the end; every replaced one deleted on both sides.
    assert_eq!(a.engine.established(), (1, 1));
    assert_eq!(b.engine.established(), (1, 1));
    assert_eq!(a.deleted, a.installed.len() - 1);
    assert_eq!(b.deleted, b.installed.len() - 1);
    assert_eq!((a.crypto.esp.len(), b.crypto.esp.len()), (2, 2), "no leaked ESP key");
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "IKE SA keys and PSK only");
    // The responder (B) sent on each new SA only once A deleted the old one.
    assert!(b.installed[1..].iter().all(|c| c.outbound_deferred));
    assert!(!b.installed[0].outbound_deferred && a.installed.iter().all(|c| !c.outbound_deferred));
    assert_eq!(b.activated.len(), b.installed.len() - 1);
    assert!(b.installed[1..].iter().all(|c| b.activated.contains(&c.outbound_spi)));
    // A initiated every CHILD SA, so its data path expected each inbound
    // SPI before the peer could use it; B answered, installing before its
    // answer left, so it expected none.
    assert!(a.installed.iter().all(|c| a.expected.contains(&c.inbound_spi)), "{:?}", a.expected);
    assert!(b.expected.is_empty(), "{:?}", b.expected);
    // On both sides the data path always has an outbound SA: each new one
    // starts before the old one stops, and the old inbound half lingers for
    // packets still on the way (RFC 7296 section 2.8).
    for side in [&a, &b] {
        assert_always_sending(side);
        for step in side.datapath.iter().filter(|s| s.starts_with('-')) {
            assert!(step.ends_with(&format!("linger {DELETED_INBOUND_LINGER_MS}")), "{step}");
        }
    }
}

#[test]
fn ike_sa_rekeys_carry_the_child_sas_over() {
    let conf = Conf { rekey_ms: 10_000, ike_rekey_ms: 25_000, ..Default::default() };
    let (mut a, mut b) = connect(&conf, &Conf::default(), &mut all);
    assert!(a.log_has("rekeyed: now"), "{:?}", a.logs);
    let ike_rekeys = a.logs.iter().filter(|l| l.contains("rekeying IKE_SA")).count();
    assert!(ike_rekeys >= 4, "{ike_rekeys}: {:?}", a.logs);
    assert!(b.logs.iter().filter(|l| l.contains("rekeyed: now")).count() >= 4);
    // One IKE SA and one CHILD SA on each side, old IKE SAs deleted with their keys.
    assert_eq!(a.engine.established(), (1, 1));
    assert_eq!(b.engine.established(), (1, 1));
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "current IKE SA keys and the PSK only");
    assert_eq!((a.down, b.down), (ike_rekeys, ike_rekeys), "each old IKE SA went down");
    // Each new one came up as a rekey (the policy hears `rekeyed`), the
    // first as a new IKE SA.
    assert_eq!((a.rekeyed_up, b.rekeyed_up), (ike_rekeys, ike_rekeys));
    assert_eq!((a.up, b.up), (ike_rekeys + 1, ike_rekeys + 1));
    assert_eq!(a.deleted, a.installed.len() - 1, "CHILD SAs survive IKE rekeys; only replaced ones are deleted");
    // The rekeyed IKE SA still works: a DELETE over it tears everything down.
    a.engine.terminate(200_000, "site", &mut a.crypto).unwrap();
    run_from(&mut a, &mut b, 200_000, 210_000, &mut all);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0));
    assert_eq!(b.deleted, b.installed.len());
}

#[test]
fn simultaneous_child_rekeys_leave_exactly_one_pair_either_way() {
    // Both ends rekey every 9 ms of virtual time (too short for jitter), so
    // every rekey collides (RFC 7296 section 2.8.1).
    let conf = Conf { rekey_ms: 9, ..Default::default() };
    let (a, b) = connect(&conf, &conf, &mut all);
    let (sa, sb) = (a.engine.stats(), b.engine.stats());
    let collisions = sa.rekey_collisions_won + sa.rekey_collisions_lost;
    assert!(collisions >= 20, "{sa:?}");
    // Each collision is seen from both sides, with opposite outcomes.
    assert_eq!(sa.rekey_collisions_won, sb.rekey_collisions_lost);
    assert_eq!(sa.rekey_collisions_lost, sb.rekey_collisions_won);
    // Both tie-break outcomes happened.
    assert!(sa.rekey_collisions_won > 0 && sa.rekey_collisions_lost > 0, "{sa:?}");
    // Exactly one CHILD SA pair survives, its keys agree, nothing leaked.
    assert_eq!(a.engine.established(), (1, 1), "{:?}", a.logs.iter().rev().take(10).collect::<Vec<_>>());
    assert_eq!(b.engine.established(), (1, 1));
    let live_a = a.installed.iter().rev().find(|c| a.crypto.esp.contains_key(&c.inbound_key)).unwrap();
    let live_b = b.installed.iter().find(|c| c.inbound_spi == live_a.outbound_spi).unwrap();
    assert_eq!(a.crypto.esp[&live_a.outbound_key], b.crypto.esp[&live_b.inbound_key]);
    assert_eq!(a.crypto.esp[&live_a.inbound_key], b.crypto.esp[&live_b.outbound_key]);
    assert_eq!((a.crypto.esp.len(), b.crypto.esp.len()), (2, 2), "no leaked ESP key");
    assert_eq!((a.installed.len() - a.deleted, b.installed.len() - b.deleted), (1, 1));
}

#[test]
fn simultaneous_ike_rekeys_leave_exactly_one_ike_sa_either_way() {
    // Both ends rekey the IKE SA every 9 ms of virtual time (too short for
    // jitter), so every rekey collides (RFC 7296 section 2.8.2).
    let conf = Conf { ike_rekey_ms: 9, ..Default::default() };
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &conf);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 3_000, &mut all);
    let (sa, sb) = (a.engine.stats(), b.engine.stats());
    let collisions = sa.ike_rekey_collisions_won + sa.ike_rekey_collisions_lost;
    assert!(collisions >= 20, "{sa:?}");
    // Each collision is seen from both sides, with opposite outcomes.
    assert_eq!(sa.ike_rekey_collisions_won, sb.ike_rekey_collisions_lost, "{sa:?} {sb:?}");
    assert_eq!(sa.ike_rekey_collisions_lost, sb.ike_rekey_collisions_won);
    assert!(sa.ike_rekey_collisions_won > 0 && sa.ike_rekey_collisions_lost > 0, "{sa:?}");
    // One IKE SA each, its CHILD SA carried over every time, nothing leaked:
    // the vaults hold the PSK and the current IKE SA's keys only.
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_eq!(a.engine.established(), (1, 1));
    assert_eq!(b.engine.established(), (1, 1));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "no leaked IKE SA or DH value");
    assert_live_pairs(&a, &b, 1);
    assert_eq!(a.deleted, 0, "the CHILD SA never went down");
    // The surviving IKE SA works: a DELETE over it tears everything down.
    a.engine.terminate(5_000, "site", &mut a.crypto).unwrap();
    run_from(&mut a, &mut b, 5_000, 6_000, &mut all);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (1, 1));
}

#[test]
fn a_child_rekey_racing_a_delete_leaves_exactly_one_pair() {
    for rekeyer_is_initiator in [true, false] {
        // Crossing: X's rekey and X's DELETE (hard lifetime) pass each other.
        // The deleter answers the rekey TEMPORARY_FAILURE (section 2.25.1),
        // the rekeyer answers the DELETE as usual, and the deleter creates
        // the CHILD SA anew.
        let (mut a, mut b) = connect(&Conf::default(), &Conf::default(), &mut all);
        let (r, d) = if rekeyer_is_initiator { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let x = r.installed[0].clone();
        r.engine.child_expired(10, x.inbound_spi, false, &mut r.crypto);
        r.engine.tick(10, &mut r.crypto);
        d.engine.child_expired(10, x.outbound_spi, true, &mut d.crypto);
        d.engine.tick(10, &mut d.crypto);
        run_from(r, d, 10, 1_000, &mut all);
        assert_eq!(d.engine.stats().temporary_failures, 1, "{:?}", d.logs);
        assert_eq!(d.engine.stats().lifetime_hard, 1);
        assert!(r.log_has("CHILD_SA rekey failed"), "{:?}", r.logs);
        assert_eq!(a.engine.established(), (1, 1), "{:?}\n{:?}", a.logs, b.logs);
        assert_eq!(b.engine.established(), (1, 1));
        assert_live_pairs(&a, &b, 1);
        assert_eq!((a.installed.len(), b.installed.len()), (2, 2), "the deleter's new SA, no other");

        // The rekey completes first; then the old SA's hard lifetime on the
        // responder sends a DELETE that crosses the rekeyer's own DELETE of
        // it: both answer without a Delete payload, the successor stays.
        let (mut a, mut b) = connect(&Conf::default(), &Conf::default(), &mut all);
        let (r, d) = if rekeyer_is_initiator { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let x = r.installed[0].clone();
        r.engine.child_expired(10, x.inbound_spi, false, &mut r.crypto);
        r.engine.tick(10, &mut r.crypto);
        deliver_all(r, d, 10); // the rekey request
        d.engine.child_expired(10, x.outbound_spi, true, &mut d.crypto);
        d.engine.tick(10, &mut d.crypto);
        deliver_all(d, r, 10); // the rekey response, then the DELETE of X
        run_from(r, d, 10, 1_000, &mut all);
        assert_eq!(r.engine.stats().lifetime_soft, 1);
        assert_eq!(d.engine.stats().lifetime_hard, 1);
        assert_eq!(a.engine.established(), (1, 1), "{:?}", a.logs);
        assert_eq!(b.engine.established(), (1, 1), "{:?}", b.logs);
        assert_live_pairs(&a, &b, 1);
        assert_eq!((a.installed.len(), b.installed.len()), (2, 2), "the rekeyed SA, not re-created");
        assert_eq!((a.engine.stats().temporary_failures, b.engine.stats().temporary_failures), (0, 0));
    }
}

#[test]
fn an_ike_rekey_racing_a_delete_or_a_child_rekey() {
    // The IKE SA's rekey crosses the peer's DELETE of the IKE SA: the peer
    // answers TEMPORARY_FAILURE, we answer the DELETE and forget our rekey.
    let conf = Conf { ike_rekey_ms: 10_000, ..Default::default() };
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &Conf::default());
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    let t = a.engine.next_timeout().unwrap();
    assert!((9_000..=10_000).contains(&t), "{t}");
    a.engine.tick(t, &mut a.crypto);
    b.engine.terminate(t, "site", &mut b.crypto).unwrap();
    let mut n = 0;
    pump(&mut a, &mut b, t, &mut all, &mut n);
    assert!(a.log_has("rekeying IKE_SA"));
    assert_eq!(b.engine.stats().temporary_failures, 1);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (0, 0));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (1, 1), "PSK only: the rekey's DH value is gone");
    assert_eq!((a.crypto.esp.len(), b.crypto.esp.len()), (0, 0));

    // The IKE SA's rekey crosses the peer's rekey of a CHILD SA: each side
    // answers TEMPORARY_FAILURE (section 2.25.2), both retry later at
    // random times, and both rekeys then go through.
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &Conf::default());
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    let t = a.engine.next_timeout().unwrap();
    a.engine.tick(t, &mut a.crypto);
    b.engine.child_expired(t, b.installed[0].inbound_spi, false, &mut b.crypto);
    b.engine.tick(t, &mut b.crypto);
    let mut n = 0;
    pump(&mut a, &mut b, t, &mut all, &mut n);
    assert_eq!((a.engine.stats().temporary_failures, b.engine.stats().temporary_failures), (1, 1));
    run_from(&mut a, &mut b, t, t + 9_000, &mut all);
    assert!(a.log_has("rekeyed: now") && b.log_has("rekeyed: now"), "{:?}", a.logs);
    assert_eq!(b.installed.len(), 2, "B's CHILD rekey went through on retry: {:?}", b.logs);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
    assert_live_pairs(&a, &b, 1);
}

#[test]
fn child_sas_with_pfs_are_rekeyed_with_a_new_dh_exchange() {
    let conf = Conf { esp: "aes256gcm16-x25519", rekey_ms: 10_000, ..Default::default() };
    let (a, b) = connect(&conf, &Conf { esp: "aes256gcm16-x25519", ..Default::default() }, &mut all);
    assert!(a.installed.len() >= 10, "{}", a.installed.len());
    // The rekeys used the DH group; the first CHILD SA (IKE_AUTH) has none.
    let pfs = b.logs.iter().filter(|l| l.contains("installed") && l.contains("aes256gcm16-x25519")).count();
    assert_eq!(pfs, b.installed.len() - 1, "{:?}", b.logs);
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "no DH value left behind");
    assert_live_pairs(&a, &b, 1);

    // The responder wants another group: INVALID_KE_PAYLOAD, and the
    // initiator retries with it.
    let conf = Conf { esp: "aes256gcm16-ecp256-x25519", rekey_ms: 10_000, ..Default::default() };
    let (a, b) = connect(&conf, &Conf { esp: "aes256gcm16-x25519", ..Default::default() }, &mut all);
    assert!(a.log_has("peer wants DH group 31"), "{:?}", a.logs);
    assert!(a.installed.len() >= 10);
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
    assert_live_pairs(&a, &b, 1);

    // Proposals with and without a DH group: the KE goes with the first one
    // that has a group, and is dropped if the responder picks one without.
    for (a_esp, b_esp, pfs) in [
        ("aes256gcm16,aes128gcm16-x25519", "aes128gcm16-x25519", true),
        ("aes256gcm16-x25519,aes128gcm16", "aes128gcm16", false),
    ] {
        let conf = Conf { esp: a_esp, rekey_ms: 10_000, ..Default::default() };
        let (a, b) = connect(&conf, &Conf { esp: b_esp, ..Default::default() }, &mut all);
        assert!(a.installed.len() >= 10, "{a_esp} / {b_esp}: {:?}", a.logs);
        let with_dh = b.logs.iter().filter(|l| l.contains("installed") && l.contains("x25519")).count();
        assert_eq!(with_dh, if pfs { b.installed.len() - 1 } else { 0 }, "{a_esp} / {b_esp}");
        assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "{a_esp} / {b_esp}: no DH value left");
        assert_live_pairs(&a, &b, 1);
    }

    // Without PFS on the responder the rekey is refused and the old SA kept.
    let (a, b) = connect(&conf, &Conf::default(), &mut all);
    assert!(a.log_has("CHILD_SA rekey failed, keeping the old SA"), "{:?}", a.logs);
    assert_eq!(a.installed.len(), 1);
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
}

#[test]
fn reauthentication_is_make_before_break() {
    let extra: (&[&str], &[&str]) = (&["198.18.11.0/24"], &["198.18.12.0/24"]);
    let conf = Conf { reauth_ms: 20_000, extra_child: Some(extra), ..Default::default() };
    let (a, b) = connect(&conf, &Conf { extra_child: Some(extra), ..Default::default() }, &mut all);
    let st = a.engine.stats();
    assert!(st.reauths >= 5, "{st:?}");
    assert_eq!(a.up, st.reauths as usize + 1, "a new IKE SA each time");
    assert_eq!((a.down, b.down), (st.reauths as usize, st.reauths as usize), "the old one deleted each time");
    // Both CHILD SAs were up at every moment: the new ones came before the
    // old ones went, on both sides.
    assert_eq!((a.live_min, b.live_min), (2, 2), "{:?}", a.logs);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_eq!(a.engine.established(), (1, 2));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
    assert_live_pairs(&a, &b, 2);
    // The responder sent on each new CHILD SA only once the old IKE SA was gone.
    assert!(b.installed[2..].iter().all(|c| c.outbound_deferred));
    assert!(b.installed[2..].iter().all(|c| b.activated.contains(&c.outbound_spi)));
    assert!(a.logs.iter().filter(|l| l.contains("reauthenticated")).count() >= 5);
}

#[test]
fn a_responder_asks_for_reauthentication_and_only_the_initiator_does_it() {
    // B wants a reauthentication every 20 s (AUTH_LIFETIME, RFC 4478); A has
    // no reauth_time of its own and follows B's request.
    let (a, b) = connect(&Conf::default(), &Conf { reauth_ms: 20_000, ..Default::default() }, &mut all);
    let (sa, sb) = (a.engine.stats(), b.engine.stats());
    assert!(sa.reauths >= 5, "{sa:?}");
    assert_eq!(sb.reauths, 0, "the responder never starts one");
    assert!(!b.log_has("did not reauthenticate"), "{:?}", b.logs);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
    assert_live_pairs(&a, &b, 1);
    assert_eq!((a.live_min, b.live_min), (1, 1), "make-before-break");

    // Both ends configured: still one reauthentication per period, by A.
    let conf = Conf { reauth_ms: 20_000, ..Default::default() };
    let (a, b) = connect(&conf, &conf, &mut all);
    assert!(a.engine.stats().reauths >= 5);
    assert_eq!(b.engine.stats().reauths, 0);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_live_pairs(&a, &b, 1);

    // A peer that does not reauthenticate (here: its attempts never get
    // through IKE_SA_INIT): the responder deletes the IKE SA a little more
    // than two retransmission spans after the time it asked for.
    let mut a = side(A, B, &Conf::default());
    let mut b = side(B, A, &Conf { reauth_ms: 20_000, ..Default::default() });
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    assert_eq!(b.engine.established(), (1, 1));
    let no_init = |_: usize, d: &Datagram| d.data.get(18) != Some(&ExchangeType::IkeSaInit.raw());
    run_from(&mut a, &mut b, 1_000, 140_000, &mut no_init.clone());
    assert_eq!(b.engine.established(), (1, 1), "still up before the deadline");
    run_from(&mut a, &mut b, 140_000, 400_000, &mut no_init.clone());
    assert!(b.log_has("did not reauthenticate"), "{:?}", b.logs);
    assert_eq!((a.engine.established(), b.engine.established()), ((0, 0), (0, 0)));
    assert_eq!((a.crypto.esp.len(), b.crypto.esp.len()), (0, 0));
}

#[test]
fn a_second_initiation_replaces_the_first_make_before_break() {
    // `initiate` on a connection that is up: a second IKE SA with its own
    // CHILD SAs, without INITIAL_CONTACT (the peer keeps the first); once
    // they are up, A deletes the older IKE SA, which it authenticated too.
    let extra: (&[&str], &[&str]) = (&["198.18.11.0/24"], &["198.18.12.0/24"]);
    let conf = Conf { extra_child: Some(extra), ..Default::default() };
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &conf);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    assert_eq!(a.engine.established(), (1, 2));
    let first: Vec<u32> = a.installed.iter().map(|c| c.inbound_spi).collect();
    a.engine.initiate(5_000, "site", &mut a.crypto).unwrap();
    run_from(&mut a, &mut b, 5_000, 10_000, &mut all);
    assert_eq!((a.up, a.down, b.up, b.down), (2, 1, 2, 1), "{:?}", a.logs);
    assert!(!b.log_has("INITIAL_CONTACT"), "the peer dropped nothing at once: {:?}", b.logs);
    assert!(a.log_has("duplicates IKE_SA"), "{:?}", a.logs);
    assert_eq!((a.engine.stats().duplicates_deleted, b.engine.stats().duplicates_deleted), (1, 0));
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_eq!((a.engine.established(), b.engine.established()), ((1, 2), (1, 2)));
    assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
    assert_live_pairs(&a, &b, 2);
    assert!(
        a.installed
            .iter()
            .filter(|c| a.crypto.esp.contains_key(&c.inbound_key))
            .all(|c| !first.contains(&c.inbound_spi))
    );
    // Both CHILD SAs were up and sending at every moment, on both sides.
    assert_eq!((a.live_min, b.live_min), (2, 2), "{:?}", a.logs);
    assert_always_sending(&a);
    assert_always_sending(&b);

    // Later ones go the same way, and the kept IKE SA still rekeys and
    // lives on (no DELETE for it from either side).
    a.engine.initiate(12_000, "site", &mut a.crypto).unwrap();
    run_from(&mut a, &mut b, 12_000, 60_000, &mut all);
    assert_eq!(a.engine.stats().duplicates_deleted, 2);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert_live_pairs(&a, &b, 2);
}

/// Both ends initiate, B or A first and the other `delay` ms later, and
/// run until quiet: each brought up two IKE SAs and one is left at both
/// ends. The sides, and their logs for messages.
fn initiate_both(mut a: Side, mut b: Side, first_b: bool, delay: u64) -> (Side, Side, String) {
    let (x, y) = if first_b { (&mut b, &mut a) } else { (&mut a, &mut b) };
    x.engine.initiate(0, "site", &mut x.crypto).unwrap();
    y.engine.initiate(delay, "site", &mut y.crypto).unwrap();
    run(&mut a, &mut b, 60_000, &mut all);
    let what = format!("B first {first_b}, {delay} ms: {:?}\n{:?}", a.logs, b.logs);
    assert_eq!((a.up, b.up), (2, 2), "{what}");
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1), "{what}");
    assert_eq!((a.engine.established(), b.engine.established()), ((1, 1), (1, 1)), "{what}");
    (a, b, what)
}

#[test]
fn two_ends_initiating_at_once_keep_one_ike_sa_by_identity() {
    // Both ends start the connection at about the same time: two IKE SAs,
    // each with its CHILD SA. A's identity (gwa.interop.test) is the lesser,
    // so A deletes the one it initiated and B's stays; B deletes nothing.
    for (first_b, delay) in [(false, 0u64), (false, 3), (true, 3)] {
        let conf = Conf::default();
        let (a, b, what) = initiate_both(side(A, B, &conf), side(B, A, &conf), first_b, delay);
        assert_eq!((a.engine.stats().duplicates_deleted, b.engine.stats().duplicates_deleted), (1, 0), "{what}");
        assert!(a.log_has("which the peer initiated: deleting it"), "{what}");
        let (da, db) = (a.engine.describe(), b.engine.describe());
        assert!(da[0].contains(" Established R ") && db[0].contains(" Established I "), "B's stayed: {da:?} {db:?}");
        assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2));
        assert_live_pairs(&a, &b, 1);
        assert_eq!((a.live_min, b.live_min), (1, 1), "a CHILD SA up at every moment: {what}");
        // ... and sending: A's half of B's CHILD SA waited for the DELETE
        // of A's own IKE SA, and started as it was acknowledged.
        assert_always_sending(&a);
        assert_always_sending(&b);
    }
    // B initiates while A's IKE SA is up: A sends on B's CHILD SA only once
    // its own IKE SA is gone (as after a reauthentication), and starts as
    // B acknowledges the DELETE, not a moment later.
    let conf = Conf::default();
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &conf);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    b.engine.initiate(5_000, "site", &mut b.crypto).unwrap();
    run_from(&mut a, &mut b, 5_000, 60_000, &mut all);
    assert_eq!((a.engine.stats().duplicates_deleted, b.engine.stats().duplicates_deleted), (1, 0), "{:?}", a.logs);
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1));
    assert!(a.installed.last().is_some_and(|c| c.outbound_deferred), "{:?}", a.installed);
    assert_live_pairs(&a, &b, 1);
    assert_always_sending(&a);
    assert_always_sending(&b);

    // The same with any one datagram lost (a lost IKE_AUTH carrying
    // INITIAL_CONTACT is sent again after the other IKE SA came up): one
    // IKE SA and one pair at both ends, whichever it is.
    for lost in 0..16 {
        let conf = Conf::default();
        let mut a = side(A, B, &conf);
        let mut b = side(B, A, &conf);
        a.engine.initiate(0, "site", &mut a.crypto).unwrap();
        b.engine.initiate(0, "site", &mut b.crypto).unwrap();
        run(&mut a, &mut b, 200_000, &mut |n, _| n != lost);
        let what = format!("datagram {lost} lost: {:?}\n{:?}", a.logs, b.logs);
        assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1), "{what}");
        assert_eq!((a.engine.established(), b.engine.established()), ((1, 1), (1, 1)), "{what}");
        assert_eq!((a.crypto.vault.len(), b.crypto.vault.len()), (2, 2), "{what}");
        assert_live_pairs(&a, &b, 1);
    }
}

#[test]
fn a_pair_initiated_at_once_is_one_with_any_remote_identity_at_the_lesser_end() {
    // A (the lesser identity) takes any identity from B: it knows B's only
    // as IKE_AUTH authenticated it, and must still be the end that yields
    // (before 2026-12-07 neither end deleted its own and both stayed).
    for (first_b, delay) in [(false, 0u64), (false, 3), (true, 3)] {
        let conf = Conf::default();
        let mut a = side(A, B, &conf);
        let mut cfg = connection(A, B, &conf, a.psk);
        cfg.remote_id = "%any".into();
        a.engine = Engine::new(conf.timing);
        a.engine.add_connection(cfg).unwrap();
        let (a, b, what) = initiate_both(a, side(B, A, &conf), first_b, delay);
        assert_eq!((a.engine.stats().duplicates_deleted, b.engine.stats().duplicates_deleted), (1, 0), "{what}");
        assert!(a.log_has("which the peer initiated: deleting it"), "{what}");
        assert_live_pairs(&a, &b, 1);
        assert_always_sending(&a);
        assert_always_sending(&b);
    }
}

/// A's second address, where B initiates to.
const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));

/// A with two addresses (it initiates from A, B initiates to A2, as
/// behind a cloud NAT that maps outbound and inbound traffic to different
/// public addresses) and the greater identity, so that B decides which of
/// two IKE SAs goes: B must know A's IKE SAs as one peer's by identity.
fn two_homed() -> (Side, Side) {
    let conf = Conf::default();
    let mut a = side(A, B, &conf);
    let mut cfg = connection(A, B, &conf, a.psk);
    (cfg.local_addrs, cfg.local_id) = (vec![A, A2], "gwz.interop.test".into());
    a.engine = Engine::new(conf.timing);
    a.engine.add_connection(cfg).unwrap();
    a.also = Some(A2);
    let mut b = side(B, A, &conf);
    let mut cfg = connection(B, A, &conf, b.psk);
    (cfg.remote_addrs, cfg.remote_id) = (vec![A2, A], "gwz.interop.test".into());
    b.engine = Engine::new(conf.timing);
    b.engine.add_connection(cfg).unwrap();
    (a, b)
}

#[test]
fn duplicates_are_found_by_identity_across_the_peers_addresses() {
    // Both ends initiate at once: B (the lesser identity) deletes its own
    // IKE SA, which it sees at A2, beside A's, which it sees at A.
    for (first_b, delay) in [(false, 0u64), (false, 3), (true, 3)] {
        let (a, b) = two_homed();
        let (a, b, what) = initiate_both(a, b, first_b, delay);
        assert_eq!((a.engine.stats().duplicates_deleted, b.engine.stats().duplicates_deleted), (0, 1), "{what}");
        assert!(b.log_has("with gwz.interop.test at 198.18.0.3, the other at 198.18.0.1"), "{what}");
        let (da, db) = (a.engine.describe(), b.engine.describe());
        assert!(da[0].contains(" Established I ") && db[0].contains(" Established R "), "A's stayed: {da:?} {db:?}");
        assert_live_pairs(&a, &b, 1);
        assert_always_sending(&a);
        assert_always_sending(&b);
    }
    // B initiates to A2 while A's IKE SA is up: no INITIAL_CONTACT (A
    // would drop its IKE SA at once, which B keeps), and B deletes the
    // new one once it is up; A's stays, the same IKE SA throughout.
    let (mut a, mut b) = two_homed();
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    let first = a.engine.describe();
    b.engine.initiate(5_000, "site", &mut b.crypto).unwrap();
    run_from(&mut a, &mut b, 5_000, 60_000, &mut all);
    let what = format!("{:?}\n{:?}", a.logs, b.logs);
    assert!(!a.log_has("INITIAL_CONTACT"), "{what}");
    assert_eq!((a.engine.stats().duplicates_deleted, b.engine.stats().duplicates_deleted), (0, 1), "{what}");
    assert_eq!((a.engine.ike_sa_count(), b.engine.ike_sa_count()), (1, 1), "{what}");
    assert_eq!(a.engine.describe()[0].split_whitespace().next(), first[0].split_whitespace().next(), "{what}");
    assert_live_pairs(&a, &b, 1);
    assert_always_sending(&a);
    assert_always_sending(&b);
}
