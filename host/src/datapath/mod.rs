//! The data path: TUN -> ESP component -> socket ([`outbound`]), and back
//! ([`inbound`]).
//!
//! Each direction has its own thread and its own ESP instances (outbound
//! SAs in some, inbound SAs in others), so the two never contend for a
//! store. A loop reads a batch of up to `runtime.batch` packets into host
//! buffers, hands each guest group ([`group`]) its share for one call, and
//! acts on the verdicts, which the host checks against what it did (see
//! `wasm::esp::Mark`). Payloads are never copied into a guest. SA changes
//! come from the control thread and reports go to it over typed channels
//! ([`channel`]).
pub mod channel;
pub mod gro;
pub mod group;
pub mod gso;
pub mod guard;
#[cfg(test)]
mod handoff_tests;
pub mod hold;
pub mod inbound;
#[cfg(test)]
mod install_tests;
pub mod kept;
#[cfg(test)]
mod limit_tests;
pub mod link_send;
pub mod outbound;
pub mod peers;
#[cfg(test)]
mod read_budget_tests;
pub mod rebuild;
#[cfg(test)]
mod reclaim_tests;
pub mod tos;
pub mod tso;
pub mod tun_write;

use std::collections::HashMap;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{debug, info, warn};

use crate::by_spi::BySpi;
use crate::keys::{KeyUse, Keystore, usage};
use crate::packet::PacketBuf;
use crate::stats::{self, Stats};
use crate::sys::{self, RawEsp, Tun};
use crate::wasm::esp::{DropReason, EspInstance, Expiry, ExpiryCause, InboundSa, OutboundSa};
use crate::wasm::{EspMemory, GUEST_REASON_CHARS, Runtime, guest_text};
use channel::{Receiver, Report, SaCommand, Sender};
use group::Groups;
pub use kept::Kept;
pub use peers::{Peer, Peers};

/// How often a loop asks its guests for SA expiries (not per batch: the
/// call would cost every batch, and a rekey does not need to start sooner).
const EXPIRY_POLL: Duration = Duration::from_millis(100);
/// A data-path thread's longest sleep: also how long an SA change sent
/// quietly (`Sender::send_quiet`) may wait to be applied when no packet
/// comes (a removed SA's key and guest instance are freed by then).
const POLL_MS: i32 = 200;

/// Host-side record of the SAs an instance holds, to rebuild it after a
/// trap: keys stay in the keystore, sequence numbers come from the keys'
/// high-water marks.
pub struct SaSet {
    /// Where the keys live.
    pub keystore: Arc<Keystore>,
    /// Outbound SAs as installed, by SPI.
    pub outbound: BySpi<Kept<OutboundSa>>,
    /// Inbound SAs as installed, by SPI.
    pub inbound: BySpi<Kept<InboundSa>>,
}

impl SaSet {
    /// SAs in both directions.
    pub fn len(&self) -> usize {
        self.outbound.len() + self.inbound.len()
    }

    /// No SA in either direction.
    pub fn is_empty(&self) -> bool {
        self.outbound.values().next().is_none() && self.inbound.values().next().is_none()
    }

    /// A set holding these SAs; an error if one has a malformed selector.
    pub fn new(keystore: Arc<Keystore>, outbound: Vec<OutboundSa>, inbound: Vec<InboundSa>) -> Result<SaSet> {
        let mut set = SaSet { keystore, outbound: BySpi::default(), inbound: BySpi::default() };
        for sa in outbound {
            let spi = sa.spi;
            let k = Kept::of_full(sa).ok_or_else(|| anyhow::anyhow!("outbound SA {spi:#x}: a malformed selector"))?;
            set.outbound.insert(spi, k);
        }
        for sa in inbound {
            let spi = sa.spi;
            let k = Kept::of_full(sa).ok_or_else(|| anyhow::anyhow!("inbound SA {spi:#x}: a malformed selector"))?;
            set.inbound.insert(spi, k);
        }
        Ok(set)
    }

    /// A new instance of ESP component `component` in `memory` with these
    /// SAs installed and their keys granted. An SA whose key is gone is
    /// left out: the control thread destroys an SA's keys when it deletes
    /// it, and its removal waits in this thread's queue (during a teardown
    /// of thousands, many do); the removal finds it recorded here and not
    /// in the guest, which is no error. Before 2026-12-06 such an SA failed
    /// the whole instantiation.
    pub fn instantiate(&self, rt: &Runtime, component: usize, memory: EspMemory) -> Result<EspInstance> {
        let mut inst = rt.esp_instance_of(component, memory)?;
        for k in self.outbound.values() {
            if self.reinstall_outbound(&mut inst, k, 0)?.is_none() {
                deleted(k.sa.spi);
            }
        }
        for k in self.inbound.values() {
            if self.reinstall_inbound(&mut inst, k)?.is_none() {
                deleted(k.sa.spi);
            }
        }
        Ok(inst)
    }

