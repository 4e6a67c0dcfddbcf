//! Guest groups. Each tunnel is served by the ESP component its config
//! names (`esp_component`; the project's own by default), and the tunnels
//! of one component form a group: per direction, one instance holding
//! their SAs. A packet goes to its group's instance only (outbound by the
//! selectors of the group's SAs, inbound by SPI), so a guest that lies,
//! loops, hoards memory or traps is refused, counted and replaced within
//! its group while the other groups' tunnels carry on.
use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use wasmsec_wire::ip::{Address, Selectors};
use wasmsec_wire::own_keys::OwnKeys;

use super::SaSet;
use super::guard::GuestGuard;
use super::rebuild::{Rebuild, Step};
use crate::packet::PacketBuf;
use crate::wasm::esp::EspInstance;
use crate::wasm::selectors::Selector;
use crate::wasm::{EspMemory, Runtime};

/// An emptied instance whose linear memory grew by this much is replaced
/// by a fresh one ([`Group::reclaim`]): what some 4,000 inbound SAs with a
/// replay window of 64 take, so an instantiation and the old instance's
/// unmapping (0.7 ms together here) are spent only where they give back
/// a mass of SAs' memory.
pub const RECLAIM_GROWN: usize = 1 << 20;

/// An instance that grew by [`RECLAIM_GROWN`] or more and holds at most
/// one in this many of the SAs it held at its peak is replaced by one with
/// only those SAs ([`Group::reclaim`]): a PoP's tenant or site that took
/// thousands of SAs away would otherwise leave their memory taken while a
/// few SAs remain. An eighth: a replacement installs its SAs again (about
/// 2-5 us each; 1.8 us for an inbound SA on the Intel machine of
/// 2026-12-06; in slices between the thread's batches, see
/// [`Rebuild`]), so it comes only where it gives back most of the memory,
/// and a teardown of thousands compacts once on the way down, not at
/// every step.
pub const COMPACT_FRACTION: usize = 8;

/// What [`Group::reclaim`] gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// SAs the new instance holds (0: the group was empty).
    pub held: usize,
    /// The most SAs the old instance held.
    pub peak: usize,
    /// How much the old instance's linear memory had grown.
    pub grown: usize,
    /// How much the new one's grew with the SAs installed again.
    pub grown_now: usize,
    /// The loop's turns a rebuild took (0: at once), and the longest
    /// time one turn spent on it: what the thread's packets waited.
    pub turns: u32,
    pub longest: std::time::Duration,
    /// The rebuild fell back to an instance made at once
    /// ([`super::rebuild::Step::Redo`]).
    pub redone: bool,
}

/// One group's guest in one direction.
pub struct Group {
    /// The runtime's index of its ESP component.
    pub component: usize,
    /// Its routing domain: the index of the TUN device its packets come
    /// from and go to (0: the daemon's, 1 + i: tenant i's).
    pub domain: usize,
    /// The instance serving its tunnels. A tenant's group has one only
    /// while it holds SAs: made at its first SA's install, dropped with its
    /// last one's removal (and its domain's), so an idle or removed
    /// tenant's memory slots go back to the pool (#13: instantiation on
    /// demand). The daemon's own domain keeps its instances: its guests
    /// answer traffic without an SA (no policy, which may start a `trap`
    /// connection).
    pub inst: Option<EspInstance>,
    /// The SAs it holds, to install again in a replacement.
    pub sas: SaSet,
    /// Its protocol errors and replacements.
    pub guard: GuestGuard,
    /// A replacement waits for its backoff until then; meanwhile the
    /// group's packets are dropped (counted), and no other group waits.
    pub suspended_until: Option<Instant>,
    /// The most SAs its instance has held (`sas`, both directions).
    pub peak: usize,
    /// An SA left it since [`Group::reclaim`] was last considered, going
    /// this way.
    pub removed: Option<super::Direction>,
    /// A new instance being filled with its SAs to take the place of one
    /// that gives back its memory ([`Group::reclaim`]).
    pub rebuild: Option<Rebuild>,
}

