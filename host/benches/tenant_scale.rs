//! Tenant scale benchmark (#13): N tenants' guest instances in one
//! process, as the daemon holds them. Each tenant has its ESP pair (one
//! instance per direction, on the shared guest engine's pool) and its
//! policy (the allow-list, on the policy engine's pool), each in a store
//! of its own; the components are compiled once and shared.
//!
//! Prints, for N = 10,000 (or `WASMSEC_TENANTS`), per kind of instance:
//! the time to instantiate one (mean and p99) in slots never used before
//! and again in slots freed by earlier instances (a reload, a restart
//! after a trap, an on-demand instance), and the resident memory each adds
//! after instantiation and after its first call (an SA installed, a
//! decision made), with the memory mappings each holds. Anchor, in the
//! same run: a call on a warm instance.
//! Run: `cargo xtask bench-tenants` (builds the components first).
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmsec::policy::watch::Reloader;
use wasmsec::policy::{AuthMethod, AuthorizeRequest, Decision, IdKind, Identity, PolicySlot};
use wasmsec::wasm::Runtime;
use wasmsec::wasm::esp::{EspInstance, InboundSa, OutboundSa, SaLimits, TrafficSelector};
use wasmsec::wasm::policy::{PolicyInstance, Served};

/// Resident set size of this process, bytes (/proc/self/statm).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Page-table memory of this process, bytes (/proc/self/status VmPTE):
/// each instance's slot needs page tables of its own, which the resident
/// set does not count.
fn page_tables() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = s
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// Memory mappings of this process (each instance's memory slot splits
/// its pool's reservation; the kernel caps the count at vm.max_map_count).
fn mappings() -> u64 {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count() as u64)
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

fn selector(third: u8) -> TrafficSelector {
    TrafficSelector::addresses(vec![10, 0, third, 0], vec![10, 0, third, 255])
}

fn outbound_sa(spi: u32) -> OutboundSa {
    OutboundSa {
        spi,
        key: 1,
        peer: 0,
        esn: false,
        next_seq: 1,
        pad_align: 4,
        local_ts: vec![selector(1)],
        remote_ts: vec![selector(2)],
        limits: SaLimits::default(),
    }
}

fn inbound_sa(spi: u32) -> InboundSa {
    InboundSa {
        spi,
        key: 2,
        esn: false,
        replay_window: 1024,
        highest_seq: 0,
        local_ts: vec![selector(1)],
        remote_ts: vec![selector(2)],
        limits: SaLimits::default(),
    }
}

/// One tenant's guest instances.
struct Tenant {
    out: EspInstance,
    inb: EspInstance,
    policy: PolicyInstance,
}

/// Instantiation times of `n` tenants, by kind: ESP out, ESP in, policy.
type Times = [Vec<Duration>; 3];

fn instantiate(rt: &Runtime, module: &Served, n: usize) -> (Times, Vec<Tenant>) {
    let mut times: Times = Default::default();
    let mut timed = |k: usize, t: Instant| times[k].push(t.elapsed());
    let tenants = (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = rt.esp_instance().expect("ESP instance");
            timed(0, t);
            let t = Instant::now();
            let inb = rt.esp_instance().expect("ESP instance");
            timed(1, t);
            let t = Instant::now();
            let policy = module.new_instance().expect("policy instance");
            timed(2, t);
            Tenant { out, inb, policy }
        })
        .collect();
    (times, tenants)
}

/// A call on each instance (an SA installed with SPIs from `spi_base`, a
/// decision made); the time each kind took in all.
fn first_calls(tenants: &mut [Tenant], req: &AuthorizeRequest, spi_base: u32) -> [Duration; 3] {
    let mut spent = [Duration::ZERO; 3];
    for (i, t) in tenants.iter_mut().enumerate() {
        let spi = spi_base + i as u32;
        let s = Instant::now();
        t.out.install_outbound(&outbound_sa(spi)).expect("no trap").expect("installed");
        spent[0] += s.elapsed();
        let s = Instant::now();
        t.inb.install_inbound(&inbound_sa(spi)).expect("no trap").expect("installed");
        spent[1] += s.elapsed();
        let s = Instant::now();
        assert!(matches!(t.policy.authorize(req), Ok(Decision::Accept(_))));
        spent[2] += s.elapsed();
    }
    spent
}

