//! Receiving ESP in UDP with UDP GRO (inbound thread): one read brings up
//! to 64 KiB of datagrams of one flow and size (what a peer's GSO send or
//! the kernel's GRO made of them), cut here into the staging area. Without
//! it the receiving gateway pays a `recvfrom` per datagram and, at a few
//! hundred Mbit/s, its socket queue overflowed.
//!
//! A datagram of another size (an IKE message, a keepalive) may end a
//! run, so every piece is classified on its own. What does not fit the
//! batch waits here for the next one, ahead of any new read.
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};

use tracing::debug;

use super::Loop;
use crate::packet::MAX_PACKET;
use crate::stats;
use crate::sys;

/// The largest read: one UDP payload of up to 64 KiB.
const GRO_MAX: usize = 65_535;

/// The last GRO read and how far it is cut.
pub struct GroRecv {
    /// GRO is on for the socket (the kernel accepted `UDP_GRO`).
    pub enabled: bool,
    buf: Vec<u8>,
    len: usize,
    at: usize,
    segment: usize,
    from: Option<SocketAddrV4>,
    /// The read's outer TOS byte: GRO joins only datagrams whose IPv4
    /// headers match, so it is every one's.
    tos: u8,
    /// The address they were sent to (one flow, so the same for all).
    to: Option<Ipv4Addr>,
}

impl GroRecv {
    /// For a socket with GRO on (`enabled`) or off.
    pub fn new(enabled: bool) -> GroRecv {
        let buf = if enabled { vec![0; GRO_MAX] } else { Vec::new() };
        GroRecv { enabled, buf, len: 0, at: 0, segment: 0, from: None, tos: 0, to: None }
    }

    /// Whether datagrams of the last read wait for room.
    pub fn has_pending(&self) -> bool {
        self.at < self.len
    }
}

impl Default for GroRecv {
    fn default() -> Self {
        GroRecv::new(false)
    }
}

impl Loop {
    /// Read ESP-in-UDP datagrams into staging slots from `n` on until the
    /// socket has none, the batch is full or `budget` datagrams (each
    /// counted, ESP or not) were read; the next free slot.
    pub(super) fn read_udp(&mut self, mut n: usize, budget: &mut usize) -> usize {
        while n < self.staging.len() && *budget > 0 {
            *budget -= 1;
            if !self.gro.enabled {
                match sys::recv_gro(&self.udp, self.staging[n].recv_area()) {
                    Ok(r) if r.truncated => {
                        // Larger than any packet buffer: not ESP we could open.
                        stats::inc(&self.stats.rx_runts);
                        continue;
                    }
                    Ok(r) if r.not_unicast => {
                        stats::inc(&self.stats.rx_not_unicast);
                        continue;
                    }
                    Ok(r) => {
                        self.staging[n].set_received(r.len);
                        n = self.take_datagram(n, r.from, r.tos, r.to);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
            let g = &mut self.gro;
            if !g.has_pending() {
                match sys::recv_gro(&self.udp, &mut g.buf) {
                    Ok(r) => {
                        g.len = r.len;
                        g.at = 0;
                        g.segment = r.segment.unwrap_or(r.len).max(1);
                        g.from = r.from;
                        g.tos = r.tos;
                        g.to = r.to;
                        if r.truncated {
                            // Larger than the GRO buffer: not ESP we could open.
                            g.len = 0;
                            stats::inc(&self.stats.rx_runts);
                            continue;
                        }
                        if r.not_unicast {
                            // GRO joins one flow's datagrams: all of them.
                            stats::add(&self.stats.rx_not_unicast, r.len.div_ceil(g.segment) as u64);
                            g.len = 0;
                            continue;
                        }
                        if r.len == 0 {
                            stats::inc(&self.stats.rx_runts);
                            continue;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "UDP receive failed");
                        break;
                    }
                }
            }
            let end = (g.at + g.segment).min(g.len);
            let piece = &g.buf[g.at..end];
            g.at = end;
            if piece.len() > MAX_PACKET {
                // Larger than any packet buffer: not ESP we could open.
                stats::inc(&self.stats.rx_runts);
                continue;
            }
            let (from, tos, to) = (g.from, g.tos, g.to);
            let p = &mut self.staging[n];
            p.recv_area()[..piece.len()].copy_from_slice(piece);
            p.set_received(piece.len());
            n = self.take_datagram(n, from, tos, to);
        }
        n
    }
}