impl Group {
    /// The group of component `component` with these SAs, instantiated
    /// if it [`Group::needs_instance`].
    pub fn new(rt: &Runtime, component: usize, domain: usize, sas: SaSet) -> Result<Group> {
        let peak = sas.len();
        let mut g = Group {
            component,
            domain,
            inst: None,
            sas,
            guard: GuestGuard::default(),
            suspended_until: None,
            peak,
            removed: None,
            rebuild: None,
        };
        if g.needs_instance() {
            g.inst = Some(g.instantiate(rt)?);
        }
        Ok(g)
    }

    /// A new instance of its component with its SAs, in the memory its
    /// domain's instances take.
    pub fn instantiate(&self, rt: &Runtime) -> Result<EspInstance> {
        self.sas.instantiate(rt, self.component, EspMemory::of_domain(self.domain))
    }

    /// Does it need an instance now: in the daemon's own domain always,
    /// in a tenant's while it holds SAs.
    pub fn needs_instance(&self) -> bool {
        self.domain == 0 || !self.sas.is_empty()
    }

    /// Replace an instance whose linear memory grew by [`RECLAIM_GROWN`]
    /// or more by a new one, so the memory that a mass of tunnels took
    /// goes back once they are gone (a wasm memory only grows; the
    /// daemon's own domain keeps an instance while it is empty): once the
    /// group holds no SA, or at most one [`COMPACT_FRACTION`]th of its
    /// peak. An emptied instance is replaced at once (Some). One with SAs
    /// left starts a [`Rebuild`]: the new instance is filled in slices
    /// ([`Group::advance_rebuild`]) with the SAs as a trapped one's
    /// replacement gets them (`SaSet::instantiate`): keys granted again,
    /// the next outbound sequence number and the inbound replay windows
    /// from what the keystore authenticated: the right edge and which of
    /// the 63 numbers below it arrived, every number further left taken as
    /// received (RFC 4303 section 3.4.3). None is ever accepted twice; a
    /// packet delayed behind later ones at that moment, within 63 of the
    /// edge, is still accepted once. Not counted as a fault.
    pub fn reclaim(&mut self, rt: &Runtime, dir: super::Direction) -> Result<Option<Reclaimed>> {
        let grown = match &self.inst {
            Some(inst) if self.suspended_until.is_none() && self.rebuild.is_none() => inst.memory_grown(),
            _ => return Ok(None),
        };
        let held = self.sas.len();
        if grown < RECLAIM_GROWN || held.saturating_mul(COMPACT_FRACTION) > self.peak {
            return Ok(None);
        }
        let fresh = rt.esp_instance_of(self.component, EspMemory::of_domain(self.domain)).inspect_err(|_| {
            // Not again at every removal: once the count falls as far below.
            self.peak = held;
        })?;
        if held > 0 {
            self.rebuild = Some(Rebuild::start(fresh, dir, &self.sas));
            return Ok(None);
        }
        Ok(Some(self.take_over(fresh, grown)))
    }

    /// One turn of the group's [`Rebuild`], if one is going: Some once the
    /// new instance took over. An error (the new guest trapped or refused
    /// an SA, or no instance could be made) leaves the old instance in
    /// place with its memory, until the count falls as far again.
    pub fn advance_rebuild(&mut self, rt: &Runtime, slice: std::time::Duration) -> Result<Option<Reclaimed>> {
        let Some(r) = &mut self.rebuild else { return Ok(None) };
        let grown = self.inst.as_ref().map_or(0, EspInstance::memory_grown);
        let step = r.turn(&self.sas, slice);
        let (turns, mut longest, mut redone) = (r.turns, r.longest, false);
        let fresh = match step {
            Ok(Step::Going) => return Ok(None),
            Ok(Step::Done) => self.rebuild.take().map(|r| r.inst),
            Ok(Step::Redo) => {
                self.rebuild = None;
                let t0 = std::time::Instant::now();
                let inst = self.instantiate(rt).inspect_err(|_| self.peak = self.sas.len())?;
                longest = longest.max(t0.elapsed());
                redone = true;
                Some(inst)
            }
            Err(e) => {
                self.rebuild = None;
                self.peak = self.sas.len();
                return Err(e);
            }
        };
        Ok(fresh.map(|f| Reclaimed { turns, longest, redone, ..self.take_over(f, grown) }))
    }

