//! A group's compaction in slices. A wasm memory only grows, so a group
//! left with a few of the SAs it once held gives its memory back by a new
//! instance with those SAs ([`super::group::Group::reclaim`]). Installing
//! them all at once stalled the thread's packets: 18-23 ms for 12,500
//! inbound SAs (1.8 us each) on the 2-vCPU Intel machine of 2026-12-06,
//! 35 ms on AMD. Now the new instance is filled in slices of about
//! [`SLICE`] per turn of the loop while the old one carries the traffic,
//! and it takes over once it holds every SA as the old one holds it. The
//! last turn is longer: it compares every SA with its key and moves the
//! windows left behind on (0.7 ms at 12,500 SAs; 2.2-2.4 ms when every
//! one of them had opened packets since it was staged, 3.3-3.9 ms before
//! the guest's catch-up took word operations).
//!
//! - an SA installed meanwhile is staged after the others, in order (of
//!   outbound SAs that match a packet the newest wins, so the order of
//!   installation is kept); one removed meanwhile goes from both;
//! - an inbound SA that opened packets after it was staged has a replay
//!   window behind the old one's: before the swap its window is moved on
//!   to the key's record, all such SAs in one call (`catch-up-inbound`;
//!   never back, and what it received stays received), so no number is
//!   accepted twice (RFC 4303 section 3.4.3);
//! - an outbound SA is staged [`SEQ_SKIP`] sequence numbers past the last
//!   its key sealed, so the old instance may go on sealing until the swap
//!   without the new one sending a number again (to the peer a gap is
//!   lost packets); one that sealed past that (some 16 million packets
//!   in the time) makes the rebuild fall back to an instance made at once,
//!   as before.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmsec_wire::own_keys::OwnKeys;

use super::{Direction, SaSet};
use crate::wasm::esp::{EspInstance, ReplayState};

/// The time one turn of the loop spends staging SAs, for all its groups
/// together (each group's clock is read every 16 SAs, so a group's turn
/// may run over by up to 16 installs): the delay a rebuild adds to a
/// packet, but for the last turn's comparison and catch-up.
pub const SLICE: Duration = Duration::from_micros(200);

/// How far past its key's last sealed number an outbound SA is staged:
/// room for 16 s of sealing at a million packets a second, and 0.4 % of
/// a 32-bit space (once per compaction, which is rare).
pub const SEQ_SKIP: u64 = 1 << 24;

/// A new instance being filled with its group's SAs.
pub struct Rebuild {
    pub inst: EspInstance,
    /// The direction of the group's SAs (for the log).
    pub direction: Direction,
    /// SAs to stage, in order, by SPI and key handle: an SA removed and
    /// another installed under its SPI in the meantime each have their own
    /// entry.
    todo: VecDeque<(Direction, u32, u64)>,
    /// Staged outbound SAs: key handle, the next sequence number given.
    outbound: HashMap<u32, (u64, u64), OwnKeys>,
    /// Staged inbound SAs: key handle, the key's replay state given.
    inbound: HashMap<u32, (u64, (u64, u64)), OwnKeys>,
    pub started: Instant,
    /// Turns of the loop it took so far, and the longest one.
    pub turns: u32,
    pub longest: Duration,
}

/// What a turn of a rebuild came to.
pub enum Step {
    /// More to stage.
    Going,
    /// The new instance holds every SA as the old one does: it takes over.
    Done,
    /// An outbound SA sealed past its skip: make the instance at once.
    Redo,
}

impl Rebuild {
    /// Start filling `inst` with the SAs of `sas` (going `direction`).
    pub fn start(inst: EspInstance, direction: Direction, sas: &SaSet) -> Rebuild {
        let mut todo = VecDeque::with_capacity(sas.len());
        todo.extend(sas.outbound.values().map(|k| (Direction::Outbound, k.sa.spi, k.sa.key)));
        todo.extend(sas.inbound.values().map(|k| (Direction::Inbound, k.sa.spi, k.sa.key)));
        Rebuild {
            inst,
            direction,
            todo,
            outbound: HashMap::default(),
            inbound: HashMap::default(),
            started: Instant::now(),
            turns: 0,
            longest: Duration::ZERO,
        }
    }

    /// An SA installed in the old instance meanwhile: staged after the rest.
    pub fn added(&mut self, dir: Direction, spi: u32, key: u64) {
        self.todo.push_back((dir, spi, key));
    }

    /// An SA removed from the old instance meanwhile: out of the new one
    /// too, if it was staged (an error if the guest traps).
    pub fn removed(&mut self, dir: Direction, spi: u32, key: u64) -> Result<()> {
        if !self.is_staged(dir, spi, key) {
            return Ok(());
        }
        self.inst.store.data_mut().keys.revoke(key);
        match dir {
            Direction::Outbound => {
                self.outbound.remove(&spi);
                self.inst.remove_outbound(spi)?;
            }
            Direction::Inbound => {
                self.inbound.remove(&spi);
                self.inst.remove_inbound(spi)?;
            }
        }
        Ok(())
    }

