//! The control thread: the IKE component, its sockets (UDP 500, and 4500
//! through the inbound data path), timers, `trap` connections, and the
//! hand-off of negotiated CHILD SAs to the data-path threads
//! ([`children`]). Questions from the ops thread (metrics, probes, the
//! admin API) are answered between IKE events ([`admin`]).
pub mod admin;
pub mod bounds;
pub mod children;
pub mod connections;
pub mod destinations;
pub mod domains;
pub mod heap_trim;
mod replacement;
pub mod sockets;
pub mod tenants;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::config::Prefix;
use crate::datapath::channel::{Receiver, Report};
use crate::datapath::guard::GuestGuard;
use crate::ops::{Answer, Command, IkeTotals, IkeView, Query};
use crate::policy::{SaEvent, SaEventKind};
use crate::stats::Stats;
use crate::sys;
use crate::wasm::Runtime;
use crate::wasm::ike::{Datagram, Endpoint, Event, IkeInstance, IkeSaState, Level, SaChange, Transmit};
use children::{Children, address_text, socket_addr};
pub use replacement::Compaction;
use sockets::{IkeSockets, MAX_READ_500, endpoint};

/// A connection with `start_action = "trap"`: its remote selectors.
pub struct Trap {
    /// The connection to initiate when traffic matches.
    pub connection: String,
    /// Destinations that trigger it.
    pub remote: Vec<Prefix>,
    /// The connection's tenant (none: the daemon's own domain), whose
    /// traffic alone triggers it.
    pub tenant: Option<String>,
}

/// Inputs the IKE guest handled since its output (answers, SA changes,
/// checkpoints) was last taken. A trap loses that output with the
/// instance, and the replacement restores the checkpoints taken before
/// these inputs: so they are handed to it again, the one that trapped
/// excepted. Otherwise the requests of a read that came before a trapping
/// one would go unanswered until their peers retransmit.
#[derive(Default)]
pub struct Unapplied {
    /// From UDP 500, in order.
    pub from_500: Vec<Datagram>,
    /// From the data path, in order.
    pub reports: Vec<Report>,
    /// Admin commands that change what the guest does (initiate,
    /// terminate, rekey), carried out, with the answers they wait to send
    /// until the guest's output is applied: an "OK" means the messages went.
    pub admin: Vec<(Command, AdminReply, Answer)>,
}

/// Where an admin command's answer goes.
pub type AdminReply = tokio::sync::oneshot::Sender<Answer>;

