//! The ESP component under wasmtime: its one import (`wasmsec:crypto/packets`,
//! sealing and opening the lent batch in place with granted keys) and a
//! typed wrapper around its exports.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use wasmsec_crypto::CryptoError;
use wasmsec_wire::esp;
use wasmsec_wire::heads::{ESP_HEAD_LEN, Heads, IP_HEAD_LEN};
use wasmsec_wire::runs::{share, spans};
use wasmtime::component::{HasSelf, Resource};
use wasmtime::{Engine, Store};

use super::bindings::esp as b;
use super::state_hints::StateHints;
use super::{WasmContext, sandbox, wit_error};
use crate::keys::usage::{LimitReached, Tally};
use crate::keys::{KeyTable, KeyUse};
use crate::packet::PacketBuf;

use b::exports::wasmsec::esp::engine::{Decapped, Dropped, Encapped};
pub use b::exports::wasmsec::esp::engine::{
    DropReason, Expiry, ExpiryCause, InboundSa, OutboundSa, ReplayState, SaState,
};
use b::wasmsec::crypto::packets::{HostBatch, OpFailure, OpenRun, OpenRuns, Opened, SealRun, SealRuns};
use b::wasmsec::crypto::types::CryptoError as WitCryptoError;
pub use b::wasmsec::net::types::{SaLimits, TrafficSelector};

/// Marker type of the `batch` resource: the batch itself lives in the store
/// ([`GuestState::batch`]); a call lends it to the guest for its duration.
pub struct Batch;

/// What the host did to one packet of the lent batch during the current
/// call. Verdicts are checked against it: the data path sends only what was
/// sealed, to the peer of the SA that sealed it, and delivers only what
/// opened, at most at its opened length. Anything else is the guest lying.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mark {
    /// Neither sealed nor opened: still what the wire or the LAN gave us.
    #[default]
    Untouched,
    /// Sealed by outbound SA `spi`, whose packets go to peer index `peer`.
    Sealed { peer: u32, spi: u32 },
    /// Opened (ICV verified) by inbound SA `spi`; `len` bytes of plaintext
    /// with padding and the ESP trailer, from an ESP packet of `esp_len`.
    /// `counted`: the key's handle if its SA has limits to count the
    /// packet against when it is delivered, else 0 (no handle is 0).
    Opened { len: u32, spi: u32, esp_len: u32, counted: u64 },
    /// Not opened: its key had authenticated its sequence number. Asking
    /// for it again is the guest's error, so a guest cannot count one
    /// packet as many refused replays.
    Replayed,
}

/// What the guest said to do with one packet of an `encap` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapVerdict {
    /// Send the (sealed) packet to this peer.
    Send(u32),
    Drop(DropReason),
    /// The guest's answer had no entry for this packet: a guest protocol
    /// error, counted as a lie.
    Missing,
}

/// What the guest said to do with one packet of a `decap` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapVerdict {
    /// Deliver the (opened) inner packet of this length.
    Deliver(u32),
    Drop(DropReason),
    /// As for [`EncapVerdict::Missing`].
    Missing,
}

/// One verdict per packet of a batch of `count` from the guest's
/// per-packet list and its exceptions; entries past `count` are ignored.
fn verdicts<V: Copy>(
    count: usize,
    each: &[u32],
    drops: &[Dropped],
    ok: fn(u32) -> V,
    drop: fn(DropReason) -> V,
    missing: V,
) -> Vec<V> {
    let mut v: Vec<V> = each.iter().take(count).map(|&x| ok(x)).collect();
    v.resize(count, missing);
    for d in drops {
        if let Some(slot) = v.get_mut(d.packet as usize) {
            *slot = drop(d.reason);
        }
    }
    v
}

/// Per-store host state.
pub struct GuestState {
    limits: sandbox::GuestLimits,
    /// The key handles this instance may use, each bound to one SA and direction.
    pub keys: KeyTable,
    /// The batch lent to the guest during `encap`/`decap`.
    pub batch: Vec<PacketBuf>,
    /// Packets of `batch` in use (the vector is reused and never shrinks).
    pub count: usize,
    /// What became of each packet of the batch during the current call.
    pub marks: Vec<Mark>,
    /// Requests of the current call the host refused (wrong key use, bad
    /// index, a second seal or open of one packet): guest protocol errors.
    pub refusals: u64,
    /// Packets the host did not open because their key had authenticated
    /// their sequence number already (since the data path last took the
    /// count): replays the guest let through, or a second copy in a batch.
    pub replays_refused: u64,
    /// Random bytes handed to the guest (it keys its hash tables with
    /// them, once per instance).
    pub random_drawn: u64,
    /// SAs the host found at a hard limit (sealing here, delivering in
    /// the data path), for the expiry reports.
    pub limits_reached: Vec<LimitReached>,
    /// Counts the instance among the live ones while the store lives
    /// (instances outside the memory slots, which count themselves).
    _live: Option<Live>,
}

/// One live instance on a counter, until dropped.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::Relaxed);
        Live(count)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl sandbox::Limited for GuestState {
    fn limits(&mut self) -> &mut sandbox::GuestLimits {
        &mut self.limits
    }
}

impl GuestState {
    /// Start a call on the first `count` packets of the batch.
    pub fn lend(&mut self, count: usize) {
        self.count = count.min(self.batch.len());
        self.marks.clear();
        self.marks.resize(self.count, Mark::Untouched);
        self.refusals = 0;
    }

    /// The lent packets' heads of `head_len` bytes, as the guest gets them.
    fn heads(&self, head_len: usize) -> Vec<u8> {
        Heads::of(head_len, self.batch[..self.count].iter().map(|p| p.data())).into_flat()
    }

