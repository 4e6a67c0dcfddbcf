//! Tests only: an ESP "engine" that attacks the host instead of doing ESP.
//! What it does depends on the high byte of the SPI of the SA involved, so
//! one component serves every attack of `tests/interop/test-hostile-esp.sh`:
//!
//! | SPI      | attack |
//! |----------|--------|
//! | 0xa1.... | `encap` answers `Send` for every packet without sealing it (LAN plaintext to the WAN) |
//! | 0xa2.... | `decap` seals the packet with the inbound SA's key (the peer's nonces), then delivers it |
//! | 0xa3.... | `decap` delivers every packet without opening it (forged packets into the LAN) |
//! | 0xa4.... | `encap` never returns |
//! | 0xa5.... | `encap` allocates without bound |
//! | 0xa6.... | `encap` traps |
//! | 0xa7.... | real ESP, but `decap` opens and delivers every packet with no replay check (replays into the LAN) |
//!
//! And whatever the SPI: an SA whose selectors start at 198.18.23.0 (an IKE
//! connection's, whose SPIs are random) is refused at install; the host
//! must tell IKE, which deletes the CHILD SA instead of keeping it up with
//! nothing to carry its traffic. SAs whose selectors start at 198.18.25.0
//! do real ESP, sealing and opening everything, but ignore their byte and
//! packet limits and never report an expiry: the host must hold them to
//! their hard limits itself, and report them.
//!
//! The host must refuse and count each attack, let nothing unsealed reach
//! the WAN and nothing unopened reach the TUN device, and keep other
//! tunnels, served by honest guests, forwarding.
#![deny(unsafe_code)] // generated bindings below are the only exception

use std::cell::RefCell;

#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "esp-engine",
        pub_export_macro: true,
        generate_all,
    });
}
use bindings::*;

use exports::wasmsec::esp::engine as wit;
use wasmsec::crypto::packets::{Batch, OpenRun, OpenRuns, SealRun, SealRuns};

/// An installed SA: its SPI, key handle and (outbound) peer index; for
/// the limitless ones, what real ESP needs.
#[derive(Clone, Copy)]
struct Sa {
    spi: u32,
    key: u64,
    peer: u32,
    limitless: bool,
    esn: bool,
    next_seq: u64,
    pad_align: u8,
}

thread_local! {
    static OUT: RefCell<Vec<Sa>> = const { RefCell::new(Vec::new()) };
    static IN: RefCell<Vec<Sa>> = const { RefCell::new(Vec::new()) };
}

fn attack(spi: u32) -> u8 {
    (spi >> 24) as u8
}

/// The SAs this guest refuses to install: those for 198.18.23.0 (either end).
fn refuse(local: &[wit::TrafficSelector], remote: &[wit::TrafficSelector]) -> Result<(), String> {
    if local.iter().chain(remote).any(|t| t.start_address == [198, 18, 23, 0]) {
        return Err("no room for this SA\n(a test guest's refusal)".into());
    }
    Ok(())
}

/// The SAs that do real ESP without limits or replay checks: those for
/// 198.18.25.0 (either end), and those of SPI 0xa7.......
fn limitless(spi: u32, local: &[wit::TrafficSelector], remote: &[wit::TrafficSelector]) -> bool {
    attack(spi) == 0xa7 || local.iter().chain(remote).any(|t| t.start_address == [198, 18, 25, 0])
}

/// Bytes per record of the heads: the length, then the packet's first 64
/// bytes (IP) or 8 (ESP).
const IP_RECORD: usize = 4 + 64;
const ESP_RECORD: usize = 4 + 8;

fn record_len(heads: &[u8], stride: usize, i: usize) -> u32 {
    let r = &heads[i * stride..i * stride + 4];
    u32::from_be_bytes([r[0], r[1], r[2], r[3]])
}

/// Seal every packet with the newest limitless SA, past any limit.
fn seal_all(packets: &Batch, heads: &[u8], sa: Sa) -> wit::Encapped {
    let n = packets.count();
    let align = u32::from(sa.pad_align.max(4));
    let pad = |i: u32| ((align - (record_len(heads, IP_RECORD, i as usize) + 2) % align) % align) as u8;
    let next_header = |i: u32| if heads[i as usize * IP_RECORD + 4] >> 4 == 6 { 41 } else { 4 };
    let runs = SealRuns {
        runs: vec![SealRun { key: sa.key, spi: sa.spi, first_seq: sa.next_seq, esn: sa.esn, count: n }],
        packets: (0..n).collect(),
        pad_lengths: (0..n).map(pad).collect(),
        next_headers: (0..n).map(next_header).collect(),
    };
    OUT.with_borrow_mut(|o| o.iter_mut().filter(|s| s.spi == sa.spi).for_each(|s| s.next_seq += u64::from(n)));
    let drops = packets
        .seal(&runs)
        .into_iter()
        .map(|f| wit::Dropped { packet: f.packet, reason: wit::DropReason::CryptoRefused })
        .collect();
    wit::Encapped { peers: vec![sa.peer; n as usize], drops }
}

