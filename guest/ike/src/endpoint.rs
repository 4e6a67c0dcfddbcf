//! The engine: connections, the table of IKE SAs, the routing of datagrams
//! to them, admin commands, timers, and the output queues (the endpoint of
//! quinn-proto's endpoint/connection split).
//!
//! Every operation on one IKE SA goes through [`Engine::with_sa`], which
//! lends the SA and a [`Ctx`] holding the rest, and applies the SA's
//! [`Fate`] afterwards.
use wasmsec_wire::ike::{ExchangeType, Header, Packet};

use crate::config::{Connection, ConnectionConfig, StartAction, Timing};
use crate::connections::Connections;
use crate::crypto::IkeCrypto;
use crate::ctx::{Ctx, Fate, SaTable};
use crate::dos::Dos;
use crate::error::Error;
use crate::exchange::{self, ike_sa_init, informational};
use crate::output::{Datagram, Event, Output, SaChange, Transmit};
use crate::sa::lifecycle;
use crate::sa::state::{IkeSa, State};
use crate::stats::{ByConnection, Stats};

/// Where an IKE SA is in its life, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SaPhase {
    /// We sent IKE_SA_INIT or IKE_AUTH and wait for the answer.
    Connecting,
    /// We answered IKE_SA_INIT and wait for IKE_AUTH.
    HalfOpen,
    Established,
    /// We sent a DELETE for it.
    Deleting,
}

impl SaPhase {
    fn of(s: State) -> SaPhase {
        match s {
            State::InitSent | State::AuthSent => SaPhase::Connecting,
            State::InitDone => SaPhase::HalfOpen,
            State::Established => SaPhase::Established,
            State::Deleting => SaPhase::Deleting,
        }
    }
}

/// The IKEv2 engine: connections, IKE SAs and what to do next.
pub struct Engine {
    conns: Connections,
    sas: SaTable,
    dos: Dos,
    out: Output,
    stats: Stats,
    by_conn: ByConnection,
    timing: Timing,
    /// The time of the latest call (what `next_timeout` answers relative to).
    now: u64,
}

impl Engine {
    pub fn new(timing: Timing) -> Engine {
        Engine {
            conns: Connections::default(),
            sas: SaTable::new(),
            dos: Dos::default(),
            out: Output::default(),
            stats: Stats::default(),
            by_conn: ByConnection::default(),
            timing,
            now: 0,
        }
    }

    fn ctx<'a>(&'a mut self, now: u64, crypto: &'a mut dyn IkeCrypto) -> Ctx<'a> {
        self.now = now;
        Ctx {
            now,
            crypto,
            conns: &self.conns,
            sas: &mut self.sas,
            dos: &mut self.dos,
            out: &mut self.out,
            stats: &mut self.stats,
            by_conn: &mut self.by_conn,
            timing: &self.timing,
        }
    }

    /// Lend IKE SA `id` and a context to `f`, then keep, drop or restart
    /// it as `f` says.
    fn with_sa(&mut self, id: u64, now: u64, crypto: &mut dyn IkeCrypto, f: impl FnOnce(&mut IkeSa, &mut Ctx) -> Fate) {
        let Some(mut sa) = self.sas.remove(&id) else { return };
        let mut ctx = self.ctx(now, crypto);
        match f(&mut sa, &mut ctx) {
            Fate::Keep => {
                self.sas.insert(id, sa);
            }
            Fate::Drop(why) => lifecycle::drop_sa(sa, &mut ctx, &why),
            Fate::Restart(why) => {
                let conn = sa.conn;
                lifecycle::drop_sa(sa, &mut ctx, &why);
                lifecycle::restart(&mut ctx, conn);
            }
        }
    }

    // ---- output ----------------------------------------------------------

    /// The next datagram or keepalive to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next change to the data plane's SAs. The host applies these
    /// before it sends what [`Engine::poll_transmit`] returns.
    pub fn poll_sa_change(&mut self) -> Option<SaChange> {
        self.out.sa_changes.pop_front()
    }

    /// The next event for the log and the admin view.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// Checkpoints of the IKE SAs changed since the last call (see
    /// `sa::table`): `(our SPI, Some(bytes))` for an established SA whose
    /// state changed, `(our SPI, None)` for one that is gone.
    pub fn poll_checkpoints(&mut self) -> Vec<(u64, Option<Vec<u8>>)> {
        let conns = &self.conns;
        self.sas.take_checkpoints(|i| conns.get(i).map_or("", |c| c.cfg.name.as_str()))
    }

