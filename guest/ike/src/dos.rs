//! The responder's defences against IKE_SA_INIT floods: a table of
//! half-open SAs with a cap, COOKIEs above a threshold (RFC 7296 section
//! 2.6, stateless and before any DH), and a per-source rate limit.
use std::collections::HashMap;
use std::net::IpAddr;

use crate::crypto::IkeCrypto;
use crate::output::Endpoint;

/// How often the COOKIE secret changes (section 2.6); cookies made with the
/// previous secret are still accepted.
const COOKIE_SECRET_MS: u64 = 120_000;
/// Sources the rate limiter remembers; when full, idle ones go.
const MAX_SOURCES: usize = 16_384;

/// The responder's IKE_SA_INIT flood defences: half-open SAs, COOKIE secrets, rate limits.
#[derive(Debug, Default)]
pub(crate) struct Dos {
    /// Responder SAs by (peer endpoint, SPIi), to spot IKE_SA_INIT
    /// retransmits; the value is our SPI.
    pub half_open: HashMap<(Endpoint, u64), u64>,
    /// COOKIE secrets: current, previous, and when the current one expires.
    cookie_secret: Option<([u8; 16], [u8; 16], u64)>,
    /// Per-source token buckets for IKE_SA_INIT: tokens (x1000) and last refill.
    init_buckets: HashMap<IpAddr, (u64, u64)>,
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

    /// The cookie for this initiator under the current and previous secret:
    /// version | SHA-1(Ni | IPi | SPIi | secret) (section 2.6).
    pub fn cookies(
        &mut self,
        now: u64,
        spi_i: u64,
        ni: &[u8],
        from: &Endpoint,
        crypto: &mut dyn IkeCrypto,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let fresh = |crypto: &mut dyn IkeCrypto| {
            let mut k = [0u8; 16];
            crypto.random(&mut k);
            k
        };
        let (cur, prev, until) = match self.cookie_secret {
            Some((c, p, until)) if now < until => (c, Some(p), until),
            Some((c, _, _)) => (fresh(crypto), Some(c), now + COOKIE_SECRET_MS),
            None => (fresh(crypto), None, now + COOKIE_SECRET_MS),
        };
        self.cookie_secret = Some((cur, prev.unwrap_or(cur), until));
        let make = |secret: &[u8; 16], version: u8| {
            let mut h = sha1_smol::Sha1::new();
            h.update(ni);
            match from.addr {
                IpAddr::V4(a) => h.update(&a.octets()),
                IpAddr::V6(a) => h.update(&a.octets()),
            }
            h.update(&spi_i.to_be_bytes());
            h.update(secret);
            let mut c = vec![version];
            c.extend_from_slice(&h.digest().bytes());
            c
        };
        // The version byte tells which secret made a cookie.
        let version = ((until / COOKIE_SECRET_MS) & 0xff) as u8;
        (make(&cur, version), prev.map(|p| make(&p, version.wrapping_sub(1))))
    }

    /// Forget the half-open entry of our SPI `spi`.
    pub fn forget(&mut self, spi: u64) {
        self.half_open.retain(|_, v| *v != spi);
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