/// The control thread's state: the IKE guest and what it drives.
pub struct ControlPlane {
    /// The IKE component instance.
    pub ike: IkeInstance,
    /// The wasm runtime, for a new IKE instance when one traps.
    pub runtime: Arc<Runtime>,
    /// The connections added to and removed from the IKE guest, in order:
    /// a new instance gets the same, around its checkpoints' restore
    /// (`history_applied`).
    pub history: connections::History,
    /// How much of `history` the guest's last taken output (and with it
    /// the checkpoints) covers. A replacement replays the steps after it
    /// once the checkpoints are restored, so that a removal whose DELETEs
    /// were lost with a trapped guest deletes the restored SAs again.
    pub history_applied: usize,
    /// The replacement of a guest holding many removed connections.
    pub compaction: Compaction,
    /// The config file and what a reload needs.
    pub reload_ctx: connections::ReloadContext,
    /// Restarts of the IKE guest, with backoff.
    pub guard: GuestGuard,
    /// `wasmsec ctl fault ike` is allowed (tests).
    pub fault_injection: bool,
    /// `wasmsec ctl fault ike output` or `call N`: where the next admin
    /// command traps the guest (`IkeInstance::next_fault` once it comes).
    pub fault_next: Option<crate::ops::FaultPoint>,
    /// Tests only: where to write the vault's audited secrets and the IKE
    /// guest's transcript at exit (`[ike] secret_audit`, `guest_transcript`).
    pub audit_files: (Option<PathBuf>, Option<PathBuf>),
    /// Our address, UDP 500 and a send handle on 4500 (the data path reads it).
    pub sockets: IkeSockets,
    /// IKE datagrams from port 4500, acquires and expiries, from the data path.
    pub up: Receiver<Report>,
    /// Reports taken from `up` and not handled yet. A trap while one is
    /// handled leaves the rest for the replacement instead of losing them:
    /// an SA's expiry is reported once.
    pub reports: VecDeque<Report>,
    /// Datagrams read from UDP 500 and not handled yet, kept as `reports`
    /// are: a trap on one leaves the rest of the read for the replacement.
    pub from_500: VecDeque<Datagram>,
    /// What the guest handled since its output was last taken.
    pub unapplied: Unapplied,
    /// When the replacement of a trapped IKE guest is due (the guard's
    /// back-off after traps in quick succession). Until then no guest is
    /// called, but the probes, metrics and admin API are answered.
    pub replace_at: Option<Instant>,
    /// Replacements in a row that failed (their new instance trapped or
    /// could not be made); reset by one that succeeds.
    pub replacements_failed: u32,
    /// The checkpoints were dropped (or the guest trapped while the daemon
    /// started its connections) and no replacement has completed since:
    /// each try starts over (forgets the old SAs, initiates the `start`
    /// connections), also one after a try that failed halfway.
    pub start_over_pending: bool,
    /// The last view the metrics showed: shown again, marked, while the
    /// guest waits for its replacement.
    pub last_view: IkeView,
    /// Recent negotiation failures, for the admin API.
    pub failures: admin::Failures,
    /// Questions from the ops thread (metrics, probes, the admin API).
    pub queries: Receiver<Query>,
    /// Questions taken from `queries` and not answered yet, kept as
    /// `reports` are: a trap on one leaves the rest for the replacement.
    pub held_queries: VecDeque<Query>,
    /// The admin command a trapped guest's replacement carries out again.
    pub admin_retry: admin::Retry,
    /// The engine's counters over the daemon's life (across guest
    /// replacements), as last observed.
    pub totals: IkeTotals,
    /// Counters shared with the data path and the stats file.
    pub stats: Arc<Stats>,
    /// Connections started by traffic.
    pub traps: Vec<Trap>,
    /// Connections the admin API terminated and has not initiated since:
    /// a replacement of the guest does not bring them up again.
    pub terminated: std::collections::HashSet<String>,
    /// The host's view of the CHILD SAs, fed to the data path.
    pub children: Children,
    /// The policy modules' reloaders, by tenant ("" for `[policy] module`);
    /// `wasmsec reload` reloads them too.
    pub policies: Vec<(String, Arc<crate::policy::watch::Reloader>)>,
    /// Addresses IKE came from lately: the guest may answer them.
    pub heard: destinations::Heard,
    /// The loaded connections' remote addresses: the guest may initiate
    /// there; and their local ones, which it may send from.
    pub configured: destinations::Configured,
    /// Listening on every address, the addresses of ours IKE arrived at:
    /// the guest may send from them.
    pub arrived_at: destinations::ArrivedAt,
    /// When to give the heap back after many SAs went away.
    pub heap_trim: heap_trim::HeapTrim,
}

/// An IKE SA's up or down event, for the policy module's accounting.
fn policy_event(kind: SaEventKind, sa: &children::IkeInfo) -> SaEvent {
    SaEvent {
        kind,
        connection: sa.connection.to_string(),
        tenant: sa.tenant.to_string(),
        peer_address: sa.remote.map(|a| a.to_string()).unwrap_or_default(),
    }
}

impl ControlPlane {
    fn now(start: Instant) -> u64 {
        start.elapsed().as_millis() as u64
    }