    /// Take up the IKE SAs of a trapped predecessor from their last
    /// checkpoints. Each names its connection, which must be loaded here
    /// (in any order, under any index). Returns how many SAs were
    /// restored; a checkpoint of a connection not loaded refuses them all.
    pub fn restore(&mut self, checkpoints: &[Vec<u8>]) -> Result<usize, Error> {
        // All or none: every checkpoint is checked before one is taken.
        let mut restored = Vec::with_capacity(checkpoints.len());
        for bytes in checkpoints {
            let (name, mut sa) = crate::sa::table::decode(bytes).map_err(Error::Admin)?;
            sa.conn = self.conns.index(&name).map_err(|_| {
                Error::Admin(format!("checkpoint of an IKE SA of connection {name:?}, which is not loaded"))
            })?;
            restored.push((sa, bytes));
        }
        let n = restored.len();
        // A reauthentication under way in the predecessor: its new IKE SA
        // was still being set up (no checkpoint) and is lost, and the old
        // one had stopped its schedule for it (`start_reauth`). It starts
        // over at the first tick, as after a failed attempt; otherwise it
        // would never reauthenticate again.
        let replaced: std::collections::HashSet<u64> = restored.iter().filter_map(|(sa, _)| sa.replaces).collect();
        for (sa, _) in &mut restored {
            let reauths = self.conns[sa.conn].cfg.reauth_time_ms > 0;
            let left = sa.state == State::Established && sa.replaces.is_none() && !sa.owed.close;
            if reauths && left && sa.auth_initiator && sa.reauth_at == 0 && !replaced.contains(&sa.our_spi()) {
                sa.reauth_at = 1;
            }
        }
        for (sa, bytes) in restored {
            self.sas.restore(sa.our_spi(), sa, bytes);
        }
        Ok(n)
    }

