//! Tests only: an ESP "engine" that attacks the host instead of doing ESP.
//! What it does depends on the high byte of the SPI of the SA involved, so
//! one component serves every attack of `tests/e2e/test-hostile-guests.sh`:
//!
//! | SPI      | attack |
//! |----------|--------|
//! | 0xa1.... | `encap` answers `Send` for every packet without sealing it (LAN plaintext to the WAN) |
//! | 0xa2.... | `decap` seals the packet with the inbound SA's key (the peer's nonces), then delivers it |
//! | 0xa3.... | `decap` delivers every packet without opening it (forged packets into the LAN) |
//! | 0xa4.... | `encap` never returns |
//! | 0xa5.... | `encap` allocates without bound |
//! | 0xa6.... | `encap` traps |
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
use wasmsec::crypto::packets::{Batch, SealOp};

/// An installed SA: its SPI, key handle and (outbound) peer index.
#[derive(Clone, Copy)]
struct Sa {
    spi: u32,
    key: u64,
    peer: u32,
}

thread_local! {
    static OUT: RefCell<Vec<Sa>> = const { RefCell::new(Vec::new()) };
    static IN: RefCell<Vec<Sa>> = const { RefCell::new(Vec::new()) };
}

fn attack(spi: u32) -> u8 {
    (spi >> 24) as u8
}

struct Component;

impl wit::Guest for Component {
    fn install_outbound(sa: wit::OutboundSa) -> Result<(), String> {
        OUT.with_borrow_mut(|o| o.push(Sa { spi: sa.spi, key: sa.key, peer: sa.peer }));
        Ok(())
    }

    fn install_inbound(sa: wit::InboundSa) -> Result<(), String> {
        IN.with_borrow_mut(|i| i.push(Sa { spi: sa.spi, key: sa.key, peer: 0 }));
        Ok(())
    }

    fn remove_outbound(spi: u32) -> bool {
        OUT.with_borrow_mut(|o| o.retain(|s| s.spi != spi));
        true
    }

    fn remove_inbound(spi: u32) -> bool {
        IN.with_borrow_mut(|i| i.retain(|s| s.spi != spi));
        true
    }

    fn encap(packets: &Batch) -> Vec<wit::EncapVerdict> {
        let n = packets.count();
        let Some(sa) = OUT.with_borrow(|o| o.first().copied()) else {
            return (0..n).map(|_| wit::EncapVerdict::Drop(wit::DropReason::NoPolicy)).collect();
        };
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
            _ => (0..n).map(|_| wit::EncapVerdict::Send(sa.peer)).collect(),
        }
    }

    fn decap(packets: &Batch) -> Vec<wit::DecapVerdict> {
        let n = packets.count();
        let heads = packets.heads(4);
        let Some(sa) = IN.with_borrow(|i| i.first().copied()) else {
            return (0..n).map(|_| wit::DecapVerdict::Drop(wit::DropReason::UnknownSpi)).collect();
        };
        let len = |i: u32| {
            let r = &heads[i as usize * 8..i as usize * 8 + 4];
            u32::from_be_bytes([r[0], r[1], r[2], r[3]])
        };
        if attack(sa.spi) == 0xa2 {
            // Seal with the inbound key: the host must refuse (open only).
            let ops: Vec<SealOp> = (0..n)
                .map(|i| SealOp {
                    index: i,
                    key: sa.key,
                    spi: sa.spi,
                    seq_low: 1,
                    esn_high: None,
                    pad_length: 0,
                    next_header: 4,
                })
                .collect();
            let _ = packets.seal(&ops);
        }
        // 0xa2, 0xa3 and anything else: "delivered", never opened.
        (0..n).map(|i| wit::DecapVerdict::Deliver(len(i).saturating_sub(16))).collect()
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