    /// Run until a stop signal. A trap (or deadline, or memory limit) in
    /// the IKE guest replaces it from the checkpoints of its IKE SAs: the
    /// established IKE and CHILD SAs carry on, and the data path never
    /// notices.
    pub fn run(mut self) {
        let start = Instant::now();
        if let Err(e) = self.start(Self::now(start)) {
            // Replaced like any trapped guest, and its replacement starts
            // the connections again. Stopping instead would take down the
            // manual tunnels, the probes and the admin API with it, and a
            // supervisor's restart would hit the same trap.
            warn!(error = %e, "the IKE guest trapped while starting the connections: its replacement starts them again");
            self.start_over_pending = true;
            self.recover(e);
        }
        // A round's log lines go out together, before the wait below.
        crate::logwriter::hold_lines();
        let fds = [self.sockets.ike.as_raw_fd(), self.up.as_raw_fd(), self.queries.as_raw_fd()];
        let mut poll = sys::PollSet::default();
        while !sys::stop_requested() {
            // Host work only, so also while a trapped guest is replaced.
            self.end_overdue(Self::now(start));
            if let Some(at) = self.replace_at {
                self.await_replacement(at, &mut poll, start);
                continue;
            }
            let now = Self::now(start);
            let due = match self.ike.next_timeout() {
                Ok(t) => t.into_iter().chain(self.children.next_deadline()).min(),
                Err(e) => {
                    self.recover(e);
                    continue;
                }
            };
            let wait = due.map_or(200, |t| t.saturating_sub(now).min(200)) as i32;
            // Reports, datagrams or questions a trap left behind: look, but
            // do not wait.
            let left = !self.reports.is_empty() || !self.from_500.is_empty() || !self.held_queries.is_empty();
            let wait = if left { 0 } else { wait };
            crate::logwriter::write_held();
            let ready = poll.wait(&fds, wait).unwrap_or_default();
            let now = Self::now(start);
            if let Err(e) = self.step(now, ready, due) {
                // What the failed call was doing is lost; the peer
                // retransmits, timers fire again.
                self.recover(e);
            }
            self.reclaim_if_due(now);
            self.compact_if_due(now);
        }
        self.shutdown(Self::now(start));
        self.write_audit_files();
        crate::logwriter::write_held();
    }

    /// Stopping (SIGTERM, SIGINT): every IKE SA is deleted with a DELETE
    /// to its peer (RFC 7296 section 1.4.1), so the peer removes its SAs
    /// now instead of sending into the void until its DPD notices.
    fn shutdown(&mut self, now: u64) {
        // Stopped while a trapped guest waited for its replacement: the
        // replacement now, so the DELETEs still go out.
        if self.replace_at.take().is_some()
            && let Err(e) = self.replace(now)
        {
            return warn!(error = %e, "stopping: the IKE guest could not be replaced; no DELETE sent");
        }
        let names: Vec<String> = self.live_connections().iter().map(|c| c.name.clone()).collect();
        let mut deleted = 0;
        for name in &names {
            match self.ike.terminate(now, name) {
                Ok(Ok(n)) => deleted += n,
                Ok(Err(e)) => warn!(connection = %name, error = %e, "stopping: cannot terminate"),
                Err(e) => return warn!(error = %e, "stopping: the IKE guest trapped; no DELETE sent"),
            }
        }
        if let Err(e) = self.apply(now) {
            warn!(error = %e, "stopping: the IKE guest trapped while sending DELETEs");
        }
        info!(ike_sas = deleted, "stopping: DELETE sent for every IKE SA");
    }

    /// `[ike] secret_audit` and `guest_transcript`, at exit.
    fn write_audit_files(&self) {
        let st = self.ike.store.data();
        let (audit, transcript) = &self.audit_files;
        let written = [(audit, Some(st.vault().audited_secrets().to_vec())), (transcript, st.transcript.clone())];
        for (path, lines) in written {
            if let (Some(path), Some(lines)) = (path, lines)
                && let Err(e) = crate::keylog::write_hex_lines(path, &lines)
            {
                warn!(file = %path.display(), error = %e, "cannot write a test audit file");
            }
        }
    }

    /// Initiate the `start` connections.
    fn start(&mut self, now: u64) -> anyhow::Result<()> {
        self.initiate_autostart(now)?;
        self.apply(now)
    }

