//! The Security Association Database and the per-packet decisions.
use std::collections::HashMap;

use wasmsec_wire::SaLimits;
use wasmsec_wire::esp::{self, Trailer};
use wasmsec_wire::ip::{self, Selectors};
use wasmsec_wire::own_keys::OwnKeys;
use wasmsec_wire::peer_keys::PeerKeys;

use crate::batch::{CryptoError, Heads, KeyHandle, OpFailure, OpenRun, OpenRuns, PacketBatch, SealRun, SealRuns};
use crate::replay::{ReplayError, ReplayWindow};
use crate::selector::{self, TrafficSelector, TsList};
use crate::spd::DestinationIndex;

/// An SA for sending.
#[derive(Debug, Clone)]
pub struct OutboundSa {
    /// The peer's SPI, written in every packet.
    pub spi: u32,
    /// The host's key for sealing; the guest never sees the key itself.
    pub key: KeyHandle,
    /// The host's name for the peer (address and transport).
    pub peer: u32,
    /// 64-bit sequence numbers, the high half only in the ICV (RFC 4303 2.2.1).
    pub esn: bool,
    /// The sequence number the next packet gets (never 0 on the wire).
    pub next_seq: u64,
    /// Pad the payload to a multiple of this (4 at least, RFC 4303 2.4).
    pub pad_align: u8,
    /// Packets from here to `remote_ts` take this SA (the SPD entry,
    /// RFC 4301 4.4.1).
    pub local_ts: TsList,
    /// Where those packets go.
    pub remote_ts: TsList,
    /// Volume lifetimes: soft ones are reported, hard ones stop the SA.
    pub limits: SaLimits,
}

/// An SA for receiving.
#[derive(Debug, Clone)]
pub struct InboundSa {
    /// Our SPI: how arriving packets find this SA.
    pub spi: u32,
    /// The host's key for opening.
    pub key: KeyHandle,
    /// 64-bit sequence numbers (RFC 4303 2.2.1), inferred from the low half.
    pub esn: bool,
    /// Packets this far behind the highest are still accepted once (0: no
    /// replay check, RFC 4303 3.4.3).
    pub replay_window: u32,
    /// The highest sequence number seen, to carry over a restart.
    pub highest_seq: u64,
    /// Which of the 63 numbers below `highest_seq` were not seen (bit i
    /// for `highest_seq - i`); every other number up to it was.
    pub replay_missing: u64,
    /// Decrypted packets must be addressed here (RFC 4301 5.2, step 4)...
    pub local_ts: TsList,
    /// ...and come from here; others are dropped and counted.
    pub remote_ts: TsList,
    /// Volume lifetimes: soft ones are reported, hard ones stop the SA.
    pub limits: SaLimits,
}

/// What ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCause {
    Bytes,
    Packets,
    /// The sequence number space (RFC 4303 section 3.3.3).
    Sequence,
}

/// An SA passed a soft or hard limit; reported once per SA and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// The SA's SPI as installed: ours for an inbound SA; for an outbound
    /// one, the host's name for it (see the WIT's `outbound-sa.spi`).
    pub spi: u32,
    /// True for an outbound SA, false for an inbound one.
    pub outbound: bool,
    /// True for a hard limit (the SA stops), false for a soft one (time to rekey).
    pub hard: bool,
    /// Which limit was reached.
    pub cause: ExpiryCause,
}

/// Outbound sequence numbers left when the SA asks for its rekey: far more
/// than can be sent while a rekey completes, even at millions of packets
/// per second and with IKE retransmissions.
pub const SEQ_SOFT_MARGIN: u64 = 1 << 28;
/// The same with extended sequence numbers.
pub const SEQ_SOFT_MARGIN_ESN: u64 = 1 << 32;

/// Where an SA stands against its limits.
#[derive(Debug, Default)]
struct Usage {
    packets: u64,
    bytes: u64,
    soft: bool,
    hard: bool,
    /// The smallest packet and byte limits not yet passed (`u64::MAX`:
    /// none; 0 before the first packet): below both, a packet passes no
    /// limit, and counting it is two additions and two comparisons.
    check_packets: u64,
    check_bytes: u64,
}

