//! The responder's defences against IKE_SA_INIT floods: a table of
//! half-open SAs with a cap, COOKIEs above a threshold (RFC 7296 section
//! 2.6, stateless and before any DH; the secret is the host's, see
//! `IkeCrypto::cookie`), and a per-source rate limit.
use std::collections::HashMap;
use std::net::IpAddr;

use wasmsec_wire::peer_keys::PeerKeys;

use crate::config::Timing;
use crate::output::Endpoint;

/// Sources the rate limiter remembers; when full, idle ones go.
const MAX_SOURCES: usize = 16_384;

/// The responder's IKE_SA_INIT flood defences: half-open SAs and rate limits.
#[derive(Debug, Default)]
pub(crate) struct Dos {
    /// Responder SAs by (peer endpoint, SPIi), to spot IKE_SA_INIT
    /// retransmits: our SPI and the bytes of IKE_SA_INIT it holds.
    /// Keyed by what the peer sends: [`PeerKeys`], against hash flooding.
    pub half_open: HashMap<(Endpoint, u64), (u64, usize), PeerKeys>,
    /// Bytes all half-open SAs hold (the sum of the above).
    pub half_open_bytes: usize,
    /// Half-open SAs per source address.
    half_open_sources: HashMap<IpAddr, usize, PeerKeys>,
    /// Per-source token buckets for IKE_SA_INIT: tokens (x1000) and last refill.
    init_buckets: HashMap<IpAddr, (u64, u64), PeerKeys>,
}

impl Dos {
    /// Token bucket per source address (`per_second`, the same as burst;
    /// 0: no limit).
    pub fn allow_init_from(&mut self, now: u64, from: IpAddr, per_second: u32) -> bool {
        let rate = u64::from(per_second);
        if rate == 0 {
            return true;
        }
        if self.init_buckets.len() >= MAX_SOURCES && !self.init_buckets.contains_key(&from) {
            self.init_buckets.retain(|_, (_, last)| now.saturating_sub(*last) < 1000);
            if self.init_buckets.len() >= MAX_SOURCES {
                self.init_buckets.clear();
            }
        }
        let full = rate * 1000;
        let (tokens, last) = self.init_buckets.entry(from).or_insert((full, now));
        *tokens = (*tokens + now.saturating_sub(*last) * rate).min(full);
        *last = now;
        if *tokens >= 1000 {
            *tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Would one more half-open SA from `from`, holding `bytes`, fit?
    pub fn fits(&self, from: IpAddr, bytes: usize, timing: &Timing) -> bool {
        self.half_open.len() < timing.max_half_open
            && self.half_open_bytes.saturating_add(bytes) <= timing.half_open_budget
            && self.half_open_sources.get(&from).copied().unwrap_or(0) < timing.half_open_per_source
    }

    /// Record the half-open SA `spi` of initiator (`from`, `spi_i`).
    pub fn remember(&mut self, from: Endpoint, spi_i: u64, spi: u64, bytes: usize) {
        match self.half_open.insert((from, spi_i), (spi, bytes)) {
            Some((_, old)) => self.half_open_bytes -= old,
            None => *self.half_open_sources.entry(from.addr).or_default() += 1,
        }
        self.half_open_bytes += bytes;
    }

    /// Forget the half-open entry of our SPI `spi`.
    pub fn forget(&mut self, spi: u64) {
        let Some(key) = self.half_open.iter().find(|(_, (s, _))| *s == spi).map(|(k, _)| *k) else { return };
        if let Some((_, bytes)) = self.half_open.remove(&key) {
            self.half_open_bytes -= bytes;
        }
        if let Some(n) = self.half_open_sources.get_mut(&key.0.addr) {
            *n -= 1;
            if *n == 0 {
                self.half_open_sources.remove(&key.0.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let mut d = Dos::default();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!((0..30).filter(|_| d.allow_init_from(0, a, 20)).count(), 20);
        assert!(d.allow_init_from(0, b, 20), "another source is not limited");
        assert_eq!((0..30).filter(|_| d.allow_init_from(500, a, 20)).count(), 10, "half a second refills half");
        assert!((0..1000).all(|_| d.allow_init_from(0, a, 0)), "0 means no limit");
    }
}
