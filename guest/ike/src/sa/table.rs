//! The table of IKE SAs, and the checkpoints the host keeps of them.
//!
//! A checkpoint is an established IKE SA serialized (postcard, with a
//! version byte). The table notes every SA a handler could have changed;
//! after each call the engine serializes those and hands the host the ones
//! whose bytes differ from the last checkpoint, or the news that an SA is
//! gone. If the guest traps, the host starts a new one and gives it the
//! checkpoints back ([`crate::Engine::restore`]): the SAs, their CHILD SAs,
//! message IDs and timers continue. SAs still negotiating are not kept:
//! their peers retransmit or start over.
//!
//! The same notes keep an index of when each SA needs its next tick, so
//! that asking for the next deadline and ticking what is due cost what
//! changed, not a pass over every SA (thousands at a PoP), and the
//! lookups of `sa::lookups`.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use super::lookups::Lookups;
use super::state::{IkeSa, State};

/// Format of a checkpoint; a guest refuses checkpoints of another version.
/// Version 3 names the SA's connection by name, not by its index: a
/// replacement gets the connections loaded now, not every one that ever
/// was, so the indexes differ. Version 4 adds `authenticated_at`, 5 the
/// peer's authenticated identity.
const VERSION: u8 = 5;

/// IKE SAs by our SPI. Reads go through `Deref`; every mutable access
/// marks the SA as touched. Each SA is boxed: the table keeps a slot for
/// every SA and about as many empty ones, and (with the old table while
/// it grows) a guest's linear memory never shrinks, so SAs of several
/// hundred bytes stored in the slots cost a PoP of 16,000 IKE SAs about
/// twice their size again (`cargo xtask bench-memory`, issue #16).
#[derive(Debug, Default)]
pub(crate) struct SaTable {
    /// The SAs.
    map: HashMap<u64, Box<IkeSa>>,
    /// SAs mutably accessed, inserted or removed since the last checkpoints.
    touched: HashSet<u64>,
    /// A hash of each SA's last checkpoint, to send only what changed.
    checkpointed: HashMap<u64, u64>,
    /// SAs changed since their deadline was last worked out.
    timers_stale: HashSet<u64>,
    /// Each SA's next deadline, as `(deadline, spi)`, earliest first...
    deadlines: BTreeSet<(u64, u64)>,
    /// ... and by SPI, to find its entry there.
    deadline_of: HashMap<u64, u64>,
    /// SAs changed since their entries in `lookups` were last made.
    lookups_stale: HashSet<u64>,
    lookups: Lookups,
}

