//! The ESP engine as a WebAssembly component: a thin shell that maps the
//! `wasmsec:esp/engine` exports onto [`wasmsec_esp::Engine`] and implements
//! its [`PacketBatch`] with the host's `wasmsec:crypto/packets` imports.
#![deny(unsafe_code)] // generated bindings below are the only exception

use std::cell::RefCell;

use wasmsec_esp::{self as esp, CryptoError, HEAD_LEN, Heads, KeyHandle, OpenOp, Opened, PacketBatch, SealOp};
use wasmsec_wire::ip::Address;

#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "esp-engine",
        pub_export_macro: true,
        generate_all,
    });
}
use bindings::*;

use exports::wasmsec::esp::engine as wit;
use wasmsec::crypto::packets::{Batch, OpenRun, SealRun};
use wasmsec::crypto::types::CryptoError as WitCryptoError;

thread_local! {
    static ENGINE: RefCell<esp::Engine> = RefCell::new(esp::Engine::new());
}

struct Component;

/// The host's batch seen through the engine's trait.
struct HostBatch<'a>(&'a Batch);

fn crypto_error(e: WitCryptoError) -> CryptoError {
    CryptoError::from_wit(e as u8)
}

impl PacketBatch for HostBatch<'_> {
    fn count(&self) -> u32 {
        self.0.count()
    }

    fn heads(&self, head_len: usize) -> Heads {
        let head_len = head_len.min(HEAD_LEN);
        Heads::from_flat(self.0.heads(head_len as u32), head_len)
    }

    fn seal(&mut self, ops: &[SealOp], out: &mut Vec<Result<(), CryptoError>>) {
        let failures = self.0.seal(&seal_runs(ops));
        let first = out.len();
        out.resize(first + ops.len(), Ok(()));
        for f in failures {
            if let Some(k) = ops.iter().position(|o| o.index == f.packet) {
                out[first + k] = Err(crypto_error(f.error));
            }
        }
    }

    fn open(&mut self, ops: &[OpenOp], out: &mut Vec<Result<Opened, CryptoError>>) {
        let opened = self.0.open(&open_runs(ops));
        let first = out.len();
        out.extend((0..ops.len()).map(|k| match (opened.plaintext_lens.get(k), opened.pad_lengths.get(k)) {
            (Some(&len), Some(&pad_length)) => Ok(Opened {
                plaintext_len: len as usize,
                pad_length,
                next_header: opened.next_headers.get(k).copied().unwrap_or(0),
            }),
            _ => Err(CryptoError::Internal),
        }));
        for f in opened.failures {
            if let Some(k) = ops.iter().position(|o| o.index == f.packet) {
                out[first + k] = Err(crypto_error(f.error));
            }
        }
    }
}

/// The full sequence number of a seal op.
fn seq_of(o: &SealOp) -> u64 {
    (u64::from(o.esn_high.unwrap_or(0)) << 32) | u64::from(o.seq_low)
}

/// Seal ops as runs: consecutive ops of one SA with consecutive sequence
/// numbers (the engine numbers each SA's packets in batch order).
fn seal_runs(ops: &[SealOp]) -> Vec<SealRun> {
    let mut runs: Vec<SealRun> = Vec::new();
    let mut next_seq = 0;
    for o in ops {
        let seq = seq_of(o);
        let same = runs
            .last()
            .is_some_and(|r| r.key == o.key.0 && r.spi == o.spi && r.esn == o.esn_high.is_some() && seq == next_seq);
        if !same {
            runs.push(SealRun {
                key: o.key.0,
                spi: o.spi,
                first_seq: seq,
                esn: o.esn_high.is_some(),
                packets: Vec::new(),
                pad_lengths: Vec::new(),
                next_headers: Vec::new(),
            });
        }
        let r = runs.last_mut().expect("a run was just pushed");
        r.packets.push(o.index);
        r.pad_lengths.push(o.pad_length);
        r.next_headers.push(o.next_header);
        next_seq = seq.wrapping_add(1);
    }
    runs
}

/// Open ops as runs: consecutive ops with one key and the same use of ESN.
fn open_runs(ops: &[OpenOp]) -> Vec<OpenRun> {
    let mut runs: Vec<OpenRun> = Vec::new();
    for o in ops {
        // A run's packets all carry ESN high bits, or none does.
        let same = runs.last().is_some_and(|r| r.key == o.key.0 && r.esn_highs.is_empty() == o.esn_high.is_none());
        if !same {
            runs.push(OpenRun { key: o.key.0, packets: Vec::new(), esn_highs: Vec::new() });
        }
        let r = runs.last_mut().expect("a run was just pushed");
        r.packets.push(o.index);
        if let Some(h) = o.esn_high {
            r.esn_highs.push(h);
        }
    }
    runs
}

fn selectors(ts: Vec<wit::TrafficSelector>) -> Result<Vec<esp::TrafficSelector>, String> {
    ts.into_iter()
        .map(|t| {
            let start = Address::from_bytes(&t.start_address).ok_or("selector start address is not 4 or 16 bytes")?;
            let end = Address::from_bytes(&t.end_address).ok_or("selector end address is not 4 or 16 bytes")?;
            Ok(esp::TrafficSelector {
                protocol: t.ip_protocol,
                start_port: t.start_port,
                end_port: t.end_port,
                start,
                end,
            })
        })
        .collect()
}