    /// Install outbound SA `k` in `inst` as its key stands now, `skip`
    /// sequence numbers past the last it sealed: the key granted, what is
    /// left of its limits. Answers the next sequence number it was given,
    /// or None when its key is gone (see [`SaSet::instantiate`]). An
    /// error if the guest traps or refuses it.
    pub fn reinstall_outbound(&self, inst: &mut EspInstance, k: &Kept<OutboundSa>, skip: u64) -> Result<Option<u64>> {
        let Some(key) = self.keystore.get(k.sa.key) else { return Ok(None) };
        let mut sa = k.full();
        // The guest chose the numbers it sealed with: the last may be the
        // largest. To the receiver a gap is packets lost (its window moves
        // on, RFC 4303 section 3.4.3); without ESN the gap stays short of
        // the 32-bit end, which must not be passed (section 3.3.3): at
        // most half of what is left.
        sa.next_seq = sa.next_seq.max(key.highest_seq().saturating_add(1));
        let room = if sa.esn { u64::MAX } else { u64::from(u32::MAX).saturating_sub(sa.next_seq) / 2 };
        sa.next_seq = sa.next_seq.saturating_add(skip.min(room));
        // The host holds the key to the SA's limits; the guest learns
        // what is left of them, so an honest one plans no packet the
        // host would refuse.
        sa.limits = usage::remaining(&k.sa.limits, key.usage().get());
        let key_use = KeyUse::Seal { spi: sa.spi, wire_spi: k.wire_spi, peer: sa.peer };
        inst.store.data_mut().keys.grant(sa.key, key, key_use, k.sa.limits);
        inst.install_outbound(&sa)?.map_err(|e| anyhow::anyhow!("outbound SA {:#x}: {e}", sa.spi))?;
        Ok(Some(sa.next_seq))
    }

    /// Install inbound SA `k` in `inst` as its key stands now: the key
    /// granted, what is left of its limits, and its replay window from
    /// what the key authenticated, where that is past the record's edge: a
    /// packet delayed behind later ones when the instance went is still
    /// accepted once, any other at or below the edge refused (RFC 4303
    /// section 3.4.3). Answers the key's replay state it was given
    /// ([`crate::keys::EspKey::replay_state`]), or None when its key is
    /// gone. An error if the guest traps or refuses it.
    pub fn reinstall_inbound(&self, inst: &mut EspInstance, k: &Kept<InboundSa>) -> Result<Option<(u64, u64)>> {
        let Some(key) = self.keystore.get(k.sa.key) else { return Ok(None) };
        let mut sa = k.full();
        let state = key.replay_state();
        let (top, seen) = state;
        if top > 0 && top >= sa.highest_seq {
            (sa.highest_seq, sa.replay_missing) = (top, !seen);
        }
        sa.limits = usage::remaining(&k.sa.limits, key.usage().get());
        inst.store.data_mut().keys.grant(sa.key, key, k.open_use(), k.sa.limits);
        inst.install_inbound(&sa)?.map_err(|e| anyhow::anyhow!("inbound SA {:#x}: {e}", sa.spi))?;
        Ok(Some(state))
    }
}

/// An SA left out of a new instance because its key is gone: the control
/// thread deleted it and its removal waits in the thread's queue.
fn deleted(spi: u32) {
    debug!(spi = format_args!("{spi:08x}"), "data path: SA deleted, its removal queued: not installed again");
}

/// Which way a loop's packets go through the ESP guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// LAN to peer: encap.
    Outbound,
    /// Peer to LAN: decap.
    Inbound,
}

