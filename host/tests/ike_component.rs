//! The real IKE component against itself under wasmtime, with the host's
//! vault and ESP keystore: the CHILD SA keys both sides install work
//! together, and no secret ever crosses into a guest. Needs
//! `cargo xtask build` first.
use std::sync::Arc;

use wasmsec::control::bounds::{ChildBounds, ConnectionBounds};
use wasmsec::keys::Keystore;
use wasmsec::packet::PacketBuf;
use wasmsec::wasm::Runtime;
use wasmsec::wasm::esp::TrafficSelector;
use wasmsec::wasm::ike::{
    ChildConfig, ChildSa, Connection, Datagram, Endpoint, IkeInstance, SaChange, StartAction, Transmit,
};
use zeroize::Zeroizing;

/// Connection bounds that hold every IPv4 selector: the tests below
/// check the other claims.
static ANYWHERE: std::sync::LazyLock<ConnectionBounds> = std::sync::LazyLock::new(|| {
    let all = TrafficSelector::addresses(vec![0; 4], vec![255; 4]);
    let hourly = wasmsec_ike::ChildConfig { rekey_time_ms: 3_600_000, ..Default::default() };
    let child = ChildBounds::new("net", vec![all.clone()], vec![all], "aes256gcm16").unwrap();
    net(child.with_lifetimes(hourly).with_replay_window(64))
});

/// The bounds of a connection whose one child is `child` (the tests'
/// connections have one, "net").
fn net(child: ChildBounds) -> ConnectionBounds {
    ConnectionBounds::from_children(vec![child])
}

fn runtime() -> Runtime {
    let dir = wasmsec::daemon::built_components_dir();
    Runtime::with_ike(&dir.join("esp.wasm"), Some(&dir.join("ike.wasm"))).expect("components (run `cargo xtask build`)")
}

struct Side {
    ike: IkeInstance,
    esp: Arc<Keystore>,
    addr: [u8; 4],
    installed: Vec<wasmsec::wasm::ike::ChildSa>,
    /// Everything the test itself handed the guest (datagrams, config).
    given: Vec<Vec<u8>>,
}

fn side(rt: &Runtime, me: [u8; 4], peer: [u8; 4], ike: &str, esp: &str) -> Side {
    side_named(rt, me, peer, ike, esp, "test")
}

/// A side whose identities are `gwa.DOMAIN` and `gwb.DOMAIN`.
fn side_named(rt: &Runtime, me: [u8; 4], peer: [u8; 4], ike: &str, esp: &str, domain: &str) -> Side {
    let keys = Arc::new(Keystore::new());
    let mut inst = rt.ike_instance(wasmsec_crypto::Vault::new_audited(), keys.clone()).unwrap();
    inst.store.data_mut().transcript = Some(Vec::new());
    let psk = inst.store.data_mut().insert_psk("c", Zeroizing::new(b"a very secret pre-shared key".to_vec()));
    let (a, b) = (format!("gwa.{domain}"), format!("gwb.{domain}"));
    let (lid, rid, l, r) =
        if me[3] == 1 { (a, b, "10.1.0.0/16", "10.2.0.0/16") } else { (b, a, "10.2.0.0/16", "10.1.0.0/16") };
    let c = Connection {
        name: "c".into(),
        local_addrs: vec![me.to_vec()],
        remote_addrs: vec![peer.to_vec()],
        local_id: lid,
        remote_id: rid,
        psk,
        ike_proposals: ike.into(),
        children: vec![ChildConfig {
            name: "net".into(),
            local_ts: vec![l.into()],
            remote_ts: vec![r.into()],
            esp_proposals: esp.into(),
            rekey_time_ms: 0,
            rekey_bytes: 0,
            rekey_packets: 0,
            life_time_ms: 0,
            life_bytes: 0,
            life_packets: 0,
        }],
        start_action: StartAction::None,
        force_encap: false,
        nat_keepalive_ms: 0,
        dpd_delay_ms: 0,
        dpd_action: wasmsec::wasm::ike::DpdAction::Clear,
        rekey_time_ms: 0,
        reauth_time_ms: 0,
    };
    inst.add_connection(&c).unwrap().unwrap();
    let given = vec![format!("{c:?}").into_bytes()];
    Side { ike: inst, esp: keys, addr: me, installed: vec![], given }
}

