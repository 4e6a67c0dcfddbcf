//! SA scale benchmark (#16): 10, 1,000 and 100,000 (or `WASMSEC_SAS`)
//! CHILD SAs in one process, as the data path holds them: one outbound and
//! one inbound SA each, every one with its own AES-256-GCM key in the
//! host's keystore, installed in the real ESP component (one instance per
//! direction, as the daemon runs them). Each SA's remote side is its own
//! /28 (10.0.0.0/8 cut into 2^20 of them), as a PoP's many small sites.
//!
//! Prints, per count: memory per CHILD SA (resident set and page tables
//! of the process, so the keystore, the host's key grants and both guest
//! instances' linear memory), install time per SA, and the time per
//! packet of encap and of decap with batches of 64 small packets, each
//! packet to another SA (no flow repeats, so every packet is a lookup:
//! outbound by destination, inbound by SPI), then the same with each
//! packet to another of 64 hot SAs spread over all of them (full lookups
//! in tables of every SA, but state that stays in the caches: the
//! lookup's own work), then with each batch to another SA. The anchor is
//! the same batch at the smallest count, in the same rounds: the lookup
//! cost does not grow with the count when the ratios stay near 1. The
//! counts and patterns take turns in 15 rounds of 150 ms
//! (`WASMSEC_BENCH_ROUNDS`, `WASMSEC_BENCH_ROUND_MS`); medians printed.
//! `WASMSEC_SA_PATTERN=0`, `1` or `2` runs only that pattern (for `perf`).
//! Run: `cargo xtask bench-sas` (builds the component first). The
//! instances live in memory slots, as a tenant's do; with
//! `WASMSEC_SA_MEMORY=guarded` in the guarded memory of the daemon's own
//! routing domain.
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmsec::datapath::SaSet;
use wasmsec::keys::{EspAlgorithm, EspKey, Keystore};
use wasmsec::packet::PacketBuf;
use wasmsec::wasm::esp::{DecapVerdict, EncapVerdict, EspInstance, InboundSa, OutboundSa, TrafficSelector};
use wasmsec::wasm::{EspMemory, Runtime};
use zeroize::Zeroizing;

const BATCH: usize = 64;
/// Inner packets: IPv4 + UDP + 36 bytes, so the AEAD is a small part.
const PACKET: usize = 64;
/// Rounds and their length per count and pattern, unless
/// `WASMSEC_BENCH_ROUNDS` and `WASMSEC_BENCH_ROUND_MS` say otherwise.
const ROUNDS: usize = 15;
const ROUND_MS: u64 = 150;
/// Batches before each round's timed ones.
const WARM_BATCHES: usize = 20;
/// SAs in the hot set of [`Pattern::Hot`]: their state (~3.4 KB each)
/// fits the L2 cache.
const HOT: u32 = 64;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let v = s.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().trim_end_matches("kB").trim().to_string());
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Resident set plus page tables, bytes.
fn memory() -> u64 {
    (status_kib("VmRSS:") + status_kib("VmPTE:")) * 1024
}

/// SA `i`'s remote /28 and a host in it.
fn remote(i: u32) -> ([u8; 4], [u8; 4]) {
    let base = (10u32 << 24) | (i << 4);
    (base.to_be_bytes(), (base | 9).to_be_bytes())
}

fn ts(start: [u8; 4], end: [u8; 4]) -> TrafficSelector {
    TrafficSelector::addresses(start.to_vec(), end.to_vec())
}

fn local() -> TrafficSelector {
    ts([198, 18, 1, 0], [198, 18, 1, 255])
}

/// `n` CHILD SAs: outbound in one set, inbound in the other, keys in `ks`.
fn sa_sets(n: u32) -> (SaSet, SaSet) {
    let ks = Arc::new(Keystore::new());
    let alg = EspAlgorithm::Aes256Gcm16;
    // Each SA's own key; both ends of it (this process's outbound and
    // inbound halves of the same SA) hold a copy, as two gateways would.
    let key = |i: u32, fill: u8| {
        let mut k = vec![fill; alg.keymat_len()];
        k[..4].copy_from_slice(&i.to_be_bytes());
        ks.insert(EspKey::new(alg, Zeroizing::new(k)).expect("key"))
    };
    let mut out = Vec::with_capacity(n as usize);
    let mut inb = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (net, _) = remote(i);
        let last = (u32::from_be_bytes(net) | 15).to_be_bytes();
        let spi = 0x1000 + i;
        out.push(OutboundSa {
            spi,
            key: key(i, 1),
            peer: 0,
            esn: false,
            next_seq: 1,
            pad_align: alg.pad_align(),
            local_ts: vec![local()],
            remote_ts: vec![ts(net, last)],
            limits: Default::default(),
        });
        inb.push(InboundSa {
            spi,
            key: key(i, 1),
            esn: false,
            replay_window: 1024,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: vec![ts(net, last)],
            remote_ts: vec![local()],
            limits: Default::default(),
        });
    }
    (SaSet::new(ks.clone(), out, vec![]).expect("outbound"), SaSet::new(ks, vec![], inb).expect("inbound"))
}