impl Usage {
    /// Count one packet; the expiries it causes, if any.
    #[inline]
    fn count(&mut self, len: u64, l: &SaLimits, spi: u32, outbound: bool, out: &mut Vec<Expiry>) {
        self.packets += 1;
        self.bytes += len;
        if self.packets < self.check_packets && self.bytes < self.check_bytes {
            return;
        }
        self.count_limits(l, spi, outbound, out);
    }

    /// Whether the counts passed a limit, and the limits to check next.
    fn count_limits(&mut self, l: &SaLimits, spi: u32, outbound: bool, out: &mut Vec<Expiry>) {
        let over = |limit: u64, v: u64| limit != 0 && v >= limit;
        let cause = |bytes: bool| if bytes { ExpiryCause::Bytes } else { ExpiryCause::Packets };
        if !self.soft && (over(l.soft_bytes, self.bytes) || over(l.soft_packets, self.packets)) {
            self.soft = true;
            out.push(Expiry { spi, outbound, hard: false, cause: cause(over(l.soft_bytes, self.bytes)) });
        }
        if !self.hard && (over(l.hard_bytes, self.bytes) || over(l.hard_packets, self.packets)) {
            self.hard = true;
            out.push(Expiry { spi, outbound, hard: true, cause: cause(over(l.hard_bytes, self.bytes)) });
        }
        // A flag set elsewhere (the sequence number's soft limit) only makes
        // the next packet come here again, which then looks no further.
        let next = |soft: u64, hard: u64| {
            let pending = |passed: bool, limit: u64| if passed || limit == 0 { u64::MAX } else { limit };
            pending(self.soft, soft).min(pending(self.hard, hard))
        };
        self.check_packets = next(l.soft_packets, l.hard_packets);
        self.check_bytes = next(l.soft_bytes, l.hard_bytes);
    }
}

/// Why an SA was refused at install time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaError {
    /// SPIs 0-255 are reserved (RFC 4303 section 2.1).
    ReservedSpi(u32),
    DuplicateSpi(u32),
    NoSelectors,
    BadSelector,
    BadPadAlign(u8),
    /// Outbound sequence numbers start at 1 (RFC 4303 section 3.3.3).
    BadSequence(u64),
    /// The guest's memory (capped by the host) has no room for another SA.
    NoMemory,
}

impl core::fmt::Display for SaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SaError::ReservedSpi(s) => write!(f, "SPI {s:#010x} is reserved (must be > 255)"),
            SaError::DuplicateSpi(s) => write!(f, "SPI {s:#010x} is already installed"),
            SaError::NoSelectors => f.write_str("an SA needs at least one local and one remote traffic selector"),
            SaError::BadSelector => f.write_str("traffic selector mixes address families or has start > end"),
            SaError::BadPadAlign(a) => {
                write!(f, "pad alignment {a} is not a power of two from 4 to 128")
            }
            SaError::BadSequence(s) => write!(f, "next sequence number {s} is not >= 1"),
            SaError::NoMemory => f.write_str("no room for another SA in the ESP guest's memory"),
        }
    }
}

/// Why a packet was dropped; mirrors `drop-reason` in the ESP WIT. The host
/// counts each reason under its own metric label (the names live there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    NoPolicy,
    Malformed,
    UnknownSpi,
    Replay,
    IntegrityFailed,
    BadTrailer,
    SelectorMismatch,
    SeqExhausted,
    CryptoRefused,
    Dummy,
    SaExpired,
}

/// A packet of a batch that is not sent or delivered, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The packet's position in the batch.
    pub packet: u32,
    pub reason: DropReason,
}

/// What [`Engine::encap`] did with a batch, in the shape of the WIT's
/// `encapped`: a number per packet and the exceptions apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encapped {
    /// Per packet: the peer to send the sealed packet to (0 for a dropped
    /// one).
    pub peers: Vec<u32>,
    /// The packets not to send, in order.
    pub drops: Vec<Dropped>,
}

/// What [`Engine::decap`] did with a batch (the WIT's `decapped`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decapped {
    /// Per packet: the inner packet's length (0 for a dropped one).
    pub lengths: Vec<u32>,
    /// The packets not to deliver, in order.
    pub drops: Vec<Dropped>,
}

