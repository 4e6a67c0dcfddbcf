//! A trapped IKE guest is replaced by a new engine that takes up its IKE
//! SAs from their checkpoints: the SAs carry on, with their message IDs,
//! and the next CHILD and IKE SA rekeys work.
mod harness;

use harness::*;

/// Replace `s`'s engine by a new one with the same connection, restored
/// from the checkpoints `s` kept; returns how many IKE SAs came back.
fn replace(s: &mut Side, peer: IpAddr, conf: &Conf) -> usize {
    s.engine = engine(s.addr, peer, conf, s.psk);
    let checkpoints: Vec<Vec<u8>> = s.checkpoints.values().cloned().collect();
    s.engine.restore(&checkpoints).unwrap()
}

#[test]
fn a_replaced_engine_carries_on_from_its_checkpoints() {
    let conf_a = Conf { rekey_ms: 20_000, ike_rekey_ms: 45_000, ..Default::default() };
    let conf_b = Conf::default();
    // Two minutes with A rekeying: several generations already.
    let (mut a, mut b) = connect(&conf_a, &conf_b, &mut all);
    assert_live_pairs(&a, &b, 1);
    assert_eq!(b.checkpoints.len(), 1, "B keeps a checkpoint of its one IKE SA");
    let before = b.engine.established();
    // B's guest traps: the host starts a new engine from the checkpoints.
    // The CHILD SAs live on in the data path (the host's `installed`).
    assert_eq!(replace(&mut b, A, &conf_b), 1);
    assert_eq!(b.engine.established(), before, "the IKE SA and its CHILD SA are back");
    let installed = (a.installed.len(), b.installed.len());
    let ike_rekeys = a.down;
    // Time passes: CHILD rekeys every ~20 s and IKE rekeys every ~45 s,
    // initiated by A, answered by the new B with the message IDs it had.
    run_from(&mut a, &mut b, 120_001, 220_000, &mut all);
    assert!(a.installed.len() >= installed.0 + 4, "{:?}", b.logs);
    assert!(b.installed.len() >= installed.1 + 4);
    assert_eq!(a.engine.established(), (1, 1));
    assert_eq!(b.engine.established(), (1, 1));
    assert_live_pairs(&a, &b, 1);
    assert!(a.down >= ike_rekeys + 2, "IKE rekeys went on: {:?}", a.logs);
    assert!(b.logs.iter().all(|l| !l.contains("initiating")), "B never had to start over");
    // B's checkpoints follow: one IKE SA (the rekeyed one), not the old.
    assert_eq!(b.checkpoints.len(), 1);
    // And a second replacement, in the middle of everything, works too.
    assert_eq!(replace(&mut b, A, &conf_b), 1);
    run_from(&mut a, &mut b, 220_001, 280_000, &mut all);
    assert_eq!((a.engine.established(), b.engine.established()), ((1, 1), (1, 1)));
    assert_live_pairs(&a, &b, 1);
}

#[test]
fn checkpoints_of_another_format_are_refused_not_guessed() {
    let conf = Conf::default();
    let (_, mut b) = connect(&Conf::default(), &conf, &mut all);
    let mut bad: Vec<Vec<u8>> = b.checkpoints.values().cloned().collect();
    bad[0][0] = 99;
    b.engine = engine(B, A, &conf, b.psk);
    assert!(b.engine.restore(&bad).is_err());
    assert!(b.engine.restore(&[vec![1, 2, 3]]).is_err());
    assert_eq!(b.engine.established(), (0, 0));
}

#[test]
fn the_rekeying_side_replaced_keeps_its_timers_and_requests() {
    let conf_a = Conf { rekey_ms: 15_000, ike_rekey_ms: 40_000, ..Default::default() };
    let conf_b = Conf::default();
    let (mut a, mut b) = connect(&conf_a, &conf_b, &mut all);
    let installed = a.installed.len();
    // Replace A at several points, some with a rekey request in flight
    // (its retransmission then comes from the restored engine).
    let mut now = 120_000;
    for step in 0..6 {
        // What the engine holds is every secret but the PSK: a host that
        // destroys the rest after a replacement loses nothing live.
        let held = a.engine.held_keys();
        let vault = a.crypto.vault.handles().into_iter().filter(|&h| h != a.psk);
        let mut secrets: Vec<u64> = vault.chain(a.crypto.esp.keys().copied()).collect();
        secrets.sort_unstable();
        assert_eq!(held, secrets, "step {step}");
        assert_eq!(replace(&mut a, B, &conf_a), 1, "step {step}");
        assert_eq!(a.engine.held_keys(), held, "step {step}: the restored SAs hold what they held");
        run_from(&mut a, &mut b, now + 1, now + 17_000, &mut all);
        now += 17_000;
    }
    assert!(a.installed.len() >= installed + 5, "{:?}", a.logs);
    assert_eq!((a.engine.established(), b.engine.established()), ((1, 1), (1, 1)));
    assert_live_pairs(&a, &b, 1);
    let starts = a.logs.iter().filter(|l| l.contains("initiating IKE_SA")).count();
    assert_eq!(starts, 1, "A never had to start over: {:?}", a.logs);
}

