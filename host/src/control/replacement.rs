//! Replacing the IKE guest: after a trap (from its checkpoints, under a
//! back-off), to give back the memory of one that holds no SA any more
//! (`reclaim_ike`), and to drop the removed connections a PoP's reloads
//! leave in it (`compact_if_due`). Each new instance gets the loaded
//! connections from the history and the IKE SAs from their checkpoints.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use std::os::fd::AsRawFd;

use super::{ControlPlane, Unapplied, children, connections, policy_event};
use crate::ops::{IkeView, Query, Refusal};
use crate::policy::SaEventKind;
use crate::sys;

/// After this many replacements in a row failed, the next starts without
/// the checkpoints: they come from the guest and may be what traps it.
const FAILED_REPLACEMENTS_BEFORE_FRESH_START: u32 = 3;

/// An IKE guest that holds no SA and grew by this much is replaced by a
/// fresh one (`reclaim_ike`): what some 1,500 IKE SAs take.
const IKE_RECLAIM_GROWN: usize = 4 << 20;

/// An IKE guest that holds this many removed connections, and at least
/// half as many as it has loaded, is replaced from its checkpoints by one
/// with the loaded connections only (`compact_if_due`): a guest keeps each
/// removed connection (its SAs name it by index), ~2.4 KiB each, and its
/// memory is capped, so a PoP's reloads that change thousands of
/// connections would otherwise run it out of memory within a few reloads.
/// Half: removed connections then take at most half again what the loaded
/// ones take, and a PoP's few changes at a time still add up to a
/// replacement only every so many reloads (each loses the setups in
/// flight).
const COMPACT_REMOVED: usize = 1024;

/// How long a due replacement for removed connections waits for a quiet
/// moment (`compact_if_due`) before it goes ahead all the same.
const COMPACT_WAIT_MAX_MS: u64 = 600_000;

/// Where the replacement for removed connections stands.
#[derive(Debug, Default)]
pub struct Compaction {
    /// The history's load count at the last `apply`: an IKE SA reported
    /// up in an output taken after a later load of its connection came up
    /// under an earlier one (the round handled its exchange before the
    /// reload that loaded the connection again).
    pub loads_applied: u64,
    /// Since when a due replacement waits for a quiet moment.
    pub waiting_since: Option<u64>,
    /// When the quiet moment was last looked for (once a second).
    pub checked_at: u64,
}

/// How long the inbound half of a CHILD SA forgotten by a replacement that
/// started over still accepts ESP: the peer sends on it until the new
/// IKE SA's INITIAL_CONTACT (RFC 7296 section 2.4) makes it delete it.
const FORGOTTEN_INBOUND_LINGER_MS: u32 = 10_000;

impl ControlPlane {
    /// Many SAs went away and the count is still: the freed heap goes
    /// back to the kernel (`heap_trim`), and an IKE guest that holds no
    /// SA any more gives back its memory. Counted as the host holds them:
    /// CHILD SAs installed and the vault's secrets (one per IKE SA).
    pub(super) fn reclaim_if_due(&mut self, now: u64) {
        let held = self.children.installed_count() + self.ike.store.data().secrets();
        if !self.heap_trim.due(now, held) {
            return;
        }
        if let Err(e) = self.reclaim_ike(now) {
            self.recover(e);
        }
        let (before, t0) = (sys::resident_bytes(), Instant::now());
        let released = sys::trim_heap();
        let after = sys::resident_bytes();
        info!(
            sas_held = held,
            released,
            rss_before_mib = before >> 20,
            rss_after_mib = after >> 20,
            took_ms = t0.elapsed().as_millis() as u64,
            "many SAs went away: freed heap given back to the system"
        );
    }