/// One packet's fate after [`Engine::encap`], for callers that look at
/// packets one by one ([`Encapped::verdicts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapVerdict {
    /// Sealed; send to this peer.
    Send(u32),
    Drop(DropReason),
}

/// One packet's fate after [`Engine::decap`] ([`Decapped::verdicts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapVerdict {
    /// Opened; the inner packet is this many bytes long.
    Deliver(u32),
    Drop(DropReason),
}

impl Encapped {
    pub fn verdicts(&self) -> Vec<EncapVerdict> {
        per_packet(&self.peers, &self.drops, EncapVerdict::Send, EncapVerdict::Drop)
    }
}

impl Decapped {
    pub fn verdicts(&self) -> Vec<DecapVerdict> {
        per_packet(&self.lengths, &self.drops, DecapVerdict::Deliver, DecapVerdict::Drop)
    }
}

fn per_packet<V>(each: &[u32], drops: &[Dropped], ok: fn(u32) -> V, drop: fn(DropReason) -> V) -> Vec<V> {
    let mut v: Vec<V> = each.iter().map(|&x| ok(x)).collect();
    for d in drops {
        if let Some(slot) = v.get_mut(d.packet as usize) {
            *slot = drop(d.reason);
        }
    }
    v
}

/// The packets of `failures` are dropped as `reason(error)` too: their
/// numbers become 0 and the drops stay in packet order (a packet the
/// host names twice, or that is not in the batch, is dropped once or not
/// at all).
fn add_failures(
    each: &mut [u32],
    drops: &mut Vec<Dropped>,
    failures: &[OpFailure],
    reason: impl Fn(CryptoError) -> DropReason,
) {
    if failures.is_empty() {
        return;
    }
    for f in failures {
        if let Some(x) = each.get_mut(f.packet as usize) {
            *x = 0;
            drops.push(Dropped { packet: f.packet, reason: reason(f.error) });
        }
    }
    drops.sort_unstable_by_key(|d| d.packet);
    drops.dedup_by_key(|d| d.packet);
}

/// How a packet the engine sent to be opened failed.
fn open_failure(e: CryptoError) -> DropReason {
    match e {
        CryptoError::IntegrityFailed => DropReason::IntegrityFailed,
        // Too short to hold IV, ICV and trailer.
        CryptoError::BadLength => DropReason::Malformed,
        // The host's own record of what the key authenticated: a second
        // copy of a number in this batch (the window commits only after
        // the open), a number a later packet of the batch pushed out of
        // the window, or one the window would have let through.
        CryptoError::Replayed => DropReason::Replay,
        _ => DropReason::CryptoRefused,
    }
}

/// Counters and sequence state of one SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaState {
    /// The SA's SPI as installed: ours for an inbound SA; for an outbound
    /// one, the host's name for it (see the WIT's `outbound-sa.spi`).
    pub spi: u32,
    /// True for an outbound SA, false for an inbound one.
    pub outbound: bool,
    /// Packets counted against the SA's limits so far.
    pub packets: u64,
    /// Bytes of inner IP packets counted against the SA's limits so far.
    pub bytes: u64,
    /// Outbound: next sequence number to send. Inbound: highest received.
    pub seq: u64,
}

struct Outbound {
    sa: OutboundSa,
    use_: Usage,
    /// When it was installed: of several SAs that match, the newest wins.
    installed: u64,
}

struct Inbound {
    sa: InboundSa,
    window: ReplayWindow,
    use_: Usage,
}

/// What the engine decided for one outbound packet: its SA's key, SPI,
/// peer and ESN use, its sequence number, and its trailer.
struct SealPlan {
    key: KeyHandle,
    spi: u32,
    seq: u64,
    esn: bool,
    pad_length: u8,
    next_header: u8,
    peer: u32,
}