    /// Seal one run's packets (`packets`, with their `trailers`: pad
    /// lengths and next headers, as long); the failures go to `failed`.
    fn seal_run(&mut self, run: &SealRun, packets: &[u32], trailers: (&[u8], &[u8]), failed: &mut Vec<OpFailure>) {
        let n = packets.len();
        // Only an outbound key seals, and only for its own SA, under the
        // SPI the peer chose for it (which only the host holds).
        let key = match self.keys.get(run.key) {
            Ok((k, KeyUse::Seal { spi, wire_spi, peer })) if spi == run.spi => Ok((k, (peer, wire_spi))),
            Ok(_) => Err(WitCryptoError::WrongKeyKind),
            Err(e) => Err(wit_error(e)),
        };
        // The run's IVs in one step. No more than the batch holds: a
        // packet is sealed once, whatever the guest's list says.
        // The key's IVs running out is the key's end, not the guest's fault.
        let mut ivs = 0..0;
        let key = key.map_err(Fault::Guest).and_then(|(k, to)| {
            let want = n.min(self.count) as u64;
            let first = k.take_ivs(want).map_err(Fault::packet)?;
            ivs = first..first + want;
            Ok((k, to))
        });
        // Counted against the SA's hard limits as they are sealed: past
        // one, the key seals nothing more, whatever the guest counted.
        let reached = LimitReached { key: run.key, spi: run.spi, outbound: true, hard: true, by_bytes: false };
        let limits = self.keys.limits(run.key);
        let mut tally = key.ok().zip(limits).and_then(|((k, _), limits)| Tally::start(k.usage(), limits, reached));
        let mut highest = None;
        for (j, &index) in packets.iter().enumerate() {
            let r = key.and_then(|(k, (peer, wire_spi))| {
                let i = untouched(&self.marks, index).map_err(Fault::Guest)?;
                let seq = run.first_seq.checked_add(j as u64).ok_or(Fault::Guest(WitCryptoError::BadLength))?;
                // Without ESN the sequence number is 32 bits and must not
                // cycle (RFC 4303 section 3.3.3).
                if !run.esn && seq > u64::from(u32::MAX) {
                    return Err(Fault::Guest(WitCryptoError::BadLength));
                }
                let header = esp::Repr { spi: wire_spi, sequence_number: seq as u32 };
                let esn_high = run.esn.then_some((seq >> 32) as u32);
                // More packets than IVs taken: the run names more than the batch holds.
                let iv = ivs.next().ok_or(Fault::Guest(WitCryptoError::KeyExpired))?;
                // The SA's end, not the guest's fault: a replaced guest may
                // not know of packets its predecessor sent.
                if tally.as_mut().is_some_and(|t| !t.pass(self.batch[i].len())) {
                    return Err(Fault::Packet(WitCryptoError::KeyExpired));
                }
                let trailer = (trailers.0[j], trailers.1[j]);
                // The guest's: every batch buffer has room for the
                // largest trailer (`packet::TAILROOM`), and nothing a peer
                // sends reaches this call, so what fails here is the pad
                // the guest chose (with CBC, one that leaves the payload
                // off a block boundary).
                k.seal_at(&mut self.batch[i], &header, esn_high, trailer, iv)
                    .map_err(|e| Fault::Guest(wit_error(e)))?;
                self.marks[i] = Mark::Sealed { peer, spi: run.spi };
                highest = Some(seq);
                Ok(())
            });
            if let Err(f) = r {
                failed.push(OpFailure { packet: index, error: f.count(&mut self.refusals) });
            }
        }
        if let Some(t) = tally {
            t.finish(&mut self.limits_reached);
        }
        // Sequence numbers grow along a run: the last sealed is the highest.
        if let (Ok((k, _)), Some(seq)) = (key, highest) {
            k.note_seq(seq);
        }
    }

    /// A call whose runs and lists disagree (counts that do not add up to
    /// the lists' length): no packet of it is sealed or opened, and each
    /// one named fails as the guest's error.
    fn refuse_all(&mut self, packets: &[u32], mut fail: impl FnMut(OpFailure)) {
        for &packet in packets {
            fail(OpFailure { packet, error: Fault::Guest(WitCryptoError::BadLength).count(&mut self.refusals) });
        }
    }

    /// With runs for several SAs (a PoP's packets, each for another of its
    /// thousands of SAs), their keys are out of the caches: ask for them
    /// all before the first is used, so that the misses overlap.
    fn warm_keys(&self, keys: impl ExactSizeIterator<Item = u64>) {
        if keys.len() < 2 {
            return;
        }
        for h in keys {
            if let Ok((k, _)) = self.keys.get(h) {
                crate::sys::prefetch(k);
            }
        }
    }

