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
//! outbound by destination, inbound by SPI). The anchor is the same
//! batch at the smallest count, in the same run: the lookup cost does
//! not grow with the count when the ratios stay near 1.
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
const MIN_TIME: Duration = Duration::from_secs(2);

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
            local_ts: vec![ts(net, last)],
            remote_ts: vec![local()],
            limits: Default::default(),
        });
    }
    (SaSet::new(ks.clone(), out, vec![]), SaSet::new(ks, vec![], inb))
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
    /// A batch to one SA (a burst of one flow, as a TSO super-packet cut
    /// into segments), the next batch to another.
    Burst,
}

struct Row {
    n: u32,
    bytes_per_sa: f64,
    install_us: f64,
    /// Encap and decap ns per packet, spread and burst.
    spread: (f64, f64),
    burst: (f64, f64),
}

fn run(rt: &Runtime, n: u32, memory_kind: EspMemory) -> Row {
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
    // A prime stride through the SAs: consecutive packets (or batches)
    // never share an SA and, over the run, all are used.
    let mut next = 0u64;
    let mut step = |tx: &mut EspInstance, rx: &mut EspInstance, times: &mut [Duration; 2], pattern: Pattern| {
        let first = next;
        let (per_packet, per_batch) = match pattern {
            Pattern::Spread => (7919, BATCH as u64 * 7919),
            Pattern::Burst => (0, 7919),
        };
        fill(&mut tx.store.data_mut().batch, |k| ((first + k as u64 * per_packet) % u64::from(n)) as u32);
        next = (next + per_batch) % u64::from(n);
        let t = Instant::now();
        let v = tx.encap(BATCH).expect("no trap");
        times[0] += t.elapsed();
        assert!(v.iter().all(|v| matches!(v, EncapVerdict::Send(_))), "every packet finds its SA: {v:?}");
        std::mem::swap(&mut tx.store.data_mut().batch, &mut rx.store.data_mut().batch);
        let t = Instant::now();
        let v = rx.decap(BATCH).expect("no trap");
        times[1] += t.elapsed();
        assert!(v.iter().all(|v| matches!(v, DecapVerdict::Deliver(_))), "every packet opens: {v:?}");
        std::mem::swap(&mut tx.store.data_mut().batch, &mut rx.store.data_mut().batch);
    };
    let mut measure = |pattern: Pattern| {
        let mut warm = [Duration::ZERO; 2];
        for _ in 0..50 {
            step(&mut tx, &mut rx, &mut warm, pattern);
        }
        let mut times = [Duration::ZERO; 2];
        let (start, mut batches) = (Instant::now(), 0u64);
        while start.elapsed() < MIN_TIME {
            step(&mut tx, &mut rx, &mut times, pattern);
            batches += 1;
        }
        let per = |d: Duration| d.as_nanos() as f64 / (batches * BATCH as u64) as f64;
        (per(times[0]), per(times[1]))
    };
    let spread = measure(Pattern::Spread);
    let burst = measure(Pattern::Burst);
    Row { n, bytes_per_sa, install_us, spread, burst }
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
    println!(
        "{:>9} {:>15} {:>12} | {:^37} | {:^37}",
        "", "", "", "each packet to another SA", "each batch to another SA"
    );
    println!(
        "{:>9} {:>15} {:>12} | {:>8} {:>8} {:>9} {:>9} | {:>8} {:>8} {:>9} {:>9}",
        "SAs",
        "memory per SA",
        "install/SA",
        "encap ns",
        "decap ns",
        "x first",
        "x first",
        "encap ns",
        "decap ns",
        "x first",
        "x first"
    );
    let mut first: Option<Row> = None;
    for n in counts {
        let r = run(&rt, n, memory_kind);
        let f = first.get_or_insert(Row { ..r });
        let x = |v: f64, v0: f64| v / v0;
        println!(
            "{:>9} {:>13.0} B {:>9.2} us | {:>8.1} {:>8.1} {:>9.2} {:>9.2} | {:>8.1} {:>8.1} {:>9.2} {:>9.2}",
            r.n,
            r.bytes_per_sa,
            r.install_us,
            r.spread.0,
            r.spread.1,
            x(r.spread.0, f.spread.0),
            x(r.spread.1, f.spread.1),
            r.burst.0,
            r.burst.1,
            x(r.burst.0, f.burst.0),
            x(r.burst.1, f.burst.1)
        );
    }
    println!("targets (#16): memory <= 4096 B per CHILD SA at 100,000; lookup cost flat (ratios near 1)");
}