/// The ESP engine: outbound SAs indexed by destination, inbound SAs by
/// SPI; neither lookup grows with the number of SAs.
#[derive(Default)]
pub struct Engine {
    /// Outbound SAs in slots that keep their place (`None`: free), boxed
    /// like the inbound ones.
    outbound: Vec<Option<Box<Outbound>>>,
    /// Free slots of `outbound`.
    free: Vec<usize>,
    /// Each outbound SA's slot, by the host's name for it (its CHILD SA's
    /// inbound SPI; the host writes the peer's SPI on the wire). Keyed
    /// with the component's seed (`peer_keys`) all the same: the names are
    /// the host's word, which the guest need not trust to spread well.
    out_slot: HashMap<u32, usize, PeerKeys>,
    /// Outbound slots by the prefixes of their remote selectors.
    by_destination: DestinationIndex,
    /// Installs so far (each outbound SA's `installed`).
    installs: u64,
    /// Inbound SAs by SPI, each boxed: the table then grows by pointers,
    /// not by whole SAs (100,000 SAs fit the guest's memory, #16).
    inbound: HashMap<u32, Box<Inbound>, OwnKeys>,
    /// The last flow sent (its selectors but the length) and the slot of
    /// its SA: consecutive packets of one flow skip the lookup. Only the
    /// same flow may use it: another one may match a newer SA as well.
    /// Cleared on every install and removal.
    last_out: Option<(Selectors, usize)>,
    /// The last inner flow (its selectors but the length) that matched
    /// the selectors of an inbound SA, and that SA's SPI: the packets of
    /// one flow are checked once. One per engine, not per SA: 100,000
    /// inbound SAs must fit the guest's memory. Cleared on every install
    /// and removal (an SPI may come back with other selectors).
    last_in: Option<(u32, Selectors)>,
    /// Limits passed since the last [`Engine::take_expiries`].
    expiries: Vec<Expiry>,
}

fn check_selectors(local: &[TrafficSelector], remote: &[TrafficSelector]) -> Result<(), SaError> {
    if local.is_empty() || remote.is_empty() {
        return Err(SaError::NoSelectors);
    }
    if !local.iter().chain(remote).all(TrafficSelector::is_valid) {
        return Err(SaError::BadSelector);
    }
    Ok(())
}

/// A table that cannot grow for an SA: the guest's memory is full.
impl From<std::collections::TryReserveError> for SaError {
    fn from(_: std::collections::TryReserveError) -> SaError {
        SaError::NoMemory
    }
}

/// Memory an install must find free once its tables have grown: the SA's
/// box, its replay window (up to 8 KiB) and a bucket's growth, with room
/// to spare for the next install's selector lists, which the host copies
/// in before the engine can check anything.
const INSTALL_HEADROOM: usize = 64 * 1024;

/// Refuse an SA that would not fit, instead of trapping on an allocation
/// (which costs a replacement of the instance and every SA reinstalled,
/// and, repeated, the whole group's traffic while the host backs off).
/// The tables reserve their growth first; then the headroom is probed with
/// an allocation that reports failure instead of aborting.
fn room_for_an_install() -> Result<(), SaError> {
    Ok(Vec::<u8>::new().try_reserve_exact(INSTALL_HEADROOM)?)
}