impl Direction {
    /// The name logs give it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Everything one direction's loop needs.
pub struct Loop {
    /// The wasm engine and components, for replacement instances.
    pub runtime: Arc<Runtime>,
    /// The guest groups of this direction and the SPIs they hold.
    pub groups: Groups,
    /// This thread's queue of each routing domain's TUN device (index 0:
    /// the daemon's, 1 + i: tenant i's; see `Group::domain`).
    /// A removed tenant's entry is `None` (domain numbers are not reused).
    pub tuns: Vec<Option<Tun>>,
    /// Port 4500: ESP in UDP and IKE after NAT detection.
    pub udp: UdpSocket,
    /// Raw IP protocol 50 socket, for ESP without encapsulation.
    pub raw: Option<RawEsp>,
    /// Inbound thread: whether this batch reads the raw socket before the
    /// UDP one (they take turns).
    pub raw_first: bool,
    /// Outbound thread, `raw_esp_send = "link"`: raw ESP through a packet
    /// socket, the IP socket above for what it cannot send.
    pub link: Option<link_send::LinkEsp>,
    /// Where each peer index the guests name sends to.
    pub peers: Peers,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Packets per batch.
    pub batch: usize,
    /// SA changes from the control thread.
    pub inbox: Option<Receiver<SaCommand>>,
    /// To the control thread: IKE from port 4500 (inbound thread), acquires
    /// for traffic without an SA (outbound thread), SA expiries (both).
    pub up: Option<Sender<Report>>,
    /// Inbound thread: tells the outbound thread when a peer moved.
    pub to_outbound: Option<Sender<SaCommand>>,
    /// Inbound thread: inbound SPI -> where the peer is (the SPI also
    /// names the outbound half that follows it).
    pub floats: HashMap<u32, SocketAddrV4>,
    /// Inbound thread: what each packet of the batch's outer headers said.
    pub sources: Vec<inbound::Arrival>,
    /// The batch as read, before it is lent to the groups' instances.
    pub staging: Vec<PacketBuf>,
    /// Outbound thread: the domain each staged packet was read from.
    pub from_domain: Vec<usize>,
    /// Outbound thread: each staged packet's inner TOS byte (IPv4) or
    /// traffic class (IPv6), read before the packet is sealed; its SA's
    /// [`tos::Copy`] makes the outer one when it is sent.
    pub inner_tos: Vec<u8>,
    /// What is copied between the inner and the outer TOS byte, for each
    /// SA: the outbound thread's encapsulation, the inbound thread's
    /// decapsulation.
    pub copy: tos::BySa,
    /// Each SA's traffic counters (from the IKE thread's install), by SPI.
    pub traffic: HashMap<u32, Arc<crate::stats::SaTraffic>>,
    /// Outbound thread: the TSO super-packet being cut.
    pub cutter: tso::Cutter,
    /// Outbound thread: sealed ESP-in-UDP datagrams gathered for UDP GSO.
    pub gso: gso::GsoSend,
    /// Outbound thread: sealed raw ESP datagrams of the batch gathered for
    /// one `sendmmsg` (batch index, peer address, our address, outer TOS, SPI).
    pub raw_out: Vec<(usize, std::net::Ipv4Addr, std::net::Ipv4Addr, u8, Option<u32>)>,
    /// Inbound thread: the last UDP GRO read, being cut.
    pub gro: gro::GroRecv,
    /// Inbound thread: ESP for SAs we asked for and have not installed yet.
    pub hold: hold::Hold,
    /// Inbound thread: opened packets to the TUN devices, TCP runs joined.
    pub tun_out: tun_write::TunWriter,
}

impl Loop {
    /// A staging area for batches of `batch` packets.
    pub fn staging_for(batch: usize) -> Vec<PacketBuf> {
        (0..batch).map(|_| PacketBuf::new()).collect()
    }

    /// Lend group `g` the staged packets `idx` (moved, not copied) and make
    /// one call into its guest: the verdicts, or none when the batch is
    /// lost. The packets stay in the instance's buffers until
    /// [`Loop::take_back`]. A suspended group drops its share, and a
    /// tenant's group without SAs (so without an instance) drops it as its
    /// guest would: no policy outbound, unknown SPI inbound.
    fn call_group<T>(
        &mut self,
        g: usize,
        idx: &[usize],
        dir: Direction,
        f: impl FnOnce(&mut EspInstance, usize) -> Result<Vec<T>>,
    ) -> Option<Vec<T>> {
        if !self.ready(g, dir) {
            stats::add(&self.stats.guest_suspended_drops, idx.len() as u64);
            return None;
        }
        let group = &mut self.groups.list[g];
        group.ensure_buffers(idx.len());
        let Some(inst) = &mut group.inst else {
            for _ in idx {
                match dir {
                    Direction::Outbound => self.stats.out_drop(DropReason::NoPolicy),
                    Direction::Inbound => self.stats.in_drop(DropReason::UnknownSpi),
                }
            }
            return None;
        };
        let batch = &mut inst.store.data_mut().batch;
        for (k, &i) in idx.iter().enumerate() {
            std::mem::swap(&mut self.staging[i], &mut batch[k]);
        }
        let answer = crate::telemetry::guest_call(crate::telemetry::Guest::Esp, || f(inst, idx.len()));
        // Whatever the call came to: a guest that traps or lies after
        // letting replays through must not hide them.
        let replays = std::mem::take(&mut inst.store.data_mut().replays_refused);
        if replays > 0 {
            stats::add(&self.stats.esp_rx_replays_refused, replays);
            let missed = std::mem::take(&mut inst.store.data_mut().replays_missed);
            stats::add(&self.stats.esp_rx_replays_missed, missed);
        }
        match answer {
            Ok(v) => {
                let errors = inst.store.data().refusals + idx.len().abs_diff(v.len()) as u64;
                (!self.protocol_errors(g, dir, errors)).then_some(v)
            }
            Err(err) => {
                self.trapped(g, dir, "in a batch", &err);
                None
            }
        }
    }