/// Deliver what `from` has queued to `to`; true if anything was sent.
fn step(from: &mut Side, to: &mut Side) -> bool {
    let mut sent = false;
    let out = from.ike.poll().unwrap();
    for c in out.sa_changes {
        if let SaChange::Install(c) = c {
            from.installed.push(c);
        }
    }
    for t in out.transmits {
        if let Transmit::Datagram(d) = t {
            sent = true;
            assert_eq!(d.remote.address, to.addr.to_vec());
            let d = Datagram { local: d.remote, remote: d.local, data: d.data };
            to.given.push(d.data.clone());
            to.ike.handle_datagram(1, &d).unwrap();
        }
    }
    sent
}

/// Run both engines until neither has anything to send.
fn exchange(a: &mut Side, b: &mut Side) {
    for _ in 0..20 {
        let x = step(a, b);
        let y = step(b, a);
        if !x && !y {
            return;
        }
    }
    panic!("the exchange did not settle");
}

#[test]
fn two_ike_components_agree_and_never_see_a_secret() {
    let rt = runtime();
    // The first CHILD SA comes with IKE_AUTH; the second from a rekey that
    // the data plane's soft lifetime starts, with PFS in the first case.
    for (ike, esp) in
        [("aes256gcm16-prfsha384-x25519", "aes256gcm16-ecp256"), ("aes128-sha256-modp2048", "chacha20poly1305")]
    {
        let mut a = side(&rt, [192, 0, 2, 1], [192, 0, 2, 2], ike, esp);
        let mut b = side(&rt, [192, 0, 2, 2], [192, 0, 2, 1], ike, esp);
        a.ike.initiate(0, "c").unwrap().unwrap();
        exchange(&mut a, &mut b);
        assert_eq!((a.installed.len(), b.installed.len()), (1, 1), "{ike}");
        a.ike.child_expired(2, a.installed[0].inbound_spi, false).unwrap();
        a.ike.tick(2).unwrap();
        exchange(&mut a, &mut b);
        assert_eq!((a.installed.len(), b.installed.len()), (2, 2), "{ike}: rekeyed");
        let (ca, cb) = (&a.installed[1], &b.installed[1]);
        assert_eq!((ca.outbound_spi, ca.inbound_spi), (cb.inbound_spi, cb.outbound_spi));

        // A's outbound ESP key and B's inbound key are the same key: a
        // packet sealed by one opens with the other, both directions.
        for (tx, txk, rx, rxk) in
            [(&a.esp, ca.outbound_key, &b.esp, cb.inbound_key), (&b.esp, cb.outbound_key, &a.esp, ca.inbound_key)]
        {
            let mut p = PacketBuf::with_payload(&[0x45; 64]);
            let header = wasmsec_wire::esp::Repr { spi: 9, sequence_number: 1 };
            tx.get(txk).unwrap().seal(&mut p, &header, None, 2, 4).unwrap();
            rx.get(rxk).unwrap().open(&mut p, None).unwrap();
            assert_eq!(&p.data()[..64], &[0x45; 64]);
        }

        // The audit: every secret either vault created (PSK, g^ir, SK_d,
        // SK_a*, SK_e*, SK_p*, CHILD SA key material) against everything
        // that went into either guest: import results, datagrams, config.
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for s in [&a, &b] {
            secrets.extend(s.ike.store.data().vault().audited_secrets().iter().cloned());
            seen.extend(s.ike.store.data().transcript.clone().unwrap());
            seen.extend(s.given.iter().cloned());
        }
        assert!(secrets.len() >= 2 * 6, "the audit recorded the secrets ({})", secrets.len());
        assert!(seen.len() > 10);
        let leaked = |pool: &[Vec<u8>]| {
            secrets.iter().any(|sec| {
                // Any 16-byte window of a secret showing up counts as a leak.
                let probe = &sec[..16.min(sec.len())];
                pool.iter().any(|v| v.windows(probe.len()).any(|w| w == probe))
            })
        };
        assert!(!leaked(&seen), "{ike}: a secret reached a guest");
        // The search itself works: plant a secret and it is found.
        let mut planted = seen.clone();
        planted.push([b"xx".to_vec(), secrets[3].clone()].concat());
        assert!(leaked(&planted));
    }
}

