//! The ESP engine as a WebAssembly component: a thin shell that maps the
//! `wasmsec:esp/engine` exports onto [`wasmsec_esp::Engine`] and implements
//! its [`PacketBatch`] with the host's `wasmsec:crypto/packets` imports.
#![deny(unsafe_code)] // generated bindings below are the only exception

use std::cell::RefCell;

use wasmsec_esp::{
    self as esp, CryptoError, ESP_HEAD_LEN, Heads, IP_HEAD_LEN, KeyHandle, OpFailure, OpenRuns, Opened, PacketBatch,
    SealRuns,
};
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
use wasmsec::crypto::packets::{self, Batch};
use wasmsec::crypto::types::CryptoError as WitCryptoError;

thread_local! {
    static ENGINE: RefCell<esp::Engine> = RefCell::new(new_engine());
}

/// The engine, made after the tables keyed by what a peer chooses (the
/// outbound SAs by the SPI the peer picked, the destination index by the
/// prefixes of the selectors it proposed) are keyed with the host's
/// randomness: this target gives std's own hash maps none
/// (`wasmsec_wire::peer_keys`).
fn new_engine() -> esp::Engine {
    let seed = wasmsec::crypto::random::fill(wasmsec_wire::peer_keys::SEED_BYTES);
    wasmsec_wire::peer_keys::seed_from(&seed);
    esp::Engine::new()
}

struct Component;

/// The host's batch seen through the engine's trait.
struct HostBatch<'a>(&'a Batch);

fn crypto_error(e: WitCryptoError) -> CryptoError {
    CryptoError::from_wit(e as u8)
}

impl PacketBatch for HostBatch<'_> {
    fn seal(&mut self, runs: SealRuns) -> Vec<OpFailure> {
        let runs = packets::SealRuns {
            runs: runs
                .runs
                .into_iter()
                .map(|r| packets::SealRun {
                    key: r.key.0,
                    spi: r.spi,
                    first_seq: r.first_seq,
                    esn: r.esn,
                    count: r.count,
                })
                .collect(),
            packets: runs.packets,
            pad_lengths: runs.pad_lengths,
            next_headers: runs.next_headers,
        };
        self.0.seal(&runs).into_iter().map(failure).collect()
    }

    fn open(&mut self, runs: OpenRuns) -> Opened {
        let runs = packets::OpenRuns {
            runs: runs
                .runs
                .into_iter()
                .map(|r| packets::OpenRun { key: r.key.0, esn: r.esn, count: r.count })
                .collect(),
            packets: runs.packets,
            esn_highs: runs.esn_highs,
        };
        let o = self.0.open(&runs);
        Opened {
            pad_lengths: o.pad_lengths,
            next_headers: o.next_headers,
            failures: o.failures.into_iter().map(failure).collect(),
            heads: Heads::from_flat(o.heads, IP_HEAD_LEN),
        }
    }
}

fn failure(f: packets::OpFailure) -> OpFailure {
    OpFailure { packet: f.packet, error: crypto_error(f.error) }
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

fn drops(d: Vec<esp::Dropped>) -> Vec<wit::Dropped> {
    d.into_iter().map(|d| wit::Dropped { packet: d.packet, reason: drop_reason(d.reason) }).collect()
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

/// An address and length as the host's prefetch hint: a wasm32 address
/// is the offset into the linear memory.
fn memory_range((at, len): (usize, usize)) -> wit::MemoryRange {
    wit::MemoryRange { offset: at as u32, len: len as u32 }
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
            local_ts: selectors(sa.local_ts)?.into(),
            remote_ts: selectors(sa.remote_ts)?.into(),
            limits: limits(sa.limits),
        };
        ENGINE.with_borrow_mut(|e| e.install_outbound(sa)).map_err(|e| e.to_string())
    }

    fn install_inbound(sa: wit::InboundSa) -> Result<Vec<wit::MemoryRange>, String> {
        let sa = esp::InboundSa {
            spi: sa.spi,
            key: KeyHandle(sa.key),
            esn: sa.esn,
            replay_window: sa.replay_window,
            highest_seq: sa.highest_seq,
            replay_missing: sa.replay_missing,
            local_ts: selectors(sa.local_ts)?.into(),
            remote_ts: selectors(sa.remote_ts)?.into(),
            limits: limits(sa.limits),
        };
        let spi = sa.spi;
        ENGINE.with_borrow_mut(|e| {
            e.install_inbound(sa).map_err(|e| e.to_string())?;
            Ok(e.inbound_state(spi).into_iter().map(memory_range).collect())
        })
    }

    fn remove_outbound(spi: u32) -> bool {
        ENGINE.with_borrow_mut(|e| e.remove_outbound(spi))
    }

    fn remove_inbound(spi: u32) -> bool {
        ENGINE.with_borrow_mut(|e| e.remove_inbound(spi))
    }

    fn catch_up_inbound(states: Vec<wit::ReplayState>) -> u32 {
        ENGINE.with_borrow_mut(|e| {
            let moved = states.iter().filter(|s| e.catch_up_inbound(s.spi, s.highest_seq, s.replay_missing));
            moved.count() as u32
        })
    }

    fn encap(packets: &Batch, heads: Vec<u8>) -> wit::Encapped {
        let heads = Heads::from_flat(heads, IP_HEAD_LEN);
        let e = ENGINE.with_borrow_mut(|e| e.encap(&heads, &mut HostBatch(packets)));
        wit::Encapped { peers: e.peers, drops: drops(e.drops) }
    }

    fn decap(packets: &Batch, heads: Vec<u8>) -> wit::Decapped {
        let heads = Heads::from_flat(heads, ESP_HEAD_LEN);
        let d = ENGINE.with_borrow_mut(|e| e.decap(&heads, &mut HostBatch(packets)));
        wit::Decapped { lengths: d.lengths, drops: drops(d.drops) }
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