    /// Move the lent packets back to the staging area.
    fn take_back(&mut self, g: usize, idx: &[usize]) {
        let Some(inst) = &mut self.groups.list[g].inst else { return };
        let batch = &mut inst.store.data_mut().batch;
        for (k, &i) in idx.iter().enumerate() {
            if let Some(p) = batch.get_mut(k) {
                std::mem::swap(&mut self.staging[i], p);
            }
        }
    }

    /// Count `errors` protocol errors of group `g`'s guest; true if that
    /// many replaced the instance (the batch is then lost).
    fn protocol_errors(&mut self, g: usize, dir: Direction, errors: u64) -> bool {
        if errors == 0 {
            return false;
        }
        stats::add(&self.stats.guest_protocol_errors, errors);
        if !self.groups.list[g].guard.strike(errors, Instant::now()) {
            return false;
        }
        warn!(
            direction = dir.name(),
            group = g,
            limit = guard::STRIKE_LIMIT,
            "ESP guest keeps breaking the host's rules; replacing the instance"
        );
        self.replace(g, dir);
        true
    }

    /// Group `g`'s guest trapped `during` a call: a trapped instance takes
    /// no further call, so it is replaced.
    fn trapped(&mut self, g: usize, dir: Direction, during: &str, err: &anyhow::Error) {
        warn!(direction = dir.name(), group = g, during, error = %err, "ESP guest trapped; replacing the instance");
        self.replace(g, dir);
    }

    /// Replace group `g`'s instance: at once the first time, after its
    /// guard's backoff when replacements follow each other (meanwhile the
    /// group is suspended; the thread does not wait).
    fn replace(&mut self, g: usize, dir: Direction) {
        stats::inc(&self.stats.guest_restarts);
        let group = &mut self.groups.list[g];
        // The replacement gets the group's SAs at once: a rebuild going
        // is of no use any more.
        group.rebuild = None;
        let wait = group.guard.replacement_wait(Instant::now());
        if !wait.is_zero() {
            warn!(
                direction = dir.name(),
                group = g,
                wait_ms = wait.as_millis() as u64,
                "ESP guest replaced again soon: backing off"
            );
        }
        group.suspended_until = Some(Instant::now() + wait);
        self.ready(g, dir);
    }

