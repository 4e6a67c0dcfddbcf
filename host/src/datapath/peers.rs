//! The peers the ESP guests name by index. An outbound SA holds the index of
//! the peer its packets go to (and its key is granted for that peer only,
//! `keys::KeyUse::Seal`), so a NAT move changes one entry for every SA of
//! that peer. An index is counted by the outbound SAs that name it and is
//! reused once none does: a PoP whose peers come and go (new addresses, NAT
//! ports) would otherwise keep every peer it ever had.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::config::Encapsulation;

/// Where ESP for one peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's address.
    pub address: Ipv4Addr,
    /// Its UDP port when encapsulating (4500, or what a NAT made of it).
    pub port: u16,
    /// Raw ESP or ESP in UDP.
    pub encapsulation: Encapsulation,
    /// Our address its ESP leaves from, where the daemon listens on every
    /// address (the CHILD SA's, which the peer sent IKE to); unspecified:
    /// the socket's, or the route's preferred source.
    pub source: Ipv4Addr,
}

/// The peers by index, with an index by value, so a new SA's peer is found
/// without a scan (a PoP has thousands).
pub struct Peers {
    list: Vec<Peer>,
    /// The outbound SAs naming each index.
    users: Vec<u32>,
    /// Indices no SA names, for the next new peer.
    free: Vec<u32>,
    index: HashMap<Peer, u32>,
    /// The first indices are the manual tunnels' peers, kept for good.
    manual: usize,
}

impl Peers {
    /// The peers of the manual tunnels, at the indices their SAs name; they
    /// are never released.
    pub fn new(list: Vec<Peer>) -> Peers {
        let mut index = HashMap::new();
        for (i, p) in list.iter().enumerate() {
            index.entry(*p).or_insert(i as u32);
        }
        Peers { users: vec![1; list.len()], manual: list.len(), list, free: Vec::new(), index }
    }

    pub fn get(&self, i: usize) -> Option<&Peer> {
        self.list.get(i)
    }

    /// The index of `p` for one more outbound SA: its own if known, else a
    /// released one or a new one.
    pub fn intern(&mut self, p: Peer) -> u32 {
        if let Some(&i) = self.index.get(&p) {
            self.users[i as usize] += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.list[i as usize] = p;
                self.users[i as usize] = 1;
                i
            }
            None => {
                self.list.push(p);
                self.users.push(1);
                (self.list.len() - 1) as u32
            }
        };
        self.index.insert(p, i);
        i
    }

    /// An outbound SA naming index `i` is gone; the index is free once no SA
    /// names it.
    pub fn release(&mut self, i: u32) {
        let Some(n) = self.users.get_mut(i as usize) else { return };
        // A manual tunnel's SA names its peer until the daemon stops.
        let floor = u32::from((i as usize) < self.manual);
        if *n <= floor {
            return;
        }
        *n -= 1;
        if *n == 0 {
            let p = self.list[i as usize];
            if self.index.get(&p) == Some(&i) {
                self.index.remove(&p);
            }
            self.free.push(i);
        }
    }

    /// Peer `i` is at `to` now, ESP in UDP (its NAT mapping changed; our
    /// address stays); returns where it was.
    pub fn moved(&mut self, i: usize, to: SocketAddrV4) -> Option<Peer> {
        let p = self.list.get_mut(i)?;
        let to = Peer { address: *to.ip(), port: to.port(), encapsulation: Encapsulation::Udp, source: p.source };
        let was = std::mem::replace(p, to);
        if self.index.get(&was) == Some(&(i as u32)) {
            self.index.remove(&was);
        }
        self.index.entry(to).or_insert(i as u32);
        Some(was)
    }

    /// Indices in use (named by at least one SA, or a manual tunnel's).
    pub fn in_use(&self) -> usize {
        self.list.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, port: u16) -> Peer {
        Peer {
            address: Ipv4Addr::new(198, 51, 100, last),
            port,
            encapsulation: Encapsulation::Udp,
            source: Ipv4Addr::UNSPECIFIED,
        }
    }

    /// Where a NAT moved a peer to.
    fn to(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, last), port)
    }

    #[test]
    fn a_move_keeps_our_address() {
        let ours = Peer { source: Ipv4Addr::new(192, 0, 2, 9), ..peer(2, 4500) };
        let mut peers = Peers::new(vec![]);
        let i = peers.intern(ours);
        assert_eq!(peers.moved(i as usize, to(3, 4501)), Some(ours));
        assert_eq!(peers.get(i as usize), Some(&Peer { source: ours.source, ..peer(3, 4501) }));
    }

    #[test]
    fn an_index_is_reused_once_no_sa_names_it() {
        let mut peers = Peers::new(vec![peer(1, 4500)]);
        let a = peers.intern(peer(2, 4500));
        assert_eq!(peers.intern(peer(2, 4500)), a, "a second SA to the same peer shares its index");
        let b = peers.intern(peer(3, 4500));
        assert_ne!(a, b);
        peers.release(a);
        assert_eq!(peers.in_use(), 3, "one SA still names {a}");
        peers.release(a);
        assert_eq!(peers.in_use(), 2);
        let c = peers.intern(peer(4, 4500));
        assert_eq!(c, a, "the released index is taken again");
        assert_eq!(peers.get(c as usize), Some(&peer(4, 4500)));
        assert_eq!(peers.intern(peer(2, 4500)), 3, "the old peer, back, gets a new index");
        // Churn does not grow the table.
        for k in 0..1000u16 {
            let i = peers.intern(peer(9, 1024 + k));
            peers.release(i);
        }
        assert_eq!(peers.in_use(), 4);
        assert!(peers.list.len() <= 5);
    }

    #[test]
    fn a_moved_peer_keeps_its_index_and_a_manual_peer_stays() {
        let mut peers = Peers::new(vec![peer(1, 4500)]);
        let a = peers.intern(peer(2, 4500));
        assert_eq!(peers.moved(a as usize, to(2, 61000)), Some(peer(2, 4500)));
        assert_eq!(peers.intern(peer(2, 61000)), a, "found at its new port");
        assert_ne!(peers.intern(peer(2, 4500)), a, "not at its old one");
        // The manual tunnel's peer: the tunnel's SA holds it for good.
        assert_eq!(peers.intern(peer(1, 4500)), 0);
        peers.release(0);
        assert_eq!(peers.get(0), Some(&peer(1, 4500)));
        assert_eq!(peers.intern(peer(1, 4500)), 0);
        // The manual peer outlives any number of releases; an unknown
        // index is ignored.
        peers.release(0);
        peers.release(0);
        peers.release(0);
        peers.release(99);
        assert_eq!(peers.in_use(), 3);
    }
}