fn main() {
    let n: usize = std::env::var("WASMSEC_TENANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let pool = wasmsec::wasm::POOL_TENANTS as usize;
    assert!(n <= pool, "the pools hold {pool} tenants");
    let max_maps: u64 =
        std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let dir = wasmsec::daemon::built_components_dir();
    let rt = Runtime::new(&dir.join("esp.wasm")).expect("components (run `cargo xtask build`)");
    let tmp = std::env::temp_dir().join(format!("wasmsec-tenant-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("policy.wasm");
    std::fs::copy(dir.join("policy-allow-list.wasm"), &file).unwrap();
    let slot = Arc::new(PolicySlot::default());
    let r = Reloader::new(slot.clone(), rt.policy_engines().clone(), file, None);
    r.reload(Instant::now()).expect("the allow-list loads");
    let module = slot.current().unwrap();
    let req = request();

    // Warm-up: the first instances fault in the code and the allocators.
    drop(instantiate(&rt, &module, 50));
    let (rss0, maps0, pte0) = (rss(), mappings(), page_tables());
    let (mut fresh, mut tenants) = instantiate(&rt, &module, n);
    let (rss1, maps1) = (rss(), mappings());
    let first = first_calls(&mut tenants, &req, 0x1000);
    let (rss2, pte2) = (rss(), page_tables());
    let warm = first_calls(&mut tenants, &req, 0x100_0000);
    // Free every slot, then instantiate again in the freed ones.
    drop(tenants);
    let (mut again, tenants) = instantiate(&rt, &module, n);
    drop(tenants);
    let _ = std::fs::remove_dir_all(&tmp);

    let instances = 3 * n as u64;
    let kib = |b: u64| b as f64 / 1024.0 / instances as f64;
    println!(
        "tenant scale: {n} tenants in one process, each an ESP pair and a policy (the allow-list), one store each"
    );
    println!("                  instantiate, fresh slots    instantiate, freed slots    first call      warm call");
    for (k, name) in ["ESP out", "ESP in", "policy"].iter().enumerate() {
        let (m, p) = mean_p99(&mut fresh[k]);
        let (ma, pa) = mean_p99(&mut again[k]);
        println!(
            "  {name:8}        mean {:6.2} us p99 {:6.2}    mean {:6.2} us p99 {:6.2}    {:6.2} us      {:6.2} us",
            us(m),
            us(p),
            us(ma),
            us(pa),
            us(first[k]) / n as f64,
            us(warm[k]) / n as f64
        );
    }
    let all = |v: &mut Times| -> f64 {
        let flat: Vec<Duration> = v.iter().flatten().copied().collect();
        us(flat.iter().sum::<Duration>()) / flat.len() as f64
    };
    println!(
        "  all instances   mean {:6.2} us (fresh), {:6.2} us (freed)   target <= 20 us",
        all(&mut fresh),
        all(&mut again)
    );
    println!(
        "  resident memory +{:.1} KiB per instance after instantiation, +{:.1} KiB after its first call   target <= 32 KiB",
        kib(rss1.saturating_sub(rss0)),
        kib(rss2.saturating_sub(rss0))
    );
    println!(
        "                  +{:.1} KiB of page tables per instance (not in the resident set)",
        kib(pte2.saturating_sub(pte0))
    );
    println!(
        "                  +{:.1} KiB per tenant (3 instances)",
        rss2.saturating_sub(rss0) as f64 / 1024.0 / n as f64
    );
    println!(
        "  mappings        {:.2} per instance, {} in all (vm.max_map_count {max_maps})",
        maps1.saturating_sub(maps0) as f64 / instances as f64,
        maps1
    );
}

/// Mean and 99th percentile of `times` (sorted in place).
fn mean_p99(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times.iter().sum::<Duration>() / times.len() as u32, times[times.len() * 99 / 100])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
