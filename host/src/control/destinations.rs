//! Where the IKE guest may send: the host checks every datagram and NAT
//! keepalive it asks for, so that a guest a peer broke cannot turn the
//! gateway into a UDP reflector towards any address (loopback, the LANs,
//! a third party). Allowed are the addresses IKE came from lately (a
//! responder's answers, retransmits), the peers of the IKE SAs that are
//! up (DPD, rekeys, deletes; see `Children::has_ike_peer`) and the remote
//! addresses of the loaded connections (initiating). Listening on every
//! address, the address of ours a datagram leaves from is the guest's
//! word too: it may name one IKE arrived at (answers, and the IKE SAs
//! that live there), a loaded connection's local address (initiating), or
//! none (the kernel's choice), not another of the host's (a management or
//! LAN address, another tenant's).
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

/// Addresses of ours remembered at most: the kernel delivers only what
/// is sent to one of the host's addresses (or a broadcast), so these are
/// few; past the cap one makes room, as in [`Heard`].
pub const ARRIVED_AT_MAX: usize = 4096;

/// Addresses of ours IKE arrived at, listening on every address.
#[derive(Default)]
pub struct ArrivedAt {
    at: HashSet<Ipv4Addr>,
}

impl ArrivedAt {
    /// IKE arrived at `a`.
    pub fn arrived(&mut self, a: Ipv4Addr) {
        if self.at.len() >= ARRIVED_AT_MAX && !self.at.contains(&a) {
            let any = self.at.iter().next().copied();
            any.map(|o| self.at.remove(&o));
        }
        self.at.insert(a);
    }

    pub fn has(&self, a: Ipv4Addr) -> bool {
        self.at.contains(&a)
    }
}

/// The remote and local addresses of the loaded connections, as of a
/// given version of the connection history (`History::version`).
#[derive(Default)]
pub struct Configured {
    version: u64,
    addresses: HashSet<Ipv4Addr>,
    locals: HashSet<Ipv4Addr>,
}

impl Configured {
    /// Whether these are the addresses of version `version` of the history.
    pub fn is_for(&self, version: u64) -> bool {
        self.version == version
    }

    /// The addresses of `connections` (`ControlPlane::live_connections`),
    /// as of version `version` of the history.
    pub fn set(&mut self, version: u64, connections: &[&Connection]) {
        self.version = version;
        self.addresses = ipv4(connections.iter().flat_map(|c| c.remote_addrs.iter()));
        self.locals = ipv4(connections.iter().flat_map(|c| c.local_addrs.iter()));
    }

    /// A loaded connection's remote address.
    pub fn has(&self, a: Ipv4Addr) -> bool {
        self.addresses.contains(&a)
    }

    /// A loaded connection's local address.
    pub fn has_local(&self, a: Ipv4Addr) -> bool {
        self.locals.contains(&a)
    }
}

/// The IPv4 ones among addresses as the WIT gives them.
fn ipv4<'a>(addresses: impl Iterator<Item = &'a Vec<u8>>) -> HashSet<Ipv4Addr> {
    addresses.filter_map(|b| <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)).collect()
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
    fn addresses_of_ours_are_remembered_within_a_bound() {
        let mut ours = ArrivedAt::default();
        let a = Ipv4Addr::new(198, 18, 0, 2);
        assert!(!ours.has(a));
        ours.arrived(a);
        assert!(ours.has(a) && !ours.has(Ipv4Addr::new(198, 18, 0, 3)));
        for i in 0..ARRIVED_AT_MAX as u32 {
            ours.arrived(Ipv4Addr::from(0x0a00_0000 + i));
        }
        let last = Ipv4Addr::new(192, 0, 2, 9);
        ours.arrived(last);
        assert!(ours.has(last), "the newest has room");
        assert_eq!(ours.at.len(), ARRIVED_AT_MAX, "bounded");
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
