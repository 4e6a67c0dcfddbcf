//! Questions about every IKE SA but the one at hand, answered without a
//! pass over all of them: is this inbound ESP SPI in use, which IKE SAs of
//! this connection have their peer at this address (whether to send
//! INITIAL_CONTACT), which have the peer's authenticated identity (that
//! too, a twin, a duplicate, the SAs an INITIAL_CONTACT replaces, the
//! successor a DELETE lets send), which IKE SA holds the CHILD SA with this ESP SPI (a
//! lifetime the data path reports), which IKE SAs a connection has (a
//! reload removing it, a `start` connection checked after a replacement).
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
    /// `(connection, keyed hash of the peer's authenticated identity)`,
    /// once IKE_AUTH verified it.
    identity: Option<(usize, u64)>,
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
    /// IKE SAs (our SPIs), in any state, by connection.
    connections: HashMap<usize, Vec<u64>>,
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
            take_out(&mut self.connections, old.peer.0, spi);
            if let Some(k) = old.identity {
                take_out(&mut self.identities, k, spi);
            }
            for c in old.child_spis {
                take_out(&mut self.children, c, spi);
            }
        }
        let Some(sa) = sa else { return };
        let entry = Entry {
            esp_spis: sa.esp_spis().collect(),
            child_spis: sa.children.iter().map(|c| c.inbound_spi).collect(),
            peer: (sa.conn, sa.remote.addr),
            identity: (!sa.peer_id.is_empty()).then(|| (sa.conn, self.identity_hash(&sa.peer_id))),
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
        self.entries.insert(spi, entry);
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