fn check_spi(spi: u32) -> Result<(), SaError> {
    if spi <= 255 { Err(SaError::ReservedSpi(spi)) } else { Ok(()) }
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    pub fn install_outbound(&mut self, sa: OutboundSa) -> Result<(), SaError> {
        check_spi(sa.spi)?;
        check_selectors(&sa.local_ts, &sa.remote_ts)?;
        if !(4..=128).contains(&sa.pad_align) || !sa.pad_align.is_power_of_two() {
            return Err(SaError::BadPadAlign(sa.pad_align));
        }
        if sa.next_seq == 0 {
            return Err(SaError::BadSequence(0));
        }
        if self.out_slot.contains_key(&sa.spi) {
            return Err(SaError::DuplicateSpi(sa.spi));
        }
        self.out_slot.try_reserve(1)?;
        if self.free.is_empty() {
            self.outbound.try_reserve(1)?;
        }
        let keys = self.by_destination.reserve(&sa.remote_ts)?;
        room_for_an_install()?;
        // Newest wins: a rekeyed SA takes over outbound traffic the moment
        // it is installed, while the old one still receives (make before
        // break, RFC 7296 section 2.8).
        self.installs += 1;
        let slot = self.free.pop().unwrap_or(self.outbound.len());
        self.by_destination.insert(slot, keys);
        self.out_slot.insert(sa.spi, slot);
        let o = Some(Box::new(Outbound { sa, use_: Usage::default(), installed: self.installs }));
        match self.outbound.get_mut(slot) {
            Some(s) => *s = o,
            None => self.outbound.push(o),
        }
        self.last_out = None;
        Ok(())
    }

    pub fn install_inbound(&mut self, sa: InboundSa) -> Result<(), SaError> {
        check_spi(sa.spi)?;
        check_selectors(&sa.local_ts, &sa.remote_ts)?;
        if self.inbound.contains_key(&sa.spi) {
            return Err(SaError::DuplicateSpi(sa.spi));
        }
        self.inbound.try_reserve(1)?;
        room_for_an_install()?;
        let window = ReplayWindow::restored(sa.replay_window, sa.highest_seq, sa.replay_missing);
        self.inbound.insert(sa.spi, Box::new(Inbound { sa, window, use_: Usage::default() }));
        self.last_in = None;
        Ok(())
    }

    pub fn remove_outbound(&mut self, spi: u32) -> bool {
        let Some(slot) = self.out_slot.remove(&spi) else { return false };
        let outbound = &self.outbound;
        if let Some(o) = &outbound[slot] {
            self.by_destination.remove(slot, &o.sa.remote_ts, |s| installed(outbound, s));
        }
        self.outbound[slot] = None;
        self.free.push(slot);
        self.last_out = None;
        true
    }

    /// Where inbound SA `spi`'s per-packet state lies: the SA's box and
    /// its replay window's bits (address and size). The component hands
    /// these to the host as prefetch hints (`install-inbound`).
    pub fn inbound_state(&self, spi: u32) -> Vec<(usize, usize)> {
        let Some(inb) = self.inbound.get(&spi) else { return Vec::new() };
        let sa = (&**inb as *const Inbound as usize, std::mem::size_of::<Inbound>());
        let window = inb.window.storage();
        if window.1 == 0 { vec![sa] } else { vec![sa, window] }
    }

    pub fn remove_inbound(&mut self, spi: u32) -> bool {
        self.last_in = None;
        self.inbound.remove(&spi).is_some()
    }

    /// Move inbound SA `spi`'s replay window on to where another
    /// instance left it (`ReplayWindow::catch_up`: never back, and what it
    /// received stays received). False if it holds no such SA or the
    /// window would move back.
    pub fn catch_up_inbound(&mut self, spi: u32, highest: u64, missing: u64) -> bool {
        self.inbound.get_mut(&spi).is_some_and(|i| i.window.catch_up(highest, missing))
    }

    pub fn sa_states(&self) -> Vec<SaState> {
        let out = self.outbound.iter().flatten().map(|o| SaState {
            spi: o.sa.spi,
            outbound: true,
            packets: o.use_.packets,
            bytes: o.use_.bytes,
            seq: o.sa.next_seq,
        });
        let inb = self.inbound.values().map(|i| SaState {
            spi: i.sa.spi,
            outbound: false,
            packets: i.use_.packets,
            bytes: i.use_.bytes,
            seq: i.window.highest(),
        });
        out.chain(inb).collect()
    }

    /// The soft and hard expiries since the last call, in order.
    pub fn take_expiries(&mut self) -> Vec<Expiry> {
        std::mem::take(&mut self.expiries)
    }

    /// Encapsulate every packet of `batch` (inner IP packets, with their
    /// `heads` of [`IP_HEAD_LEN`](crate::IP_HEAD_LEN) bytes). One host call: a
    /// seal of the runs of the packets that have an SA.
    pub fn encap<B: PacketBatch>(&mut self, heads: &Heads, batch: &mut B) -> Encapped {
        let n = heads.len();
        let mut out = Encapped { peers: vec![0; n], drops: Vec::new() };
        let mut runs = SealRuns {
            runs: Vec::new(),
            packets: Vec::with_capacity(n),
            pad_lengths: Vec::with_capacity(n),
            next_headers: Vec::with_capacity(n),
        };
        // The last packet's head and its SA's slot: the packets of one flow
        // that follow it take that SA without being parsed again.
        let mut prev: Option<(&[u8], usize)> = None;
        for (i, (len, head)) in heads.iter().enumerate() {
            let slot = match prev {
                Some((p, slot)) if ip::same_selectors(p, head) => Ok(slot),
                _ => self.choose_outbound(head),
            };
            let plan = slot.and_then(|slot| {
                prev = Some((head, slot));
                self.encap_plan(slot, len, head)
            });
            match plan {
                Ok(p) => {
                    out.peers[i] = p.peer;
                    match runs.runs.last_mut() {
                        Some(r)
                            if r.key == p.key
                                && r.spi == p.spi
                                && r.esn == p.esn
                                && r.seq(r.count as usize) == p.seq =>
                        {
                            r.count += 1
                        }
                        _ => runs.runs.push(SealRun { key: p.key, spi: p.spi, first_seq: p.seq, esn: p.esn, count: 1 }),
                    }
                    runs.packets.push(i as u32);
                    runs.pad_lengths.push(p.pad_length);
                    runs.next_headers.push(p.next_header);
                }
                Err(r) => out.drops.push(Dropped { packet: i as u32, reason: r }),
            }
        }
        if !runs.runs.is_empty() {
            let failures = batch.seal(runs);
            add_failures(&mut out.peers, &mut out.drops, &failures, |_| DropReason::CryptoRefused);
        }
        out
    }

    /// The slot of the SA a packet with these selectors takes: the newest
    /// of those whose selectors match (RFC 4301 section 5.1).
    fn find_outbound(&mut self, s: &Selectors) -> Option<usize> {
        let flow = Selectors { total_len: 0, ..*s };
        if let Some((last, i)) = self.last_out
            && last == flow
        {
            return Some(i);
        }
        let outbound = &self.outbound;
        let i = self.by_destination.newest(
            &s.dst,
            |i| outbound[i].as_ref().is_some_and(|o| selector::matches(s, &o.sa.local_ts, &o.sa.remote_ts)),
            |i| installed(outbound, i),
        )?;
        self.last_out = Some((flow, i));
        Some(i)
    }

    /// The slot of the SA for the packet with this head.
    fn choose_outbound(&mut self, head: &[u8]) -> Result<usize, DropReason> {
        let sel = Selectors::parse(head).map_err(|_| DropReason::Malformed)?;
        self.find_outbound(&sel).ok_or(DropReason::NoPolicy)
    }

    /// With the SA in `slot` (a packet that parsed): assign the sequence
    /// number and work out the padding.
    fn encap_plan(&mut self, slot: usize, len: usize, head: &[u8]) -> Result<SealPlan, DropReason> {
        let next_header = match head[0] >> 4 {
            4 => esp::NEXT_HEADER_IPV4,
            _ => esp::NEXT_HEADER_IPV6,
        };
        let o = self.outbound[slot].as_mut().ok_or(DropReason::NoPolicy)?;
        if o.use_.hard {
            return Err(DropReason::SaExpired);
        }
        let seq = o.sa.next_seq;
        // RFC 4303 section 3.3.3: the counter must not cycle; the SA has to
        // be rekeyed before 2^32 (2^64 with ESN) packets. Ask for that rekey
        // well before the end, and stop at the end.
        let (limit, margin) =
            if o.sa.esn { (u64::MAX, SEQ_SOFT_MARGIN_ESN) } else { (u64::from(u32::MAX), SEQ_SOFT_MARGIN) };
        let spi = o.sa.spi;
        let expiry = move |hard| Expiry { spi, outbound: true, hard, cause: ExpiryCause::Sequence };
        if seq > limit || seq == 0 {
            if !o.use_.hard {
                o.use_.hard = true;
                self.expiries.push(expiry(true));
            }
            return Err(DropReason::SeqExhausted);
        }
        if seq >= limit - margin && !o.use_.soft {
            o.use_.soft = true;
            self.expiries.push(expiry(false));
        }
        o.sa.next_seq = seq.wrapping_add(1);
        // Counted when planned, so a batch cannot run past a hard limit.
        o.use_.count(len as u64, &o.sa.limits, spi, true, &mut self.expiries);
        let pad_length = Trailer::pad_length_for(len, o.sa.pad_align);
        Ok(SealPlan { key: o.sa.key, spi, seq, esn: o.sa.esn, pad_length, next_header, peer: o.sa.peer })
    }

    /// Decapsulate every packet of `batch` (ESP packets, starting at the
    /// SPI, with their `heads` of [`ESP_HEAD_LEN`](crate::ESP_HEAD_LEN)
    /// bytes: SPI and sequence number are all the plan reads). One host
    /// call: an open of the runs of the packets that pass the SPI and
    /// replay checks, which answers with the inner heads too.
    pub fn decap<B: PacketBatch>(&mut self, heads: &Heads, batch: &mut B) -> Decapped {
        let n = heads.len();
        let mut out = Decapped { lengths: vec![0; n], drops: Vec::new() };
        let mut runs = OpenRuns { runs: Vec::new(), packets: Vec::with_capacity(n), esn_highs: Vec::new() };
        // Per packet sent to be opened, in run order: (position, SPI, sequence number).
        let mut pending = Vec::with_capacity(n);
        // The last SA found: a run of one SA's packets looks it up once.
        let mut last: Option<(u32, &Inbound)> = None;
        for (i, (_, head)) in heads.iter().enumerate() {
            match decap_plan(&self.inbound, &mut last, head) {
                Ok((key, spi, seq, esn)) => {
                    // A run's packets all carry ESN high bits, or none does.
                    match runs.runs.last_mut() {
                        Some(r) if r.key == key && r.esn == esn => r.count += 1,
                        _ => runs.runs.push(OpenRun { key, esn, count: 1 }),
                    }
                    runs.packets.push(i as u32);
                    if esn {
                        runs.esn_highs.push((seq >> 32) as u32);
                    }
                    pending.push((i, spi, seq));
                }
                Err(r) => out.drops.push(Dropped { packet: i as u32, reason: r }),
            }
        }
        if runs.runs.is_empty() {
            return out;
        }
        let opened = batch.open(runs);
        let heads = &opened.heads;
        let failed = |i: usize| opened.failures.iter().any(|f| f.packet as usize == i);
        // One SA lookup per stretch of one SA's packets.
        let mut from = 0;
        while from < pending.len() {
            let spi = pending[from].1;
            let to = from + pending[from..].iter().take_while(|p| p.1 == spi).count();
            let mut inb = self.inbound.get_mut(&spi);
            // The stretch's last delivered inner head: the packets of its
            // flow that follow passed the selectors with it.
            let mut prev: Option<&[u8]> = None;
            for (k, &(i, _, seq)) in pending.iter().enumerate().take(to).skip(from) {
                if !opened.failures.is_empty() && failed(i) {
                    continue;
                }
                // An opened packet's head: the plaintext's length (trailer
                // included) and the inner packet's first bytes.
                let trailer = (heads.get(i), opened.pad_lengths.get(k), opened.next_headers.get(k));
                let v = match (trailer, inb.as_deref_mut()) {
                    ((Some((len, inner)), Some(&pad), Some(&nh)), Some(inb)) => {
                        let checked = &mut self.last_in;
                        let v = decap_finish(inb, spi, seq, (len, pad, nh), (inner, prev), checked, &mut self.expiries);
                        if v.is_ok() {
                            prev = Some(inner);
                        }
                        v
                    }
                    // The host left the packet out of its answer.
                    ((None, _, _) | (_, None, _) | (_, _, None), _) => Err(DropReason::CryptoRefused),
                    (_, None) => Err(DropReason::UnknownSpi),
                };
                match v {
                    Ok(len) => out.lengths[i] = len,
                    Err(r) => out.drops.push(Dropped { packet: i as u32, reason: r }),
                }
            }
            from = to;
        }
        out.drops.sort_unstable_by_key(|d| d.packet);
        add_failures(&mut out.lengths, &mut out.drops, &opened.failures, open_failure);
        out
    }
}

