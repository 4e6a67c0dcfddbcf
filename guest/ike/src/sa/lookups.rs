//! Questions about every IKE SA but the one at hand, answered without a
//! pass over all of them: is this inbound ESP SPI in use, which IKE SAs of
//! this connection have their peer at this address (whether to send
//! INITIAL_CONTACT), which have the peer's authenticated identity (that
//! too, a twin, a duplicate, the SAs an INITIAL_CONTACT replaces, the
//! successor a DELETE lets send), which IKE SA holds the CHILD SA with this ESP SPI (a
//! lifetime the data path reports), which IKE SAs a connection has (a
//! reload removing it, a `start` connection checked after a replacement),
//! which IKE SAs name this one (a reauthentication replacing it, a
//! collision record: both follow it to its successor at an IKE rekey).
//! A setup and its DELETE ask these four times, and with 4,000 IKE SAs
//! standing the passes took the responder's setups per CPU-second from
//! 2,750 to about 1,000 (`cargo xtask bench-handshakes` with `STANDING`,
//! #16).
//!
//! Kept like the deadlines in `sa::table`: the table names the SAs that may
//! have changed, and before an answer their entries are taken out and put
//! in again from their current state, so the others' stay as they were.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use wasmsec_wire::peer_keys::PeerKeys;

use super::state::IkeSa;

/// What one SA contributes.
#[derive(Debug)]
struct Entry {
    esp_spis: Vec<u32>,
    /// Its installed CHILD SAs' inbound SPIs.
    child_spis: Vec<u32>,
    /// `(connection, peer address)`.
    peer: (usize, IpAddr),
    /// Its place in its connection's list (`Lookups::connections`).
    conn_at: usize,
    /// `(connection, keyed hash of the peer's authenticated identity)`,
    /// once IKE_AUTH verified it.
    identity: Option<(usize, u64)>,
    /// The IKE SAs (our SPIs) it names: see [`names`].
    names: Vec<u64>,
}

/// The IKE SAs (our SPIs) `sa` names: the one its reauthentication
/// replaces, the one its record of a simultaneous IKE rekey waits on.
fn names(sa: &IkeSa) -> Vec<u64> {
    let mut v: Vec<u64> = sa.replaces.into_iter().chain(sa.ike_collision.as_ref().map(|c| c.what)).collect();
    v.dedup();
    v
}

#[derive(Debug, Default)]
pub(crate) struct Lookups {
    /// Our inbound ESP SPIs in use, installed or proposed, and how many
    /// SAs hold each (one, unless a restore brought a duplicate back).
    esp_spis: HashMap<u32, u32>,
    /// IKE SAs (our SPIs), in any state, by connection and peer address
    /// (keyed by [`PeerKeys`]: a peer picks its address, as it picks the
    /// ESP SPIs `children` is keyed by too).
    peers: HashMap<(usize, IpAddr), Vec<u64>, PeerKeys>,
    /// IKE SAs (our SPIs) by our inbound ESP SPIs of their installed
    /// CHILD SAs (more than one only after a restore brought a duplicate
    /// back).
    children: HashMap<u32, Vec<u64>, PeerKeys>,
    /// IKE SAs (our SPIs), authenticated, by connection and a keyed hash
    /// of the peer's identity (the peer chooses it: keyed as the others,
    /// and the SAs found are compared in full).
    identities: HashMap<(usize, u64), Vec<u64>, PeerKeys>,
    /// The keys of those hashes.
    identity_keys: PeerKeys,
    /// IKE SAs (our SPIs), in any state, by connection. A remote-access
    /// connection has every client's, so one leaves its list by its place
    /// there (`Entry::conn_at`), not by a search: a search made every
    /// change to one IKE SA cost a pass over the connection's (88 us at
    /// 100,000, against 6 us at 1,000; 2026-12-07).
    connections: HashMap<usize, Vec<u64>>,
    /// IKE SAs (our SPIs) by the IKE SAs they name ([`names`]): a few at
    /// most, while a reauthentication or a collision is under way.
    named_by: HashMap<u64, Vec<u64>>,
    /// Each SA's contribution, by our IKE SPI, to take it out again.
    entries: HashMap<u64, Entry>,
}

