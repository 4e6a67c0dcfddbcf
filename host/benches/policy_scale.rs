//! Policy scale benchmark (#13): one policy module (the allow-list),
//! compiled once, instantiated for N tenants in one process, each in a
//! store of its own as the daemon would hold them.
//!
//! Prints, for N = 10,000 (or `WASMSEC_TENANTS`): the time to instantiate
//! one (mean and p99), the resident memory each instance adds (after
//! instantiation, and after each made its first decision, which touches
//! its stack and heap), and the linear memory each reserved. Anchor, in
//! the same run: the same module's decision on an instance made before.
//! Run: `cargo xtask bench-policy` (builds the components first).
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmsec::policy::watch::Reloader;
use wasmsec::policy::{AuthMethod, AuthorizeRequest, Decision, IdKind, Identity, PolicySlot};
use wasmsec::wasm::Runtime;
use wasmsec::wasm::policy::{PolicyInstance, Served};

/// Resident set size of this process, bytes (/proc/self/statm).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn request() -> AuthorizeRequest {
    AuthorizeRequest {
        connection: "c".into(),
        peer: Identity { kind: IdKind::Fqdn, value: "gwa.interop.test".into() },
        auth: AuthMethod::Psk,
        peer_address: "198.51.100.1:500".into(),
        local_address: "198.51.100.2:500".into(),
        peer_ts: vec!["198.18.1.0/24".into()],
        local_ts: vec![],
    }
}

fn main() {
    let n: usize = std::env::var("WASMSEC_TENANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = wasmsec::daemon::built_components_dir();
    let rt = Runtime::new(&dir.join("esp.wasm")).expect("components (run `cargo xtask build`)");
    let tmp = std::env::temp_dir().join(format!("wasmsec-policy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("policy.wasm");
    std::fs::copy(dir.join("policy-allow-list.wasm"), &file).unwrap();
    let slot = Arc::new(PolicySlot::default());
    let r = Reloader::new(slot.clone(), rt.policy_engines().clone(), file, None);
    r.reload(Instant::now()).expect("the allow-list loads");
    let module = slot.current().unwrap();
    let req = request();

    // Warm-up: the first instances map the pool's slots.
    for _ in 0..100 {
        drop(module.new_instance().unwrap());
    }
    let before = rss();
    let (mut times, mut instances) = instantiate(&module, n);
    let after_instantiate = rss();
    let t = Instant::now();
    for i in &mut instances {
        assert!(matches!(i.authorize(&req), Ok(Decision::Accept(_))));
    }
    let first_decisions = t.elapsed();
    let after_decide = rss();
    let t = Instant::now();
    for i in &mut instances {
        assert!(matches!(i.authorize(&req), Ok(Decision::Accept(_))));
    }
    let warm_decisions = t.elapsed();
    let reserved = instances[0].memory_peak();
    // A reload re-instantiates every tenant's policy in the slots the old
    // instances leave: free them all, then instantiate again.
    drop(instances);
    let (mut again, instances) = instantiate(&module, n);
    drop(instances);

    let (mean, p99) = mean_p99(&mut times);
    let (mean_again, p99_again) = mean_p99(&mut again);
    let kib = |b: u64| b as f64 / 1024.0 / n as f64;
    println!("policy scale: {n} instances of the allow-list policy (one compiled module)");
    println!(
        "  instantiate        mean {:7.2} us   p99 {:7.2} us   in fresh slots (target <= 20 us)",
        us(mean),
        us(p99)
    );
    println!(
        "  instantiate again  mean {:7.2} us   p99 {:7.2} us   in freed slots, as a reload does",
        us(mean_again),
        us(p99_again)
    );
    println!(
        "  resident memory    +{:.1} KiB each after instantiation, +{:.1} KiB each after its first decision (target <= 32 KiB)",
        kib(after_instantiate.saturating_sub(before)),
        kib(after_decide.saturating_sub(before))
    );
    println!(
        "  linear memory      {} KiB reserved per instance (pages never touched are not resident)",
        reserved / 1024
    );
    println!(
        "  decisions          first {:.2} us each, then {:.2} us each (anchor: the same call on a warm instance)",
        us(first_decisions) / n as f64,
        us(warm_decisions) / n as f64
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `n` instances of `module`, each in a store of its own, and the time each took.
fn instantiate(module: &Served, n: usize) -> (Vec<Duration>, Vec<PolicyInstance>) {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let i = module.new_instance().expect("instantiate");
            (t.elapsed(), i)
        })
        .unzip()
}

/// Mean and 99th percentile of `times` (sorted in place).
fn mean_p99(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times.iter().sum::<Duration>() / times.len() as u32, times[times.len() * 99 / 100])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
