//! The responder under an IKE_SA_INIT flood: COOKIEs, the half-open caps
//! (count, bytes, per source), the per-source rate limit, oversized messages.
mod harness;

use harness::*;

#[test]
fn cookies_under_a_spoofed_flood_keep_state_bounded_and_let_real_peers_in() {
    // Always-on cookies: the initiator returns the cookie and gets in.
    let (a, b) = connect(
        &Conf::default(),
        &Conf { timing: Timing { cookie_threshold: 0, ..Timing::default() }, ..Default::default() },
        &mut all,
    );
    assert_child_pair(&a, &b);
    assert_eq!(b.engine.stats().cookies_sent, 1);

    // A flood of IKE_SA_INIT from 5,000 spoofed sources.
    let timing = Timing { cookie_threshold: 8, max_half_open: 100, ..Timing::default() };
    let mut b = side(B, A, &Conf { timing, any_peer: true, ..Default::default() });
    let mut c = side(A, B, &Conf::default());
    c.engine.initiate(0, "site", &mut c.crypto).unwrap();
    c.drain();
    let template = c.outbox.remove(0).data;
    for n in 0..5000u32 {
        let mut m = template.clone();
        m[..4].copy_from_slice(&n.to_be_bytes()); // a new SPIi
        let spoofed = IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8));
        let d =
            Datagram { local: Endpoint { addr: B, port: 500 }, remote: Endpoint { addr: spoofed, port: 500 }, data: m };
        b.engine.handle_datagram(1, d, &mut b.crypto);
    }
    b.drain();
    let st = b.engine.stats();
    assert_eq!(b.engine.half_open_count(), 8, "state only up to the cookie threshold");
    assert!(b.engine.ike_sa_count() <= 8);
    assert_eq!(st.cookies_sent, 5000 - 8);
    assert!(b.crypto.vault.len() <= 9, "no DH or key material for cookie-less requests");
    b.outbox.clear();
    // A real initiator still gets through, by returning the cookie.
    let mut a = side(A, B, &Conf::default());
    a.engine.initiate(2, "site", &mut a.crypto).unwrap();
    let mut n = 0;
    pump(&mut a, &mut b, 2, &mut all, &mut n);
    assert_eq!(a.up, 1, "{:?} {:?}", a.logs, b.logs);
    assert_eq!(a.installed.len(), 1);
    assert_eq!(b.engine.stats().cookies_sent, 5000 - 8 + 1);
    // Half-open SAs of the flood expire; the cap then frees up.
    b.engine.tick(60_000, &mut b.crypto);
    assert_eq!(b.engine.half_open_count(), 0);
}

#[test]
fn one_source_cannot_flood_ike_sa_init() {
    let mut b = side(B, A, &Conf { any_peer: true, ..Default::default() });
    let mut c = side(A, B, &Conf::default());
    c.engine.initiate(0, "site", &mut c.crypto).unwrap();
    c.drain();
    let template = c.outbox.remove(0).data;
    let src = IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9));
    let send = |b: &mut Side, at: u64, n: u32| {
        for i in 0..n {
            let mut m = template.clone();
            m[..4].copy_from_slice(&(at as u32 * 1000 + i + 1).to_be_bytes());
            let d =
                Datagram { local: Endpoint { addr: B, port: 500 }, remote: Endpoint { addr: src, port: 500 }, data: m };
            b.engine.handle_datagram(at, d, &mut b.crypto);
        }
    };
    send(&mut b, 10, 100);
    assert_eq!(b.engine.stats().rate_limited, 80, "a burst of 20 from one source, the rest dropped");
    let per_source = Timing::default().half_open_per_source;
    assert_eq!(b.engine.half_open_count(), per_source, "of those, one source holds at most {per_source} half-open");
    assert_eq!(b.engine.stats().half_open_drops, 20 - per_source as u64);
    // A second later the bucket has refilled.
    send(&mut b, 1010, 100);
    assert_eq!(b.engine.stats().rate_limited, 160);
    // Other sources are not affected.
    let mut a = side(A, B, &Conf::default());
    a.engine.initiate(1010, "site", &mut a.crypto).unwrap();
    let mut n = 0;
    pump(&mut a, &mut b, 1010, &mut all, &mut n);
    assert_eq!(a.up, 1);
}

#[test]
fn large_messages_from_several_sources_stay_within_the_half_open_budget() {
    // No COOKIEs here: these sources are real and would return them.
    let timing = Timing { cookie_threshold: usize::MAX, ..Timing::default() };
    let mut b = side(B, A, &Conf { timing, any_peer: true, ..Default::default() });
    let mut c = side(A, B, &Conf::default());
    c.engine.initiate(0, "site", &mut c.crypto).unwrap();
    c.drain();
    let mut m = Message::parse(&c.outbox.remove(0).data).unwrap();
    // Padded with a status notify of an unassigned type (ignored, section 3.10.1).
    m.payloads.push(Payload::notify(NotifyType::from(40_000), vec![0x5a; 8_000]));
    let big = m.emit();
    let timing = Timing::default();
    assert!(big.len() > 8_000 && big.len() <= timing.max_message);
    let mut oversized = big.clone();
    oversized.extend_from_slice(&vec![0; timing.max_message]);
    let (mut sent, mut seq) = (0u64, 0u32);
    // 40 real sources, each its burst of large IKE_SA_INIT, plus an
    // oversized message each: 800 large requests in all.
    for src in 0..40u8 {
        let from = Endpoint { addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, src)), port: 500 };
        for _ in 0..20 {
            seq += 1;
            let mut d = big.clone();
            d[..4].copy_from_slice(&seq.to_be_bytes());
            b.engine.handle_datagram(
                5,
                Datagram { local: Endpoint { addr: B, port: 500 }, remote: from, data: d },
                &mut b.crypto,
            );
            sent += 1;
        }
        let d = Datagram { local: Endpoint { addr: B, port: 500 }, remote: from, data: oversized.clone() };
        b.engine.handle_datagram(5, d, &mut b.crypto);
    }
    b.drain();
    b.outbox.clear();
    let st = b.engine.stats();
    assert_eq!(st.oversize, 40, "oversized messages are dropped unread");
    let (held, bytes) = (b.engine.half_open_count(), b.engine.half_open_bytes());
    println!("{sent} large requests: {held} half-open SAs holding {bytes} bytes, {} dropped", st.half_open_drops);
    // The per-source cap would allow 40 x 16 = 640; the byte budget binds first.
    assert!(bytes <= timing.half_open_budget, "{bytes} bytes held");
    assert!(held < 40 * timing.half_open_per_source && held * big.len() > timing.half_open_budget / 2, "{held}");
    assert_eq!(st.half_open_drops, sent - held as u64, "every request not held was dropped: {st:?}");
    // A real initiator from another address still gets in (by COOKIE if the
    // responder asks for one).
    let mut a = side(A, B, &Conf::default());
    a.engine.initiate(10, "site", &mut a.crypto).unwrap();
    let mut n = 0;
    pump(&mut a, &mut b, 10, &mut all, &mut n);
    assert_eq!(a.up, 1, "{:?}", b.logs.last());
    // They all time out; the budget is free again.
    b.engine.tick(60_000, &mut b.crypto);
    assert_eq!(b.engine.half_open_count(), 0);
}
