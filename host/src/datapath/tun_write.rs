//! Inbound: opened packets to the TUN devices, consecutive TCP segments of
//! one flow joined into one super-packet where the device takes offload
//! headers (`offload::coalesce`), one write per run instead of per packet.
use tracing::debug;

use crate::offload::coalesce::Joiner;
use crate::offload::vnet::{self, VnetHdr};
use crate::stats::{self, Stats};
use crate::sys::Tun;

/// The run being joined and the routing domain it goes to.
#[derive(Default)]
pub struct TunWriter {
    joiner: Joiner,
    domain: usize,
}

impl TunWriter {
    /// Deliver opened packet `p` to domain `domain`'s TUN device: joined to
    /// the run if it may, else after the run.
    pub fn deliver(&mut self, tuns: &[Option<Tun>], domain: usize, p: &[u8], st: &Stats) {
        if !self.joiner.is_empty() {
            if self.domain == domain && self.joiner.join(p) {
                return;
            }
            self.flush(tuns, st);
        }
        let Some(tun) = tuns.get(domain).and_then(Option::as_ref) else {
            stats::inc(&st.tx_errors);
            return;
        };
        if tun.vnet() && self.joiner.start(p) {
            self.domain = domain;
            return;
        }
        count(tun.send(p), 1, st);
    }

    /// Write the run, if any.
    pub fn flush(&mut self, tuns: &[Option<Tun>], st: &Stats) {
        if self.joiner.is_empty() {
            return;
        }
        let n = self.joiner.segments();
        match tuns.get(self.domain).and_then(Option::as_ref) {
            Some(tun) => {
                let (hdr, p) = self.joiner.finish();
                let mut h = [0u8; vnet::LEN];
                hdr.emit(&mut h);
                let r = tun.send_with(&h, p);
                if r.is_ok() && hdr != VnetHdr::default() {
                    stats::inc(&st.tun_tx_joined);
                }
                count(r, n, st);
            }
            None => stats::add(&st.tx_errors, n as u64),
        }
        self.joiner.clear();
    }
}

/// Count a TUN write of `n` inner packets.
fn count(r: std::io::Result<usize>, n: usize, st: &Stats) {
    match r {
        Ok(_) => stats::add(&st.tun_tx_packets, n as u64),
        Err(e) => {
            debug!(error = %e, "TUN write failed");
            stats::add(&st.tx_errors, n as u64);
        }
    }
}
