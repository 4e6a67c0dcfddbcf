//! ESP data-path benchmark: encap + decap of 1400-byte packets, then of an
//! IMIX (7:4:1 of 64-, 576- and 1400-byte inner packets, within a batch);
//! IPv4 inner packets, or IPv6 with `WASMSEC_BENCH_INNER=ipv6`.
//!
//! 1. raw: ring AES-256-GCM seal + open in place on the same buffers
//!    (the ceiling: nothing but the AEAD), and as a reference the same on
//!    what ESP encrypts, each packet with its padded trailer (a 64-byte
//!    packet becomes 80 bytes to seal, a 1400-byte one 88 whole blocks);
//!    and ESP's floor: the host's framing and a replay window on one SA
//!    known in advance, no lookup and no engine;
//! 2. native: the ESP engine compiled natively over the host keystore
//!    (ESP framing, SA lookup, replay window, no wasm);
//! 3. component: the real ESP component under wasmtime, batches of 64,
//!    exactly what the daemon runs for its own routing domain (minus the
//!    syscalls): memory with a guard region, no bounds checks in the code;
//! 4. the same as a tenant's instance: in a memory slot, every access
//!    bounds-checked by the compiled code;
//! 5. the same as 3 with SAs that have byte and packet limits (never
//!    reached here): what the guest's and the host's counting cost
//!    (`keys/usage.rs`: at seal and at delivery, as the daemon counts).
//!
//! The paths take turns: 45 rounds of 50 ms each, so a machine whose
//! speed drifts (a shared VM) slows them all alike, and each round's ratio
//! compares measurements at most a quarter second apart. Prints each
//! path's median ns/packet and Gbit/s, and its share of raw speed: the
//! median of the rounds' ratios, the middle half of them and their range.
//! `WASMSEC_BENCH_SIZES=1400` or `=imix` runs one workload only (for a
//! profiler). `WASMSEC_BENCH_ROUNDS` and `WASMSEC_BENCH_ROUND_MS` set the rounds (until
//! 2026-12-04 the bench ran 9 rounds of 250 ms: on a noisy VM the median of
//! nine ratios swung by ten points from run to run).
//! Run: `cargo xtask bench` (builds the component first); `cargo bench -p
//! wasmsec --bench esp_datapath -- component` runs the component's paths
//! only (`-- =component` the one of that name). With
//! `WASMSEC_BENCH_AGAINST=<another esp.wasm>` a row for that component
//! joins the same rounds, for comparing two builds.
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use wasmsec::datapath::SaSet;
use wasmsec::keys::usage::Deliveries;
use wasmsec::keys::{Authenticated, EspAlgorithm, EspKey, Keystore};
use wasmsec::packet::PacketBuf;
use wasmsec::wasm::esp::{DecapVerdict, EncapVerdict, InboundSa, Mark, OutboundSa, SaLimits, TrafficSelector};
use wasmsec::wasm::{EspMemory, Runtime};
use zeroize::Zeroizing;

const PACKET: usize = 1400;
/// Simple IMIX by count: 7 small, 4 medium, 1 large (the large one is our
/// 1400-byte tunnel MTU rather than 1500).
const IMIX: [usize; 12] = [64, 64, 64, 64, 64, 64, 64, 576, 576, 576, 576, PACKET];
const BATCH: usize = 64;
/// Rounds and their length, unless `WASMSEC_BENCH_ROUNDS` and
/// `WASMSEC_BENCH_ROUND_MS` say otherwise.
const ROUNDS: usize = 45;
const ROUND_MS: u64 = 50;

/// One path's work for one batch; set up once, run many times.
type Path<'a> = Box<dyn FnMut() + 'a>;

/// Builds a path over the packets (the runtime only for the component).
type MakePath = for<'a> fn(&Runtime, &'a [Vec<u8>]) -> Path<'a>;

/// Whether the inner packets are IPv6 (`WASMSEC_BENCH_INNER=ipv6`) rather
/// than IPv4 (the default): one UDP flow from LAN 1 to LAN 2 either way.
fn inner_v6() -> bool {
    match std::env::var("WASMSEC_BENCH_INNER").as_deref() {
        Err(_) | Ok("ipv4") => false,
        Ok("ipv6") => true,
        Ok(other) => panic!("WASMSEC_BENCH_INNER is ipv4 or ipv6, not {other:?}"),
    }
}

