//! The real allow-list policy component under the host's loader: it is
//! compiled once and then loaded from the artifact cache, passes its
//! self-test, decides; a file that is not a component, and a component of
//! another world (it imports the host's crypto), are refused and the
//! module serving stays. Needs `cargo xtask build` first.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmsec::policy::watch::Reloader;
use wasmsec::policy::{AuthMethod, AuthorizeRequest, Decision, IdKind, Identity, PolicySlot, Source};
use wasmsec::wasm::Runtime;

fn request(id: &str, ts: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        connection: "c".into(),
        peer: Identity { kind: IdKind::Fqdn, value: id.into() },
        auth: AuthMethod::Psk,
        peer_address: "198.51.100.1:500".into(),
        local_address: "198.51.100.2:500".into(),
        peer_ts: vec![ts.into()],
        local_ts: vec![],
    }
}

#[test]
fn modules_are_checked_before_they_serve() {
    let dir = wasmsec::daemon::built_components_dir();
    let rt = Runtime::new(&dir.join("esp.wasm")).expect("components (run `cargo xtask build`)");
    let tmp = std::env::temp_dir().join(format!("wasmsec-policy-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let cache = wasmsec::wasm::policy::cache_dir(&tmp.join("cache")).unwrap();
    let file = tmp.join("policy.wasm");
    let slot = Arc::new(PolicySlot::default());
    let r = Reloader::new(slot.clone(), rt.policy_engines().clone(), file.clone(), Some(cache));

    // No module yet: everyone is accepted.
    assert!(matches!(slot.authorize(&request("evil.example", "10.0.0.0/8"), ""), Decision::Accept(_)));

    std::fs::copy(dir.join("policy-allow-list.wasm"), &file).unwrap();
    assert_eq!(r.reload(Instant::now()).unwrap(), Some(Source::Compiled));
    assert_eq!(r.reload(Instant::now()).unwrap(), None, "same bytes: nothing to do");
    assert!(matches!(slot.authorize(&request("gwa.interop.test", "198.18.1.0/24"), ""), Decision::Accept(_)));
    // A module's accept without a tenant puts the peer in its connection's.
    match slot.authorize(&request("gwa.interop.test", "198.18.1.0/24"), "blue") {
        Decision::Accept(g) => assert_eq!(g.tenant, "blue"),
        d => panic!("{d:?}"),
    }
    match slot.authorize(&request("gwa.interop.test", "10.1.0.0/16"), "") {
        Decision::Reject(why) => assert!(why.contains("may not use 10.1.0.0/16"), "{why}"),
        d => panic!("{d:?}"),
    }
    let serving = slot.current().unwrap().hash.clone();

    // Not a component: refused, the allow-list keeps answering.
    std::fs::write(&file, b"\0asm but not really").unwrap();
    let e = r.reload(Instant::now()).unwrap_err();
    assert!(format!("{e:#}").contains("not a WebAssembly component"), "{e:#}");
    // Another world: the IKE engine imports the host's crypto.
    std::fs::copy(dir.join("ike.wasm"), &file).unwrap();
    let e = r.reload(Instant::now()).unwrap_err();
    assert!(format!("{e:#}").contains("may import nothing"), "{e:#}");
    assert_eq!(slot.current().unwrap().hash, serving);
    assert!(matches!(slot.authorize(&request("evil.example", "198.18.1.0/24"), ""), Decision::Reject(_)));

    // Back to the allow-list: from the artifact cache this time, and held
    // to the operator's cases beside it (the shipped table passes).
    std::fs::copy(dir.join("policy-allow-list.wasm"), &file).unwrap();
    let cases = wasmsec::policy::cases::path_for(&file);
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/allow-list/cases.json"), &cases).unwrap();
    assert_eq!(r.reload(Instant::now()).unwrap(), Some(Source::Cached));
    // A table the module disagrees with refuses it (the change of the
    // table alone reloads).
    std::fs::write(&cases, r#"{"cases": [{"peer": "evil.example", "expect": "accept"}]}"#).unwrap();
    let e = r.reload(Instant::now()).unwrap_err();
    assert!(format!("{e:#}").contains("case 1 of 1: evil.example: expected accept, the module rejected"), "{e:#}");
    let s = slot.stats.snapshot();
    assert_eq!((s[0], s[1], s[4], s[5]), (2, 2, 2, 3), "accepted, rejected, swaps, refused: {s:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Built component `component` loaded into a new slot (with the table of
/// cases of `policies/CASES` beside it), in a temporary directory of its
/// own (one per call); the runtime stays alive as long as the slot is used.
fn serving(component: &str, cases: Option<&str>) -> (Runtime, Arc<PolicySlot>, std::path::PathBuf) {
    let dir = wasmsec::daemon::built_components_dir();
    let rt = Runtime::new(&dir.join("esp.wasm")).expect("components (run `cargo xtask build`)");
    // Tests run in parallel threads and two of them serve the same
    // component: each call gets a directory of its own.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("wasmsec-policy-{component}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join(component);
    std::fs::copy(dir.join(component), &file).unwrap_or_else(|e| panic!("{component} (run `cargo xtask guests`): {e}"));
    if let Some(c) = cases {
        let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies").join(c).join("cases.json");
        std::fs::copy(table, wasmsec::policy::cases::path_for(&file)).unwrap();
    }
    let slot = Arc::new(PolicySlot::default());
    Reloader::new(slot.clone(), rt.policy_engines().clone(), file, None).reload(Instant::now()).unwrap();
    (rt, slot, tmp)
}

/// A grant names the tenant of the connection the peer came in on, or
/// none; naming another tenant is a reject (counted as `wrong_tenant`), so no
/// module can move a peer into another tenant's routing domain.
#[test]
fn a_grant_cannot_name_another_tenant() {
    let (_rt, slot, tmp) = serving("hostile-policy.wasm", None);
    let named = request("tenant-blue.example", "10.0.0.0/24");
    match slot.authorize(&named, "blue") {
        Decision::Accept(g) => assert_eq!(g.tenant, "blue"),
        d => panic!("{d:?}"),
    }
    for own in ["red", ""] {
        match slot.authorize(&named, own) {
            Decision::Reject(why) => assert!(why.contains("policy named tenant \"blue\""), "{why}"),
            d => panic!("{own}: {d:?}"),
        }
    }
    let s = slot.stats.snapshot();
    assert_eq!((s[2], s[3]), (0, 2), "no failure, two accepts naming the wrong tenant: {s:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The tenant-map example, with the table of cases shipped beside it:
/// its answer sorts a peer into a tenant, and the host holds that against
/// the connection the peer came in on.
#[test]
fn the_tenant_map_sorts_peers_into_their_connections_tenants() {
    let (_rt, slot, tmp) = serving("policy-tenant-map.wasm", Some("tenant-map"));
    let ask = |id: &str, local: &str, tenant: &str| {
        let r = AuthorizeRequest { local_address: local.into(), ..request(id, "10.0.0.0/24") };
        slot.authorize(&r, tenant)
    };
    let pop = "198.51.100.2:500";
    match ask("gw1.a.wasmsec.test", pop, "a") {
        Decision::Accept(g) => assert_eq!(g.tenant, "a"),
        d => panic!("{d:?}"),
    }
    // b's identity on a's connection, a's identity at b's own address.
    for (id, local) in [("gw1.b.wasmsec.test", pop), ("gw1.a.wasmsec.test", "192.0.2.20:4500")] {
        match ask(id, local, "a") {
            Decision::Reject(why) => {
                assert!(
                    why.contains("policy named tenant \"b\", but connection \"c\" belongs to tenant \"a\""),
                    "{why}"
                )
            }
            d => panic!("{id} at {local}: {d:?}"),
        }
    }
    match ask("evil.example", pop, "a") {
        Decision::Reject(why) => assert!(why.contains("maps to no tenant"), "{why}"),
        d => panic!("{d:?}"),
    }
    let s = slot.stats.snapshot();
    assert_eq!((s[0], s[1], s[2], s[3]), (1, 1, 0, 2), "accepted, rejected, failed, wrong tenant: {s:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A reject's reason is the module's text, and may carry the peer's own
/// identity: it reaches the log and the IKE engine bounded, with control
/// characters escaped, so neither a module nor a peer can forge a log line.
#[test]
fn a_reject_reason_is_bounded_and_escaped() {
    let (_rt, slot, tmp) = serving("hostile-policy.wasm", None);
    let id = format!("reject.a\nforged line\u{1b}[2J{}", "x".repeat(500));
    match slot.authorize(&request(&id, "10.0.0.0/24"), "") {
        Decision::Reject(why) => {
            assert!(why.starts_with("reject.a\\nforged line\\u{1b}[2J"), "{why}");
            assert!(!why.chars().any(char::is_control), "{why:?}");
            assert_eq!(why.chars().count(), wasmsec::wasm::GUEST_REASON_CHARS + 1, "cut, with an ellipsis");
        }
        d => panic!("{d:?}"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