/// An IKE_SA_INIT of `deletes` Delete payloads, each an IKE SA's with a
/// count of 65,535 zero-sized SPIs (8 bytes; RFC 7296 section 3.11 says 0).
fn init_of_empty_deletes(deletes: usize) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes()); // SPIi
    m.extend_from_slice(&[0; 8]); // SPIr
    m.extend_from_slice(&[42, 0x20, 34, 0x08, 0, 0, 0, 0]); // Delete, 2.0, IKE_SA_INIT, initiator, ID 0
    let len = 28 + 8 * deletes;
    m.extend_from_slice(&(len as u32).to_be_bytes());
    for i in 0..deletes {
        let next = if i + 1 == deletes { 0 } else { 42 };
        m.extend_from_slice(&[next, 0, 0, 8, 1, 0, 0xff, 0xff]);
    }
    m
}

#[test]
fn an_ike_sa_init_of_empty_deletes_does_not_exhaust_the_guest() {
    let rt = runtime();
    let mut a = side(&rt, [192, 0, 2, 1], [192, 0, 2, 2], "aes256gcm16-prfsha256-x25519", "aes256gcm16");
    let mut b = side(&rt, [192, 0, 2, 2], [192, 0, 2, 1], "aes256gcm16-prfsha256-x25519", "aes256gcm16");
    // 1,000 such payloads asked for ~786 MB of the guest's 128 MiB when
    // each zero-sized SPI was an allocation: the guest trapped.
    let d = Datagram {
        local: Endpoint { address: b.addr.to_vec(), port: 500 },
        remote: Endpoint { address: a.addr.to_vec(), port: 500 },
        data: init_of_empty_deletes(1000),
    };
    assert!(d.data.len() < 10_000, "within the engine's datagram limit");
    b.ike.handle_datagram(1, &d).expect("the guest survives the datagram");
    let out = b.ike.poll().expect("and answers the next call");
    assert!(out.transmits.is_empty(), "a malformed IKE_SA_INIT gets no answer");
    // The same guest still sets up an IKE SA with a real peer.
    a.ike.initiate(2, "c").unwrap().unwrap();
    exchange(&mut a, &mut b);
    assert_eq!((a.installed.len(), b.installed.len()), (1, 1));
}