    /// Initiate the `start` connections that have no IKE SA, but those
    /// the admin API terminated.
    fn initiate_autostart(&mut self, now: u64) -> anyhow::Result<()> {
        for n in self.ike.autostart()? {
            if self.terminated.contains(&n) || self.ike.active(&n)? {
                continue;
            }
            self.initiate(now, &n)?;
        }
        Ok(())
    }

    /// One round: what the sockets and the data path brought, the admin
    /// socket, the timers, then whatever the engine queued.
    /// Remove the CHILD SAs the guest kept past their hard lifetime. Before
    /// any call into the guest in a round: one that traps at every call
    /// must not keep its SAs alive.
    fn end_overdue(&mut self, now: u64) {
        for (connection, spi) in self.children.end_overdue(now) {
            crate::stats::inc(&self.stats.guest_protocol_errors);
            warn!(connection = %connection, inbound_spi = format_args!("{spi:08x}"), "IKE guest kept a CHILD SA past its hard lifetime: the host removed it");
        }
    }

    fn step(&mut self, now: u64, ready: &[bool], due: Option<u64>) -> anyhow::Result<()> {
        if ready.first() == Some(&true) || !self.from_500.is_empty() {
            self.receive_500(now)?;
        }
        if ready.get(1) == Some(&true) {
            self.reports.extend(self.up.drain());
        }
        // One at a time off the front: what a trap interrupts stays.
        while let Some(r) = self.reports.pop_front() {
            let handled = match r {
                // The datagram's bytes move into the call and back into
                // the report kept for a replacement: no copy.
                Report::Ike { from, to, data } => {
                    self.heard.heard(*from.ip(), now);
                    let local = self.sockets.nat_t_endpoint(to);
                    self.arrived(&local);
                    let d = Datagram { local, remote: endpoint(*from.ip(), from.port()), data };
                    self.ike.handle_datagram(now, &d)?;
                    Report::Ike { from, to, data: d.data }
                }
                Report::Acquire { domain, dst } => {
                    self.acquire(now, domain, dst)?;
                    r
                }
                Report::Expired { spi, hard } => {
                    if hard {
                        self.children.hard_expired(now, spi);
                    }
                    self.ike.child_expired(now, spi, hard)?;
                    r
                }
                Report::NotInstalled { ref error, spi } => {
                    self.ike.child_failed(now, spi, error)?;
                    r
                }
            };
            self.unapplied.reports.push(handled);
        }
        if ready.get(2) == Some(&true) {
            self.held_queries.extend(self.queries.drain());
        }
        // One at a time off the front, as the reports.
        while let Some(q) = self.held_queries.pop_front() {
            match q {
                Query::Metrics(reply) => {
                    let _ = reply.send(self.ike_view()?);
                }
                // Nobody waits for it any more (the API answered 504, say
                // while it waited for a trapped guest's replacement): not
                // carried out unasked.
                Query::Admin(cmd, reply) if reply.is_closed() => {
                    warn!(command = ?cmd, "an admin command whose requester has left is not carried out");
                }
                Query::Admin(cmd, reply) => {
                    let answer = match self.admin(now, cmd.clone()) {
                        Ok(a) => {
                            self.admin_retry.done(&cmd);
                            a
                        }
                        // The guest trapped partway through the command:
                        // its replacement, restored to the state before
                        // it, carries it out again while the requester
                        // waits (as a command whose output a trap lost);
                        // once only.
                        Err(trap) => {
                            if self.admin_retry.again(&cmd) {
                                self.held_queries.push_front(Query::Admin(cmd, reply));
                            } else {
                                warn!(command = ?cmd, "the IKE guest trapped in this admin command twice: given up");
                                let _ = reply.send(Err(admin::Retry::gave_up()));
                            }
                            return Err(trap);
                        }
                    };
                    if answer.is_ok() && cmd.changes_sas() {
                        self.unapplied.admin.push((cmd, reply, answer));
                    } else {
                        let _ = reply.send(answer);
                    }
                }
            }
        }
        if due.is_some_and(|t| t <= now) {
            self.ike.tick(now)?;
            self.children.end_lingering(now);
        }
        self.apply(now)
    }