    /// Is group `g`'s guest there to call? Makes the replacement a suspended
    /// group waits for once its time has come.
    fn ready(&mut self, g: usize, dir: Direction) -> bool {
        let group = &mut self.groups.list[g];
        match group.suspended_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) if !group.needs_instance() => {
                group.inst = None;
                group.suspended_until = None;
                true
            }
            Some(_) => match group.instantiate(&self.runtime) {
                Ok(inst) => {
                    group.take_over(inst, 0);
                    group.suspended_until = None;
                    true
                }
                Err(e) => {
                    tracing::error!(direction = dir.name(), group = g, error = %e, "cannot replace the ESP guest; stopping");
                    sys::request_stop();
                    false
                }
            },
        }
    }

    /// Show the peer table's size (only the outbound loop's changes).
    fn count_peers(&self) {
        self.stats.peers.store(self.peers.in_use() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Apply SA changes from the control thread: all of them when the
    /// inbox's wake descriptor was readable (`woken`), else those queued
    /// quietly (no system call). Called on every wake-up, before packets.
    fn apply_commands(&mut self, woken: bool) {
        let Some(inbox) = &self.inbox else { return };
        let commands = if woken { inbox.drain() } else { inbox.take_queued() };
        for m in commands {
            let installing = match &m {
                SaCommand::AddOutbound { sa, .. } => Some(sa.sa.spi),
                SaCommand::AddInbound { sa, .. } => Some(sa.sa.spi),
                _ => None,
            };
            let r = match m {
                SaCommand::AddOutbound { sa: mut k, peer, group, traffic } => {
                    k.sa.peer = self.peers.intern(peer);
                    // Debug, not info: the control thread has logged the
                    // CHILD SA with its SPIs; a PoP sets up thousands a second.
                    debug!(spi = format_args!("{:08x}", k.sa.spi), peer = %peer.address, group, "data path: sending on outbound SA");
                    let (index, spi, tos) = (k.sa.peer, k.sa.spi, k.tos);
                    let r = self.install(group, Some(k), None);
                    // Only an SA installed gets the SPI's counters (and
                    // outer header): a refused one (its SPI another SA's)
                    // must not take them over.
                    if matches!(r, Ok(Installed::Yes)) {
                        self.traffic.insert(spi, traffic);
                        self.copy.installed(spi, tos);
                    } else {
                        self.peers.release(index);
                    }
                    self.count_peers();
                    r.map(|_| ())
                }
                SaCommand::ExpectInbound { spi } => {
                    self.hold.expect(spi, Instant::now());
                    Ok(())
                }
                SaCommand::AddInbound { sa, peer, group, traffic } => {
                    let (spi, tos) = (sa.sa.spi, sa.tos);
                    self.hold.settled(spi);
                    debug!(spi = format_args!("{spi:08x}"), group, "data path: accepting on inbound SA");
                    let r = self.install(group, None, Some(sa));
                    // As outbound: the counters and the NAT-T float of an
                    // SA that was installed, not of one refused.
                    if matches!(r, Ok(Installed::Yes)) {
                        self.traffic.insert(spi, traffic);
                        self.copy.installed(spi, tos);
                        if let Some(p) = peer {
                            self.floats.insert(spi, p);
                        }
                    }
                    r.map(|_| ())
                }
                SaCommand::MovePeer { spi, to } => {
                    let group = self.groups.by_spi.get(&spi).and_then(|&g| self.groups.list.get(g));
                    let sa = group.and_then(|g| g.sas.outbound.get(spi));
                    if let Some(was) = sa.map(|k| k.sa.peer as usize).and_then(|i| self.peers.moved(i, to)) {
                        info!(from = %was.address, to = %to.ip(), port = to.port(), "peer moved (NAT mapping changed): following it");
                    }
                    Ok(())
                }
                SaCommand::RemoveOutbound { spi, key } => {
                    let (gone, r) = self.remove(
                        spi,
                        key,
                        Direction::Outbound,
                        |sas| &mut sas.outbound,
                        |k| k.sa.key,
                        EspInstance::remove_outbound,
                    );
                    if !gone.is_empty() {
                        self.traffic.remove(&spi);
                        self.copy.removed(spi);
                        debug!(spi = format_args!("{spi:08x}"), "data path: outbound SA removed");
                    }
                    for k in gone {
                        self.peers.release(k.sa.peer);
                    }
                    self.count_peers();
                    r
                }
                SaCommand::AddDomain { domain, tun } => self.add_domain(domain, tun.0),
                SaCommand::RemoveDomain { domain } => {
                    if let Some(t) = self.tuns.get_mut(domain) {
                        *t = None;
                    }
                    // Its groups hold no SA any more (its connections went
                    // first): any instance left goes, and its memory slot
                    // back to the pool.
                    let mut freed = 0;
                    for g in self.groups.list.iter_mut().filter(|g| g.domain == domain) {
                        freed += usize::from(g.inst.take().is_some());
                        g.rebuild = None;
                        g.suspended_until = None;
                    }
                    info!(domain, instances_freed = freed, "data path: tenant domain removed");
                    Ok(())
                }
                SaCommand::RemoveInbound { spi, key } => {
                    let (gone, r) = self.remove(
                        spi,
                        key,
                        Direction::Inbound,
                        |sas| &mut sas.inbound,
                        |k| k.sa.key,
                        EspInstance::remove_inbound,
                    );
                    if !gone.is_empty() {
                        self.traffic.remove(&spi);
                        self.copy.removed(spi);
                        self.floats.remove(&spi);
                        debug!(spi = format_args!("{spi:08x}"), "data path: inbound SA removed");
                    }
                    r
                }
            };
            match (r, installing) {
                (Ok(()), _) => {}
                (Err(e), Some(spi)) => self.not_installed(spi, e),
                (Err(e), None) => warn!(error = %e, "SA change failed"),
            }
        }
        self.reclaim_groups();
    }

    /// The groups that lost SAs in the commands just applied: each
    /// instance that now holds none, or few, of what it held is replaced
    /// to give back its memory (`Group::reclaim`): an empty one at once,
    /// one with SAs left by a rebuild in slices ([`Loop::advance_rebuilds`]).
    fn reclaim_groups(&mut self) {
        for (g, group) in self.groups.list.iter_mut().enumerate() {
            let Some(dir) = group.removed.take() else { continue };
            let going = group.rebuild.is_some();
            let reclaimed = group.reclaim(&self.runtime, dir);
            self.groups.rebuilding |= group.rebuild.is_some();
            match reclaimed {
                Ok(None) if !going && group.rebuild.is_some() => info!(
                    direction = dir.name(),
                    group = g,
                    sas = group.sas.len(),
                    peak = group.peak,
                    "data path: a new ESP instance is filled with the group's SAs between batches, to take the place of one that grew (an eighth of its peak SAs or fewer are left)"
                ),
                Ok(None) => {}
                Ok(Some(r)) => info!(
                    direction = dir.name(),
                    group = g,
                    grown_kib = r.grown >> 10,
                    "data path: the group's last SA left; its ESP instance is replaced by a fresh one to give back its memory"
                ),
                // The old instance still works: it keeps its memory.
                Err(e) => {
                    warn!(direction = dir.name(), group = g, error = %e, "cannot replace the ESP instance to give back its memory; it keeps it")
                }
            }
        }
    }

    /// May a group's new instance be being filled? The loop then does not
    /// sleep between batches.
    pub fn rebuilding(&self) -> bool {
        self.groups.rebuilding
    }

    /// One slice of the groups' rebuilds ([`rebuild::Rebuild`]), in group
    /// order, about [`rebuild::SLICE`] for all of them together (the first
    /// gets a turn whatever the time); a new instance takes over once it
    /// holds every SA as the old one does. Answers the groups whose
    /// rebuild ended so, with what it gave back.
    pub fn advance_rebuilds(&mut self) -> Vec<(usize, group::Reclaimed)> {
        let t0 = Instant::now();
        let mut ended = Vec::new();
        for (g, group) in self.groups.list.iter_mut().enumerate() {
            let Some(r) = &group.rebuild else { continue };
            let (dir, started) = (r.direction, r.started);
            let Some(left) = rebuild::SLICE.checked_sub(t0.elapsed()).filter(|l| !l.is_zero()) else { break };
            match group.advance_rebuild(&self.runtime, left) {
                Ok(None) => {}
                Ok(Some(done)) => {
                    info!(
                        direction = dir.name(),
                        group = g,
                        sas = done.held,
                        peak = done.peak,
                        grown_kib = done.grown >> 10,
                        grown_now_kib = done.grown_now >> 10,
                        took_ms = started.elapsed().as_millis() as u64,
                        turns = done.turns,
                        longest_turn_us = done.longest.as_micros() as u64,
                        made_at_once = done.redone,
                        "data path: the group holds an eighth of its peak SAs or fewer; its ESP instance is replaced by one with those SAs to give back its memory"
                    );
                    ended.push((g, done));
                }
                Err(e) => warn!(
                    direction = dir.name(),
                    group = g,
                    error = %e,
                    "cannot fill a new ESP instance with the group's SAs; the old one keeps them and its memory"
                ),
            }
        }
        self.groups.rebuilding = self.groups.list.iter().any(|g| g.rebuild.is_some());
        ended
    }

    /// An SA the data path could not install (the guest refused it or
    /// trapped, or no instance could be made): it carries no traffic, so
    /// its CHILD SA must not stay up as if it did. IKE is told, and
    /// deletes it with the peer; a manual tunnel's SA only has the log.
    fn not_installed(&mut self, spi: u32, e: anyhow::Error) {
        stats::inc(&self.stats.sa_install_failures);
        let error = format!("{e:#}");
        let spi_hex = format_args!("{spi:08x}");
        match &self.up {
            Some(up) => {
                warn!(spi = spi_hex, error = %error, "data path: SA not installed; its CHILD SA goes");
                up.send(Report::NotInstalled { spi, error });
            }
            None => warn!(spi = spi_hex, error = %error, "data path: SA not installed"),
        }
    }

    /// A tenant domain added by a reload: its TUN device, and one group per
    /// ESP component, at the places `domain * components + component`
    /// (domains are added in order on both threads).
    fn add_domain(&mut self, domain: usize, tun: Tun) -> Result<()> {
        let components = self.runtime.esp_groups();
        if self.tuns.len() != domain || self.groups.list.len() != domain * components {
            anyhow::bail!("tenant domain {domain} out of order ({} known)", self.tuns.len());
        }
        let keystore = self.groups.list[0].sas.keystore.clone();
        for k in 0..components {
            let set = SaSet::new(keystore.clone(), vec![], vec![])?;
            self.groups.list.push(group::Group::new(&self.runtime, k, domain, set)?);
        }
        info!(domain, tun = tun.name(), "data path: tenant domain added");
        self.tuns.push(Some(tun));
        Ok(())
    }

    /// Remove the SA with `spi` and key `handle` (going `dir`) from its
    /// group's records and instance; it is handed back (an outbound one's
    /// peer index is released by the caller) with the guest's answer. A
    /// guest that traps is replaced at once, without it. The key tells
    /// this SA from another with the same SPI: another group's, whose
    /// install refused this one's (the CHILD SA refused is then deleted
    /// under its own key, which must leave the other alone).
    fn remove<S>(
        &mut self,
        spi: u32,
        handle: u64,
        dir: Direction,
        list: impl Fn(&mut SaSet) -> &mut BySpi<S>,
        key: impl Fn(&S) -> u64,
        from_guest: impl FnOnce(&mut EspInstance, u32) -> Result<bool>,
    ) -> (Vec<S>, Result<()>) {
        let Some(&g) = self.groups.by_spi.get(&spi) else { return (Vec::new(), Ok(())) };
        let group = &mut self.groups.list[g];
        let gone = list(&mut group.sas).remove(spi, |sa| key(sa) == handle);
        if gone.is_empty() {
            return (gone, Ok(()));
        }
        self.groups.by_spi.remove(&spi);
        if let Some(r) = &mut group.rebuild
            && let Err(trap) = gone.iter().try_for_each(|sa| r.removed(dir, spi, key(sa)))
        {
            warn!(direction = dir.name(), group = g, error = %trap, "the ESP instance being filled trapped removing an SA; the old one keeps its memory");
            group.rebuild = None;
            // Not again at the next removal: once the count falls as far.
            group.peak = group.sas.len();
        }
        let Some(inst) = &mut group.inst else { return (gone, Ok(())) };
        for sa in &gone {
            inst.store.data_mut().keys.revoke(key(sa));
        }
        let r = from_guest(inst, spi).map(|_| ());
        if let Err(trap) = &r {
            // As for an install: a trapped instance takes no further call.
            self.trapped(g, dir, "removing an SA", trap);
            return (gone, r);
        }
        if !group.needs_instance() {
            // A tenant's last SA in this direction: its slot goes back.
            debug!(group = g, "data path: the group's last SA left; its instance is freed");
            group.inst = None;
            group.rebuild = None;
        } else {
            // Looked at once this drain of commands is done: a teardown
            // of thousands comes in drains of many removals.
            group.removed = Some(dir);
        }
        (gone, r)
    }

    fn install(&mut self, g: usize, out: Option<Kept<OutboundSa>>, inb: Option<Kept<InboundSa>>) -> Result<Installed> {
        let (handle, spi, key_use, limits) = match (&out, &inb) {
            (Some(k), _) => {
                let seal = KeyUse::Seal { spi: k.sa.spi, wire_spi: k.wire_spi, peer: k.sa.peer };
                (k.sa.key, k.sa.spi, seal, k.sa.limits)
            }
            (None, Some(k)) => (k.sa.key, k.sa.spi, k.open_use(), k.sa.limits),
            (None, None) => return Ok(Installed::Gone),
        };
        // One SA per SPI and direction in the whole data path: each group's
        // guest refuses a duplicate of its own, but another group's (a
        // tenant's, or a manual tunnel's) would take this SPI's packets, and
        // its removal the other SA's routing. Refused, and so reported up:
        // IKE deletes the CHILD SA and a new one gets other SPIs.
        if let Some(&other) = self.groups.by_spi.get(&spi) {
            anyhow::bail!("SPI {spi:#010x} is already in use in this direction (guest group {other})");
        }
        let group = self.groups.list.get_mut(g).ok_or_else(|| anyhow::anyhow!("no guest group {g}"))?;
        // The control thread checked the key before it sent the SA, and
        // destroys it only when the SA is deleted: a key gone by now means
        // the SA was deleted while its install waited here (installs wait
        // for the thread to wake; a CHILD SA may be up and gone within
        // that). Its removal follows in this queue. Not a failure.
        let Some(key) = group.sas.keystore.get(handle) else {
            debug!(spi = format_args!("{spi:08x}"), "data path: SA deleted before it was installed");
            return Ok(Installed::Gone);
        };
        // A tenant's group gets its instance with its first SA.
        if group.inst.is_none() {
            group.inst = Some(group.instantiate(&self.runtime)?);
            group.peak = group.sas.len();
        }
        let Some(inst) = group.inst.as_mut() else { anyhow::bail!("no ESP instance for guest group {g}") };
        inst.store.data_mut().keys.grant(handle, key, key_use, limits);
        let dir = if out.is_some() { Direction::Outbound } else { Direction::Inbound };
        let installed = match install_into(inst, &mut group.sas, out, inb) {
            Ok(r) => r,
            Err(trap) => {
                // A trapped instance takes no further call: without a
                // replacement now, every SA after this one would fail too
                // until traffic came. The replacement gets the group's
                // recorded SAs, which this one has not joined.
                self.trapped(g, dir, "installing an SA", &trap);
                return Err(trap.context("the ESP guest trapped installing the SA (at its memory limit?)"));
            }
        };
        if installed.is_err() {
            // Refused: the guest gets no use of its key.
            inst.store.data_mut().keys.revoke(handle);
            if !group.needs_instance() {
                // Refused as the group's first SA: the instance holds nothing.
                group.inst = None;
            }
        }
        installed?;
        group.note_installed();
        if let Some(r) = &mut group.rebuild {
            r.added(dir, spi, handle);
        }
        self.groups.by_spi.insert(spi, g);
        Ok(Installed::Yes)
    }

    /// Pass the guests' SA expiries, and the soft and hard limits the host
    /// found reached, up to the control thread, at most every
    /// [`EXPIRY_POLL`]. Each kind of volume expiry is reported once per
    /// SA, whoever found it first.
    fn report_expiries(&mut self, last: &mut Instant) {
        if last.elapsed() < EXPIRY_POLL {
            return;
        }
        *last = Instant::now();
        for g in self.groups.list.iter_mut().filter(|g| g.suspended_until.is_none()) {
            let Some(inst) = g.inst.as_mut() else { continue };
            let mut expiries = match inst.take_expiries() {
                Ok(x) => x,
                // A trap here surfaces on the next batch call, which replaces the guest.
                Err(e) => {
                    warn!(error = %e, "cannot read SA expiries");
                    continue;
                }
            };
            let st = inst.store.data_mut();
            let by_host = std::mem::take(&mut st.limits_reached);
            expiries.retain(|x| {
                let key = match x.outbound {
                    true => g.sas.outbound.get(x.spi).map(|k| k.sa.key),
                    false => g.sas.inbound.get(x.spi).map(|k| k.sa.key),
                };
                // Once per SA and kind, whoever reports it (a replaced
                // guest may report again what its predecessor did).
                key.and_then(|h| st.keys.get(h).ok()).is_none_or(|(k, _)| k.usage().report(x.hard))
            });
            for r in by_host {
                if st.keys.get(r.key).is_ok_and(|(k, _)| k.usage().report(r.hard)) {
                    let cause = if r.by_bytes { ExpiryCause::Bytes } else { ExpiryCause::Packets };
                    let kind = if r.hard { "hard" } else { "soft" };
                    warn!(spi = format_args!("{:08x}", r.spi), outbound = r.outbound, cause = ?cause, limit = kind, "SA at its limit by the host's count before the ESP guest said so");
                    expiries.push(Expiry { spi: r.spi, outbound: r.outbound, hard: r.hard, cause });
                }
            }
            for x in expiries {
                // Logged by the SPI on the wire, as the IKE log shows the
                // CHILD SA's ("SPIs in .. out .."); reported by the name,
                // which for an outbound SA is its CHILD SA's inbound SPI.
                let wire = if x.outbound { g.sas.outbound.get(x.spi).map_or(x.spi, |k| k.wire_spi) } else { x.spi };
                info!(spi = format_args!("{wire:08x}"), outbound = x.outbound, hard = x.hard, cause = ?x.cause, "SA lifetime reached");
                match &self.up {
                    Some(up) => {
                        up.send(Report::Expired { spi: x.spi, hard: x.hard });
                    }
                    None => warn!(spi = format_args!("{:08x}", x.spi), "SA lifetime reached, but no IKE to rekey it"),
                }
            }
        }
    }
}

/// What became of an SA the control thread sent to be installed.
#[derive(Debug)]
enum Installed {
    Yes,
    /// Nothing to install: deleted before its turn came (its key is
    /// destroyed), or no SA in the command at all.
    Gone,
}

/// Install `out` and `inb` in `inst` and record them in `sas`. The outer
/// error is a trap, the inner one the guest's refusal.
fn install_into(
    inst: &mut EspInstance,
    sas: &mut SaSet,
    out: Option<Kept<OutboundSa>>,
    inb: Option<Kept<InboundSa>>,
) -> Result<Result<()>> {
    if let Some(sa) = out {
        if let Err(e) = inst.install_outbound(&sa.full())? {
            return Ok(Err(anyhow::anyhow!(
                "outbound SA {:#010x} refused by the guest: {}",
                sa.sa.spi,
                guest_text(&e, GUEST_REASON_CHARS)
            )));
        }
        sas.outbound.insert(sa.sa.spi, sa);
    }
    if let Some(sa) = inb {
        if let Err(e) = inst.install_inbound(&sa.full())? {
            return Ok(Err(anyhow::anyhow!(
                "inbound SA {:#010x} refused by the guest: {}",
                sa.sa.spi,
                guest_text(&e, GUEST_REASON_CHARS)
            )));
        }
        sas.inbound.insert(sa.sa.spi, sa);
    }
    Ok(Ok(()))
}