    /// Is this SA staged (with this key)?
    pub fn is_staged(&self, dir: Direction, spi: u32, key: u64) -> bool {
        match dir {
            Direction::Outbound => self.outbound.get(&spi).is_some_and(|s| s.0 == key),
            Direction::Inbound => self.inbound.get(&spi).is_some_and(|s| s.0 == key),
        }
    }

    /// One turn: stage SAs for up to `slice`; once all are, move the
    /// inbound windows left behind on and hand over the instance. An
    /// error if the new instance's guest traps, or refuses an SA or a
    /// catch-up the old one took.
    pub fn turn(&mut self, sas: &SaSet, slice: Duration) -> Result<Step> {
        let t0 = Instant::now();
        self.turns += 1;
        let step = self.stage(sas, t0, slice);
        self.longest = self.longest.max(t0.elapsed());
        step
    }

    fn stage(&mut self, sas: &SaSet, t0: Instant, slice: Duration) -> Result<Step> {
        let mut n = 0u32;
        while let Some(&(dir, spi, key)) = self.todo.front() {
            // The clock is read every 16 SAs (about 30 us).
            if n > 0 && n.is_multiple_of(16) && t0.elapsed() >= slice {
                return Ok(Step::Going);
            }
            self.todo.pop_front();
            n += 1;
            self.stage_one(sas, dir, spi, key)?;
        }
        let Some(behind) = self.behind(sas) else { return Ok(Step::Redo) };
        if behind.is_empty() {
            return Ok(Step::Done);
        }
        let states: Vec<ReplayState> = behind
            .iter()
            .map(|&(spi, _, (top, seen))| ReplayState { spi, highest_seq: top, replay_missing: !seen })
            .collect();
        let moved = self.inst.catch_up_inbound(&states)? as usize;
        if moved != states.len() {
            anyhow::bail!("the new instance's guest moved {moved} of {} replay windows on", states.len());
        }
        for (spi, key, state) in behind {
            self.inbound.insert(spi, (key, state));
        }
        Ok(Step::Done)
    }

    /// Stage the SA `spi` with key `key` if the group still holds it and
    /// it is not staged yet.
    fn stage_one(&mut self, sas: &SaSet, dir: Direction, spi: u32, key: u64) -> Result<()> {
        match dir {
            Direction::Outbound => {
                let Some(k) = sas.outbound.get(spi).filter(|k| k.sa.key == key) else { return Ok(()) };
                if self.outbound.contains_key(&spi) {
                    return Ok(());
                }
                if let Some(next) = sas.reinstall_outbound(&mut self.inst, k, SEQ_SKIP)? {
                    self.outbound.insert(spi, (key, next));
                }
            }
            Direction::Inbound => {
                let Some(k) = sas.inbound.get(spi).filter(|k| k.sa.key == key) else { return Ok(()) };
                if self.inbound.contains_key(&spi) {
                    return Ok(());
                }
                if let Some(state) = sas.reinstall_inbound(&mut self.inst, k)? {
                    self.inbound.insert(spi, (key, state));
                }
            }
        }
        Ok(())
    }

    /// The staged inbound SAs whose key opened packets since (SPI, key,
    /// the key's replay state now); None if an SA the group holds is not
    /// staged though its key lives, an outbound one sealed up to the
    /// number its staged copy starts at, or a staged SA is not the group's
    /// or lacks its grant (a bug: the instance is then made at once). An SA
    /// not staged because its key was gone was deleted, its removal queued:
    /// it carries no packet and goes with that removal.
    #[allow(clippy::type_complexity)]
    fn behind(&self, sas: &SaSet) -> Option<Vec<(u32, u64, (u64, u64))>> {
        // A staged SA's key through the new instance's grant: the same key
        // the old instance uses, without the keystore's lock, and still
        // there if the control thread destroyed it since (the removal
        // then waits in the queue, and the old instance may use its grant
        // until it comes).
        let grants = &self.inst.store.data().keys;
        let staged = |h: u64| grants.get(h).ok().map(|(k, _)| k);
        let live = |h: u64| sas.keystore.get(h).is_some();
        let mut held = 0;
        for k in sas.outbound.values() {
            match self.outbound.get(&k.sa.spi) {
                Some(&(h, next)) if h == k.sa.key => {
                    held += 1;
                    if staged(h).is_none_or(|key| key.highest_seq() >= next) {
                        return None;
                    }
                }
                _ if live(k.sa.key) => return None,
                _ => {}
            }
        }
        let mut behind = Vec::new();
        for k in sas.inbound.values() {
            match self.inbound.get(&k.sa.spi) {
                Some(&(h, was)) if h == k.sa.key => {
                    held += 1;
                    // Where the record's edge lies past the key's, the
                    // window was made from the record and stays there.
                    let now = staged(h).map(|key| key.replay_state())?;
                    if now != was && now.0 >= k.sa.highest_seq && now.0 > 0 {
                        behind.push((k.sa.spi, h, now));
                    }
                }
                _ if live(k.sa.key) => return None,
                _ => {}
            }
        }
        (held == self.outbound.len() + self.inbound.len()).then_some(behind)
    }
}
