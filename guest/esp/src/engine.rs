//! The Security Association Database and the per-packet decisions.
use std::collections::HashMap;

use wasmsec_wire::esp::{self, Trailer};
use wasmsec_wire::ip::Selectors;

use crate::batch::{CryptoError, KeyHandle, PacketBatch};
use crate::replay::{ReplayError, ReplayWindow};
use crate::selector::{self, TrafficSelector};

/// An SA for sending.
#[derive(Debug, Clone)]
pub struct OutboundSa {
    pub spi: u32,
    pub key: KeyHandle,
    /// The host's name for the peer (address and transport).
    pub peer: u32,
    pub esn: bool,
    pub next_seq: u64,
    pub pad_align: u8,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
}

/// An SA for receiving.
#[derive(Debug, Clone)]
pub struct InboundSa {
    pub spi: u32,
    pub key: KeyHandle,
    pub esn: bool,
    pub replay_window: u32,
    pub highest_seq: u64,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
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
        }
    }
}

/// Why a packet was dropped; mirrors `drop-reason` in the ESP WIT.
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
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
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
    ];

    /// A short stable name, used as a metric label and in logs.
    pub fn as_str(&self) -> &'static str {
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapVerdict {
    /// Sealed; send to this peer.
    Send(u32),
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapVerdict {
    /// Opened; the inner packet is this many bytes long.
    Deliver(u32),
    Drop(DropReason),
}

/// Counters and sequence state of one SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaState {
    pub spi: u32,
    pub outbound: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Outbound: next sequence number to send. Inbound: highest received.
    pub seq: u64,
}

struct Outbound {
    sa: OutboundSa,
    packets: u64,
    bytes: u64,
}

struct Inbound {
    sa: InboundSa,
    window: ReplayWindow,
    packets: u64,
    bytes: u64,
}