/// A batch of inner packets, the k-th to SA `pick(k)`'s remote host.
fn fill(bufs: &mut [PacketBuf], pick: impl Fn(usize) -> u32) {
    for (k, b) in bufs.iter_mut().enumerate() {
        let mut p = [0u8; PACKET];
        wasmsec_wire::ipv4::Repr {
            src_addr: [198, 18, 1, 10],
            dst_addr: remote(pick(k)).1,
            protocol: 17,
            payload_len: PACKET - 20,
            ttl: 64,
            dscp_ecn: 0,
        }
        .emit(&mut p)
        .expect("header");
        p[20..24].copy_from_slice(&[0x13, 0x88, 0x13, 0x89]);
        p[24..26].copy_from_slice(&((PACKET - 20) as u16).to_be_bytes());
        b.recv_area()[..PACKET].copy_from_slice(&p);
        b.set_received(PACKET);
    }
}

/// How a batch's packets spread over the SAs.
#[derive(Clone, Copy)]
enum Pattern {
    /// Each packet to another SA: every packet is a full lookup, and its
    /// SA's state and key are most likely out of the CPU caches.
    Spread,
    /// Each packet to another SA of a hot set of at most [`HOT`] SAs spread
    /// evenly over all of them: every packet is still a full lookup in
    /// tables of all the SAs, but the SAs' state and keys, and the table
    /// entries the lookups reach, stay in the caches. What this costs
    /// more at 100,000 than at 10 is the lookup's own work (a scan, or a
    /// deeper index), not memory latency.
    Hot,
    /// A batch to one SA (a burst of one flow, as a TSO super-packet cut
    /// into segments), the next batch to another.
    Burst,
}

const PATTERNS: [Pattern; 3] = [Pattern::Spread, Pattern::Hot, Pattern::Burst];

/// One count's SAs, installed, with the instances that hold them.
struct Setup {
    n: u32,
    bytes_per_sa: f64,
    install_us: f64,
    tx: EspInstance,
    rx: EspInstance,
    /// Where the next batch's packets start in the pattern.
    next: u64,
}

fn setup(rt: &Runtime, n: u32, memory_kind: EspMemory) -> Setup {
    let before = memory();
    let (out_set, in_set) = sa_sets(n);
    let t = Instant::now();
    let mut tx = out_set.instantiate(rt, 0, memory_kind).expect("outbound SAs installed");
    let mut rx = in_set.instantiate(rt, 0, memory_kind).expect("inbound SAs installed");
    let install_us = t.elapsed().as_secs_f64() * 1e6 / (2.0 * f64::from(n));
    let bytes_per_sa = memory().saturating_sub(before) as f64 / f64::from(n);
    for inst in [&mut tx, &mut rx] {
        inst.store.data_mut().batch = (0..BATCH).map(|_| PacketBuf::new()).collect();
        inst.store.data_mut().count = BATCH;
    }
    Setup { n, bytes_per_sa, install_us, tx, rx, next: 0 }
}

/// One batch through encap and decap, their times added to `times`.
fn step(s: &mut Setup, pattern: Pattern, times: &mut [Duration; 2]) {
    let (first, n) = (s.next, s.n);
    match pattern {
        Pattern::Hot => {
            let hot = HOT.min(n);
            let sa = |k: usize| ((first + k as u64) % u64::from(hot)) as u32 * (n / hot);
            fill(&mut s.tx.store.data_mut().batch, sa);
            s.next = (first + BATCH as u64) % u64::from(hot);
        }
        Pattern::Spread | Pattern::Burst => {
            // A prime stride through the SAs: consecutive packets (or
            // batches) never share an SA and, over the run, all are used.
            let (per_packet, per_batch) = match pattern {
                Pattern::Burst => (0, 7919),
                _ => (7919, BATCH as u64 * 7919),
            };
            fill(&mut s.tx.store.data_mut().batch, |k| ((first + k as u64 * per_packet) % u64::from(n)) as u32);
            s.next = (first + per_batch) % u64::from(n);
        }
    }
    let t = Instant::now();
    let v = s.tx.encap(BATCH).expect("no trap");
    times[0] += t.elapsed();
    assert!(v.iter().all(|v| matches!(v, EncapVerdict::Send(_))), "every packet finds its SA: {v:?}");
    std::mem::swap(&mut s.tx.store.data_mut().batch, &mut s.rx.store.data_mut().batch);
    let t = Instant::now();
    let v = s.rx.decap(BATCH).expect("no trap");
    times[1] += t.elapsed();
    assert!(v.iter().all(|v| matches!(v, DecapVerdict::Deliver(_))), "every packet opens: {v:?}");
    std::mem::swap(&mut s.tx.store.data_mut().batch, &mut s.rx.store.data_mut().batch);
}