/// LAN `n`'s network (198.18.n.0/24, or 2001:db8:n::/64) and its host 10.
fn lan(n: u8) -> (wasmsec_wire::ip::Address, u8, wasmsec_wire::ip::Address) {
    use wasmsec_wire::ip::Address;
    if inner_v6() {
        let mut net = [0u8; 16];
        net[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, n]);
        let mut host = net;
        host[15] = 10;
        (Address::V6(net), 64, Address::V6(host))
    } else {
        (Address::V4([198, 18, n, 0]), 24, Address::V4([198, 18, n, 10]))
    }
}

fn inner_packet(len: usize) -> Vec<u8> {
    use wasmsec_wire::ip::Address;
    let mut p = vec![0u8; len];
    if let ((_, _, Address::V6(src)), (_, _, Address::V6(dst))) = (lan(1), lan(2)) {
        // RFC 8200 section 3: the fixed header, then UDP.
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        return p;
    }
    wasmsec_wire::ipv4::Repr {
        src_addr: [198, 18, 1, 10],
        dst_addr: [198, 18, 2, 10],
        protocol: 17,
        payload_len: len - 20,
        ttl: 64,
        dscp_ecn: 0,
    }
    .emit(&mut p)
    .unwrap();
    p
}

/// Buffer `i` gets packet `i` of the workload.
fn refill(bufs: &mut [PacketBuf], pkts: &[Vec<u8>]) {
    for (b, pkt) in bufs.iter_mut().zip(pkts) {
        b.recv_area()[..pkt.len()].copy_from_slice(pkt);
        b.set_received(pkt.len());
    }
}

/// A positive number from the environment variable `name`, or `default`.
fn setting<T: std::str::FromStr + PartialOrd + Default>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.parse::<T>() {
            Ok(n) if n > T::default() => n,
            _ => panic!("{name} must be a positive whole number, not {v:?}"),
        },
    }
}

/// Run `f` (one batch) for `time`; ns per packet.
fn round(f: &mut dyn FnMut(), time: Duration) -> f64 {
    let start = Instant::now();
    let mut batches = 0u64;
    while start.elapsed() < time {
        for _ in 0..20 {
            f();
        }
        batches += 20;
    }
    start.elapsed().as_nanos() as f64 / (batches as f64 * BATCH as f64)
}

fn median(v: Vec<f64>) -> f64 {
    quantile(v, 0.5)
}

/// The value at share `q` of the way through `v` sorted (0: the least,
/// 1: the greatest; 0.5 the median).
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The anchor: AES-256-GCM seal and open of each inner packet as it is.
fn raw_ring<'a>(_: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    raw_ring_of(pkt, false)
}

/// Not an anchor, a reference: the same AEAD work on the bytes ESP
/// encrypts, each packet with its trailer padded to the AES block (RFC
/// 4303 section 2.4), so what ESP adds beyond its own crypto shows.
fn raw_ring_esp_sized<'a>(_: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    raw_ring_of(pkt, true)
}

fn raw_ring_of(pkt: &[Vec<u8>], esp_sized: bool) -> Path<'_> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    let mut ctr = 0u64;
    let pad_align = EspAlgorithm::Aes256Gcm16.pad_align();
    Box::new(move || {
        refill(&mut bufs, pkt);
        for b in bufs.iter_mut() {
            if esp_sized {
                let pad = usize::from(wasmsec_wire::esp::Trailer::pad_length_for(b.len(), pad_align));
                b.append(&wasmsec_wire::esp::DEFAULT_PADDING[..pad + 2]);
            }
            ctr += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&ctr.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&[1u8; 8]), b.data_mut())
                .unwrap();
            b.append(tag.as_ref());
            let out = key.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&[1u8; 8]), b.data_mut()).unwrap();
            black_box(out.len());
        }
    })
}

