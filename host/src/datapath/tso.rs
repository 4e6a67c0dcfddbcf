//! Reading TCP super-packets from a TUN device with offloads and cutting
//! them into the staging area (outbound thread). A super-packet of 64 KiB
//! makes about 45 segments, more than a batch may have room for: what does
//! not fit waits in [`Cutter`] for the next batch, before any new read, so
//! a flow's segments keep their order.
use std::io::ErrorKind;

use tracing::{debug, warn};

use super::Loop;
use crate::offload::segment::Segmenter;
use crate::offload::vnet::{self, VnetHdr};
use crate::stats;

/// The largest read from a TUN device with offloads: its header and an
/// IP packet of up to 64 KiB.
const SUPER_MAX: usize = vnet::LEN + 65_535;

/// A super-packet being cut.
pub struct Cutter {
    /// The last read: `vnet::LEN` bytes of header, then the packet.
    buf: Vec<u8>,
    /// Its length.
    len: usize,
    /// How far it is cut, and the domain it came from; `None` when done.
    pending: Option<(usize, Segmenter)>,
}

impl Default for Cutter {
    fn default() -> Self {
        Cutter { buf: vec![0; SUPER_MAX], len: 0, pending: None }
    }
}

impl Cutter {
    /// Whether segments of the last read still wait for room.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

impl Loop {
    /// Cut what the last read left into staging slots from `n` on; the
    /// next free slot.
    pub(super) fn cut_pending(&mut self, mut n: usize) -> usize {
        let c = &mut self.cutter;
        let Some((domain, seg)) = &mut c.pending else {
            return n;
        };
        let pkt = &c.buf[vnet::LEN..c.len];
        while n < self.staging.len() {
            match seg.next_into(pkt, self.staging[n].recv_area()) {
                Some(len) => {
                    self.staging[n].set_received(len);
                    self.from_domain.push(*domain);
                    n += 1;
                }
                None => {
                    if !seg.is_done(pkt) {
                        // A segment larger than a packet buffer: the rest
                        // of this super-packet cannot be sent.
                        stats::inc(&self.stats.tun_rx_malformed);
                    }
                    c.pending = None;
                    break;
                }
            }
        }
        if c.pending.as_ref().is_some_and(|(_, s)| s.is_done(pkt)) {
            c.pending = None;
        }
        n
    }

    /// Read from a TUN device with offloads into staging slots from `n`
    /// on, until it has nothing more or the staging area is full; the next
    /// free slot.
    pub(super) fn read_vnet(&mut self, domain: usize, mut n: usize) -> usize {
        while n < self.staging.len() && !self.cutter.has_pending() {
            let Some(tun) = self.tuns.get(domain).and_then(Option::as_ref) else {
                return n;
            };
            match tun.recv(&mut self.cutter.buf) {
                Ok(len) => {
                    let c = &mut self.cutter;
                    c.len = len;
                    let hdr = VnetHdr::parse(&c.buf[..len]);
                    match hdr.map(|h| Segmenter::new(h, &c.buf[vnet::LEN..len])) {
                        Some(Ok(seg)) => {
                            if hdr.is_some_and(|h| h.gso() != vnet::GSO_NONE) {
                                stats::inc(&self.stats.tun_rx_super);
                            }
                            c.pending = Some((domain, seg));
                            n = self.cut_pending(n);
                        }
                        Some(Err(e)) => {
                            debug!(error = ?e, domain, "TUN super-packet dropped");
                            stats::inc(&self.stats.tun_rx_malformed);
                        }
                        None => stats::inc(&self.stats.tun_rx_malformed),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(error = %e, domain, "TUN read failed");
                    break;
                }
            }
        }
        n
    }
}