    /// Was a connection of this name ever loaded? The guest is untrusted:
    /// only such names become metric labels.
    fn loaded(&self, name: &str) -> bool {
        self.history.ever_added(name)
    }

    /// What `/metrics` shows of the IKE side.
    fn ike_view(&mut self) -> anyhow::Result<IkeView> {
        let counters = self.totals.observe(&self.ike.stats()?);
        let mut v = IkeView { counters, by_connection: self.totals.by_connection(), ..IkeView::default() };
        for c in self.ike.ike_sa_states()? {
            let state = match c.state {
                IkeSaState::Connecting => "connecting",
                IkeSaState::HalfOpen => "half_open",
                IkeSaState::Established => "established",
                IkeSaState::Deleting => "deleting",
            };
            if self.loaded(&c.connection) {
                v.ike_sas.insert((c.connection, state), c.count.into());
            } else {
                crate::stats::inc(&self.stats.guest_protocol_errors);
            }
        }
        for c in self.children.installed() {
            *children::tally(&mut v.child_sas, &c.connection) += 1;
        }
        v.traffic = self.children.traffic_by_connection();
        v.policy = self.ike.store.data().policy.snapshot();
        v.tenants = self.ike.store.data().policy.tenant_of.iter().map(|(c, t)| (c.clone(), t.clone())).collect();
        let st = self.ike.store.data();
        (v.vault_secrets, v.guest_memory_peak) = (st.secrets() as u64, st.memory_peak() as u64);
        v.guest_instances = self.runtime.instances().map(|(e, n)| (e, n as u64)).to_vec();
        self.last_view = v.clone();
        Ok(v)
    }

    fn receive_500(&mut self, now: u64) -> anyhow::Result<()> {
        // What a trap left of the last read goes first (the datagram that
        // trapped is not among it: it is not handed to a guest again).
        if self.from_500.is_empty() {
            match self.sockets.receive(MAX_READ_500) {
                Ok(r) => {
                    crate::stats::add(&self.stats.ike_oversize, r.oversize);
                    crate::stats::add(&self.stats.ike_not_unicast, r.not_unicast);
                    self.from_500.extend(r.datagrams);
                }
                Err(e) => debug!(error = %e, "IKE port receive failed"),
            }
        }
        while let Some(d) = self.from_500.pop_front() {
            if let Some(SocketAddr::V4(from)) = socket_addr(&d.remote) {
                self.heard.heard(*from.ip(), now);
            }
            self.arrived(&d.local);
            self.ike.handle_datagram(now, &d)?;
            self.unapplied.from_500.push(d);
        }
        Ok(())
    }

    /// Initiate a connection; a refusal is logged, a trap is returned.
    fn initiate(&mut self, now: u64, name: &str) -> anyhow::Result<()> {
        if let Err(e) = self.ike.initiate(now, name)? {
            warn!(connection = name, error = %e, "cannot initiate");
        }
        Ok(())
    }

    /// Traffic without an SA: start the `trap` connection that covers it.
    fn acquire(&mut self, now: u64, domain: usize, dst: IpAddr) -> anyhow::Result<()> {
        let by_tenant = &self.reload_ctx.domains.by_tenant;
        let hit: Vec<String> = self
            .traps
            .iter()
            .filter(|t| t.tenant.as_ref().map_or(Some(0), |n| by_tenant.get(n).copied()) == Some(domain))
            .filter(|t| t.remote.iter().any(|p| p.contains(&dst)))
            .map(|t| t.connection.clone())
            .collect();
        for name in hit {
            if !self.ike.active(&name)? {
                info!(connection = %name, destination = %dst, "traffic for a trap connection: initiating");
                self.initiate(now, &name)?;
            }
        }
        Ok(())
    }

    /// Whether the IKE guest may send to `a` (`destinations.rs`).
    fn may_send_to(&mut self, a: Ipv4Addr, now: u64) -> bool {
        if self.heard.recent(a, now) || self.children.has_ike_peer(a) {
            return true;
        }
        self.configured_now();
        self.configured.has(a)
    }

