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
            start_action: StartAction::None,
            force_encap: false,
            keepalive_ms: 0,
            dpd_delay_ms: 0,
            dpd_action: DpdAction::Clear,
            rekey_time_ms: 0,
            reauth_time_ms: 0,
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