    /// An IKE guest whose memory grew by [`IKE_RECLAIM_GROWN`] and that
    /// holds no SA now is replaced by a fresh instance with the
    /// connections, as a trapped one is but with nothing to restore: a
    /// wasm memory only grows, so what thousands of IKE SAs took would
    /// stay taken. Only with no SA and no exchange in flight (the host's
    /// records say so), and no work left over from the round, so nothing
    /// is lost; the guest's counters are read first and carried over.
    fn reclaim_ike(&mut self, now: u64) -> anyhow::Result<()> {
        let st = self.ike.store.data();
        let grown = st.memory_grown();
        let idle = self.reports.is_empty() && self.from_500.is_empty() && self.held_queries.is_empty();
        if grown < IKE_RECLAIM_GROWN || !st.holds_no_sa() || !idle || self.replace_at.is_some() {
            return Ok(());
        }
        self.totals.observe(&self.ike.stats()?);
        self.totals.guest_replaced();
        let applied = self.compact_history();
        self.fresh_instance(applied)?;
        self.apply(now)?;
        info!(grown_kib = grown >> 10, "the IKE guest holds no SA: replaced by a fresh one to give back its memory");
        Ok(())
    }

    /// The IKE guest holds [`COMPACT_REMOVED`] or more removed connections,
    /// and at least half as many as it has loaded: it is replaced from its
    /// checkpoints by a guest with the loaded connections only (the
    /// history compacted), at a moment with nothing left over from the
    /// round, as a trapped one is. Established IKE SAs carry on; setups
    /// still in their first exchanges (no checkpoint yet) are lost, and
    /// their peers retry.
    ///
    /// It waits (looking once a second) until no IKE SA of a removed or
    /// changed connection is left, so that their DELETEs are retransmitted
    /// until answered, and until every IKE SA has a checkpoint, so that no
    /// setup in flight is lost (and none leaves its secrets in the vault);
    /// after [`COMPACT_WAIT_MAX_MS`] it goes ahead all the same.
    pub(super) fn compact_if_due(&mut self, now: u64) {
        let removed = self.history.removals();
        let idle = self.reports.is_empty() && self.from_500.is_empty() && self.held_queries.is_empty();
        if removed < COMPACT_REMOVED.max(self.reload_ctx.sections.len() / 2) {
            // Not due (any more: a trap's replacement compacts too).
            self.compaction.waiting_since = None;
            return;
        }
        if !idle || self.replace_at.is_some() || self.history_applied != self.history.len() || sys::stop_requested() {
            return;
        }
        let since = *self.compaction.waiting_since.get_or_insert(now);
        let waited = now.saturating_sub(since);
        if waited < COMPACT_WAIT_MAX_MS {
            if now.saturating_sub(self.compaction.checked_at) < 1000 {
                return;
            }
            self.compaction.checked_at = now;
            if !self.quiet_for_compaction() {
                return;
            }
        } else {
            warn!(
                waited_s = waited / 1000,
                "the IKE guest's replacement for removed connections found no quiet moment: going ahead; SAs of removed connections and setups in flight are forgotten"
            );
        }
        self.compaction.waiting_since = None;
        let before = self.ike.store.data().memory_grown();
        let replaced = (|| -> anyhow::Result<()> {
            self.totals.observe(&self.ike.stats()?);
            self.totals.guest_replaced();
            self.replace(now)
        })();
        match replaced {
            Ok(()) => {
                crate::sys::trim_heap();
                info!(
                    removed_connections = removed,
                    grown_before_kib = before >> 10,
                    grown_after_kib = self.ike.store.data().memory_grown() >> 10,
                    "the IKE guest held many removed connections: replaced from its checkpoints by one with the loaded connections only"
                )
            }
            Err(e) => self.recover(e),
        }
    }

    /// No IKE SA of a connection removed or changed since it came up, and
    /// every IKE SA restorable from a checkpoint.
    fn quiet_for_compaction(&self) -> bool {
        // Since a replacement destroys what its predecessor lost
        // (`destroy_lost_secrets`), any secret beyond the restorable IKE
        // SAs' is a setup or an exchange in flight. Until 2026-12-06 the
        // lost ones stayed, and this was judged against the count the last
        // replacement left.
        if self.ike.store.data().unrestorable_secrets() > 0 {
            return false;
        }
        let loaded = self.history.loaded_after(self.history_applied);
        self.children.ike_sas.values().all(|i| loaded.get(&*i.connection) == Some(&i.load))
    }