/// Find the SA by SPI (`last`: the one found for the packet before) and
/// check the sequence number before the (costly) ICV verification (RFC
/// 4303 section 3.4.3): the key, SPI, full sequence number and whether it
/// uses ESN. Nothing changes before the ICV is verified.
fn decap_plan<'a>(
    inbound: &'a HashMap<u32, Box<Inbound>, OwnKeys>,
    last: &mut Option<(u32, &'a Inbound)>,
    head: &[u8],
) -> Result<(KeyHandle, u32, u64, bool), DropReason> {
    let pkt = esp::Packet::new_checked(head).map_err(|_| DropReason::Malformed)?;
    let spi = pkt.spi();
    let inb = match *last {
        Some((s, inb)) if s == spi => inb,
        _ => {
            let inb = inbound.get(&spi).ok_or(DropReason::UnknownSpi)?;
            *last = Some((spi, &**inb));
            inb
        }
    };
    if inb.use_.hard {
        return Err(DropReason::SaExpired);
    }
    let seq = if inb.sa.esn {
        inb.window.infer_esn(pkt.sequence_number()).ok_or(DropReason::Replay)?
    } else {
        u64::from(pkt.sequence_number())
    };
    inb.window.check(seq).map_err(replay_drop)?;
    Ok((inb.sa.key, spi, seq, inb.sa.esn))
}