    /// `configured` as of the connections loaded now.
    fn configured_now(&mut self) {
        if !self.configured.is_for(self.history.version()) {
            let version = self.history.version();
            let mut configured = std::mem::take(&mut self.configured);
            configured.set(version, &self.live_connections());
            self.configured = configured;
        }
    }

    /// IKE arrived at `local` (listening on every address, the address the
    /// peer sent to; else the one we listen on, which needs no record).
    fn arrived(&mut self, local: &Endpoint) {
        if let (true, Some(SocketAddr::V4(l))) = (self.children.any_address, socket_addr(local)) {
            self.arrived_at.arrived(*l.ip());
        }
    }

    /// Whether the guest may send from `local` (`destinations.rs`): none
    /// named, listening on one address (the socket's is used), an address
    /// IKE arrived at, or a loaded connection's local one.
    fn may_send_from(&mut self, local: &Endpoint) -> bool {
        let Some(SocketAddr::V4(l)) = socket_addr(local) else { return true };
        let l = *l.ip();
        if !self.children.any_address || l.is_unspecified() || self.arrived_at.has(l) {
            return true;
        }
        self.configured_now();
        self.configured.has_local(l)
    }

    /// Whether the guest's datagram or keepalive between `local` and
    /// `remote` is refused (and counted): its endpoints are untrusted, and
    /// answering only who spoke, the IKE SAs' peers and the configured ones
    /// keeps a broken guest from reflecting datagrams anywhere; sending
    /// only from where IKE arrived or a connection names, from showing up
    /// at any other address of the host's.
    fn refused_endpoints(&mut self, local: &Endpoint, remote: &Endpoint, now: u64) -> bool {
        let Some(SocketAddr::V4(to)) = socket_addr(remote) else { return false };
        if !self.may_send_to(*to.ip(), now) {
            crate::stats::inc(&self.stats.guest_protocol_errors);
            debug!(to = %to, "IKE guest sent to an address no peer or connection has: refused");
            return true;
        }
        if !self.may_send_from(local) {
            crate::stats::inc(&self.stats.guest_protocol_errors);
            debug!(from = %address_text(local), to = %to, "IKE guest sent from an address of ours no IKE arrived at and no connection names: refused");
            return true;
        }
        false
    }

    fn send(&mut self, d: &Datagram, now: u64) {
        if self.refused_endpoints(&d.local, &d.remote, now) {
            return;
        }
        if let Err(e) = self.sockets.send(d) {
            // Debug level: answers to spoofed floods would otherwise flood the log.
            debug!(to = ?socket_addr(&d.remote), error = %e, "IKE send failed");
            crate::stats::inc(&self.stats.tx_errors);
        }
    }