/// Not an anchor, a reference: ESP's floor with ring. One SA known in
/// advance, so no lookup, no selectors and no engine: the host's framing
/// (header, IV, trailer, AAD; `EspKey::seal_at`/`open_unnoted`), the
/// batch's IVs taken and its highest sequence number noted once, as the
/// daemon does per run, one replay window checked and moved per packet
/// (RFC 4303 section 3.4.3), the trailer stripped. What any ESP data path
/// over per-packet ring calls pays; the engine's work is what the native
/// row costs beyond it.
fn esp_floor<'a>(_: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    let alg = EspAlgorithm::Aes256Gcm16;
    let k_out = EspKey::new(alg, Zeroizing::new(vec![7; alg.keymat_len()])).unwrap();
    let k_in = EspKey::new(alg, Zeroizing::new(vec![7; alg.keymat_len()])).unwrap();
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    let mut window = wasmsec_esp::replay::ReplayWindow::new(1024, 0);
    let mut seq = 0u32;
    let pad_align = alg.pad_align();
    Box::new(move || {
        refill(&mut bufs, pkt);
        let first_iv = k_out.take_ivs(BATCH as u64).unwrap();
        for (b, iv) in bufs.iter_mut().zip(first_iv..) {
            seq += 1;
            let pad = wasmsec_wire::esp::Trailer::pad_length_for(b.len(), pad_align);
            let h = wasmsec_wire::esp::Repr { spi: 0x2001, sequence_number: seq };
            k_out.seal_at(b, &h, None, (pad, 4), iv).unwrap();
        }
        k_out.note_seq(u64::from(seq));
        let mut opened = Authenticated::default();
        for b in bufs.iter_mut() {
            let n = u64::from(u32::from_be_bytes(b.data()[4..8].try_into().unwrap()));
            window.check(n).unwrap();
            opened.add(k_in.open_unnoted(b, None).unwrap());
            window.commit(n).unwrap();
            let (len, d) = (b.len(), b.data());
            let (pad, nh) = (usize::from(d[len - 2]), d[len - 1]);
            assert_eq!(nh, 4);
            b.truncate(len - 2 - pad);
        }
        k_in.note_opened(opened.top, opened.bits);
    })
}

fn sa_sets(limits: SaLimits) -> (SaSet, SaSet) {
    let ks = Arc::new(Keystore::new());
    let alg = EspAlgorithm::Aes256Gcm16;
    let h_out = ks.insert(EspKey::new(alg, Zeroizing::new(vec![7; alg.keymat_len()])).unwrap());
    let h_in = ks.insert(EspKey::new(alg, Zeroizing::new(vec![7; alg.keymat_len()])).unwrap());
    // The two LANs as address ranges.
    let range = |n| {
        let (net, len, _) = lan(n);
        let wasmsec_esp::TrafficSelector { start, end, .. } =
            wasmsec_esp::TrafficSelector::from_prefix(net, len).unwrap();
        TrafficSelector::addresses(start.as_bytes().to_vec(), end.as_bytes().to_vec())
    };
    let (a, b) = (range(1), range(2));
    let out = OutboundSa {
        spi: 0x2001,
        key: h_out,
        peer: 0,
        esn: false,
        next_seq: 1,
        pad_align: alg.pad_align(),
        local_ts: vec![a.clone()],
        remote_ts: vec![b.clone()],
        limits,
    };
    let inb = InboundSa {
        spi: 0x2001,
        key: h_in,
        esn: false,
        replay_window: 1024,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![b],
        remote_ts: vec![a],
        limits,
    };
    (SaSet::new(ks.clone(), vec![out], vec![]).expect("outbound"), SaSet::new(ks, vec![], vec![inb]).expect("inbound"))
}

/// The native engine over host buffers and the keystore.
struct NativeBatch<'a> {
    bufs: &'a mut [PacketBuf],
    key: &'a EspKey,
}

impl NativeBatch<'_> {
    /// The heads the host hands over with the batch.
    fn heads(&self, head_len: usize) -> wasmsec_esp::Heads {
        wasmsec_esp::Heads::of(head_len, self.bufs.iter().map(PacketBuf::data))
    }
}

