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
use crate::keys::{Authenticated, KeyTable, KeyUse};
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
    /// Not opened: its key had authenticated its sequence number, or it
    /// was left of its SA's replay window. Asking for it again is the
    /// guest's error, so a guest cannot count one packet as many refused
    /// replays.
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
    /// their sequence number already, or it was left of their SA's replay
    /// window (since the data path last took the count): replays the guest
    /// let through, or a second copy in a batch.
    pub replays_refused: u64,
    /// Of those, the ones refused by what the key knew before the call:
    /// a number it had authenticated, or one left of the window below its
    /// highest. The guest's own window holds all of that before it plans
    /// the batch (it commits every number it opened, but at its SA's hard
    /// limit, after which it opens nothing more of it; a new instance
    /// starts from the key's record), so an honest guest never asks for
    /// these: they are replays it missed.
    pub replays_missed: u64,
    /// What each key that opened packets in the current call had
    /// authenticated before it (its first entry; a key opens in several
    /// runs when the batch interleaves SAs), for `replays_missed`.
    before_call: Vec<(u64, Authenticated)>,
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
    /// A new instance's state: no keys, no batch; `live` counts it while
    /// it lives.
    fn new(live: Option<Arc<AtomicUsize>>) -> GuestState {
        GuestState {
            limits: sandbox::store_limits(),
            keys: KeyTable::default(),
            batch: Vec::new(),
            count: 0,
            marks: Vec::new(),
            refusals: 0,
            replays_refused: 0,
            replays_missed: 0,
            before_call: Vec::new(),
            random_drawn: 0,
            limits_reached: Vec::new(),
            _live: live.map(Live::new),
        }
    }

    /// Start a call on the first `count` packets of the batch.
    pub fn lend(&mut self, count: usize) {
        self.count = count.min(self.batch.len());
        self.marks.clear();
        self.marks.resize(self.count, Mark::Untouched);
        self.refusals = 0;
        self.before_call.clear();
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
            Ok((k, KeyUse::Open { spi, replay_window })) => {
                Ok((k, spi, if self.keys.limits(run.key).is_some() { run.key } else { 0 }, replay_window))
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
            let r = key.and_then(|(k, spi, counted, window)| {
                let i = untouched(&self.marks, index).map_err(Fault::Guest)?;
                let p = &mut self.batch[i];
                let seq = match esp::Packet::new_checked(p.data()) {
                    Ok(e) if e.spi() == spi => u64::from(e.sequence_number()),
                    _ => return Err(Fault::Guest(WitCryptoError::WrongKeyKind)),
                };
                let seq = if esn { u64::from(esn_highs[j]) << 32 | seq } else { seq };
                // The anti-replay window is the guest's, but a number the
                // key authenticated is never opened again, nor one left of
                // the SA's window (RFC 4303 section 3.4.3), whatever the
                // guest's window says. Not held against the guest: an
                // honest one asks for both copies of a number replayed
                // within one batch, and for a number the batch's later
                // ones pushed out of the window, as it commits only after
                // the open (and then drops them as replays). An SA with
                // anti-replay off (a window of 0: a manual SA whose peer's
                // counter restarts with it) takes a number again.
                // `before` too: a run may have moved `opened` 64 past it.
                if window > 0 && (opened.refuses(seq, window) || before.has(seq)) {
                    self.replays_refused += 1;
                    // What the key held before the call, the guest's
                    // window held as well: counted apart, as only a
                    // broken guest asks for it.
                    let known = self.before_call.iter().find(|(h, _)| *h == run.key).map_or(before, |&(_, a)| a);
                    self.replays_missed += u64::from(known.refuses(seq, window));
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
            self.before_call.push((run.key, before));
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
        let mut store = sandbox::new_store(engine, GuestState::new(live));
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
#[path = "esp_tests.rs"]
mod tests;