/// A replacement gets the connections loaded now, not every one that
/// ever was (a PoP's reloads would otherwise pile them up): the
/// checkpoints name their connection, which may have another index there.
#[test]
fn checkpoints_find_their_connection_by_name_under_another_index() {
    let conf = Conf { rekey_ms: 20_000, ..Default::default() };
    let (mut a, mut b) = connect(&conf, &conf, &mut all);
    let checkpoints: Vec<Vec<u8>> = b.checkpoints.values().cloned().collect();
    // Other connections first: "site" is the fourth here, the first there.
    let mut e = Engine::new(conf.timing);
    for k in 0..3 {
        let mut other = connection(B, A, &conf, b.psk);
        other.name = format!("other{k}");
        other.remote_addrs = vec![format!("192.0.2.{k}").parse().unwrap()];
        other.remote_id = format!("other{k}.test");
        e.add_connection(other).unwrap();
    }
    e.add_connection(connection(B, A, &conf, b.psk)).unwrap();
    b.engine = e;
    assert_eq!(b.engine.restore(&checkpoints).unwrap(), 1);
    assert_eq!(b.engine.established(), (1, 1));
    // It carries on under "site": CHILD SA rekeys, answered by B.
    let installed = b.installed.len();
    run_from(&mut a, &mut b, 120_001, 180_000, &mut all);
    assert!(b.installed.len() >= installed + 2, "{:?}", b.logs);
    assert_eq!((a.engine.established(), b.engine.established()), ((1, 1), (1, 1)));
    assert_live_pairs(&a, &b, 1);
    // Without "site" loaded the checkpoints are refused, none taken.
    let checkpoints: Vec<Vec<u8>> = b.checkpoints.values().cloned().collect();
    let mut other = connection(B, A, &conf, b.psk);
    other.name = "renamed".into();
    let mut e = Engine::new(conf.timing);
    e.add_connection(other).unwrap();
    let err = e.restore(&checkpoints).unwrap_err().to_string();
    assert!(err.contains("\"site\", which is not loaded"), "{err}");
    assert_eq!(e.established(), (0, 0));
}

/// A reauthentication under way when the guest traps: its new IKE SA was
/// still being set up (no checkpoint) and is lost with the instance. The
/// restored old IKE SA had stopped its schedule for it, and must start
/// over instead of never reauthenticating again.
#[test]
fn a_reauthentication_the_trap_lost_starts_again() {
    let conf_a = Conf { reauth_ms: 20_000, ..Default::default() };
    let conf_b = Conf::default();
    let mut a = side(A, B, &conf_a);
    let mut b = side(B, A, &conf_b);
    a.engine.initiate(0, "site", &mut a.crypto).unwrap();
    run(&mut a, &mut b, 1_000, &mut all);
    assert_eq!(a.engine.established(), (1, 1));
    // The reauthentication starts (about 20 s in) and its IKE_SA_INIT gets
    // no answer: it is under way when A traps.
    let no_init = |_: usize, d: &Datagram| d.data.get(18) != Some(&ExchangeType::IkeSaInit.raw());
    run_from(&mut a, &mut b, 1_000, 26_000, &mut no_init.clone());
    assert!(a.log_has("reauthenticating"), "{:?}", a.logs);
    assert_eq!(a.engine.stats().reauths, 1);
    assert_eq!(replace(&mut a, B, &conf_a), 1, "the old IKE SA comes back, the half-open one does not");
    run_from(&mut a, &mut b, 26_001, 60_000, &mut all);
    assert!(a.engine.stats().reauths >= 1, "the restored IKE SA reauthenticates again: {:?}", a.logs);
    assert!(a.log_has("reauthenticated"), "{:?}", a.logs);
    assert_eq!((a.engine.established(), b.engine.established()), ((1, 1), (1, 1)));
    assert_live_pairs(&a, &b, 1);
}