impl wasmsec_esp::PacketBatch for NativeBatch<'_> {
    /// As the daemon's host does (`wasm/esp.rs`): a run's IVs in one
    /// step, its highest sequence number noted once.
    fn seal(&mut self, runs: wasmsec_esp::SealRuns) -> Vec<wasmsec_esp::OpFailure> {
        let mut failures = Vec::new();
        for (r, packets, pads, nhs) in runs.iter() {
            let first_iv = self.key.take_ivs(packets.len() as u64).unwrap();
            for ((k, &i), iv) in packets.iter().enumerate().zip(first_iv..) {
                let h = wasmsec_wire::esp::Repr { spi: r.spi, sequence_number: r.seq(k) as u32 };
                let p = &mut self.bufs[i as usize];
                if self.key.seal_at(p, &h, r.esn_high(k), (pads[k], nhs[k]), iv).is_err() {
                    failures.push(wasmsec_esp::OpFailure { packet: i, error: wasmsec_esp::CryptoError::BadLength });
                }
            }
            self.key.note_seq(r.seq(packets.len() - 1));
        }
        failures
    }
    fn open(&mut self, runs: wasmsec_esp::OpenRuns) -> wasmsec_esp::Opened {
        let mut o = wasmsec_esp::Opened::default();
        for (_, packets, highs) in runs.iter() {
            let mut opened = Authenticated::default();
            for (k, &i) in packets.iter().enumerate() {
                let p = &mut self.bufs[i as usize];
                let (pad, nh) = match self.key.open_unnoted(p, highs.get(k).copied()) {
                    Ok(seq) => {
                        opened.add(seq);
                        let d = p.data();
                        (d[d.len() - 2], d[d.len() - 1])
                    }
                    Err(_) => {
                        let error = wasmsec_esp::CryptoError::IntegrityFailed;
                        o.failures.push(wasmsec_esp::OpFailure { packet: i, error });
                        (0, 0)
                    }
                };
                o.pad_lengths.push(pad);
                o.next_headers.push(nh);
            }
            self.key.note_opened(opened.top, opened.bits);
        }
        o.heads = self.heads(wasmsec_esp::IP_HEAD_LEN);
        o
    }
}

fn native_engine<'a>(_: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    use wasmsec_esp::{Engine, KeyHandle, TrafficSelector as Ts};
    let alg = EspAlgorithm::Aes256Gcm16;
    let k_out = EspKey::new(alg, Zeroizing::new(vec![7; alg.keymat_len()])).unwrap();
    let k_in = EspKey::new(alg, Zeroizing::new(vec![7; alg.keymat_len()])).unwrap();
    let ((net_a, len_a, _), (net_b, len_b, _)) = (lan(1), lan(2));
    let a = Ts::from_prefix(net_a, len_a).unwrap();
    let b = Ts::from_prefix(net_b, len_b).unwrap();
    let mut tx = Engine::new();
    tx.install_outbound(wasmsec_esp::OutboundSa {
        spi: 0x2001,
        key: KeyHandle(1),
        peer: 0,
        esn: false,
        next_seq: 1,
        pad_align: alg.pad_align(),
        local_ts: vec![a.clone()].into(),
        remote_ts: vec![b.clone()].into(),
        limits: Default::default(),
    })
    .unwrap();
    let mut rx = Engine::new();
    rx.install_inbound(wasmsec_esp::InboundSa {
        spi: 0x2001,
        key: KeyHandle(1),
        esn: false,
        replay_window: 1024,
        highest_seq: 0,
        replay_missing: 0,
        local_ts: vec![b].into(),
        remote_ts: vec![a].into(),
        limits: Default::default(),
    })
    .unwrap();
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new()).collect();
    Box::new(move || {
        refill(&mut bufs, pkt);
        let mut out = NativeBatch { bufs: &mut bufs, key: &k_out };
        tx.encap(&out.heads(wasmsec_esp::IP_HEAD_LEN), &mut out);
        let mut inb = NativeBatch { bufs: &mut bufs, key: &k_in };
        let d = rx.decap(&inb.heads(wasmsec_esp::ESP_HEAD_LEN), &mut inb);
        assert!(d.drops.is_empty() && d.lengths[BATCH - 1] > 0);
    })
}

/// The component as the daemon runs it for its own routing domain.
fn component<'a>(rt: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    component_in(rt, pkt, EspMemory::Guarded, SaLimits::default())
}

/// The component as the daemon runs it for a tenant.
fn tenant_component<'a>(rt: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    component_in(rt, pkt, EspMemory::Slot, SaLimits::default())
}

