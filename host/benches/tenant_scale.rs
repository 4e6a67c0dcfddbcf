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
//! decision made), with the memory mappings each holds. Anchors, in the
//! same run: a call on a warm instance, and the first touch of a page of
//! a new mapping (a fresh slot's instantiation is mostly such touches,
//! in the host's heap and the slot, and what one costs is the machine's:
//! on a VM whose memory the hypervisor backs lazily it moves by 2-3x
//! between machines of one kind).
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
        replay_missing: 0,
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

/// The process's resident set and page tables, read after each phase.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    pte: u64,
}

impl Mem {
    fn now() -> Mem {
        Mem { rss: rss(), pte: page_tables() }
    }
}

/// `n` values of `make`, each timed into `times`.
fn timed<T>(n: usize, times: &mut Vec<Duration>, mut make: impl FnMut() -> T) -> Vec<T> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let v = make();
            times.push(t.elapsed());
            v
        })
        .collect()
}

/// `n` tenants, one kind of instance after the other; the memory after
/// each kind's instances went into `mem`.
fn instantiate(rt: &Runtime, module: &Served, n: usize, mem: &mut [Mem; 3]) -> (Times, Vec<Tenant>) {
    let mut times: Times = Default::default();
    let out = timed(n, &mut times[0], || rt.esp_instance().expect("ESP instance"));
    mem[0] = Mem::now();
    let inb = timed(n, &mut times[1], || rt.esp_instance().expect("ESP instance"));
    mem[1] = Mem::now();
    let policy = timed(n, &mut times[2], || module.new_instance().expect("policy instance"));
    mem[2] = Mem::now();
    let tenants =
        out.into_iter().zip(inb).zip(policy).map(|((out, inb), policy)| Tenant { out, inb, policy }).collect();
    (times, tenants)
}

/// A call on each instance, one kind after the other (an SA installed with
/// SPIs from `spi_base`, a decision made); the time each kind took in all,
/// and the memory after each kind's calls in `mem`.
fn first_calls(tenants: &mut [Tenant], req: &AuthorizeRequest, spi_base: u32, mem: &mut [Mem; 3]) -> [Duration; 3] {
    let spi = |i: usize| spi_base + i as u32;
    // One kind's call on every tenant: the time it took, then the memory.
    let mut phase = |k: usize, call: &dyn Fn(usize, &mut Tenant)| {
        let s = Instant::now();
        tenants.iter_mut().enumerate().for_each(|(i, t)| call(i, t));
        let spent = s.elapsed();
        mem[k] = Mem::now();
        spent
    };
    [
        phase(0, &|i, t| t.out.install_outbound(&outbound_sa(spi(i))).expect("no trap").expect("installed")),
        phase(1, &|i, t| t.inb.install_inbound(&inbound_sa(spi(i))).expect("no trap").expect("installed")),
        phase(2, &|_, t| assert!(matches!(t.policy.authorize(req), Ok(Decision::Accept(_))))),
    ]
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
    let mut scratch = [Mem::default(); 3];
    drop(instantiate(&rt, &module, 50, &mut scratch));
    let (base, maps0) = (Mem::now(), mappings());
    let (mut inst_mem, mut call_mem) = ([Mem::default(); 3], [Mem::default(); 3]);
    let (mut fresh, mut tenants) = instantiate(&rt, &module, n, &mut inst_mem);
    let maps1 = mappings();
    let first = first_calls(&mut tenants, &req, 0x1000, &mut call_mem);
    let warm = first_calls(&mut tenants, &req, 0x100_0000, &mut scratch);
    // Free every slot, then instantiate again in the freed ones.
    drop(tenants);
    let (mut again, tenants) = instantiate(&rt, &module, n, &mut scratch);
    drop(tenants);
    let _ = std::fs::remove_dir_all(&tmp);
    // Last, so that the pages it frees serve none of the instances.
    let fault = first_touch(64 << 8);

    let instances = 3 * n as u64;
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
        "  anchor: first touch of a page of a new mapping {:.2} us (64 MiB, 4 KiB pages), warm calls above",
        us(fault)
    );
    // Each kind's share: what its instances added, then what their first
    // calls added (the phases ran one kind after the other).
    let per = |to: Mem, from: Mem| -> (f64, f64) {
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1024.0 / n as f64;
        (d(to.rss, from.rss), d(to.pte, from.pte))
    };
    println!("  memory per instance   resident, instantiated   + first call   page tables   total");
    let mut sum = 0.0;
    for (k, name) in ["ESP out", "ESP in", "policy"].iter().enumerate() {
        let (r_inst, p_inst) = per(inst_mem[k], if k == 0 { base } else { inst_mem[k - 1] });
        let (r_call, p_call) = per(call_mem[k], if k == 0 { inst_mem[2] } else { call_mem[k - 1] });
        let total = r_inst + r_call + p_inst + p_call;
        sum += total;
        println!(
            "  {name:8}              {r_inst:8.1} KiB       {r_call:+8.1} KiB    {:8.1} KiB  {total:6.1} KiB",
            p_inst + p_call
        );
    }
    let (r_all, p_all) = per(call_mem[2], base);
    println!(
        "  all instances (mean)  {:.1} KiB resident + {:.1} KiB page tables = {:.1} KiB   target <= 32 KiB",
        r_all / 3.0,
        p_all / 3.0,
        sum / 3.0
    );
    println!("  per tenant (3 instances) {:.1} KiB resident, {:.1} KiB with page tables", r_all, r_all + p_all);
    println!(
        "  mappings        {:.2} per instance, {} in all (vm.max_map_count {max_maps})",
        maps1.saturating_sub(maps0) as f64 / instances as f64,
        maps1
    );
}

/// The first touch of a page of a new private anonymous mapping, mean
/// over `pages` pages (4 KiB, no huge pages): the machine's cost of a
/// page fault that the kernel answers with a zeroed page.
fn first_touch(pages: usize) -> Duration {
    let len = pages * 4096;
    // SAFETY: a new private anonymous mapping, written only within its
    // length and unmapped before return; no other reference to it exists.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap {len} bytes");
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        let base = p.cast::<u8>();
        let t = Instant::now();
        for i in 0..pages {
            base.add(i * 4096).write_volatile(1);
        }
        let spent = t.elapsed();
        libc::munmap(p, len);
        spent / pages as u32
    }
}

/// Mean and 99th percentile of `times` (sorted in place).
fn mean_p99(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    (times.iter().sum::<Duration>() / times.len() as u32, times[times.len() * 99 / 100])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