/// After the ICV verified: commit the sequence number, then check the
/// trailer (the plaintext's length, its Pad Length and Next Header) and the
/// inner packet, against inbound SA `inb` (SPI `spi`). `prev`: the head
/// of an inner packet delivered from this SA before; `checked`: the last
/// flow that matched an SA's selectors, and its SPI.
fn decap_finish(
    inb: &mut Inbound,
    spi: u32,
    seq: u64,
    (plaintext_len, pad_length, next_header): (usize, u8, u8),
    (inner, prev): (&[u8], Option<&[u8]>),
    checked: &mut Option<(u32, Selectors)>,
    expiries: &mut Vec<Expiry>,
) -> Result<u32, DropReason> {
    // Planned before the batch's earlier packets reached the SA's hard
    // limit: it delivers nothing past it, as the host holds it to.
    if inb.use_.hard {
        return Err(DropReason::SaExpired);
    }
    // Commit re-checks, so a duplicate within one batch is caught here.
    inb.window.commit(seq).map_err(replay_drop)?;
    let payload_len = Trailer::check(plaintext_len, pad_length).map_err(|_| DropReason::BadTrailer)?;
    let want_version = match next_header {
        esp::NEXT_HEADER_IPV4 => 4,
        esp::NEXT_HEADER_IPV6 => 6,
        esp::NEXT_HEADER_NO_NEXT => return Err(DropReason::Dummy),
        _ => return Err(DropReason::Malformed),
    };
    if inner.first().map(|b| b >> 4) != Some(want_version) {
        return Err(DropReason::Malformed);
    }
    // The same selectors as a packet this SA delivered need no new check.
    let sel = match prev {
        Some(p) if ip::same_selectors(p, inner) => None,
        _ => Some(Selectors::parse(inner).map_err(|_| DropReason::Malformed)?),
    };
    let total_len = sel.map_or_else(|| ip::claimed_len(inner), |s| s.total_len);
    // TFC padding (RFC 4303 section 2.7) may follow the inner packet; the
    // inner header's length says where it ends.
    if total_len > payload_len {
        return Err(DropReason::Malformed);
    }
    // RFC 4301 section 5.2: the inner packet must match the SA's selectors.
    if let Some(sel) = sel {
        let flow = (spi, Selectors { total_len: 0, ..sel });
        if *checked != Some(flow) {
            if !selector::matches(&sel, &inb.sa.remote_ts, &inb.sa.local_ts) {
                return Err(DropReason::SelectorMismatch);
            }
            *checked = Some(flow);
        }
    }
    inb.use_.count(total_len as u64, &inb.sa.limits, spi, false, expiries);
    Ok(total_len as u32)
}

/// When the SA in outbound slot `i` was installed (0 for a free slot,
/// which the destination index does not hold).
fn installed(outbound: &[Option<Box<Outbound>>], i: usize) -> u64 {
    outbound.get(i).and_then(|o| o.as_ref()).map_or(0, |o| o.installed)
}

fn replay_drop(_: ReplayError) -> DropReason {
    DropReason::Replay
}