/// The keys of a CHILD SA negotiated by connection `c` go to `c` only: an
/// install naming another connection (another tenant's, say) is refused
/// and its keys destroyed.
#[test]
fn child_keys_go_only_to_the_connection_whose_key_authenticated_the_peer() {
    use wasmsec::keys::EspAlgorithm;
    use wasmsec::wasm::ike::KeyClaim;
    let rt = runtime();
    let mut a = side(&rt, [192, 0, 2, 1], [192, 0, 2, 2], "aes256gcm16-prfsha256-x25519", "aes256gcm16");
    let mut b = side(&rt, [192, 0, 2, 2], [192, 0, 2, 1], "aes256gcm16-prfsha256-x25519", "aes256gcm16");
    // Another connection's key in A's vault, as a second tenant's would be.
    a.ike.store.data_mut().insert_psk("other", Zeroizing::new(b"another tenant's key".to_vec()));
    a.ike.initiate(0, "c").unwrap().unwrap();
    exchange(&mut a, &mut b);
    let alg = EspAlgorithm::from_iana(20, 256, 0).unwrap();
    let (ca, cb) = (a.installed[0].clone(), b.installed[0].clone());
    let any = Some(&*ANYWHERE);
    let st = a.ike.store.data_mut();
    let other = ChildSa { connection: "other".into(), ..ca.clone() };
    assert_eq!(st.claim_child_keys(&other, alg, any), KeyClaim::OtherConnection);
    assert!(a.esp.get(ca.outbound_key).is_none() && a.esp.get(ca.inbound_key).is_none(), "its keys are gone");
    assert_eq!(st.claim_child_keys(&ca, alg, any), KeyClaim::NotDerived, "and not claimable");
    let st = b.ike.store.data_mut();
    let swapped = ChildSa { inbound_key: cb.outbound_key, outbound_key: cb.inbound_key, ..cb.clone() };
    assert_eq!(st.claim_child_keys(&swapped, alg, any), KeyClaim::NotDerived, "swapped");
    let KeyClaim::Granted { lineage, life_ms, replay_window, .. } = st.claim_child_keys(&cb, alg, any) else {
        panic!("B's own CHILD SA")
    };
    assert_eq!(life_ms, 3_960_000, "the host holds it to its hard lifetime, 110 % of the rekey time");
    assert_eq!(replay_window, 64, "and installs it with its child's anti-replay window");
    assert_eq!(st.claim_child_keys(&cb, alg, any), KeyClaim::NotDerived, "once");
    // B's host saw A's IKE_AUTH verify, from A's address: that is where
    // the CHILD SAs of that IKE SA (and of its rekeys) may send.
    assert_eq!(st.verified_source(lineage), Some("192.0.2.1:500".parse().unwrap()));
    a.ike.child_expired(2, a.installed[0].inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    let elsewhere = ChildSa { remote: Endpoint { address: vec![192, 0, 2, 99], port: 500 }, ..rekeyed };
    assert_eq!(b.ike.store.data_mut().claim_child_keys(&elsewhere, alg, any), KeyClaim::ElsewhereThanPeer);
    // ESP from another address of B's than the one A sent its messages to.
    a.ike.child_expired(2, a.installed.last().unwrap().inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    assert_eq!(rekeyed.local.address, [192, 0, 2, 2], "the honest guest names where A's messages arrived");
    let from_elsewhere = ChildSa { local: Endpoint { address: vec![192, 0, 2, 77], port: 500 }, ..rekeyed.clone() };
    let claim = b.ike.store.data_mut().claim_child_keys(&from_elsewhere, alg, any);
    assert_eq!(claim, KeyClaim::ElsewhereThanUs);
    assert!(b.esp.get(rekeyed.outbound_key).is_none() && b.esp.get(rekeyed.inbound_key).is_none(), "its keys are gone");
    // A connection configured for other subnets than the SA's own.
    a.ike.child_expired(2, a.installed.last().unwrap().inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    let elsewhere = TrafficSelector::addresses(vec![203, 0, 113, 0], vec![203, 0, 113, 255]);
    let narrow = net(ChildBounds::new("net", vec![elsewhere.clone()], vec![elsewhere], "aes256gcm16").unwrap());
    let claim = b.ike.store.data_mut().claim_child_keys(&rekeyed, alg, Some(&narrow));
    assert_eq!(claim, KeyClaim::OutsideConnection);
    assert!(b.esp.get(rekeyed.outbound_key).is_none() && b.esp.get(rekeyed.inbound_key).is_none(), "its keys are gone");
    let claim = b.ike.store.data_mut().claim_child_keys(&rekeyed, alg, any);
    assert_eq!(claim, KeyClaim::NotDerived, "and not claimable");
    // A connection that proposes another ESP transform than the SA's.
    a.ike.child_expired(2, a.installed.last().unwrap().inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    let all = TrafficSelector::addresses(vec![0; 4], vec![255; 4]);
    let other = net(ChildBounds::new("net", vec![all.clone()], vec![all], "aes128gcm16,chacha20poly1305").unwrap());
    let claim = b.ike.store.data_mut().claim_child_keys(&rekeyed, alg, Some(&other));
    assert_eq!(claim, KeyClaim::TransformNotOffered);
    assert!(b.esp.get(rekeyed.outbound_key).is_none() && b.esp.get(rekeyed.inbound_key).is_none(), "its keys are gone");
    // A connection with a hard limit in bytes, which the SA does not have.
    a.ike.child_expired(2, a.installed.last().unwrap().inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    assert_eq!(rekeyed.limits.hard_bytes, 0);
    let all = TrafficSelector::addresses(vec![0; 4], vec![255; 4]);
    let gigabyte = wasmsec_ike::ChildConfig { rekey_time_ms: 3_600_000, life_bytes: 1 << 30, ..Default::default() };
    let capped =
        net(ChildBounds::new("net", vec![all.clone()], vec![all], "aes256gcm16").unwrap().with_lifetimes(gigabyte));
    let claim = b.ike.store.data_mut().claim_child_keys(&rekeyed, alg, Some(&capped));
    assert_eq!(claim, KeyClaim::BeyondLifetime);
    // A child the connection does not have: held to nothing, not to the
    // connection's other children.
    a.ike.child_expired(2, a.installed.last().unwrap().inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    let unknown = ChildSa { child: "not-configured".into(), ..rekeyed };
    assert_eq!(b.ike.store.data_mut().claim_child_keys(&unknown, alg, any), KeyClaim::OutsideConnection);
    assert!(b.esp.get(unknown.outbound_key).is_none() && b.esp.get(unknown.inbound_key).is_none(), "its keys are gone");
    // An install refused before its claim (an address the data plane
    // cannot take) forfeits its keys too.
    a.ike.child_expired(2, a.installed.last().unwrap().inbound_spi, false).unwrap();
    a.ike.tick(2).unwrap();
    exchange(&mut a, &mut b);
    let rekeyed = b.installed.last().unwrap().clone();
    b.ike.store.data_mut().forfeit_child_keys(&rekeyed);
    assert!(b.esp.get(rekeyed.outbound_key).is_none() && b.esp.get(rekeyed.inbound_key).is_none(), "its keys are gone");
    assert_eq!(b.ike.store.data_mut().claim_child_keys(&rekeyed, alg, any), KeyClaim::NotDerived);
}

/// A policy's grant bounds what the host installs: B's policy module
/// (`policy-allow-list.wasm`, which grants `*.wasmsec.test` peers
/// 10.0.0.0/8 and 192.168.0.0/16) accepts A, and a CHILD SA widened past
/// those subnets is refused, where A, with no module, narrows nothing.
#[test]
fn a_policy_grant_bounds_the_child_sas_installed() {
    use wasmsec::keys::EspAlgorithm;
    use wasmsec::policy::PolicySlot;
    use wasmsec::wasm::ike::KeyClaim;
    let rt = runtime();
    let (ike, esp) = ("aes256gcm16-prfsha256-x25519", "aes256gcm16");
    let mut a = side_named(&rt, [192, 0, 2, 1], [192, 0, 2, 2], ike, esp, "wasmsec.test");
    let mut b = side_named(&rt, [192, 0, 2, 2], [192, 0, 2, 1], ike, esp, "wasmsec.test");
    let (engines, stop) = wasmsec::wasm::policy::standalone_engines().unwrap();
    let module = wasmsec::daemon::built_components_dir().join("policy-allow-list.wasm");
    let (served, _) = wasmsec::wasm::policy::load(&engines, &module, None, std::time::Instant::now()).unwrap();
    let slot = PolicySlot::default();
    slot.swap(served);
    b.ike.store.data_mut().policy.global = Some(Arc::new(slot));
    a.ike.initiate(0, "c").unwrap().unwrap();
    exchange(&mut a, &mut b);
    assert_eq!((a.installed.len(), b.installed.len()), (1, 1), "B's policy accepted A");
    let alg = EspAlgorithm::from_iana(20, 256, 0).unwrap();
    let everything = vec![TrafficSelector::addresses(vec![0; 4], vec![255; 4])];
    let wide_b = ChildSa { remote_ts: everything.clone(), ..b.installed[0].clone() };
    let any = Some(&*ANYWHERE);
    assert_eq!(b.ike.store.data_mut().claim_child_keys(&wide_b, alg, any), KeyClaim::OutsideGrant);
    let wide_a = ChildSa { remote_ts: everything, ..a.installed[0].clone() };
    assert!(
        matches!(a.ike.store.data_mut().claim_child_keys(&wide_a, alg, any), KeyClaim::Granted { .. }),
        "no grant narrows A's"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