/// The component for its own routing domain, with SAs that have byte and
/// packet limits far beyond what the bench sends, so every packet is
/// counted by the guest and by the host and none expires.
fn limited_component<'a>(rt: &Runtime, pkt: &'a [Vec<u8>]) -> Path<'a> {
    let limits = SaLimits { soft_bytes: 1 << 61, soft_packets: 1 << 53, hard_bytes: 1 << 62, hard_packets: 1 << 54 };
    component_in(rt, pkt, EspMemory::Guarded, limits)
}

fn component_in<'a>(rt: &Runtime, pkt: &'a [Vec<u8>], memory: EspMemory, limits: SaLimits) -> Path<'a> {
    let (out_set, in_set) = sa_sets(limits);
    let mut tx = out_set.instantiate(rt, 0, memory).unwrap();
    let mut rx = in_set.instantiate(rt, 0, memory).unwrap();
    tx.store.data_mut().batch = (0..BATCH).map(|_| PacketBuf::new()).collect();
    tx.store.data_mut().count = BATCH;
    rx.store.data_mut().batch = (0..BATCH).map(|_| PacketBuf::new()).collect();
    rx.store.data_mut().count = BATCH;
    Box::new(move || {
        refill(&mut tx.store.data_mut().batch, pkt);
        let v = tx.encap(tx.store.data().count).unwrap();
        assert!(matches!(v[BATCH - 1], EncapVerdict::Send(_)));
        // Hand the sealed buffers to the receiver (the socket in between).
        std::mem::swap(&mut tx.store.data_mut().batch, &mut rx.store.data_mut().batch);
        let v = rx.decap(rx.store.data().count).unwrap();
        assert!(matches!(v[BATCH - 1], DecapVerdict::Deliver(_)));
        // What the daemon's inbound thread does before it delivers
        // (`datapath/inbound.rs`): count each packet against its SA's
        // limits, nothing for an SA without one.
        let st = rx.store.data_mut();
        let mut counts = Deliveries::default();
        for (mark, v) in st.marks.iter().zip(&v) {
            if let (&Mark::Opened { spi, counted, .. }, &DecapVerdict::Deliver(len)) = (mark, v) {
                assert!(counts.pass(&st.keys, counted, spi, len as usize, &mut st.limits_reached));
            }
        }
        counts.finish(&mut st.limits_reached);
        assert!(st.limits_reached.is_empty());
        std::mem::swap(&mut tx.store.data_mut().batch, &mut rx.store.data_mut().batch);
    })
}

