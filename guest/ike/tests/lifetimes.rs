//! CHILD SA lifetimes by time and volume, soft and hard.
mod harness;

use harness::*;

#[test]
fn lifetimes_by_time_and_volume() {
    // Volume limits go to the data plane, soft ones less up to 10 %.
    let conf = Conf { rekey_packets: 1000, ..Default::default() };
    let (a, _) = connect(&conf, &Conf::default(), &mut all);
    let l = a.installed[0].limits;
    assert!((900..=1000).contains(&l.soft_packets) && l.hard_packets == 1100, "{l:?}");
    assert_eq!((l.soft_bytes, l.hard_bytes), (0, 0));
    let mut bad = side(A, B, &Conf::default());
    let err = bad
        .engine
        .add_connection(ConnectionConfig {
            name: "bad".into(),
            local_addrs: vec![],
            remote_addrs: vec![],
            local_id: "a.test".into(),
            remote_id: "%any".into(),
            psk: 1,
            ike_proposals: "aes256gcm16-prfsha256-x25519".into(),
            children: vec![ChildConfig {
                name: "c".into(),
                local_ts: vec!["10.0.0.0/8".into()],
                remote_ts: vec!["10.0.0.0/8".into()],
                esp_proposals: "aes256gcm16".into(),
                rekey_time_ms: 60_000,
                rekey_bytes: 0,
                rekey_packets: 0,
                life_time_ms: 30_000,
                life_bytes: 0,
                life_packets: 0,
            }],
            ..ConnectionConfig::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("life_time (30000) must be above rekey_time (60000)"), "{err}");
    bad.drain();

    // A hard time lifetime with no rekey: the SA is deleted and created
    // anew every 7 s, on both sides, without leaking a key.
    let conf = Conf { life_ms: 7_000, ..Default::default() };
    let (a, b) = connect(&conf, &Conf::default(), &mut all);
    let st = a.engine.stats();
    assert!(st.lifetime_hard >= 15, "{st:?}");
    assert_eq!(a.installed.len() as u64, st.lifetime_hard + 1);
    assert_eq!(a.engine.established(), (1, 1));
    assert_eq!(b.engine.established(), (1, 1));
    assert_live_pairs(&a, &b, 1);

    // Sequence numbers running low look like a soft limit: a rekey, and
    // the successor takes over before the hard end.
    let (mut a, mut b) = connect(&Conf::default(), &Conf::default(), &mut all);
    let x = a.installed[0].clone();
    a.engine.child_expired(200_000, x.outbound_spi, false, &mut a.crypto);
    a.engine.child_expired(200_000, x.outbound_spi, false, &mut a.crypto); // reported twice: one rekey
    run_from(&mut a, &mut b, 200_000, 201_000, &mut all);
    assert_eq!(a.engine.stats().lifetime_soft, 1);
    assert_eq!((a.installed.len(), b.installed.len()), (2, 2));
    assert_live_pairs(&a, &b, 1);
    // An expiry for an SA that is gone already changes nothing.
    a.engine.child_expired(202_000, x.outbound_spi, true, &mut a.crypto);
    a.drain();
    assert_eq!(a.engine.stats().lifetime_hard, 0);
    assert!(a.outbox.is_empty());
}

#[test]
fn child_schedules_follow_the_engine_not_the_install() {
    // What `list-sas` shows: the rekey and expiry as the engine holds them
    // now. A soft limit by traffic moves the rekey to now, and a rekey
    // under way has none; the install-time figures would say ~58 s.
    let conf = Conf { rekey_ms: 60_000, life_ms: 90_000, ..Default::default() };
    let mut a = side(A, B, &conf);
    let mut b = side(B, A, &conf);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    let x = a.installed[0].clone();
    let s = a.engine.child_schedules(1_000);
    assert_eq!(s.len(), 1, "{s:?}");
    let (spi, rekey, expire) = s[0];
    assert_eq!(spi, x.inbound_spi);
    let (rekey, expire) = (rekey.expect("rekey by time"), expire.expect("expiry by time"));
    assert!((53_000..=59_000).contains(&rekey), "rekey in {rekey} ms");
    assert!(expire > rekey && expire <= 89_000, "expire in {expire} ms");

    a.engine.child_expired(2_000, x.outbound_spi, false, &mut a.crypto);
    assert_eq!(a.engine.child_schedules(2_000)[0].1, Some(0), "a soft limit makes the rekey due now");
    a.engine.tick(2_000, &mut a.crypto);
    let s = a.engine.child_schedules(2_000);
    assert_eq!((s[0].0, s[0].1), (x.inbound_spi, None), "rekey under way: none scheduled {s:?}");
    assert!(s[0].2.is_some(), "the hard limit still holds: {s:?}");

    // The successor has a schedule of its own, counted from its install.
    run_from(&mut a, &mut b, 2_000, 3_000, &mut all);
    let s = a.engine.child_schedules(3_000);
    let new = s.iter().find(|c| c.0 != x.inbound_spi).expect("the new CHILD SA");
    // Installed at 2 s, rekey at 54-60 s after that (jittered), seen at 3 s.
    assert!(new.1.is_some_and(|r| (52_000..=59_000).contains(&r)), "{s:?}");
    assert!(new.2 > new.1, "{s:?}");
}
