//! The responder under an IKE_SA_INIT flood: COOKIEs, the half-open cap, the per-source rate limit.
mod harness;

use harness::*;

#[test]
fn cookies_under_a_spoofed_flood_keep_state_bounded_and_let_real_peers_in() {
    // Always-on cookies: the initiator returns the cookie and gets in.
    let (a, b) = connect(&Conf::default(), &Conf { cookie_threshold: Some(0), ..Default::default() }, &mut all);
    assert_child_pair(&a, &b);
    assert_eq!(b.engine.stats().cookies_sent, 1);

    // A flood of IKE_SA_INIT from 5,000 spoofed sources.
    let mut b = side(B, A, &Conf { cookie_threshold: Some(8), any_peer: true, ..Default::default() });
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
    assert_eq!(b.engine.half_open_count(), 20);
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