    /// Apply what the engine queued: SA changes first (an inbound SA must
    /// be in place before the answer that lets the peer use it leaves), then
    /// the transmits, then the events.
    fn apply(&mut self, now: u64) -> anyhow::Result<()> {
        let out = self.ike.poll()?;
        self.history_applied = self.history.len();
        let loads_before = std::mem::replace(&mut self.compaction.loads_applied, self.history.loads());
        // The output of what was handled is in hand now.
        let Unapplied { admin, .. } = std::mem::take(&mut self.unapplied);
        let st = self.ike.store.data_mut();
        st.keep_checkpoints(out.checkpoints);
        crate::stats::add(&self.stats.guest_protocol_errors, std::mem::take(&mut st.refusals));
        for (name, c) in &out.connection_counters {
            // The guest is untrusted: only names we loaded become labels.
            if self.loaded(name) {
                self.totals.observe_connection(name, c);
            } else {
                crate::stats::inc(&self.stats.guest_protocol_errors);
            }
        }
        let mut successor_loads: HashMap<u64, u64> = HashMap::new();
        for c in out.sa_changes {
            match c {
                SaChange::Install(c) => {
                    if !self.children.install(c, self.ike.store.data_mut(), now) {
                        crate::stats::inc(&self.stats.guest_protocol_errors);
                    }
                }
                SaChange::ExpectInbound(spi) => self.children.expect(spi),
                SaChange::ActivateOutbound(spi) => self.children.activate(spi),
                SaChange::PeerMoved((spis, remote)) => {
                    let moved = match socket_addr(&remote) {
                        Some(SocketAddr::V4(to)) => self.children.peer_moved(&spis, to, self.ike.store.data()),
                        _ => false,
                    };
                    if !moved {
                        // Counted, and not a warning each: a broken guest
                        // could ask at every poll (as with its Deletes).
                        crate::stats::inc(&self.stats.guest_protocol_errors);
                        debug!(to = %socket_addr(&remote).map(|a| a.to_string()).unwrap_or_default(), "IKE guest moved CHILD SAs elsewhere than where their IKE SA's peer sent from: refused");
                    }
                }
                SaChange::ChildrenMoved((from, to)) => {
                    // An IKE SA rekeyed: its successor is of the same load
                    // of the connection, whenever it comes up.
                    if let Some(i) = self.children.ike_sas.get(&from) {
                        successor_loads.insert(to, i.load);
                    }
                    self.children.moved(from, to)
                }
                SaChange::Delete(d) => {
                    let (inbound, outbound) = (d.inbound_spi, d.outbound_spi);
                    if !self.children.delete(d, now) {
                        // Nothing of the data path's is touched: an honest
                        // guest deletes only what it installed.
                        crate::stats::inc(&self.stats.guest_protocol_errors);
                        debug!(
                            inbound_spi = format_args!("{inbound:08x}"),
                            outbound_spi = format_args!("{outbound:08x}"),
                            "IKE guest deleted a CHILD SA the host has not installed: nothing to do"
                        );
                    }
                }
            }
        }
        for t in out.transmits {
            match t {
                Transmit::Datagram(d) => self.send(&d, now),
                Transmit::Keepalive((local, remote)) => {
                    if self.refused_endpoints(&local, &remote, now) {
                        continue;
                    }
                    if let Err(e) = self.sockets.keepalive(&local, &remote) {
                        debug!(to = ?socket_addr(&remote), error = %e, "NAT keepalive send failed");
                    }
                }
            }
        }
        // What the admin commands asked for is sent: now they are answered.
        for (_, reply, answer) in admin {
            let _ = reply.send(answer);
        }
        for e in out.events {
            match e {
                Event::IkeUp(up) => {
                    let st = self.ike.store.data_mut();
                    // A grant names the connection's tenant (or it is refused),
                    // so SAs we initiated or rekeyed carry it too.
                    let tenant = st.policy.for_connection(&up.connection).0;
                    let kind = if up.rekeyed { SaEventKind::Rekeyed } else { SaEventKind::Up };
                    // Loaded again since the last output was taken: the
                    // SA came up under the connection's earlier load (0
                    // here: no replacement takes it up under the new one).
                    // A rekey's successor: its predecessor's load.
                    let load = match successor_loads.get(&up.ike_spi) {
                        Some(&l) if up.rekeyed => l,
                        _ => self.history.load_of(&up.connection).filter(|&l| l <= loads_before).unwrap_or(0),
                    };
                    let info = self.children.ike_up(up, tenant, load);
                    self.ike.store.data().policy.event(&policy_event(kind, info));
                }
                Event::IkeDown((_, spi)) => {
                    let gone = self.children.ike_down(spi);
                    if let Some(info) = gone {
                        self.ike.store.data().policy.event(&policy_event(SaEventKind::Down, &info));
                    }
                }
                Event::Log(l) => match l.level {
                    Level::Info => info!(connection = %l.connection, "{}", l.message),
                    Level::Warn => {
                        warn!(connection = %l.connection, "{}", l.message);
                        self.failures.push(&l.connection, &l.message);
                    }
                },
            }
        }
        // Keep the totals current, so a trap loses at most one round's
        // increments.
        self.totals.observe(&self.ike.stats()?);
        Ok(())
    }
}