/// The engine's verdicts as the WIT answers them: a number per packet
/// (`each` of a packet that goes on, 0 for a dropped one) and the drops.
fn answer<V>(verdicts: Vec<V>, each: impl Fn(V) -> Result<u32, esp::DropReason>) -> (Vec<u32>, Vec<wit::Dropped>) {
    let mut numbers = Vec::with_capacity(verdicts.len());
    let mut drops = Vec::new();
    for (i, v) in verdicts.into_iter().enumerate() {
        numbers.push(each(v).unwrap_or_else(|r| {
            drops.push(wit::Dropped { packet: i as u32, reason: drop_reason(r) });
            0
        }));
    }
    (numbers, drops)
}

fn drop_reason(r: esp::DropReason) -> wit::DropReason {
    use esp::DropReason as D;
    match r {
        D::NoPolicy => wit::DropReason::NoPolicy,
        D::Malformed => wit::DropReason::Malformed,
        D::UnknownSpi => wit::DropReason::UnknownSpi,
        D::Replay => wit::DropReason::Replay,
        D::IntegrityFailed => wit::DropReason::IntegrityFailed,
        D::BadTrailer => wit::DropReason::BadTrailer,
        D::SelectorMismatch => wit::DropReason::SelectorMismatch,
        D::SeqExhausted => wit::DropReason::SeqExhausted,
        D::CryptoRefused => wit::DropReason::CryptoRefused,
        D::Dummy => wit::DropReason::Dummy,
        D::SaExpired => wit::DropReason::SaExpired,
    }
}

fn limits(l: wit::SaLimits) -> esp::SaLimits {
    esp::SaLimits {
        soft_bytes: l.soft_bytes,
        soft_packets: l.soft_packets,
        hard_bytes: l.hard_bytes,
        hard_packets: l.hard_packets,
    }
}

impl wit::Guest for Component {
    fn install_outbound(sa: wit::OutboundSa) -> Result<(), String> {
        let sa = esp::OutboundSa {
            spi: sa.spi,
            key: KeyHandle(sa.key),
            peer: sa.peer,
            esn: sa.esn,
            next_seq: sa.next_seq,
            pad_align: sa.pad_align,
            local_ts: selectors(sa.local_ts)?,
            remote_ts: selectors(sa.remote_ts)?,
            limits: limits(sa.limits),
        };
        ENGINE.with_borrow_mut(|e| e.install_outbound(sa)).map_err(|e| e.to_string())
    }

    fn install_inbound(sa: wit::InboundSa) -> Result<(), String> {
        let sa = esp::InboundSa {
            spi: sa.spi,
            key: KeyHandle(sa.key),
            esn: sa.esn,
            replay_window: sa.replay_window,
            highest_seq: sa.highest_seq,
            local_ts: selectors(sa.local_ts)?,
            remote_ts: selectors(sa.remote_ts)?,
            limits: limits(sa.limits),
        };
        ENGINE.with_borrow_mut(|e| e.install_inbound(sa)).map_err(|e| e.to_string())
    }

    fn remove_outbound(spi: u32) -> bool {
        ENGINE.with_borrow_mut(|e| e.remove_outbound(spi))
    }

    fn remove_inbound(spi: u32) -> bool {
        ENGINE.with_borrow_mut(|e| e.remove_inbound(spi))
    }

    fn encap(packets: &Batch) -> wit::Encapped {
        let mut verdicts = Vec::with_capacity(packets.count() as usize);
        ENGINE.with_borrow_mut(|e| e.encap(&mut HostBatch(packets), &mut verdicts));
        let (peers, drops) = answer(verdicts, |v| match v {
            esp::EncapVerdict::Send(peer) => Ok(peer),
            esp::EncapVerdict::Drop(r) => Err(r),
        });
        wit::Encapped { peers, drops }
    }

    fn decap(packets: &Batch) -> wit::Decapped {
        let mut verdicts = Vec::with_capacity(packets.count() as usize);
        ENGINE.with_borrow_mut(|e| e.decap(&mut HostBatch(packets), &mut verdicts));
        let (lengths, drops) = answer(verdicts, |v| match v {
            esp::DecapVerdict::Deliver(len) => Ok(len),
            esp::DecapVerdict::Drop(r) => Err(r),
        });
        wit::Decapped { lengths, drops }
    }

    fn sa_states() -> Vec<wit::SaState> {
        ENGINE.with_borrow(|e| {
            e.sa_states()
                .into_iter()
                .map(|s| wit::SaState { spi: s.spi, packets: s.packets, bytes: s.bytes, seq: s.seq })
                .collect()
        })
    }

    fn take_expiries() -> Vec<wit::Expiry> {
        let cause = |c| match c {
            esp::ExpiryCause::Bytes => wit::ExpiryCause::Bytes,
            esp::ExpiryCause::Packets => wit::ExpiryCause::Packets,
            esp::ExpiryCause::Sequence => wit::ExpiryCause::Sequence,
        };
        ENGINE.with_borrow_mut(|e| {
            e.take_expiries()
                .into_iter()
                .map(|x| wit::Expiry { spi: x.spi, outbound: x.outbound, hard: x.hard, cause: cause(x.cause) })
                .collect()
        })
    }
}

#[allow(unsafe_code)]
mod export {
    use crate::Component;
    crate::bindings::export!(Component with_types_in crate::bindings);
}