/// The ESP engine: outbound SAs in policy order, inbound SAs by SPI.
#[derive(Default)]
pub struct Engine {
    outbound: Vec<Outbound>,
    inbound: HashMap<u32, Inbound>,
    /// Index of the last outbound SA that matched: consecutive packets of
    /// one flow skip the scan.
    last_out: usize,
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
        if self.outbound.iter().any(|o| o.sa.spi == sa.spi) {
            return Err(SaError::DuplicateSpi(sa.spi));
        }
        self.outbound.push(Outbound { sa, packets: 0, bytes: 0 });
        Ok(())
    }

    pub fn install_inbound(&mut self, sa: InboundSa) -> Result<(), SaError> {
        check_spi(sa.spi)?;
        check_selectors(&sa.local_ts, &sa.remote_ts)?;
        if self.inbound.contains_key(&sa.spi) {
            return Err(SaError::DuplicateSpi(sa.spi));
        }
        let window = ReplayWindow::new(sa.replay_window, sa.highest_seq);
        self.inbound.insert(sa.spi, Inbound { sa, window, packets: 0, bytes: 0 });
        Ok(())
    }

    pub fn remove_outbound(&mut self, spi: u32) -> bool {
        let before = self.outbound.len();
        self.outbound.retain(|o| o.sa.spi != spi);
        self.last_out = 0;
        before != self.outbound.len()
    }

    pub fn remove_inbound(&mut self, spi: u32) -> bool {
        self.inbound.remove(&spi).is_some()
    }

    pub fn sa_states(&self) -> Vec<SaState> {
        let out = self.outbound.iter().map(|o| SaState {
            spi: o.sa.spi,
            outbound: true,
            packets: o.packets,
            bytes: o.bytes,
            seq: o.sa.next_seq,
        });
        let inb = self.inbound.values().map(|i| SaState {
            spi: i.sa.spi,
            outbound: false,
            packets: i.packets,
            bytes: i.bytes,
            seq: i.window.highest(),
        });
        out.chain(inb).collect()
    }

    /// Encapsulate every packet of `batch` (inner IP packets); one verdict
    /// per packet is appended to `out`, in order.
    pub fn encap<B: PacketBatch>(&mut self, batch: &mut B, out: &mut Vec<EncapVerdict>) {
        for i in 0..batch.count() {
            out.push(match self.encap_one(batch, i) {
                Ok(peer) => EncapVerdict::Send(peer),
                Err(r) => EncapVerdict::Drop(r),
            });
        }
    }

    fn find_outbound(&mut self, s: &Selectors) -> Option<usize> {
        let hit = |o: &Outbound| selector::matches(s, &o.sa.local_ts, &o.sa.remote_ts);
        if self.outbound.get(self.last_out).is_some_and(hit) {
            return Some(self.last_out);
        }
        let i = self.outbound.iter().position(hit)?;
        self.last_out = i;
        Some(i)
    }

    fn encap_one<B: PacketBatch>(&mut self, batch: &mut B, i: u32) -> Result<u32, DropReason> {
        let len = batch.packet_len(i);
        let head = batch.head(i);
        let sel = Selectors::parse(head.as_bytes()).map_err(|_| DropReason::Malformed)?;
        let next_header = match head.as_bytes()[0] >> 4 {
            4 => esp::NEXT_HEADER_IPV4,
            _ => esp::NEXT_HEADER_IPV6,
        };
        let idx = self.find_outbound(&sel).ok_or(DropReason::NoPolicy)?;
        let o = &mut self.outbound[idx];
        let seq = o.sa.next_seq;
        // RFC 4303 section 3.3.3: the counter must not cycle; the SA has to
        // be rekeyed before 2^32 (2^64 with ESN) packets.
        let limit = if o.sa.esn { u64::MAX } else { u64::from(u32::MAX) };
        if seq > limit || seq == 0 {
            return Err(DropReason::SeqExhausted);
        }
        o.sa.next_seq = seq.wrapping_add(1);
        let header = esp::Repr { spi: o.sa.spi, sequence_number: seq as u32 }.to_bytes();
        let esn_high = o.sa.esn.then_some((seq >> 32) as u32);
        let trailer = Trailer::for_payload(len, o.sa.pad_align, next_header);
        batch.seal(i, o.sa.key, &header, esn_high, trailer.as_bytes()).map_err(|_| DropReason::CryptoRefused)?;
        o.packets += 1;
        o.bytes += len as u64;
        Ok(o.sa.peer)
    }

    /// Decapsulate every packet of `batch` (ESP packets, starting at the
    /// SPI); one verdict per packet is appended to `out`, in order.
    pub fn decap<B: PacketBatch>(&mut self, batch: &mut B, out: &mut Vec<DecapVerdict>) {
        for i in 0..batch.count() {
            out.push(match self.decap_one(batch, i) {
                Ok(len) => DecapVerdict::Deliver(len),
                Err(r) => DecapVerdict::Drop(r),
            });
        }
    }

    fn decap_one<B: PacketBatch>(&mut self, batch: &mut B, i: u32) -> Result<u32, DropReason> {
        let head = batch.head(i);
        let pkt = esp::Packet::new_checked(head.as_bytes()).map_err(|_| DropReason::Malformed)?;
        let inb = self.inbound.get_mut(&pkt.spi()).ok_or(DropReason::UnknownSpi)?;
        let seq = if inb.sa.esn {
            inb.window.infer_esn(pkt.sequence_number()).ok_or(DropReason::Replay)?
        } else {
            u64::from(pkt.sequence_number())
        };
        // Check before the (costly) ICV verification, commit only after it
        // (RFC 4303 section 3.4.3).
        inb.window.check(seq).map_err(replay_drop)?;
        let esn_high = inb.sa.esn.then_some((seq >> 32) as u32);
        let opened = batch.open(i, inb.sa.key, esn_high).map_err(|e| match e {
            CryptoError::IntegrityFailed => DropReason::IntegrityFailed,
            // Too short to hold IV, ICV and trailer.
            CryptoError::BadLength => DropReason::Malformed,
            _ => DropReason::CryptoRefused,
        })?;
        inb.window.commit(seq).map_err(replay_drop)?;
        let payload_len =
            Trailer::check(opened.plaintext_len, opened.pad_length).map_err(|_| DropReason::BadTrailer)?;
        let want_version = match opened.next_header {
            esp::NEXT_HEADER_IPV4 => 4,
            esp::NEXT_HEADER_IPV6 => 6,
            esp::NEXT_HEADER_NO_NEXT => return Err(DropReason::Dummy),
            _ => return Err(DropReason::Malformed),
        };
        let inner = opened.head.as_bytes();
        if inner.first().map(|b| b >> 4) != Some(want_version) {
            return Err(DropReason::Malformed);
        }
        let sel = Selectors::parse(inner).map_err(|_| DropReason::Malformed)?;
        // TFC padding (RFC 4303 section 2.7) may follow the inner packet; the
        // inner header's length says where it ends.
        if sel.total_len > payload_len {
            return Err(DropReason::Malformed);
        }
        // RFC 4301 section 5.2: the inner packet must match the SA's selectors.
        if !selector::matches(&sel, &inb.sa.remote_ts, &inb.sa.local_ts) {
            return Err(DropReason::SelectorMismatch);
        }
        inb.packets += 1;
        inb.bytes += sel.total_len as u64;
        Ok(sel.total_len as u32)
    }
}

fn replay_drop(_: ReplayError) -> DropReason {
    DropReason::Replay
}