/// Open every packet of a limitless SA and deliver it, past any limit (and
/// without a replay check).
fn open_all(packets: &Batch, heads: &[u8]) -> wit::Decapped {
    let n = packets.count();
    let mut out = wit::Decapped { lengths: vec![0; n as usize], drops: Vec::new() };
    let mut runs = OpenRuns { runs: Vec::new(), packets: Vec::new(), esn_highs: Vec::new() };
    for i in 0..n {
        let at = i as usize * ESP_RECORD + 4;
        let spi = u32::from_be_bytes([heads[at], heads[at + 1], heads[at + 2], heads[at + 3]]);
        let Some(sa) = IN.with_borrow(|s| s.iter().find(|s| s.spi == spi).copied()) else {
            out.drops.push(wit::Dropped { packet: i, reason: wit::DropReason::UnknownSpi });
            continue;
        };
        match runs.runs.last_mut() {
            Some(r) if r.key == sa.key => r.count += 1,
            _ => runs.runs.push(OpenRun { key: sa.key, esn: sa.esn, count: 1 }),
        }
        runs.packets.push(i);
        if sa.esn {
            runs.esn_highs.push(0);
        }
    }
    if runs.packets.is_empty() {
        return out;
    }
    let opened = packets.open(&runs);
    for (k, &i) in runs.packets.iter().enumerate() {
        if opened.failures.iter().any(|f| f.packet == i) {
            out.drops.push(wit::Dropped { packet: i, reason: wit::DropReason::IntegrityFailed });
            continue;
        }
        let plain = record_len(&opened.heads, IP_RECORD, i as usize);
        out.lengths[i as usize] = plain.saturating_sub(u32::from(opened.pad_lengths[k]) + 2);
    }
    out.drops.sort_by_key(|d| d.packet);
    out
}

struct Component;

/// Prefetch hints beyond the memory and far too long: the host keeps them
/// within the instance's memory and short.
fn wild_hints() -> Vec<wit::MemoryRange> {
    let wild = |offset, len| wit::MemoryRange { offset, len };
    vec![wild(u32::MAX - 8, u32::MAX), wild(0, u32::MAX), wild(0x7fff_ffff, 64), wild(1, 1), wild(2, 2)]
}

impl wit::Guest for Component {
    fn install_outbound(sa: wit::OutboundSa) -> Result<(), String> {
        refuse(&sa.local_ts, &sa.remote_ts)?;
        let limitless = limitless(sa.spi, &sa.local_ts, &sa.remote_ts);
        let (esn, next_seq, pad_align) = (sa.esn, sa.next_seq, sa.pad_align);
        OUT.with_borrow_mut(|o| {
            o.push(Sa { spi: sa.spi, key: sa.key, peer: sa.peer, limitless, esn, next_seq, pad_align })
        });
        Ok(())
    }

    fn install_inbound(sa: wit::InboundSa) -> Result<Vec<wit::MemoryRange>, String> {
        refuse(&sa.local_ts, &sa.remote_ts)?;
        let limitless = limitless(sa.spi, &sa.local_ts, &sa.remote_ts);
        let sa = Sa { spi: sa.spi, key: sa.key, peer: 0, limitless, esn: sa.esn, next_seq: 0, pad_align: 0 };
        IN.with_borrow_mut(|i| i.push(sa));
        Ok(wild_hints())
    }

    fn remove_outbound(spi: u32) -> bool {
        OUT.with_borrow_mut(|o| o.retain(|s| s.spi != spi));
        true
    }

    fn remove_inbound(spi: u32) -> bool {
        IN.with_borrow_mut(|i| i.retain(|s| s.spi != spi));
        true
    }

    fn catch_up_inbound(states: Vec<wit::ReplayState>) -> u32 {
        states.len() as u32
    }

    fn encap(packets: &Batch, heads: Vec<u8>) -> wit::Encapped {
        let n = packets.count();
        let Some(sa) = OUT.with_borrow(|o| o.first().copied()) else {
            let drops = (0..n).map(|i| wit::Dropped { packet: i, reason: wit::DropReason::NoPolicy }).collect();
            return wit::Encapped { peers: vec![0; n as usize], drops };
        };
        if sa.limitless {
            let newest = OUT.with_borrow(|o| o.iter().rev().find(|s| s.limitless).copied()).unwrap_or(sa);
            return seal_all(packets, &heads, newest);
        }
        match attack(sa.spi) {
            0xa4 => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            0xa5 => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0x5a; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            0xa6 => unreachable!("a guest that traps on every batch"),
            // 0xa1 and anything else: "sent", never sealed.
            _ => wit::Encapped { peers: vec![sa.peer; n as usize], drops: Vec::new() },
        }
    }

    fn decap(packets: &Batch, heads: Vec<u8>) -> wit::Decapped {
        let n = packets.count();
        let Some(sa) = IN.with_borrow(|i| i.first().copied()) else {
            let drops = (0..n).map(|i| wit::Dropped { packet: i, reason: wit::DropReason::UnknownSpi }).collect();
            return wit::Decapped { lengths: vec![0; n as usize], drops };
        };
        if sa.limitless {
            return open_all(packets, &heads);
        }
        let len = |i: u32| {
            // Records of 4 + 8 bytes: the length, then SPI and sequence number.
            let r = &heads[i as usize * 12..i as usize * 12 + 4];
            u32::from_be_bytes([r[0], r[1], r[2], r[3]])
        };
        if attack(sa.spi) == 0xa2 {
            // Seal with the inbound key: the host must refuse (open only).
            let runs = SealRuns {
                runs: vec![SealRun { key: sa.key, spi: sa.spi, first_seq: 1, esn: false, count: n }],
                packets: (0..n).collect(),
                pad_lengths: vec![0; n as usize],
                next_headers: vec![4; n as usize],
            };
            let _ = packets.seal(&runs);
        }
        // 0xa2, 0xa3 and anything else: "delivered", never opened.
        wit::Decapped { lengths: (0..n).map(|i| len(i).saturating_sub(16)).collect(), drops: Vec::new() }
    }

    fn sa_states() -> Vec<wit::SaState> {
        Vec::new()
    }

    fn take_expiries() -> Vec<wit::Expiry> {
        Vec::new()
    }
}

#[allow(unsafe_code)]
mod export {
    use crate::Component;
    crate::bindings::export!(Component with_types_in crate::bindings);
}