    /// Open one run's packets (`packets`; with ESN, `esn_highs` as long,
    /// else empty) into `out`.
    fn open_run(&mut self, run: &OpenRun, packets: &[u32], esn_highs: &[u32], out: &mut Opened) {
        // Only an inbound key opens, and only packets that carry its SPI.
        let key = match self.keys.get(run.key) {
            Ok((k, KeyUse::Open { spi, replay })) => {
                Ok((k, spi, if self.keys.limits(run.key).is_some() { run.key } else { 0 }, replay))
            }
            Ok(_) => Err(WitCryptoError::WrongKeyKind),
            Err(e) => Err(wit_error(e)),
        };
        let esn = run.esn;
        let key = key.map_err(Fault::Guest);
        // What the key authenticated before, then this run's numbers too.
        let before = key.map(|(k, ..)| k.authenticated()).unwrap_or_default();
        let mut opened = before;
        for (j, &index) in packets.iter().enumerate() {
            let r = key.and_then(|(k, spi, counted, replay)| {
                let i = untouched(&self.marks, index).map_err(Fault::Guest)?;
                let p = &mut self.batch[i];
                let seq = match esp::Packet::new_checked(p.data()) {
                    Ok(e) if e.spi() == spi => u64::from(e.sequence_number()),
                    _ => return Err(Fault::Guest(WitCryptoError::WrongKeyKind)),
                };
                let seq = if esn { u64::from(esn_highs[j]) << 32 | seq } else { seq };
                // The anti-replay window is the guest's, but a number the
                // key authenticated is never opened again (RFC 4303 section
                // 3.4.3), whatever the guest's window says. Not held
                // against the guest: an honest one asks for both copies of
                // a number replayed within one batch, as it commits only
                // after the open. An SA with anti-replay off (a window of
                // 0: a manual SA whose peer's counter restarts with it,
                // RFC 4303 section 3.4.3) takes a number again.
                // `before` too: a run may have moved `opened` 64 past it.
                if replay && (opened.has(seq) || before.has(seq)) {
                    self.replays_refused += 1;
                    self.marks[i] = Mark::Replayed;
                    return Err(Fault::packet(CryptoError::Replayed));
                }
                let esp_len = p.len();
                // A packet that does not open (a bad ICV, too short) is the
                // peer's, or a forger's: anyone who saw an SPI on the wire
                // can send them, so they must not count against the guest
                // and get its instance replaced.
                let seq = k.open_unnoted(p, esn.then(|| esn_highs[j])).map_err(Fault::packet)?;
                opened.add(seq);
                let d = p.data();
                let n = d.len();
                self.marks[i] = Mark::Opened { len: n as u32, spi, esp_len: esp_len as u32, counted };
                Ok((d[n - 2], d[n - 1]))
            });
            let (pad, next) = r.unwrap_or_else(|f| {
                out.failures.push(OpFailure { packet: index, error: f.count(&mut self.refusals) });
                (0, 0)
            });
            out.pad_lengths.push(pad);
            out.next_headers.push(next);
        }
        // Once per run: the numbers the key authenticated.
        if let Ok((k, ..)) = key
            && opened != before
        {
            k.note_opened(opened.top, opened.bits);
        }
    }
}

/// The packets a list of runs' counts adds up to (in u64: the guest's
/// counts may add up past `u32::MAX`).
fn counted(counts: impl Iterator<Item = u32>) -> u64 {
    counts.map(u64::from).sum()
}

/// The slot of packet `index` of the lent batch if it is untouched so far
/// in this call: the guest names it, so it is checked.
fn untouched(marks: &[Mark], index: u32) -> Result<usize, WitCryptoError> {
    let i = index as usize;
    if marks.get(i) != Some(&Mark::Untouched) {
        return Err(WitCryptoError::BadLength);
    }
    Ok(i)
}

/// Why the host did not seal or open a packet, and whose fault it was.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The guest asked for what it may not: a protocol error, which
    /// counts toward replacing the instance.
    Guest(WitCryptoError),
    /// The packet or the key: a forged or damaged packet, one too large,
    /// a key at its end. Answered, not held against the guest.
    Packet(WitCryptoError),
}

impl Fault {
    /// A sealing or opening that failed on the packet or the key.
    fn packet(e: CryptoError) -> Self {
        Fault::Packet(wit_error(e))
    }

    /// The answer to the guest; a refused request is counted.
    fn count(self, refusals: &mut u64) -> WitCryptoError {
        match self {
            Fault::Guest(e) => {
                *refusals += 1;
                e
            }
            Fault::Packet(e) => e,
        }
    }
}

impl b::wasmsec::crypto::types::Host for GuestState {}

/// Randomness, which the component uses only to key its hash tables of
/// peer-chosen values (SPIs, selector prefixes) against flooding: at most
/// 256 bytes a call, as the WIT says.
impl b::wasmsec::crypto::random::Host for GuestState {
    fn fill(&mut self, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; len.min(256) as usize];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("OS random number generator failed");
        self.random_drawn += b.len() as u64;
        b
    }
}
impl b::wasmsec::crypto::packets::Host for GuestState {}
impl b::wasmsec::net::types::Host for GuestState {}

impl HostBatch for GuestState {
    fn count(&mut self, _: Resource<Batch>) -> u32 {
        self.count as u32
    }

    fn seal(&mut self, _: Resource<Batch>, runs: SealRuns) -> Vec<OpFailure> {
        let mut failed = Vec::new();
        let n = runs.packets.len();
        let lists_agree = runs.pad_lengths.len() == n && runs.next_headers.len() == n;
        if !lists_agree || counted(runs.runs.iter().map(|r| r.count)) != n as u64 {
            self.refuse_all(&runs.packets, |f| failed.push(f));
            return failed;
        }
        self.warm_keys(runs.runs.iter().map(|r| r.key));
        // The counts add up to the lists, so every share is whole.
        for (run, s) in runs.runs.iter().zip(spans(runs.runs.iter().map(|r| r.count))) {
            let trailers = (share(&runs.pad_lengths, &s), share(&runs.next_headers, &s));
            self.seal_run(run, share(&runs.packets, &s), trailers, &mut failed);
        }
        failed
    }

    fn open(&mut self, _: Resource<Batch>, runs: OpenRuns) -> Opened {
        let n = runs.packets.len().min(self.count);
        let mut out = Opened {
            pad_lengths: Vec::with_capacity(n),
            next_headers: Vec::with_capacity(n),
            failures: Vec::new(),
            heads: Vec::new(),
        };
        let esn_counts = runs.runs.iter().filter(|r| r.esn).map(|r| r.count);
        if counted(runs.runs.iter().map(|r| r.count)) != runs.packets.len() as u64
            || counted(esn_counts) != runs.esn_highs.len() as u64
        {
            // Still one entry per packet named, as the WIT says.
            let (pads, nexts) = (&mut out.pad_lengths, &mut out.next_headers);
            self.refuse_all(&runs.packets, |f| {
                out.failures.push(f);
                pads.push(0);
                nexts.push(0);
            });
        } else {
            self.warm_keys(runs.runs.iter().map(|r| r.key));
            let esn_spans = spans(runs.runs.iter().map(|r| if r.esn { r.count } else { 0 }));
            let spans = spans(runs.runs.iter().map(|r| r.count)).zip(esn_spans);
            for (run, (s, e)) in runs.runs.iter().zip(spans) {
                self.open_run(run, share(&runs.packets, &s), share(&runs.esn_highs, &e), &mut out);
            }
        }
        // The heads in the same answer: an opened packet's length is its
        // plaintext's, and the engine checks its inner header against the
        // SA's selectors without another crossing.
        out.heads = self.heads(IP_HEAD_LEN);
        out
    }

