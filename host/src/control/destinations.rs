//! Where the IKE guest may send: the host checks every datagram and NAT
//! keepalive it asks for, so that a guest a peer broke cannot turn the
//! gateway into a UDP reflector towards any address (loopback, the LANs,
//! a third party). Allowed are the addresses IKE came from lately (a
//! responder's answers, retransmits), the peers of the IKE SAs that are
//! up (DPD, rekeys, deletes; see `Children::has_ike_peer`) and the remote
//! addresses of the loaded connections (initiating).
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::wasm::ike::Connection;

/// How long (control-loop milliseconds) an address that sent IKE may be
/// answered: longer than an exchange's retransmissions (RFC 7296 section
/// 2.1; ours give up after about two minutes).
pub const HEARD_FOR_MS: u64 = 600_000;
/// Addresses remembered at most. At the cap the expired ones go; if none
/// has, one of the others makes room (a flood of spoofed sources must
/// not stop the gateway answering a new real peer).
pub const HEARD_MAX: usize = 65_536;

/// Addresses IKE came from, and when last.
#[derive(Default)]
pub struct Heard {
    at: HashMap<Ipv4Addr, u64>,
    /// When the expired addresses may be swept again at the cap (at most
    /// once a second: under a flood of spoofed sources a sweep per
    /// datagram would cost the IKE thread more than the guest does).
    next_sweep: u64,
}

impl Heard {
    /// IKE came from `from` at `now`.
    pub fn heard(&mut self, from: Ipv4Addr, now: u64) {
        if self.at.len() >= HEARD_MAX && !self.at.contains_key(&from) {
            if now >= self.next_sweep {
                self.at.retain(|_, t| now.saturating_sub(*t) < HEARD_FOR_MS);
                self.next_sweep = now + 1_000;
            }
            if self.at.len() >= HEARD_MAX {
                let any = self.at.keys().next().copied();
                any.map(|a| self.at.remove(&a));
            }
        }
        self.at.insert(from, now);
    }

    /// Whether IKE came from `a` within [`HEARD_FOR_MS`] of `now`.
    pub fn recent(&self, a: Ipv4Addr, now: u64) -> bool {
        self.at.get(&a).is_some_and(|t| now.saturating_sub(*t) < HEARD_FOR_MS)
    }
}

/// The remote addresses of the loaded connections, as of a given version
/// of the connection history (`History::version`).
#[derive(Default)]
pub struct Configured {
    version: u64,
    addresses: HashSet<Ipv4Addr>,
}

impl Configured {
    /// Whether these are the addresses of version `version` of the history.
    pub fn is_for(&self, version: u64) -> bool {
        self.version == version
    }

    pub fn set(&mut self, version: u64, addresses: HashSet<Ipv4Addr>) {
        (self.version, self.addresses) = (version, addresses);
    }

    pub fn has(&self, a: Ipv4Addr) -> bool {
        self.addresses.contains(&a)
    }
}

/// The IPv4 remote addresses of `connections`
/// (`ControlPlane::live_connections`).
pub fn remote_addresses(connections: &[&Connection]) -> HashSet<Ipv4Addr> {
    connections
        .iter()
        .flat_map(|c| c.remote_addrs.iter())
        .filter_map(|b| <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_answered_for_a_while_after_it_sent_ike() {
        let mut h = Heard::default();
        let a = Ipv4Addr::new(192, 0, 2, 1);
        assert!(!h.recent(a, 0));
        h.heard(a, 1_000);
        assert!(h.recent(a, 1_000 + HEARD_FOR_MS - 1));
        assert!(!h.recent(a, 1_000 + HEARD_FOR_MS), "too long ago");
        assert!(!h.recent(Ipv4Addr::new(192, 0, 2, 2), 1_000), "another address");
    }

    #[test]
    fn at_the_cap_a_new_sender_still_gets_room() {
        let mut h = Heard::default();
        for i in 0..HEARD_MAX as u32 {
            h.heard(Ipv4Addr::from(0x0a00_0000 + i), 5);
        }
        let new = Ipv4Addr::new(192, 0, 2, 9);
        h.heard(new, 6);
        assert!(h.recent(new, 6));
        assert_eq!(h.at.len(), HEARD_MAX, "bounded");
        // With the old ones expired, they go at the cap: a sweep was due
        // (the last was at 6).
        h.heard(Ipv4Addr::new(192, 0, 2, 10), 5 + HEARD_FOR_MS);
        assert_eq!(h.at.len(), 2);
    }
}