    /// The IKE guest trapped: it is replaced when the guard's back-off
    /// ends (`replace_at`: at once, unless traps came in quick succession).
    pub(super) fn recover(&mut self, trap: anyhow::Error) {
        let Unapplied { from_500, reports, admin } = std::mem::take(&mut self.unapplied);
        for d in from_500.into_iter().rev() {
            self.from_500.push_front(d);
        }
        for r in reports.into_iter().rev() {
            self.reports.push_front(r);
        }
        // Carried out, but their messages went with the instance: the
        // replacement carries them out again, from the state before them.
        for (cmd, reply, _) in admin.into_iter().rev() {
            self.held_queries.push_front(Query::Admin(cmd, reply));
        }
        let wait = self.back_off();
        warn!(error = %trap, wait_ms = wait.as_millis() as u64, "IKE guest trapped: replacing it from its checkpoints");
    }

    /// The replacement of a trapped guest failed (the new instance trapped
    /// or could not be made): one more trap, tried again under the same
    /// back-off. The daemon does not stop for it: the data path keeps its
    /// SAs, and a guest's fault is not a reason to drop every tunnel.
    fn replacement_failed(&mut self, e: anyhow::Error) {
        self.replacements_failed += 1;
        let wait = self.back_off();
        warn!(
            error = %e,
            failed = self.replacements_failed,
            wait_ms = wait.as_millis() as u64,
            "the IKE guest's replacement failed: trying again"
        );
    }

    /// Count a replacement and schedule it after the guard's back-off.
    fn back_off(&mut self) -> Duration {
        crate::stats::inc(&self.stats.guest_restarts);
        self.totals.guest_replaced();
        let wait = self.guard.replacement_wait(Instant::now());
        self.replace_at = Some(Instant::now() + wait);
        wait
    }