impl Lookups {
    /// Take out what SA `spi` contributed, and put in what `sa` (its
    /// current state, `None` when it left the table) contributes now.
    pub fn update(&mut self, spi: u64, sa: Option<&IkeSa>) {
        if let Some(old) = self.entries.remove(&spi) {
            for s in old.esp_spis {
                decrement(&mut self.esp_spis, s);
            }
            take_out(&mut self.peers, old.peer, spi);
            self.leave_connection(old.peer.0, old.conn_at);
            if let Some(k) = old.identity {
                take_out(&mut self.identities, k, spi);
            }
            for c in old.child_spis {
                take_out(&mut self.children, c, spi);
            }
            for n in old.names {
                take_out(&mut self.named_by, n, spi);
            }
        }
        let Some(sa) = sa else { return };
        let entry = Entry {
            esp_spis: sa.esp_spis().collect(),
            child_spis: sa.children.iter().map(|c| c.inbound_spi).collect(),
            peer: (sa.conn, sa.remote.addr),
            identity: (!sa.peer_id.is_empty()).then(|| (sa.conn, self.identity_hash(&sa.peer_id))),
            names: names(sa),
            conn_at: self.connections.get(&sa.conn).map_or(0, Vec::len),
        };
        for &s in &entry.esp_spis {
            *self.esp_spis.entry(s).or_default() += 1;
        }
        self.peers.entry(entry.peer).or_default().push(spi);
        self.connections.entry(entry.peer.0).or_default().push(spi);
        if let Some(k) = entry.identity {
            self.identities.entry(k).or_default().push(spi);
        }
        for &c in &entry.child_spis {
            self.children.entry(c).or_default().push(spi);
        }
        for &n in &entry.names {
            self.named_by.entry(n).or_default().push(spi);
        }
        self.entries.insert(spi, entry);
    }

    /// Take the IKE SA at place `at` out of connection `conn`'s list: the
    /// last one takes its place.
    fn leave_connection(&mut self, conn: usize, at: usize) {
        let Some(list) = self.connections.get_mut(&conn) else { return };
        if at >= list.len() {
            return;
        }
        list.swap_remove(at);
        match list.get(at) {
            Some(moved) => {
                if let Some(e) = self.entries.get_mut(moved) {
                    e.conn_at = at;
                }
            }
            None if list.is_empty() => {
                self.connections.remove(&conn);
            }
            None => {}
        }
    }

    pub fn esp_spi_in_use(&self, spi: u32) -> bool {
        self.esp_spis.contains_key(&spi)
    }

    pub fn with_peer(&self, conn: usize, addr: IpAddr) -> &[u64] {
        self.peers.get(&(conn, addr)).map_or(&[], Vec::as_slice)
    }

    /// The IKE SAs of `conn` whose peer authenticated as `peer_id` (an ID
    /// payload's body), and perhaps a few others whose identity hashes
    /// alike: the caller compares.
    pub fn with_identity(&self, conn: usize, peer_id: &[u8]) -> &[u64] {
        self.identities.get(&(conn, self.identity_hash(peer_id))).map_or(&[], Vec::as_slice)
    }

    fn identity_hash(&self, peer_id: &[u8]) -> u64 {
        let mut h = self.identity_keys.build_hasher();
        h.write(peer_id);
        h.finish()
    }

    pub fn of_connection(&self, conn: usize) -> &[u64] {
        self.connections.get(&conn).map_or(&[], Vec::as_slice)
    }

    pub fn with_child(&self, esp_spi: u32) -> &[u64] {
        self.children.get(&esp_spi).map_or(&[], Vec::as_slice)
    }

    pub fn naming(&self, spi: u64) -> &[u64] {
        self.named_by.get(&spi).map_or(&[], Vec::as_slice)
    }
}

/// Take IKE SA `spi` out of the list at `k`, and the list when empty.
fn take_out<K: Hash + Eq, S: BuildHasher>(lists: &mut HashMap<K, Vec<u64>, S>, k: K, spi: u64) {
    if let Some(v) = lists.get_mut(&k) {
        v.retain(|&x| x != spi);
        if v.is_empty() {
            lists.remove(&k);
        }
    }
}

fn decrement(counts: &mut HashMap<u32, u32>, k: u32) {
    if let Some(n) = counts.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&k);
        }
    }
}