    /// Every handle on the host's secrets the IKE SAs hold (keys, DH
    /// values of exchanges in flight, CHILD SAs' keys), the connections'
    /// PSKs apart. After a restore the host destroys its other secrets:
    /// those of the setups and exchanges the trap lost.
    pub fn held_keys(&self) -> Vec<crate::crypto::Handle> {
        let mut v: Vec<_> = self.sas.values().flat_map(|sa| sa.handles()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    // ---- views -------------------------------------------------------------

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The negotiation counters of connection `name` (zero if it never
    /// counted anything).
    pub fn connection_stats(&self, name: &str) -> Result<Stats, Error> {
        Ok(self.by_conn.get(self.conn_index(name)?))
    }

    /// The connections whose negotiation counters changed since the last
    /// call, by name, with their counters now (see [`Stats`]: the fields
    /// of the engine's totals that belong to one connection).
    pub fn poll_connection_stats(&mut self) -> Vec<(String, Stats)> {
        let conns = &self.conns;
        self.by_conn.take_changed().into_iter().map(|(i, s)| (conns[i].cfg.name.clone(), s)).collect()
    }

    /// Half-open IKE SAs (responder, waiting for IKE_AUTH).
    pub fn half_open_count(&self) -> usize {
        self.dos.half_open.len()
    }

    /// Bytes of IKE_SA_INIT messages the half-open SAs hold.
    pub fn half_open_bytes(&self) -> usize {
        self.dos.half_open_bytes
    }

    /// Number of IKE SAs in any state.
    pub fn ike_sa_count(&self) -> usize {
        self.sas.len()
    }

    /// Number of established IKE SAs and their CHILD SAs.
    pub fn established(&self) -> (usize, usize) {
        let up = self.sas.values().filter(|s| s.established());
        up.fold((0, 0), |(i, c), s| (i + 1, c + s.children.len()))
    }

    /// The IKE SAs by connection name and state, counted (states with
    /// none left out).
    pub fn ike_sa_states(&self) -> Vec<(String, SaPhase, u32)> {
        let mut n: std::collections::BTreeMap<(usize, SaPhase), u32> = Default::default();
        for sa in self.sas.values() {
            *n.entry((sa.conn, SaPhase::of(sa.state))).or_default() += 1;
        }
        n.into_iter().map(|((c, p), k)| (self.conns[c].cfg.name.clone(), p, k)).collect()
    }

    /// The schedule at `now` of each CHILD SA whose inbound SPI is in
    /// `inbound_spis`: our (inbound) SPI, ms to the
    /// rekey and to the hard expiry (None: not by time, or a rekey is
    /// already under way). The install-time figures go stale when a
    /// collision, a TEMPORARY_FAILURE retry or a soft limit by traffic
    /// moves the rekey; the admin view asks for these instead.
    pub fn child_schedules(&mut self, now: u64, inbound_spis: &[u32]) -> Vec<(u32, Option<u64>, Option<u64>)> {
        let left = |at: u64| (at != 0).then(|| at.saturating_sub(now));
        // A page of the admin view: a few thousand SPIs among up to
        // 100,000 CHILD SAs, so a lookup each by inbound SPI (the index
        // `child_by_spi` uses), not a pass over them all per page.
        let mut wanted = inbound_spis.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = Vec::with_capacity(wanted.len());
        for spi in wanted {
            for k in self.sas.with_child(spi) {
                let Some(sa) = self.sas.get(&k) else { continue };
                let children = sa.children.iter().filter(|c| c.inbound_spi == spi);
                found.extend(children.map(|c| (spi, left(c.rekey_at), left(c.expire_at))));
            }
        }
        found
    }

    /// One line per IKE SA: SPI, state, role, CHILD SAs and the exchange
    /// in flight (for diagnostics and tests).
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sas
            .values()
            .map(|s| {
                format!(
                    "{:016x} {:?} {} children={} request={:?} replaces={:?} close={} collision={:?}",
                    s.our_spi(),
                    s.state,
                    if s.initiator { "I" } else { "R" },
                    s.children.len(),
                    s.request.as_ref().map(|r| &r.exchange),
                    s.replaces,
                    s.owed.close,
                    s.ike_collision.as_ref().map(|c| c.what),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Is an IKE SA of connection `name` up or being set up?
    pub fn active(&mut self, name: &str) -> bool {
        let Ok(i) = self.conn_index(name) else { return false };
        let spis = self.sas.of_connection(i);
        spis.iter().any(|k| self.sas.get(k).is_some_and(|s| s.state != State::Deleting))
    }

    /// Connections whose start action is `Start`.
    pub fn autostart(&self) -> Vec<String> {
        let start = |c: &&Connection| !c.removed && c.cfg.start_action == StartAction::Start;
        self.conns.iter().filter(start).map(|c| c.cfg.name.clone()).collect()
    }

    // ---- admin -----------------------------------------------------------

    /// Load a connection; returns warnings about skipped algorithms.
    pub fn add_connection(&mut self, cfg: ConnectionConfig) -> Result<Vec<String>, Error> {
        if self.conns.index(&cfg.name).is_ok() {
            return Err(Error::Config(format!("connection {:?} is defined twice", cfg.name)));
        }
        let (conn, warnings) = Connection::new(cfg, &self.timing)?;
        let (i, before) = self.conns.add(conn)?;
        // A name removed by an earlier reload counts on from where it was:
        // the host's metrics are by name and must not go backwards.
        if let Some(old) = before {
            self.by_conn.inherit(old, i);
        }
        Ok(warnings)
    }

    fn conn_index(&self, name: &str) -> Result<usize, Error> {
        self.conns.index(name)
    }

    /// Remove connection `name` (a reload): its IKE SAs are deleted as by
    /// `terminate`, and it no longer matches a peer or a name. Returns how
    /// many IKE SAs it had.
    pub fn remove_connection(&mut self, now: u64, name: &str, crypto: &mut dyn IkeCrypto) -> Result<usize, Error> {
        let n = self.terminate(now, name, crypto)?;
        self.conns.remove(name)?;
        Ok(n)
    }

    /// Start connection `name` as initiator.
    pub fn initiate(&mut self, now: u64, name: &str, crypto: &mut dyn IkeCrypto) -> Result<(), Error> {
        let conn = self.conn_index(name)?;
        ike_sa_init::initiate(&mut self.ctx(now, crypto), conn)
    }

    /// Delete every IKE SA of connection `name` (DELETE, section 1.4.1);
    /// returns how many there were.
    pub fn terminate(&mut self, now: u64, name: &str, crypto: &mut dyn IkeCrypto) -> Result<usize, Error> {
        self.now = now;
        let conn = self.conn_index(name)?;
        let ids = self.sas.of_connection(conn);
        for id in &ids {
            self.with_sa(*id, now, crypto, |sa, ctx| {
                if !sa.established() {
                    return Fate::Drop("terminated".into());
                }
                // After the exchange in flight, if any (one at a time, section 2.3).
                if sa.request.is_none() {
                    informational::send_delete_ike(sa, ctx);
                } else {
                    sa.owed.close = true;
                    sa.rekey_ike_at = 0;
                    sa.reauth_at = 0;
                }
                if sa.state == State::Deleting || sa.owed.close { Fate::Keep } else { Fate::Drop("terminated".into()) }
            });
        }
        Ok(ids.len())
    }

    /// The data plane reports that the CHILD SA with this inbound SPI (the
    /// data plane's name for both its halves) passed a soft volume limit
    /// or ran low on sequence numbers (rekey it), or a hard one (it
    /// carries no more traffic: delete it).
    pub fn child_expired(&mut self, now: u64, spi: u32, hard: bool, crypto: &mut dyn IkeCrypto) {
        self.now = now;
        // Gone already (deleted or replaced meanwhile): nothing to do.
        let Some((id, inbound)) = self.child_by_spi(spi) else { return };
        self.with_sa(id, now, crypto, |sa, ctx| {
            if hard {
                lifecycle::expire_child(sa, ctx, inbound, "hard lifetime reached");
            } else {
                lifecycle::soft_expire(sa, ctx, inbound, "soft lifetime reached");
            }
            Fate::Keep
        });
    }

    /// The data plane could not install the CHILD SA with this inbound SPI
    /// (either half): delete it with the peer, and create it anew after the
    /// retry delay. `why` is the host's account, for the log.
    pub fn child_failed(&mut self, now: u64, spi: u32, why: &str, crypto: &mut dyn IkeCrypto) {
        self.now = now;
        let Some((id, inbound)) = self.child_by_spi(spi) else { return };
        self.with_sa(id, now, crypto, |sa, ctx| {
            lifecycle::fail_child(sa, ctx, inbound, why);
            Fate::Keep
        });
    }

    /// The IKE SA holding the CHILD SA with this inbound SPI, and that SPI.
    /// Only ours: the data plane names both halves by it, and a peer's
    /// SPI may be another peer's too.
    fn child_by_spi(&mut self, spi: u32) -> Option<(u64, u32)> {
        self.sas.with_child(spi).into_iter().find_map(|k| {
            let sa = self.sas.get(&k)?;
            sa.children.iter().find(|c| c.inbound_spi == spi).map(|c| (k, c.inbound_spi))
        })
    }

    // ---- time ------------------------------------------------------------

    /// When `tick` must be called next, if ever. Costs the SAs changed
    /// since the last call, not all of them (see `sa::table`).
    pub fn next_timeout(&mut self) -> Option<u64> {
        let (conns, timing, now) = (&self.conns, &self.timing, self.now);
        self.sas.next_deadline(|sa| lifecycle::next_timeout(sa, conns, timing, now))
    }

    /// Retransmit what is due, give up on silent peers, expire half-open
    /// SAs, start what is owed: for the SAs whose deadline has come (an SA
    /// with none due has nothing for `lifecycle::tick` to do).
    pub fn tick(&mut self, now: u64, crypto: &mut dyn IkeCrypto) {
        self.now = now;
        let (conns, timing) = (&self.conns, &self.timing);
        self.sas.refresh_deadlines(|sa| lifecycle::next_timeout(sa, conns, timing, now));
        for id in self.sas.due(now) {
            self.with_sa(id, now, crypto, lifecycle::tick);
        }
    }

    // ---- receiving -------------------------------------------------------

    /// Process one IKE datagram.
    pub fn handle_datagram(&mut self, now: u64, d: Datagram, crypto: &mut dyn IkeCrypto) {
        self.now = now;
        self.stats.rx += 1;
        if d.data.len() > self.timing.max_message {
            self.stats.oversize += 1;
            return;
        }
        let h = match Packet::new_checked(&d.data[..]).and_then(|p| Header::parse(&p)) {
            Ok(h) if h.length as usize == d.data.len() => h,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        if h.version >> 4 != 2 {
            // Section 2.5: only a major version we do not speak gets
            // INVALID_MAJOR_VERSION; we simply drop, as we keep no state.
            self.stats.malformed += 1;
            return;
        }
        if h.exchange == ExchangeType::IkeSaInit && !h.is_response() && h.spi_r == 0 && h.message_id == 0 {
            return ike_sa_init::respond(&mut self.ctx(now, crypto), h, d);
        }
        let ours = if h.is_initiator() { h.spi_r } else { h.spi_i };
        let Some(sa) = self.sas.get(&ours) else {
            self.stats.unknown_spi += 1;
            return;
        };
        let theirs_ok = if h.is_initiator() { h.spi_i == sa.spi_i } else { sa.spi_r == 0 || h.spi_r == sa.spi_r };
        if !theirs_ok || h.is_initiator() == sa.initiator {
            self.stats.unknown_spi += 1;
            return;
        }
        self.with_sa(ours, now, crypto, |sa, ctx| {
            if h.exchange == ExchangeType::IkeSaInit {
                if sa.state == State::InitSent && h.is_response() {
                    return ike_sa_init::response(sa, ctx, h, d);
                }
                ctx.stats.unexpected += 1;
                return Fate::Keep;
            }
            if h.is_response() {
                exchange::response_received(sa, ctx, h, d)
            } else {
                exchange::request_received(sa, ctx, h, d)
            }
        });
    }
}