    /// Wait for a replacement due at `at` without sleeping through it:
    /// the probes must still be answered (a liveness probe that times out
    /// restarts the pod, and with it every tunnel), and the admin API
    /// hears why it must wait. Peers' datagrams wait in the socket
    /// buffers and the data path's reports in their queue.
    pub(super) fn await_replacement(&mut self, at: Instant, poll: &mut sys::PollSet, start: Instant) {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.replace_at = None;
            match self.replace(Self::now(start)) {
                Ok(()) => self.replacements_failed = 0,
                Err(e) => self.replacement_failed(e),
            }
            return;
        }
        crate::logwriter::write_held();
        // Probes taken before the trap are answered now, as new ones below
        // (a liveness probe must not wait out the back-off); admin commands
        // taken before it wait for the replacement.
        for q in std::mem::take(&mut self.held_queries) {
            match q {
                Query::Metrics(reply) => {
                    let _ = reply.send(IkeView { ike_guest_replacing: true, ..self.last_view.clone() });
                }
                admin => self.held_queries.push_back(admin),
            }
        }
        let wait = left.as_millis().min(200) as i32 + 1;
        if poll.wait(&[self.queries.as_raw_fd()], wait).is_ok_and(|r| r.first() == Some(&true)) {
            for q in self.queries.drain() {
                match q {
                    Query::Metrics(reply) => {
                        let _ = reply.send(IkeView { ike_guest_replacing: true, ..self.last_view.clone() });
                    }
                    Query::Admin(_, reply) => {
                        let why = format!(
                            "the IKE guest trapped and is replaced in {} ms (a back-off after repeated traps): try again then",
                            left.as_millis()
                        );
                        let _ = reply.send(Err(Refusal::new(503, why)));
                    }
                }
            }
        }
    }

    /// A new IKE instance, the same connections, the IKE SAs from their
    /// last checkpoints.
    pub(super) fn replace(&mut self, now: u64) -> anyhow::Result<()> {
        // Checkpoints come from the guest: if replacements keep failing
        // after restoring them, they may be what traps it.
        if self.replacements_failed >= FAILED_REPLACEMENTS_BEFORE_FRESH_START && !self.start_over_pending {
            warn!(
                failed = self.replacements_failed,
                "the IKE guest's replacements keep failing: the next starts without its checkpoints, the IKE SAs start over"
            );
            self.drop_checkpoints();
        }
        let applied = self.compact_history();
        self.fresh_instance(applied)?;
        self.drop_stale_checkpoints();
        let checkpoints = self.ike.store.data().checkpoints();
        match self.ike.restore(&checkpoints) {
            Ok(Ok(_)) if self.start_over_pending => info!("IKE guest replaced without its checkpoints"),
            Ok(Ok(n)) => info!(ike_sas = n, "IKE guest replaced; its IKE SAs carry on"),
            Ok(Err(e)) => {
                warn!(error = %e, "IKE guest replaced, but its checkpoints do not restore: the IKE SAs start over");
                self.drop_checkpoints();
            }
            // The checkpoints came from the guest: if they trap the new
            // instance, one more starts without them instead of the daemon
            // stopping.
            Err(trap) => {
                warn!(error = %trap, "IKE guest replaced, but its checkpoints trapped it: the IKE SAs start over");
                self.drop_checkpoints();
                crate::stats::inc(&self.stats.guest_restarts);
                self.totals.guest_replaced();
                self.fresh_instance(applied)?;
            }
        }
        self.destroy_lost_secrets()?;
        self.replay_unapplied(now, applied)?;
        if !self.start_over_pending {
            self.forget_unrestored(now);
        }
        if self.start_over_pending {
            self.forget_sas(now);
        }
        // The `start` connections without an IKE SA now are up again at
        // once, not when a peer or traffic notices (unless the daemon is
        // stopping: this replacement only sends DELETEs): after a start
        // over all of them, otherwise those whose IKE SA was being set up
        // (half-open SAs have no checkpoint) or was not restored. As
        // strongSwan's start action does when charon starts again.
        if !sys::stop_requested() {
            self.initiate_autostart(now)?;
        }
        self.apply(now)?;
        self.start_over_pending = false;
        Ok(())
    }

    /// The new instance holds what it restored: every other secret of its
    /// predecessor's (a setup's DH value and keys, an IKE SA not restored,
    /// CHILD SA keys never installed) is destroyed, as the guest would have
    /// had it lived (`IkeState::destroy_unheld`).
    fn destroy_lost_secrets(&mut self) -> anyhow::Result<()> {
        // Starting over, the host forgets every SA (`forget_sas`): their
        // secrets go whatever the new guest says.
        let held = if self.start_over_pending { Vec::new() } else { self.ike.held_keys()? };
        let destroyed = self.ike.store.data_mut().destroy_unheld(held);
        if destroyed > 0 {
            info!(secrets = destroyed, "secrets of setups and SAs the replaced IKE guest lost are destroyed");
        }
        Ok(())
    }

    /// Start over without the checkpoints: this replacement, and the next
    /// tries should it fail, forget the old SAs and initiate anew.
    fn drop_checkpoints(&mut self) {
        self.ike.store.data_mut().clear_checkpoints();
        self.start_over_pending = true;
    }

    /// The replacement started over: the SAs of its predecessor go, as if
    /// the engine had deleted them, so that the data path, the admin view
    /// and the policy module's accounting agree with the new guest.
    fn forget_sas(&mut self, now: u64) {
        let (ike_sas, child_sas) = self.children.forget_all(now, FORGOTTEN_INBOUND_LINGER_MS);
        if ike_sas.is_empty() && child_sas == 0 {
            return; // forgotten by an earlier try
        }
        self.forgotten(&ike_sas);
        warn!(
            ike_sas = ike_sas.len(),
            child_sas, "the new IKE guest has none of its predecessor's SAs: they are deleted"
        );
    }

    /// The replacement restored the checkpoints, but an IKE SA whose last
    /// checkpoint the host refused (beyond its bounds) is not among them:
    /// the new guest would never rekey or delete it, so it goes, with its
    /// CHILD SAs, as in a start-over.
    fn forget_unrestored(&mut self, now: u64) {
        let st = self.ike.store.data();
        let (ike_sas, child_sas) = self.children.forget(now, FORGOTTEN_INBOUND_LINGER_MS, |spi| st.has_checkpoint(spi));
        if ike_sas.is_empty() && child_sas == 0 {
            return;
        }
        self.forgotten(&ike_sas);
        warn!(
            ike_sas = ike_sas.len(),
            child_sas, "IKE SAs without a checkpoint did not survive the replacement: they are deleted"
        );
    }

    /// Tell the policy module that forgotten IKE SAs are down.
    fn forgotten(&self, ike_sas: &[children::IkeInfo]) {
        for info in ike_sas {
            self.ike.store.data().policy.event(&policy_event(SaEventKind::Down, info));
        }
    }

    /// The history's applied steps compacted into the additions of the
    /// connections they leave loaded (`History::compact`), before a new
    /// instance gets them; returns how many steps are applied now.
    fn compact_history(&mut self) -> usize {
        self.history_applied = self.history.compact(self.history_applied);
        self.history_applied
    }

    /// The checkpoints a replacement must not restore: of IKE SAs whose
    /// connection was removed since, or changed and loaded again (their
    /// load number is not the connection's latest), and of SPIs the host
    /// never saw come up. Checkpoints name their connection by name (the
    /// replacement has only the loaded ones, under other indexes): an SA
    /// of a connection's old version would otherwise be taken up under its
    /// new one. They go as SAs without a checkpoint do
    /// (`forget_unrestored`): the host deletes their CHILD SAs.
    fn drop_stale_checkpoints(&mut self) {
        // As of the steps the checkpoints follow: the steps after are
        // replayed once they are restored (a removal among them deletes
        // the restored SAs, with DELETEs to their peers).
        let loaded = self.history.loaded_after(self.history_applied);
        let children = &self.children;
        let current =
            |spi: u64| children.ike_sas.get(&spi).is_some_and(|i| loaded.get(&*i.connection) == Some(&i.load));
        let dropped = self.ike.store.data_mut().retain_checkpoints(current);
        if dropped > 0 {
            info!(
                ike_sas = dropped,
                "IKE SAs of connections removed or changed since are not taken up by the replacement"
            );
        }
    }

    /// A new IKE instance with the connections of the first `applied`
    /// steps of the history (compacted: additions only).
    fn fresh_instance(&mut self, applied: usize) -> anyhow::Result<()> {
        self.ike.replace(&self.runtime)?;
        self.replay(0..applied, 0)
    }

    /// The steps of the history the lost output would have carried out,
    /// replayed after the checkpoints' restore as the reload made them: a
    /// removal deletes the restored SAs of its connection, with DELETEs to
    /// the peer (RFC 7296 section 1.4.1), instead of leaving them to DPD.
    fn replay_unapplied(&mut self, now: u64, applied: usize) -> anyhow::Result<()> {
        self.replay(applied..self.history.len(), now)
    }

    /// Carry out `steps` of the history again in the guest, at `now`.
    fn replay(&mut self, steps: std::ops::Range<usize>, now: u64) -> anyhow::Result<()> {
        for step in &self.history[steps] {
            match step {
                connections::Step::Add(c) => {
                    if let Err(e) = self.ike.add_connection(c)? {
                        anyhow::bail!("connection {:?} no longer loads: {e}", c.name);
                    }
                }
                connections::Step::Remove(name) => match self.ike.remove_connection(now, name)? {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(connection = %name, ike_sas = n, "the replacement deletes the SAs of a removed connection again")
                    }
                    Err(e) => anyhow::bail!("connection {name:?} cannot be removed again: {e}"),
                },
            }
        }
        Ok(())
    }
}