fn main() {
    // `cargo bench` passes --bench; a word after it runs only the paths
    // whose function names contain it (`-- component`, for a profiler), or
    // with `=` in front only the path of that name (`-- =component`).
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| {
        only.as_ref().is_none_or(|w| match w.strip_prefix('=') {
            Some(exact) => name == exact,
            None => name.contains(w.as_str()),
        })
    };
    let dir = wasmsec::daemon::built_components_dir();
    let rt = Runtime::new(&dir.join("esp.wasm")).expect("ESP component (run `cargo xtask build` first)");
    // Another build of the ESP component, measured in the same rounds as
    // this one: an A/B comparison that the machine's drift between two
    // runs of the bench cannot blur.
    let against = std::env::var_os("WASMSEC_BENCH_AGAINST")
        .map(|p| Runtime::new(std::path::Path::new(&p)).expect("WASMSEC_BENCH_AGAINST names an ESP component"));
    let rounds: usize = setting("WASMSEC_BENCH_ROUNDS", ROUNDS);
    let round_time = Duration::from_millis(setting("WASMSEC_BENCH_ROUND_MS", ROUND_MS));
    let full: Vec<Vec<u8>> = (0..BATCH).map(|_| inner_packet(PACKET)).collect();
    let imix: Vec<Vec<u8>> = (0..BATCH).map(|i| inner_packet(IMIX[i % IMIX.len()])).collect();
    let ip = if inner_v6() { "IPv6" } else { "IPv4" };
    let sizes = std::env::var("WASMSEC_BENCH_SIZES").unwrap_or_default();
    for (label, pkts) in
        [(format!("{PACKET}-byte {ip} inner packets"), full), (format!("{ip} IMIX (7:4:1 of 64, 576, 1400 B)"), imix)]
            .into_iter()
            .zip([PACKET.to_string(), "imix".into()])
            .filter(|(_, size)| sizes.is_empty() || sizes.split(',').any(|s| s == size))
            .map(|(workload, _)| workload)
    {
        println!(
            "ESP encap+decap, {label}, AES-256-GCM-16, batches of {BATCH}, one core, \
             {rounds} interleaved rounds of {} ms",
            round_time.as_millis()
        );
        let mut paths: Vec<(&str, &str, Path)> = Vec::new();
        let all: [(&str, &str, MakePath); 7] = [
            ("raw_ring", "raw ring seal+open (ceiling)", raw_ring),
            ("raw_ring_esp_sized", "  the same on ESP's padded plaintext", raw_ring_esp_sized),
            ("esp_floor", "  ESP framing + replay, one SA, no engine", esp_floor),
            ("native_engine", "native ESP engine + keystore", native_engine),
            ("component", "ESP component (wasmtime) + keystore", component),
            ("tenant_component", "  the same in a tenant's memory slot", tenant_component),
            ("limited_component", "  the same, SAs with byte+packet limits", limited_component),
        ];
        for (fname, name, make) in all {
            if wanted(fname) {
                paths.push((fname, name, make(&rt, &pkts)));
            }
        }
        if let Some(other) = &against {
            paths.push(("against", "  WASMSEC_BENCH_AGAINST's component", component(other, &pkts)));
        }
        for (_, _, p) in paths.iter_mut() {
            for _ in 0..50 {
                p();
            }
        }
        // ns/packet of each path in each round; the order rotates.
        let mut ns = vec![Vec::with_capacity(rounds); paths.len()];
        for r in 0..rounds {
            for k in 0..paths.len() {
                let i = (r + k) % paths.len();
                ns[i].push(round(&mut paths[i].2, round_time));
            }
        }
        let raw = paths.iter().position(|p| p.0 == "raw_ring").map(|i| ns[i].clone());
        let mean_bytes = pkts.iter().map(Vec::len).sum::<usize>() as f64 / pkts.len() as f64;
        println!(
            "{:<40} {:>10} {:>8} {:>9} {:>14} {:>14}",
            "path", "ns/packet", "Gbit/s", "% of raw", "middle half", "rounds' range"
        );
        let (mut comp_share, mut tenant_share) = (None, None);
        for ((fname, name, _), times) in paths.iter().zip(&ns) {
            let m = median(times.clone());
            let (share, middle, range) = match &raw {
                Some(raw) => {
                    let shares: Vec<f64> = raw.iter().zip(times).map(|(r, t)| r / t * 100.0).collect();
                    let q = |at| quantile(shares.clone(), at);
                    (
                        format!("{:.1}%", q(0.5)),
                        format!("{:.1}-{:.1}%", q(0.25), q(0.75)),
                        format!("{:.1}-{:.1}%", q(0.0), q(1.0)),
                    )
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            if raw.is_some() {
                match *fname {
                    "component" => comp_share = Some(share.clone()),
                    "tenant_component" => tenant_share = Some(share.clone()),
                    _ => {}
                }
            }
            println!(
                "{:<40} {:>10.1} {:>8.2} {:>9} {:>14} {:>14}",
                name,
                m,
                mean_bytes * 8.0 / m,
                share,
                middle,
                range
            );
        }
        // What counting costs: each round's time without limits over its
        // time with them.
        let at = |f: &str| paths.iter().position(|p| p.0 == f);
        if let (Some(c), Some(l)) = (at("component"), at("limited_component")) {
            let shares: Vec<f64> = ns[c].iter().zip(&ns[l]).map(|(c, l)| c / l * 100.0).collect();
            println!(
                "SAs with limits at {:.1}% of the unlimited component's speed (middle half {:.1}-{:.1}%)",
                quantile(shares.clone(), 0.5),
                quantile(shares.clone(), 0.25),
                quantile(shares, 0.75)
            );
        }
        if let Some(c) = comp_share {
            let t = tenant_share.map(|t| format!(", {t} in a tenant's memory slot")).unwrap_or_default();
            println!("ESP component at {c} of raw AEAD speed (target: >= 85 %){t}\n");
        }
    }
}