/// Encap and decap ns per packet over one round of `time`, after a few
/// batches that bring the pattern's state back into the caches it fits.
fn measure(s: &mut Setup, pattern: Pattern, time: Duration) -> [f64; 2] {
    let mut warm = [Duration::ZERO; 2];
    for _ in 0..WARM_BATCHES {
        step(s, pattern, &mut warm);
    }
    let mut times = [Duration::ZERO; 2];
    let (start, mut batches) = (Instant::now(), 0u64);
    while start.elapsed() < time {
        step(s, pattern, &mut times);
        batches += 1;
    }
    times.map(|d| d.as_nanos() as f64 / (batches * BATCH as u64) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let counts: Vec<u32> = match std::env::var("WASMSEC_SAS") {
        Ok(v) => v.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
        Err(_) => vec![10, 1_000, 100_000],
    };
    // The instances' memory: a tenant's slot (the default), or with
    // `WASMSEC_SA_MEMORY=guarded` the guarded memory of the daemon's own
    // routing domain.
    let (memory_kind, where_) = match std::env::var("WASMSEC_SA_MEMORY").as_deref() {
        Ok("guarded") => (EspMemory::Guarded, "guarded memory (the daemon's own domain)"),
        Ok("slot") | Err(_) => (EspMemory::Slot, "memory slots (a tenant's)"),
        Ok(other) => panic!("WASMSEC_SA_MEMORY is slot or guarded, not {other:?}"),
    };
    let dir = wasmsec::daemon::built_components_dir();
    let rt = Runtime::new(&dir.join("esp.wasm")).expect("ESP component (run `cargo xtask build` first)");
    println!(
        "SA scale: CHILD SAs (an outbound and an inbound SA each, AES-256-GCM, own key) in one process, \
         the real ESP component in {where_}; {PACKET}-byte packets in batches of {BATCH}, each packet to another SA"
    );
    let rounds: usize = setting("WASMSEC_BENCH_ROUNDS", ROUNDS).max(1);
    let round = Duration::from_millis(setting("WASMSEC_BENCH_ROUND_MS", ROUND_MS));
    let mut setups: Vec<Setup> = counts.iter().map(|&n| setup(&rt, n, memory_kind)).collect();
    // Rounds interleaved: in each, every pattern at every count, one count
    // after the other, so that each ratio compares times taken moments
    // apart and a noisy neighbour's minutes weigh on every count alike.
    // `ns[pattern][setup]`: each round's encap and decap ns per packet.
    let only: Option<usize> = std::env::var("WASMSEC_SA_PATTERN").ok().and_then(|v| v.parse().ok());
    let mut ns = vec![vec![Vec::with_capacity(rounds); setups.len()]; PATTERNS.len()];
    for _ in 0..rounds {
        for (p, &pattern) in PATTERNS.iter().enumerate() {
            // `WASMSEC_SA_PATTERN=0|1|2`: only that pattern (for a profile).
            if only.is_some_and(|o| o != p) {
                continue;
            }
            for (k, s) in setups.iter_mut().enumerate() {
                ns[p][k].push(measure(s, pattern, round));
            }
        }
    }
    println!(
        "{rounds} interleaved rounds of {} ms per count and pattern; medians of the rounds, \
         and of each round's ratio to the first count",
        round.as_millis()
    );
    let groups = ["each packet to another SA", "... of 64 hot SAs", "each batch to another SA"];
    println!("{:>9} {:>15} {:>12} | {:^37} | {:^37} | {:^37}", "", "", "", groups[0], groups[1], groups[2]);
    let cols = "encap ns decap ns   x first   x first";
    println!("{:>9} {:>15} {:>12} | {cols} | {cols} | {cols}", "SAs", "memory per SA", "install/SA");
    for (k, s) in setups.iter().enumerate() {
        let group = |p: usize| {
            let (mine, first) = (&ns[p][k], &ns[p][0]);
            if mine.is_empty() {
                return format!("{:^37}", "(not run)");
            }
            let at = |d: usize| median(mine.iter().map(|r| r[d]).collect());
            let x = |d: usize| median(mine.iter().zip(first).map(|(r, f)| r[d] / f[d]).collect());
            format!("{:>8.1} {:>8.1} {:>9.2} {:>9.2}", at(0), at(1), x(0), x(1))
        };
        println!(
            "{:>9} {:>13.0} B {:>9.2} us | {} | {} | {}",
            s.n,
            s.bytes_per_sa,
            s.install_us,
            group(0),
            group(1),
            group(2)
        );
    }
    println!(
        "targets (#16): memory <= 4096 B per CHILD SA at 100,000; lookup cost flat (ratios near 1); \
         the hot SAs' ratios are the lookups' own work, the others' include the memory latency of cold SAs"
    );
}