impl Deref for SaTable {
    type Target = HashMap<u64, Box<IkeSa>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl SaTable {
    pub fn new() -> SaTable {
        SaTable::default()
    }

    /// Note that SA `spi` may have changed: for its checkpoint, its
    /// deadline and the lookups.
    fn touch(&mut self, spi: u64) {
        self.touched.insert(spi);
        self.timers_stale.insert(spi);
        self.lookups_stale.insert(spi);
    }

    pub fn insert(&mut self, spi: u64, sa: IkeSa) -> Option<IkeSa> {
        self.touch(spi);
        self.map.insert(spi, Box::new(sa)).map(|old| *old)
    }

    pub fn remove(&mut self, spi: &u64) -> Option<IkeSa> {
        self.touch(*spi);
        self.map.remove(spi).map(|sa| *sa)
    }

    pub fn get_mut(&mut self, spi: &u64) -> Option<&mut IkeSa> {
        if !self.map.contains_key(spi) {
            return None;
        }
        self.touch(*spi);
        self.map.get_mut(spi).map(|sa| &mut **sa)
    }

    /// Bring the lookups up to date with the SAs changed since.
    fn refresh_lookups(&mut self) {
        for spi in std::mem::take(&mut self.lookups_stale) {
            self.lookups.update(spi, self.map.get(&spi).map(|sa| &**sa));
        }
    }

    /// An SA in the table uses this inbound ESP SPI (installed, or
    /// proposed in its request in flight).
    pub fn esp_spi_in_use(&mut self, spi: u32) -> bool {
        self.refresh_lookups();
        self.lookups.esp_spi_in_use(spi)
    }

    /// The SAs in the table (our SPIs) of connection `conn` with the peer
    /// at `addr` for which `pred` holds.
    pub fn with_peer(&mut self, conn: usize, addr: std::net::IpAddr, pred: impl Fn(&IkeSa) -> bool) -> Vec<u64> {
        self.refresh_lookups();
        let spis = self.lookups.with_peer(conn, addr);
        spis.iter().copied().filter(|k| self.map.get(k).is_some_and(|sa| pred(sa))).collect()
    }

    /// The SAs in the table (our SPIs) of connection `conn` whose peer
    /// authenticated as `peer_id` (an ID payload's body) and for which
    /// `pred` holds.
    pub fn with_identity(&mut self, conn: usize, peer_id: &[u8], pred: impl Fn(&IkeSa) -> bool) -> Vec<u64> {
        self.refresh_lookups();
        let spis = self.lookups.with_identity(conn, peer_id);
        spis.iter().copied().filter(|k| self.map.get(k).is_some_and(|sa| sa.peer_id == peer_id && pred(sa))).collect()
    }

    /// The SAs in the table (our SPIs) of connection `conn`, in any state.
    pub fn of_connection(&mut self, conn: usize) -> Vec<u64> {
        self.refresh_lookups();
        let spis = self.lookups.of_connection(conn);
        spis.iter().copied().filter(|k| self.map.contains_key(k)).collect()
    }

    /// The SAs in the table (our SPIs) with an installed CHILD SA whose
    /// inbound ESP SPI is `esp_spi`.
    pub fn with_child(&mut self, esp_spi: u32) -> Vec<u64> {
        self.refresh_lookups();
        self.lookups.with_child(esp_spi).to_vec()
    }

    /// The SAs in the table (our SPIs) that name IKE SA `spi`: a
    /// reauthentication replacing it, a collision record waiting on it.
    pub fn naming(&mut self, spi: u64) -> Vec<u64> {
        self.refresh_lookups();
        self.lookups.naming(spi).to_vec()
    }

    /// Work out again the deadlines of the SAs changed since the last
    /// call, with `deadline` (an SA's next tick, if any); the earliest.
    /// An SA's deadline depends on nothing but the SA, its connection's
    /// settings (fixed once added) and the time of the call that changed
    /// it, so the others' stay as they were.
    pub fn next_deadline(&mut self, deadline: impl Fn(&IkeSa) -> Option<u64>) -> Option<u64> {
        self.refresh_deadlines(deadline);
        self.deadlines.first().map(|&(t, _)| t)
    }

    /// Work out the deadlines of the SAs changed since the last refresh,
    /// so that [`SaTable::due`] answers for the current state.
    pub fn refresh_deadlines(&mut self, deadline: impl Fn(&IkeSa) -> Option<u64>) {
        for spi in std::mem::take(&mut self.timers_stale) {
            if let Some(old) = self.deadline_of.remove(&spi) {
                self.deadlines.remove(&(old, spi));
            }
            if let Some(t) = self.map.get(&spi).and_then(|sa| deadline(sa)) {
                self.deadlines.insert((t, spi));
                self.deadline_of.insert(spi, t);
            }
        }
    }

    /// The SAs whose deadline is at or before `now`, per the last
    /// [`SaTable::refresh_deadlines`].
    pub fn due(&self, now: u64) -> Vec<u64> {
        self.deadlines.range(..=(now, u64::MAX)).map(|&(_, spi)| spi).collect()
    }

    /// Checkpoints of the SAs changed since the last call: `Some(bytes)`
    /// for an established SA whose state differs from its last checkpoint,
    /// `None` for one that is gone (or no longer established).
    pub fn take_checkpoints<'n>(&mut self, conn_name: impl Fn(usize) -> &'n str) -> Vec<(u64, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for spi in std::mem::take(&mut self.touched) {
            match self.map.get(&spi).filter(|sa| keeps(sa)) {
                Some(sa) => {
                    let Ok(bytes) = encode(sa, conn_name(sa.conn)) else { continue };
                    let h = digest(&bytes);
                    if self.checkpointed.insert(spi, h) != Some(h) {
                        out.push((spi, Some(bytes)));
                    }
                }
                None => {
                    if self.checkpointed.remove(&spi).is_some() {
                        out.push((spi, None));
                    }
                }
            }
        }
        out.sort_by_key(|(spi, _)| *spi);
        out
    }

    /// Put a restored SA in, as its checkpoint already has it.
    pub fn restore(&mut self, spi: u64, sa: IkeSa, bytes: &[u8]) {
        self.checkpointed.insert(spi, digest(bytes));
        self.timers_stale.insert(spi);
        self.lookups_stale.insert(spi);
        self.map.insert(spi, Box::new(sa));
    }
}