    /// `fresh`, holding the group's SAs, takes the place of the instance,
    /// which had grown `grown`: a trapped instance's replacement, or one
    /// that gives back memory.
    pub(super) fn take_over(&mut self, mut fresh: EspInstance, grown: usize) -> Reclaimed {
        let held = self.sas.len();
        let grown_now = fresh.memory_grown();
        // The limits the host's count found reached and the old instance's
        // store held, not reported yet: the new one's report carries them
        // (its guest is installed past them and will not report them).
        if let Some(old) = &mut self.inst {
            fresh.store.data_mut().limits_reached = std::mem::take(&mut old.store.data_mut().limits_reached);
        }
        self.inst = Some(fresh);
        let peak = std::mem::replace(&mut self.peak, held);
        Reclaimed { held, peak, grown, grown_now, turns: 0, longest: std::time::Duration::ZERO, redone: false }
    }

    /// Note the SA count after an install (for [`Group::reclaim`]).
    pub fn note_installed(&mut self) {
        self.peak = self.peak.max(self.sas.len());
    }

    /// Give the instance room for `n` packets.
    pub fn ensure_buffers(&mut self, n: usize) {
        if let Some(inst) = &mut self.inst {
            let b = &mut inst.store.data_mut().batch;
            if b.len() < n {
                b.resize_with(n, PacketBuf::new);
            }
        }
    }

    /// Does an outbound SA of this group take a packet with these fields?
    fn sends(&self, s: &Selectors) -> bool {
        self.sas.outbound.values().any(|sa| {
            any_covers(&sa.selectors.local, &s.src, s.protocol, s.src_port())
                && any_covers(&sa.selectors.remote, &s.dst, s.protocol, s.dst_port())
        })
    }
}

/// The groups of one direction, and which group each SPI belongs to.
#[derive(Default)]
pub struct Groups {
    /// Group 0 serves whatever no other group claims.
    pub list: Vec<Group>,
    /// SPI -> group, for SAs installed in this direction.
    pub by_spi: HashMap<u32, usize, OwnKeys>,
    /// A group's [`Rebuild`] may be going (set when one starts, cleared
    /// by the turn that finds none left): the loop looks at this flag per
    /// batch rather than at thousands of tenants' groups.
    pub rebuilding: bool,
}

impl Groups {
    /// The group an outbound packet from domain `domain`'s TUN device
    /// belongs to: among that domain's groups only (a tenant's packet never
    /// meets another tenant's SAs, whatever its addresses), the first whose
    /// SAs' selectors take it, else the domain's first group (whose guest
    /// then drops it: no policy).
    pub fn route_out(&self, domain: usize, packet: &[u8]) -> usize {
        // Domain d's groups are d * components .. (d + 1) * components.
        let components = self.list.iter().take_while(|g| g.domain == 0).count().max(1);
        let first = (domain * components).min(self.list.len().saturating_sub(1));
        let mine = first..(first + components).min(self.list.len());
        if mine.len() < 2 {
            return first;
        }
        let Ok(s) = Selectors::parse(packet) else { return first };
        mine.into_iter().find(|&i| self.list[i].sends(&s)).unwrap_or(first)
    }
}

/// Splits a batch by group without allocating: both lists keep their
/// capacity from one batch to the next.
#[derive(Default)]
pub struct Split {
    groups: Vec<usize>,
    idx: Vec<usize>,
}

impl Split {
    /// Call `f(g, idx)` once for each group `slots` names, in group order,
    /// with the indices of that group's packets: the batch is handed to
    /// those groups only, not to every tenant's group.
    pub fn each(&mut self, slots: &[usize], mut f: impl FnMut(usize, &[usize])) {
        self.groups.clear();
        self.groups.extend_from_slice(slots);
        self.groups.sort_unstable();
        self.groups.dedup();
        for &g in &self.groups {
            self.idx.clear();
            self.idx.extend((0..slots.len()).filter(|&i| slots[i] == g));
            f(g, &self.idx);
        }
    }
}

fn any_covers(ts: &[Selector], addr: &Address, protocol: u8, port: Option<u16>) -> bool {
    let a: &[u8] = match addr {
        Address::V4(a) => a,
        Address::V6(a) => a,
    };
    ts.iter().any(|t| t.covers(a, protocol, port))
}