    fn drop(&mut self, _: Resource<Batch>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// The compiled ESP component, linked and ready to instantiate.
pub(crate) struct EspPre(b::EspEnginePre<GuestState>);

impl EspPre {
    pub fn load(engine: &Engine, component: &wasmtime::component::Component) -> Result<EspPre> {
        let pre = sandbox::link(engine, component, "ESP", |l| b::EspEngine::add_to_linker::<_, HasSelf<_>>(l, |s| s))?;
        Ok(EspPre(
            b::EspEnginePre::new(pre)
                .context("ESP component does not export wasmsec:esp/engine@0.2.0 (built against an older WIT?)")?,
        ))
    }

    /// A new instance in its own store; `live` counts it while it lives.
    pub fn instantiate(&self, engine: &Engine, live: Option<Arc<AtomicUsize>>) -> Result<EspInstance> {
        let state = GuestState {
            limits: sandbox::store_limits(),
            keys: KeyTable::default(),
            batch: Vec::new(),
            count: 0,
            marks: Vec::new(),
            refusals: 0,
            replays_refused: 0,
            random_drawn: 0,
            limits_reached: Vec::new(),
            _live: live.map(Live::new),
        };
        let mut store = sandbox::new_store(engine, state);
        super::memory_slots::clear_last_made();
        let bindings = self.0.instantiate(&mut store).context("instantiating ESP component")?;
        let hints = StateHints::new(super::memory_slots::take_last_made());
        Ok(EspInstance { store, bindings, hints })
    }
}

/// One ESP engine instance and its store. Every call's outer `Err` is a
/// trap (the instance is then unusable), the inner one the engine's answer.
pub struct EspInstance {
    pub store: Store<GuestState>,
    bindings: b::EspEngine,
    /// Where the inbound SAs' state lies in the instance's memory.
    hints: StateHints,
}

impl EspInstance {
    fn e(&mut self) -> (&b::exports::wasmsec::esp::engine::Guest, &mut Store<GuestState>) {
        self.store.set_epoch_deadline(sandbox::ESP_CALL_DEADLINE_TICKS);
        (self.bindings.wasmsec_esp_engine(), &mut self.store)
    }

    pub fn install_outbound(&mut self, sa: &OutboundSa) -> Result<Result<(), String>> {
        let (e, s) = self.e();
        Ok(e.call_install_outbound(s, sa)?)
    }

    pub fn install_inbound(&mut self, sa: &InboundSa) -> Result<Result<(), String>> {
        let (e, s) = self.e();
        Ok(e.call_install_inbound(s, sa)?.map(|ranges| {
            self.hints.insert(sa.spi, ranges.iter().map(|r| (r.offset, r.len)));
        }))
    }

    pub fn remove_outbound(&mut self, spi: u32) -> Result<bool> {
        let (e, s) = self.e();
        Ok(e.call_remove_outbound(s, spi)?)
    }

    pub fn remove_inbound(&mut self, spi: u32) -> Result<bool> {
        self.hints.remove(spi);
        let (e, s) = self.e();
        Ok(e.call_remove_inbound(s, spi)?)
    }

    /// Move these inbound SAs' replay windows on to the keystore's record
    /// (`catch-up-inbound`): how many the guest says it moved.
    pub fn catch_up_inbound(&mut self, states: &[ReplayState]) -> Result<u32> {
        let (e, s) = self.e();
        Ok(e.call_catch_up_inbound(s, states)?)
    }

    /// How much its linear memory grew past what it was instantiated with.
    pub fn memory_grown(&self) -> usize {
        self.store.data().limits.grown()
    }

    pub fn sa_states(&mut self) -> Result<Vec<SaState>> {
        let (e, s) = self.e();
        Ok(e.call_sa_states(s)?)
    }

    /// The SAs that passed a soft or hard limit since the last call.
    pub fn take_expiries(&mut self) -> Result<Vec<Expiry>> {
        let (e, s) = self.e();
        Ok(e.call_take_expiries(s)?)
    }

    /// Encapsulate the first `n` packets in `store.data().batch`.
    pub fn encap(&mut self, n: usize) -> Result<Vec<EncapVerdict>> {
        self.store.data_mut().lend(n);
        let count = self.store.data().count;
        let heads = self.store.data().heads(IP_HEAD_LEN);
        let (e, s) = self.e();
        let Encapped { peers, drops } = e.call_encap(s, Resource::new_borrow(0), &heads)?;
        Ok(verdicts(count, &peers, &drops, EncapVerdict::Send, EncapVerdict::Drop, EncapVerdict::Missing))
    }

    /// Decapsulate the first `n` packets in `store.data().batch`.
    pub fn decap(&mut self, n: usize) -> Result<Vec<DecapVerdict>> {
        self.store.data_mut().lend(n);
        let count = self.store.data().count;
        let st = self.store.data();
        let heads = st.heads(ESP_HEAD_LEN);
        self.hints
            .warm(st.batch[..count].iter().filter_map(|p| esp::Packet::new_checked(p.data()).ok().map(|e| e.spi())));
        let (e, s) = self.e();
        let Decapped { lengths, drops } = e.call_decap(s, Resource::new_borrow(0), &heads)?;
        Ok(verdicts(count, &lengths, &drops, DecapVerdict::Deliver, DecapVerdict::Drop, DecapVerdict::Missing))
    }
}

impl TrafficSelector {
    /// Any protocol and port, addresses `start` to `end` (4 or 16 bytes each).
    pub fn addresses(start: Vec<u8>, end: Vec<u8>) -> TrafficSelector {
        TrafficSelector { ip_protocol: 0, start_port: 0, end_port: u16::MAX, start_address: start, end_address: end }
    }
}

impl Default for SaLimits {
    /// No limits (manual SAs; CHILD SAs get theirs from the IKE engine).
    fn default() -> Self {
        SaLimits { soft_bytes: 0, soft_packets: 0, hard_bytes: 0, hard_packets: 0 }
    }
}

impl DropReason {
    pub const COUNT: usize = 11;

    /// Every reason, in `index` order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::NoPolicy,
        DropReason::Malformed,
        DropReason::UnknownSpi,
        DropReason::Replay,
        DropReason::IntegrityFailed,
        DropReason::BadTrailer,
        DropReason::SelectorMismatch,
        DropReason::SeqExhausted,
        DropReason::CryptoRefused,
        DropReason::Dummy,
        DropReason::SaExpired,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoPolicy => "no_policy",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::Replay => "replay",
            DropReason::IntegrityFailed => "integrity_failed",
            DropReason::BadTrailer => "bad_trailer",
            DropReason::SelectorMismatch => "selector_mismatch",
            DropReason::SeqExhausted => "seq_exhausted",
            DropReason::CryptoRefused => "crypto_refused",
            DropReason::Dummy => "dummy",
            DropReason::SaExpired => "sa_expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use zeroize::Zeroizing;

    use super::*;
    use crate::keys::{Authenticated, EspAlgorithm, EspKey};

    /// The SPI on the wire, both ways (the peer's for sealing).
    const SPI: u32 = 0x7001;
    /// The host's name of the outbound SA (its CHILD SA's inbound SPI).
    const NAME: u32 = 0x0b0b;

    /// A store's host state with `n` 60-byte packets and a sealing key
    /// (handle 1, SA `NAME` on the wire as `SPI`, peer 4) and an opening
    /// one (handle 2, `SPI`).
    fn state(n: usize) -> GuestState {
        state_with(n, EspAlgorithm::Aes256Gcm16)
    }

    fn state_with(n: usize, alg: EspAlgorithm) -> GuestState {
        let key = || Arc::new(EspKey::new(alg, Zeroizing::new(vec![9; alg.keymat_len()])).unwrap());
        let mut keys = KeyTable::default();
        keys.grant(1, key(), KeyUse::Seal { spi: NAME, wire_spi: SPI, peer: 4 }, SaLimits::default());
        keys.grant(2, key(), KeyUse::Open { spi: SPI, replay: true }, SaLimits::default());
        let batch = (0..n)
            .map(|_| {
                let mut p = PacketBuf::new();
                p.recv_area()[..60].fill(0x45);
                p.set_received(60);
                p
            })
            .collect();
        let mut st = GuestState {
            limits: sandbox::store_limits(),
            keys,
            batch,
            count: 0,
            marks: Vec::new(),
            refusals: 0,
            replays_refused: 0,
            random_drawn: 0,
            limits_reached: Vec::new(),
            _live: None,
        };
        st.lend(n);
        st
    }

    /// One seal run of `packets` with sealing key 1.
    fn run(first_seq: u64, esn: bool, packets: Vec<u32>) -> SealRuns {
        let n = packets.len();
        let run = SealRun { key: 1, spi: NAME, first_seq, esn, count: n as u32 };
        SealRuns { runs: vec![run], packets, pad_lengths: vec![2; n], next_headers: vec![4; n] }
    }

    /// One open run of `packets` with key `key`, ESN if `esn_highs` is not empty.
    fn open_run(key: u64, packets: Vec<u32>, esn_highs: Vec<u32>) -> OpenRuns {
        let run = OpenRun { key, esn: !esn_highs.is_empty(), count: packets.len() as u32 };
        OpenRuns { runs: vec![run], packets, esn_highs }
    }

    #[test]
    fn a_pad_that_breaks_the_cbc_block_is_held_against_the_guest() {
        let cbc = EspAlgorithm::AesCbc { key_bits: 128, integ: crate::keys::Integ::Sha256_128 };
        // 60 bytes, the pad and the 2 trailer bytes: a pad of 2 ends on a
        // 16-byte block, one of 14 does not.
        let mut st = state_with(2, cbc);
        let mut r = run(1, false, vec![0, 1]);
        r.pad_lengths = vec![2, 14];
        let failed = st.seal(Resource::new_borrow(0), r);
        assert_eq!(failed.iter().map(|f| (f.packet, f.error)).collect::<Vec<_>>(), [(1, WitCryptoError::BadLength)]);
        assert_eq!(st.refusals, 1, "the guest chose the pad");
        assert_eq!(st.marks[0], Mark::Sealed { peer: 4, spi: NAME });
    }

    #[test]
    fn past_its_hard_limit_a_key_seals_nothing_and_the_guest_is_not_blamed() {
        let mut st = state(5);
        let limits = SaLimits { hard_packets: 3, ..SaLimits::default() };
        let alg = EspAlgorithm::Aes256Gcm16;
        let k = Arc::new(EspKey::new(alg, Zeroizing::new(vec![9; alg.keymat_len()])).unwrap());
        st.keys.grant(1, k.clone(), KeyUse::Seal { spi: NAME, wire_spi: SPI, peer: 4 }, limits);
        assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1])).is_empty());
        assert!(st.limits_reached.is_empty());
        st.lend(5);
        // A replaced guest, say, that knows nothing of the first two.
        let failed = st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1, 2]));
        assert_eq!(
            failed.iter().map(|f| (f.packet, f.error)).collect::<Vec<_>>(),
            [(1, WitCryptoError::KeyExpired), (2, WitCryptoError::KeyExpired)]
        );
        assert_eq!(st.refusals, 0, "the SA's end, not the guest's lie");
        assert_eq!(st.marks[..3], [Mark::Sealed { peer: 4, spi: NAME }, Mark::Untouched, Mark::Untouched]);
        assert_eq!(k.usage().get().0, 3);
        let reached = LimitReached { key: 1, spi: NAME, outbound: true, hard: true, by_bytes: false };
        assert_eq!(st.limits_reached, [reached]);
    }

    #[test]
    fn a_run_with_lists_of_other_lengths_is_refused_whole() {
        let mut st = state(3);
        let mut bad = run(1, false, vec![0, 1, 2]);
        bad.next_headers.pop();
        let failed = st.seal(Resource::new_borrow(0), bad);
        assert_eq!(failed.iter().map(|f| f.packet).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(failed.iter().all(|f| f.error == WitCryptoError::BadLength));
        assert_eq!((st.refusals, st.marks.clone()), (3, vec![Mark::Untouched; 3]));
    }

    #[test]
    fn runs_take_their_packets_from_the_flat_lists_in_turn() {
        let mut st = state(3);
        let mut runs = run(1, false, vec![2, 0, 1]);
        runs.runs = vec![
            SealRun { key: 1, spi: NAME, first_seq: 7, esn: false, count: 1 },
            SealRun { key: 1, spi: NAME, first_seq: 20, esn: false, count: 2 },
        ];
        runs.pad_lengths = vec![2, 6, 10];
        assert!(st.seal(Resource::new_borrow(0), runs).is_empty());
        // Packet 2 is the first run's (sequence number 7), packets 0 and 1
        // the second's (20 and 21), each with its own pad length.
        let seq = |i: usize| st.batch[i].data()[7];
        assert_eq!([seq(2), seq(0), seq(1)], [7, 20, 21]);
        let lens: Vec<usize> = st.batch.iter().map(PacketBuf::len).collect();
        assert_eq!([lens[0] - lens[2], lens[1] - lens[2]], [4, 8]);
        st.lend(3);
        let mut open = open_run(2, vec![0, 1, 2], vec![]);
        open.runs = vec![OpenRun { key: 2, esn: false, count: 1 }, OpenRun { key: 2, esn: false, count: 2 }];
        let opened = st.open(Resource::new_borrow(0), open);
        assert!(opened.failures.is_empty(), "{:?}", opened.failures);
        assert_eq!(opened.pad_lengths, [6, 10, 2]);
    }

    #[test]
    fn runs_whose_counts_do_not_add_up_to_the_lists_are_refused_whole() {
        for counts in [vec![1, 1], vec![2, 2], vec![u32::MAX, 4]] {
            let mut st = state(3);
            let mut runs = run(1, false, vec![0, 1, 2]);
            runs.runs = counts.iter().map(|&count| SealRun { count, ..runs.runs[0] }).collect();
            let failed = st.seal(Resource::new_borrow(0), runs);
            assert_eq!(failed.iter().map(|f| f.packet).collect::<Vec<_>>(), [0, 1, 2], "counts {counts:?}");
            assert!(failed.iter().all(|f| f.error == WitCryptoError::BadLength));
            assert_eq!((st.refusals, st.marks.clone()), (3, vec![Mark::Untouched; 3]));
        }
        let mut st = state(2);
        assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1])).is_empty());
        st.lend(2);
        let mut open = open_run(2, vec![0, 1], vec![]);
        open.runs[0].count = 1;
        let opened = st.open(Resource::new_borrow(0), open);
        assert_eq!(opened.failures.iter().map(|f| f.packet).collect::<Vec<_>>(), [0, 1]);
        assert_eq!((opened.pad_lengths, opened.next_headers), (vec![0, 0], vec![0, 0]));
        assert_eq!((st.refusals, st.marks.clone()), (2, vec![Mark::Untouched; 2]));
    }

    #[test]
    fn without_esn_a_run_stops_at_the_last_32_bit_sequence_number() {
        let mut st = state(3);
        let failed = st.seal(Resource::new_borrow(0), run(u64::from(u32::MAX) - 1, false, vec![0, 1, 2]));
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].packet, failed[0].error), (2, WitCryptoError::BadLength));
        assert_eq!(st.marks[..2], [Mark::Sealed { peer: 4, spi: NAME }; 2]);
        // The high bits go into the ICV only, the low ones into the header,
        // after the peer's SPI (not the name the guest sealed under).
        let mut st = state(1);
        assert!(st.seal(Resource::new_borrow(0), run(5 << 32 | 9, true, vec![0])).is_empty());
        assert_eq!(st.batch[0].data()[..8], [0, 0, 0x70, 0x01, 0, 0, 0, 9]);
    }

    #[test]
    fn a_packet_named_twice_or_out_of_the_batch_is_refused_and_the_wrong_key_seals_nothing() {
        let mut st = state(2);
        let failed = st.seal(Resource::new_borrow(0), run(1, false, vec![1, 1, 7]));
        assert_eq!(failed.iter().map(|f| f.packet).collect::<Vec<_>>(), [1, 7]);
        assert_eq!(st.marks, [Mark::Untouched, Mark::Sealed { peer: 4, spi: NAME }]);
        // The opening key cannot seal; the sealing key cannot open.
        let mut st = state(1);
        let mut wrong = run(1, false, vec![0]);
        wrong.runs[0].key = 2;
        let failed = st.seal(Resource::new_borrow(0), wrong);
        assert_eq!(failed[0].error, WitCryptoError::WrongKeyKind);
        // A key seals only for the SA it was granted to, named as the host
        // named it: not under its SPI on the wire, nor another SA's name.
        for spi in [SPI, NAME + 1] {
            let mut st = state(1);
            let mut other = run(1, false, vec![0]);
            other.runs[0].spi = spi;
            let failed = st.seal(Resource::new_borrow(0), other);
            assert_eq!(failed[0].error, WitCryptoError::WrongKeyKind, "sealed under {spi:#x}");
            assert_eq!(st.marks, [Mark::Untouched]);
        }
        let opened = st.open(Resource::new_borrow(0), open_run(1, vec![0], vec![]));
        assert_eq!(opened.failures.len(), 1);
        assert_eq!(Heads::from_flat(opened.heads, IP_HEAD_LEN).get(0).map(|h| h.0), Some(st.batch[0].len()));
        assert_eq!(st.marks, [Mark::Untouched]);
    }

    #[test]
    fn a_sealed_run_opens_with_one_entry_per_packet() {
        let mut st = state(2);
        assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1])).is_empty());
        st.lend(2);
        let mut one_word = open_run(2, vec![0, 1], vec![0]);
        one_word.runs[0].esn = true;
        let opened = st.open(Resource::new_borrow(0), one_word);
        assert_eq!(opened.failures[0].error, WitCryptoError::BadLength, "one ESN word for two packets");
        assert_eq!((opened.pad_lengths.len(), opened.next_headers.len()), (2, 2), "an entry per packet named");
        st.lend(2);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![1, 0], vec![]));
        assert!(opened.failures.is_empty(), "{:?}", opened.failures);
        // 60 bytes, 2 of padding and the two trailer bytes.
        let heads = Heads::from_flat(opened.heads, IP_HEAD_LEN);
        assert_eq!([0, 1].map(|i| heads.get(i).map(|h| h.0)), [Some(64); 2]);
        assert_eq!((opened.pad_lengths, opened.next_headers), (vec![2, 2], vec![4, 4]));
    }

    #[test]
    fn a_packet_that_does_not_open_is_failed_but_not_held_against_the_guest() {
        let mut st = state(3);
        assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1, 2])).is_empty());
        // Packet 0 damaged (as a forger's would be: the right SPI, a bad
        // ICV), packet 1 cut short, packet 2 intact.
        let last = st.batch[0].len() - 1;
        st.batch[0].data_mut()[last] ^= 1;
        st.batch[1].truncate(12);
        st.lend(3);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1, 2], vec![]));
        let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
        assert_eq!(failed, [(0, WitCryptoError::IntegrityFailed), (1, WitCryptoError::BadLength)]);
        assert_eq!(st.refusals, 0, "the packets' failures are no protocol errors of the guest");
        assert!(matches!(st.marks[2], Mark::Opened { .. }));
        // What the guest asks wrongly still counts: packet 2 again, and one
        // out of the batch.
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![2, 9], vec![]));
        assert_eq!(opened.failures.len(), 2);
        assert_eq!(st.refusals, 2);
    }

    /// RFC 4303 section 3.4.3 on the host's side: whatever the guest's
    /// window says, a number the key authenticated is not opened again,
    /// whether in an earlier call or earlier in the same run; and that is
    /// the packet's failure (an honest guest asks for both copies of a
    /// number replayed within a batch), not the guest's.
    #[test]
    fn a_number_its_key_authenticated_is_not_opened_again() {
        let mut st = state(3);
        let alg = EspAlgorithm::Aes256Gcm16;
        let k = Arc::new(EspKey::new(alg, Zeroizing::new(vec![9; alg.keymat_len()])).unwrap());
        st.keys.grant(2, k.clone(), KeyUse::Open { spi: SPI, replay: true }, SaLimits::default());
        assert!(st.seal(Resource::new_borrow(0), run(1, false, vec![0, 1, 2])).is_empty());
        let sealed = st.batch.clone();
        st.lend(3);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![]));
        assert!(opened.failures.is_empty(), "{:?}", opened.failures);
        // Numbers 1 (opened before), 3 (new) and 3 again.
        st.batch = vec![sealed[0].clone(), sealed[2].clone(), sealed[2].clone()];
        st.lend(3);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1, 2], vec![]));
        let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
        assert_eq!(failed, [(0, WitCryptoError::Replayed), (2, WitCryptoError::Replayed)]);
        assert!(matches!(st.marks[1], Mark::Opened { .. }));
        assert_eq!((&st.marks[0], &st.marks[2]), (&Mark::Replayed, &Mark::Replayed));
        assert_eq!(st.batch[0].data(), sealed[0].data(), "not opened");
        assert_eq!((st.replays_refused, st.refusals), (2, 0));
        assert_eq!(st.keys.get(2).unwrap().0.authenticated(), Authenticated { top: 3, bits: 0b111 });
        // Number 2 in a later call, as a guest whose window forgot it.
        st.batch = vec![sealed[1].clone()];
        st.lend(1);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![]));
        assert_eq!(opened.failures.iter().map(|f| f.error).collect::<Vec<_>>(), [WitCryptoError::Replayed]);
        assert_eq!(st.replays_refused, 3);
        // Asking again for a packet refused so is the guest's error, and
        // one packet is not counted as many replays.
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![]));
        assert_eq!(opened.failures.iter().map(|f| f.error).collect::<Vec<_>>(), [WitCryptoError::BadLength]);
        assert_eq!((st.replays_refused, st.refusals), (3, 1));
        // With the SA's anti-replay off, the host takes it again too.
        st.keys.grant(2, k, KeyUse::Open { spi: SPI, replay: false }, SaLimits::default());
        st.batch = vec![sealed[1].clone(), sealed[1].clone()];
        st.lend(2);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![]));
        assert!(opened.failures.is_empty(), "{:?}", opened.failures);
        assert_eq!(st.replays_refused, 3);
    }

    /// The same in two runs of one key in one call, with ESN (the number
    /// is the one the ICV covers, high bits included), and with a run
    /// that first opens a number 64 or more past the key's record.
    #[test]
    fn a_replay_is_refused_across_runs_of_one_key_and_with_esn() {
        let mut st = state(4);
        let mut seal = run((7 << 32) + 1, true, vec![0, 1, 2, 3]);
        seal.runs[0].first_seq = (7 << 32) + 1;
        assert!(st.seal(Resource::new_borrow(0), seal).is_empty());
        let sealed = st.batch.clone();
        // Numbers 7:1 and 7:2 opened; then 7:2, 7:3, 7:1 in two runs of one call.
        st.lend(4);
        assert!(st.open(Resource::new_borrow(0), open_run(2, vec![0, 1], vec![7, 7])).failures.is_empty());
        st.batch = vec![sealed[1].clone(), sealed[2].clone(), sealed[0].clone(), sealed[2].clone()];
        st.lend(4);
        let runs = OpenRuns {
            runs: vec![OpenRun { key: 2, esn: true, count: 2 }, OpenRun { key: 2, esn: true, count: 2 }],
            packets: vec![0, 1, 2, 3],
            esn_highs: vec![7; 4],
        };
        let opened = st.open(Resource::new_borrow(0), runs);
        let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
        let r = WitCryptoError::Replayed;
        assert_eq!(failed, [(0, r), (2, r), (3, r)], "7:3 opened once, in the first run");
        assert_eq!(st.replays_refused, 3);
        // Another high word is another number: it does not open (the ICV
        // covers the high bits), and is no replay.
        st.batch = vec![sealed[0].clone()];
        st.lend(1);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![8]));
        assert_eq!(opened.failures[0].error, WitCryptoError::IntegrityFailed);
        // A run that opens a number far ahead first still refuses one the
        // key had before the call.
        let mut st = state(2);
        let mut far = run(1, false, vec![0]);
        far.runs[0].first_seq = 1;
        assert!(st.seal(Resource::new_borrow(0), far).is_empty());
        let one = st.batch[0].clone();
        st.lend(2);
        assert!(st.open(Resource::new_borrow(0), open_run(2, vec![0], vec![])).failures.is_empty());
        let mut ahead = run(100, false, vec![1]);
        ahead.runs[0].first_seq = 100;
        assert!(st.seal(Resource::new_borrow(0), ahead).is_empty());
        st.batch[0] = one;
        st.lend(2);
        let opened = st.open(Resource::new_borrow(0), open_run(2, vec![1, 0], vec![]));
        let failed: Vec<_> = opened.failures.iter().map(|f| (f.packet, f.error)).collect();
        assert_eq!(failed, [(0, WitCryptoError::Replayed)]);
    }

    #[test]
    fn verdicts_follow_the_per_packet_list_and_its_exceptions() {
        let drop = |packet, reason| Dropped { packet, reason };
        let v = verdicts(
            4,
            &[7, 8, 9, 10, 11],
            &[drop(1, DropReason::Replay), drop(9, DropReason::Dummy)],
            DecapVerdict::Deliver,
            DecapVerdict::Drop,
            DecapVerdict::Missing,
        );
        assert_eq!(
            v,
            [
                DecapVerdict::Deliver(7),
                DecapVerdict::Drop(DropReason::Replay),
                DecapVerdict::Deliver(9),
                DecapVerdict::Deliver(10)
            ]
        );
        let v = verdicts(3, &[5], &[], EncapVerdict::Send, EncapVerdict::Drop, EncapVerdict::Missing);
        assert_eq!(v, [EncapVerdict::Send(5), EncapVerdict::Missing, EncapVerdict::Missing]);
    }

    /// The real component says where an inbound SA's state lies: within
    /// its instance's memory, a slot or a guarded one (the daemon's own
    /// domain), kept until the SA goes.
    #[test]
    fn an_inbound_sa_has_state_hints_in_either_memory_and_loses_them_with_the_sa() {
        let dir = crate::daemon::built_components_dir();
        let rt = super::super::Runtime::new(&dir.join("esp.wasm")).expect("ESP component (cargo xtask build)");
        let ts = TrafficSelector::addresses(vec![10, 0, 0, 0], vec![10, 0, 0, 255]);
        let sa = InboundSa {
            spi: SPI,
            key: 2,
            esn: false,
            replay_window: 1024,
            highest_seq: 0,
            replay_missing: 0,
            local_ts: vec![ts.clone()],
            remote_ts: vec![ts],
            limits: SaLimits::default(),
        };
        let mut slot = rt.esp_instance_of(0, super::super::EspMemory::Slot).unwrap();
        slot.install_inbound(&sa).unwrap().unwrap();
        assert_eq!(slot.hints.len(), 1, "the SA and its window, in the slot");
        assert!(slot.remove_inbound(SPI).unwrap());
        assert!(slot.hints.is_empty());
        let mut guarded = rt.esp_instance_of(0, super::super::EspMemory::Guarded).unwrap();
        guarded.install_inbound(&sa).unwrap().unwrap();
        assert_eq!(guarded.hints.len(), 1, "the SA and its window, in the guarded memory");
        assert!(guarded.remove_inbound(SPI).unwrap());
        assert!(guarded.hints.is_empty());

        // A guest whose hints point beyond its memory and are far too
        // long: they are cut to the slot, and a batch for the SA is
        // prefetched by them without harm.
        let rt = super::super::Runtime::new(&dir.join("hostile-esp.wasm")).expect("cargo xtask guests");
        let mut lying = rt.esp_instance_of(0, super::super::EspMemory::Slot).unwrap();
        lying.install_inbound(&sa).unwrap().unwrap();
        assert_eq!(lying.hints.len(), 1, "the ranges within the memory are kept");
        let mut p = PacketBuf::new();
        p.recv_area()[..60].fill(0);
        p.recv_area()[..4].copy_from_slice(&SPI.to_be_bytes());
        p.set_received(60);
        lying.store.data_mut().batch = vec![p];
        let _ = lying.decap(1);
    }
}