/// Only SAs that need nothing the guest lost are worth keeping.
fn keeps(sa: &IkeSa) -> bool {
    matches!(sa.state, State::Established | State::Deleting)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// An SA of connection `conn_name` as a checkpoint.
pub(crate) fn encode(sa: &IkeSa, conn_name: &str) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![VERSION];
    out.extend(postcard::to_allocvec(&(conn_name, sa))?);
    Ok(out)
}

/// A checkpoint as an SA and the name of its connection (the SA's `conn`
/// is the index it had where the checkpoint was made).
pub(crate) fn decode(bytes: &[u8]) -> Result<(String, IkeSa), String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| format!("checkpoint does not decode: {e}")),
        Some((v, _)) => Err(format!("checkpoint format {v}, this engine reads {VERSION}")),
        None => Err("empty checkpoint".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Endpoint;
    use crate::sa::state::Collision;

    fn sa(spi: u64) -> IkeSa {
        let at = |last: u8| Endpoint { addr: std::net::IpAddr::from([198, 18, 0, last]), port: 500 };
        let mut sa = IkeSa::fresh(0, at(1), at(2), 0);
        sa.spi_r = spi;
        sa.state = State::Established;
        sa
    }

    /// A connection's list loses an SA by its place, the last one moving
    /// in: after removals and changes in any order it holds exactly the
    /// connection's SAs.
    #[test]
    fn a_connection_lists_exactly_its_sas_through_removals_and_moves() {
        let mut t = SaTable::new();
        let mut want: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
        for spi in 1..=500u64 {
            let mut s = sa(spi);
            s.conn = (spi % 2) as usize;
            t.insert(spi, s);
            want[(spi % 2) as usize].push(spi);
        }
        // Remove every third, move every seventh to the other connection,
        // touch every fifth, checking the lists after each step.
        for spi in 1..=500u64 {
            let conn = (spi % 2) as usize;
            if spi % 3 == 0 {
                t.remove(&spi);
                want[conn].retain(|&k| k != spi);
            } else if spi % 7 == 0 {
                t.get_mut(&spi).unwrap().conn = 1 - conn;
                want[conn].retain(|&k| k != spi);
                want[1 - conn].push(spi);
            } else if spi % 5 == 0 {
                t.get_mut(&spi).unwrap().rekey_ike_at = 9;
            }
            for (c, w) in want.iter().enumerate() {
                let (mut got, mut w) = (t.of_connection(c), w.clone());
                got.sort_unstable();
                w.sort_unstable();
                assert_eq!(got, w, "connection {c} after SA {spi}");
            }
        }
        for spi in 1..=500u64 {
            t.remove(&spi);
        }
        assert!(t.of_connection(0).is_empty() && t.of_connection(1).is_empty());
    }

    /// The SAs naming another are found without a pass over the table,
    /// and follow each change made through it.
    #[test]
    fn the_sas_naming_an_ike_sa_follow_their_changes() {
        let mut t = SaTable::new();
        for spi in 1..=1_000 {
            t.insert(spi, sa(spi));
        }
        let (reauth, waiting) = (2_001, 2_002);
        let mut r = sa(reauth);
        r.replaces = Some(7);
        t.insert(reauth, r);
        let mut w = sa(waiting);
        w.ike_collision = Some(Collision { what: 7, their_ni: Vec::new(), our_nr: Vec::new() });
        t.insert(waiting, w);
        let sorted = |mut v: Vec<u64>| {
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(t.naming(7)), [reauth, waiting]);
        assert!(t.naming(8).is_empty());
        // A change through `get_mut` moves the reference...
        t.get_mut(&reauth).unwrap().replaces = Some(8);
        assert_eq!(t.naming(7), [waiting]);
        assert_eq!(t.naming(8), [reauth]);
        // ...and one taken out and put back too; one gone names nothing.
        let mut w = t.remove(&waiting).unwrap();
        assert!(t.naming(7).is_empty(), "out of the table, the one being worked on");
        w.ike_collision.as_mut().unwrap().what = 8;
        t.insert(waiting, w);
        assert_eq!(sorted(t.naming(8)), [reauth, waiting]);
        t.remove(&reauth);
        assert_eq!(t.naming(8), [waiting]);
    }
}
