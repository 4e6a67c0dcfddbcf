//! An IKE SA over time: its timers (half-open timeout, NAT keepalives,
//! liveness checks, CHILD and IKE rekeys, hard lifetimes, reauthentication),
//! the exchanges it owes when idle, handing its CHILD SAs to a successor,
//! and its end.
use crate::config::{Connection, DpdAction, Timing};
use crate::ctx::{Ctx, Fate, jittered};
use crate::exchange::{self, create_child, informational, rekey_ike};
use crate::output::{Event, NAT_T_PORT, SaChange, Transmit};
use crate::sa::child;
use crate::sa::state::{IkeSa, State};

/// When to rekey the IKE SA next (less 0-10 % jitter; 0: not by us).
pub(crate) fn schedule_ike_rekey(sa: &mut IkeSa, ctx: &Ctx) {
    let t = ctx.conns[sa.conn].cfg.rekey_time_ms;
    sa.rekey_ike_at = if t > 0 { ctx.now + jittered(t, sa.our_spi()) } else { 0 };
}

/// Reauthentication counts from when the IKE SA was authenticated. The
/// IKE_AUTH initiator reauthenticates; a responder with `reauth_time` tells
/// it so (AUTH_LIFETIME, RFC 4478) and gives up on the IKE SA if that has
/// not happened a retransmission span after the time.
pub(crate) fn schedule_reauth(sa: &mut IkeSa, ctx: &Ctx) {
    let t = ctx.conns[sa.conn].cfg.reauth_time_ms;
    sa.reauth_at = match (t, sa.auth_initiator) {
        (0, _) => 0,
        (t, true) => ctx.now + jittered(t, sa.our_spi().rotate_left(17)),
        (t, false) => ctx.now + t + 2 * ctx.retransmit_span(),
    };
}

/// Behind a NAT, on the NAT-T port, with keepalives configured.
fn wants_keepalive(sa: &IkeSa, conns: &[Connection]) -> bool {
    sa.nat_local && sa.local.port == NAT_T_PORT && conns[sa.conn].cfg.keepalive_ms > 0
}

/// When this IKE SA needs a tick next, if ever (`now`: the latest call's time).
pub(crate) fn next_timeout(sa: &IkeSa, conns: &[Connection], timing: &Timing, now: u64) -> Option<u64> {
    let c = &conns[sa.conn].cfg;
    let r = sa.request.as_ref().map(|r| r.next_at);
    let h = (sa.state == State::InitDone).then_some(sa.created_at + timing.half_open_ms);
    let up = sa.established();
    let idle = up && sa.request.is_none();
    let k = (up && wants_keepalive(sa, conns)).then_some(sa.next_keepalive);
    let d = (idle && c.dpd_delay_ms > 0).then_some(sa.last_rx + c.dpd_delay_ms);
    let rk = sa.children.iter().filter(|c| idle && c.rekey_at != 0).map(|c| c.rekey_at).min();
    let ex = sa.children.iter().filter(|c| up && c.expire_at != 0).map(|c| c.expire_at).min();
    let df = sa.deferred.iter().map(|x| x.1).min();
    let ik = (idle && sa.rekey_ike_at != 0).then_some(sa.rekey_ike_at);
    let ra = (up && sa.reauth_at != 0 && sa.replaces.is_none() && !sa.rekeying_ike()).then_some(sa.reauth_at);
    let rd = (up && sa.redundant_at != 0).then_some(sa.redundant_at);
    // Exchanges owed as soon as the SA is idle.
    let owed = sa.owed.close || sa.owed.delete_queue.iter().any(|q| !q.2);
    let due_now = (idle && owed).then_some(now);
    let rc = (idle && !sa.owed.recreate.is_empty()).then_some(sa.owed.recreate_at.max(now));
    [r, h, k, d, rk, ex, df, ik, ra, rd, due_now, rc].into_iter().flatten().min()
}

/// One IKE SA's timers at `ctx.now`: retransmit what is due, give up on a
/// silent peer, expire a half-open SA, and start what is owed.
pub(crate) fn tick(sa: &mut IkeSa, ctx: &mut Ctx) -> Fate {
    let now = ctx.now;
    if sa.state == State::InitDone && now >= sa.created_at + ctx.timing.half_open_ms {
        ctx.count(sa.conn, |s| &mut s.timeouts);
        return Fate::Drop("half-open IKE_SA timed out waiting for IKE_AUTH".into());
    }
    if sa.established() {
        let c = &ctx.conns[sa.conn].cfg;
        let (keepalive, dpd) = (c.keepalive_ms, c.dpd_delay_ms);
        if wants_keepalive(sa, ctx.conns) && now >= sa.next_keepalive {
            sa.next_keepalive = now + keepalive;
            ctx.stats.keepalives += 1;
            ctx.out.transmits.push_back(Transmit::Keepalive { local: sa.local, remote: sa.remote });
        }
        if dpd > 0 && sa.request.is_none() && now >= sa.last_rx + dpd {
            informational::send_liveness_check(sa, ctx);
        }
        timed_events(sa, ctx);
    }
    child::activate_deferred(sa, ctx, now);
    if sa.established() && sa.request.is_none() {
        next_request(sa, ctx);
    }
    if exchange::retransmit(sa, ctx) {
        return dead_peer(sa, ctx);
    }
    Fate::Keep
}

/// Hard lifetimes by time (the data plane reports volume ones), a due
/// reauthentication, and an IKE SA the peer should have deleted.
fn timed_events(sa: &mut IkeSa, ctx: &mut Ctx) {
    let now = ctx.now;
    let due: Vec<u32> =
        sa.children.iter().filter(|c| c.expire_at != 0 && now >= c.expire_at).map(|c| c.inbound_spi).collect();
    for x in due {
        expire_child(sa, ctx, x, "hard lifetime (life_time) reached");
    }
    // Not while our rekey of this IKE SA is in flight: its successor
    // inherits the due reauthentication.
    if sa.reauth_at != 0 && now >= sa.reauth_at && sa.replaces.is_none() && !sa.rekeying_ike() {
        if sa.auth_initiator {
            start_reauth(sa, ctx);
        } else {
            sa.reauth_at = 0;
            let msg = format!(
                "the peer did not reauthenticate IKE_SA {:016x} as asked (AUTH_LIFETIME): deleting it",
                sa.our_spi()
            );
            ctx.warn(sa.conn, msg);
            sa.owed.close = true;
            sa.rekey_ike_at = 0;
        }
    }
    if sa.redundant_at != 0 && now >= sa.redundant_at {
        sa.redundant_at = 0;
        if sa.children.is_empty() {
            let msg =
                format!("the peer did not delete the redundant or replaced IKE_SA {:016x}: deleting it", sa.our_spi());
            ctx.info(sa.conn, msg);
            sa.owed.close = true;
        }
    }
}

/// The peer did not answer our request's last retransmission.
fn dead_peer(sa: &mut IkeSa, ctx: &mut Ctx) -> Fate {
    ctx.count(sa.conn, |s| &mut s.timeouts);
    let why = format!("peer did not answer after {} transmissions", ctx.timing.retransmit_tries);
    if sa.established() {
        ctx.count(sa.conn, |s| &mut s.dead_peers);
        let c = &ctx.conns[sa.conn].cfg;
        // Not when another IKE SA of the connection is up (a stale one
        // timed out): our INITIAL_CONTACT would make the peer drop the good
        // one. Asked only where a restart is possible: a remote-access
        // connection (no remote address) has every client's IKE SA.
        if c.dpd_action == DpdAction::Restart && !c.remote_addrs.is_empty() {
            let spis = ctx.sas.of_connection(sa.conn);
            let other = spis.iter().any(|k| ctx.sas.get(k).is_some_and(|s| s.established() && s.redundant_at == 0));
            if !other {
                return Fate::Restart(why);
            }
        }
    }
    Fate::Drop(why)
}

/// Start the next exchange this IKE SA owes, if any (one at a time).
fn next_request(sa: &mut IkeSa, ctx: &mut Ctx) {
    let now = ctx.now;
    if sa.owed.close {
        sa.owed.close = false;
        return informational::send_delete_ike(sa, ctx);
    }
    if sa.owed.delete_queue.iter().any(|q| !q.2) {
        return informational::send_delete_expired(sa, ctx);
    }
    if sa.rekey_ike_at != 0 && now >= sa.rekey_ike_at {
        return rekey_ike::start(sa, ctx, None);
    }
    if let Some(pos) = sa.children.iter().position(|c| c.rekey_at != 0 && now >= c.rekey_at) {
        return create_child::start_rekey(sa, ctx, pos);
    }
    while !sa.owed.recreate.is_empty() && now >= sa.owed.recreate_at {
        let cfg = sa.owed.recreate.remove(0);
        if !sa.children.iter().any(|c| c.cfg == cfg) {
            create_child::request(sa, ctx, cfg, None, None, true);
            if sa.request.is_none() {
                // Not even sent (a local failure): later.
                sa.owed.recreate.push(cfg);
                let t = ctx.conns[sa.conn].children[cfg].life.rekey_time;
                sa.owed.recreate_at = now + ctx.retry_delay(t);
            }
            return;
        }
    }
    // CHILD configs not brought up yet (an IKE rekey took the slot).
    create_child::create_next(sa, ctx);
}

/// Reauthentication: a new IKE SA from scratch (IKE_SA_INIT, IKE_AUTH)
/// with new CHILD SAs; the old one is deleted once they are up
/// (make-before-break).
fn start_reauth(old: &mut IkeSa, ctx: &mut Ctx) {
    old.reauth_at = 0;
    old.rekey_ike_at = 0;
    ctx.count(old.conn, |s| &mut s.reauths);
    ctx.info(old.conn, format!("reauthenticating IKE_SA {:016x}: new IKE_SA from scratch", old.our_spi()));
    let r = exchange::ike_sa_init::start(ctx, old.conn, old.local.addr, old.remote.addr, Some(old.our_spi()));
    if let Err(e) = r {
        ctx.warn(old.conn, format!("cannot reauthenticate: {e}"));
        old.reauth_at = ctx.now + ctx.retry_delay(ctx.conns[old.conn].cfg.reauth_time_ms);
    }
}

/// An IKE SA on its way out starts no rekey, reauthentication or CHILD SA.
pub(crate) fn wind_down(o: &mut IkeSa) {
    o.rekey_ike_at = 0;
    o.reauth_at = 0;
    o.children.iter_mut().for_each(|c| c.rekey_at = 0);
    o.owed.recreate.clear();
}

/// IKE SA `from` handed over to `to`: references to it follow. A
/// reauthentication under way must replace the successor (or both would
/// live on), and a collision record naming it waits on the successor.
/// Only the SAs that name it are looked at and marked changed: a pass
/// over every one (until 2026-12-07) marked them all, so each IKE rekey
/// cost a checkpoint of every IKE SA of a PoP.
fn follow_successor(ctx: &mut Ctx, from: u64, to: u64) {
    for k in ctx.sas.naming(from) {
        let Some(s) = ctx.sas.get_mut(&k) else { continue };
        if s.replaces == Some(from) {
            s.replaces = Some(to);
        }
        if let Some(c) = s.ike_collision.as_mut().filter(|c| c.what == from) {
            c.what = to;
        }
    }
}

/// A reauthentication under way replaces IKE SA `spi`.
pub(crate) fn reauthenticating(ctx: &mut Ctx, spi: u64) -> bool {
    ctx.sas.naming(spi).iter().any(|k| ctx.sas.get(k).is_some_and(|s| s.replaces == Some(spi)))
}

/// The reauthenticated IKE SA `new` has its CHILD SAs: delete the old one.
pub(crate) fn finish_reauth(new: &IkeSa, ctx: &mut Ctx, old: u64) {
    let Some(mut o) = ctx.sas.remove(&old) else { return };
    ctx.info(new.conn, format!("reauthenticated: IKE_SA {:016x} replaces {old:016x}", new.our_spi()));
    retire(&mut o, ctx);
    ctx.sas.insert(old, o);
}

/// Delete an IKE SA another one has replaced: now if it is idle, else once
/// its exchange in flight is done (an IKE rekey in flight hands the close
/// on to its successor). It starts nothing more meanwhile.
pub(crate) fn retire(o: &mut IkeSa, ctx: &mut Ctx) {
    wind_down(o);
    if o.established() && o.request.is_none() {
        informational::send_delete_ike(o, ctx);
    } else {
        o.owed.close = true;
    }
}

/// Everything an IKE SA carries on to its successor (a rekey, or the
/// winner of a simultaneous rekey): CHILD SAs and what is owed for them,
/// the reauthentication schedule, and being closed. The old SA is left
/// with nothing to do but wait for its DELETE.
pub(crate) fn hand_over(old: &mut IkeSa, new: &mut IkeSa, ctx: &mut Ctx) {
    if !old.children.is_empty() {
        // The host's view names each CHILD SA's IKE SA.
        ctx.out.sa_changes.push_back(SaChange::ChildrenMoved { from: old.our_spi(), to: new.our_spi() });
    }
    new.children.append(&mut old.children);
    new.deferred.append(&mut old.deferred);
    new.owed.delete_queue.append(&mut old.owed.delete_queue);
    new.owed.recreate.append(&mut old.owed.recreate);
    new.owed.recreate_at = new.owed.recreate_at.max(old.owed.recreate_at);
    // The CHILD SAs are up (or were refused) already: a successor does not
    // request them again, whichever end initiated its rekey.
    new.children_tried = (0..ctx.conns[new.conn].children.len()).collect();
    new.reauth_at = std::mem::take(&mut old.reauth_at);
    new.auth_initiator = old.auth_initiator;
    new.replaces = new.replaces.or(old.replaces.take());
    new.owed.close |= std::mem::take(&mut old.owed.close);
    new.redundant_at = 0;
    old.rekey_ike_at = 0;
    follow_successor(ctx, old.our_spi(), new.our_spi());
    // No rekey of an SA that is going: closed, or replaced by a
    // reauthentication under way.
    let reauthenticated = reauthenticating(ctx, new.our_spi());
    if new.owed.close || reauthenticated {
        new.rekey_ike_at = 0;
    } else {
        schedule_ike_rekey(new, ctx);
    }
    // A duplicate that came about unseen ends at the next IKE rekey of
    // either.
    super::duplicates::retire_duplicates(new, ctx);
}

/// Move the CHILD SAs of `old` to the IKE SA with our SPI `to` (the winner
/// of a simultaneous IKE rekey), which may now rekey itself.
pub(crate) fn adopt_children(old: &mut IkeSa, ctx: &mut Ctx, to: u64) {
    let Some(mut new) = ctx.sas.remove(&to) else { return };
    hand_over(old, &mut new, ctx);
    // The old SA waits for the peer's DELETE; if that never comes, we
    // delete it ourselves.
    old.redundant_at = ctx.now + ctx.retransmit_span();
    ctx.info(new.conn, format!("IKE_SA {:016x}: CHILD SAs moved to the peer's new IKE_SA {to:016x}", old.our_spi()));
    ctx.sas.insert(to, new);
}

/// Start a rekey of the CHILD SA now, unless one is under way or a
/// successor exists (a soft volume limit, or sequence numbers running low).
pub(crate) fn soft_expire(sa: &mut IkeSa, ctx: &mut Ctx, inbound: u32, why: &str) {
    let rekeying = sa.rekeying_child() == Some(inbound);
    let (now, conn) = (ctx.now, sa.conn);
    let Some(c) = sa.child_mut(inbound) else { return };
    // Under way, due already, or superseded.
    if rekeying || c.replaced || (c.rekey_at != 0 && c.rekey_at <= now) {
        return;
    }
    ctx.count(conn, |s| &mut s.lifetime_soft);
    c.rekey_at = now.max(1);
    ctx.info(sa.conn, format!("CHILD_SA {inbound:08x}: {why}, rekeying"));
}

/// Hard lifetime: the SA goes now, the peer is told (DELETE, section
/// 1.4.1), and the CHILD SA is created anew unless a successor exists or
/// is being made.
pub(crate) fn expire_child(sa: &mut IkeSa, ctx: &mut Ctx, inbound: u32, why: &str) {
    let Some(c) = Ending::of(sa, inbound) else { return };
    let msg = if c.replaced { why.to_string() } else { format!("{why} before a rekey replaced it") };
    ctx.count(sa.conn, |s| &mut s.lifetime_hard);
    end_child(sa, ctx, &c, &msg);
}

/// The data plane could not install the CHILD SA (its guest refused it, or
/// trapped, or no instance could be made for it): it carries no traffic, so
/// it must not stay up as if it did. It goes as at a hard lifetime, but is
/// created anew only after the retry delay, as a failed rekey is, so a
/// refusal that persists costs one exchange per delay, not a loop.
pub(crate) fn fail_child(sa: &mut IkeSa, ctx: &mut Ctx, inbound: u32, why: &str) {
    let Some(c) = Ending::of(sa, inbound) else { return };
    let msg = format!("the data path could not install it: {why}");
    let rekeying = end_child(sa, ctx, &c, &msg);
    if c.replaced {
        // Superseded already: `end_child` says nothing of it, this must.
        ctx.warn(sa.conn, format!("CHILD_SA {inbound:08x}: {msg}"));
    } else if !rekeying {
        let t = ctx.conns[sa.conn].children[c.cfg].life.rekey_time;
        sa.owed.recreate_at = sa.owed.recreate_at.max(ctx.now + ctx.retry_delay(t));
    }
}

/// What `end_child` needs of a CHILD SA, found once by its caller.
struct Ending {
    inbound: u32,
    outbound: u32,
    cfg: usize,
    replaced: bool,
}

impl Ending {
    fn of(sa: &IkeSa, inbound: u32) -> Option<Ending> {
        let c = sa.child(inbound)?;
        Some(Ending { inbound, outbound: c.outbound_spi, cfg: c.cfg, replaced: c.replaced })
    }
}

/// Remove the CHILD SA, queue its DELETE, and create it anew unless a
/// successor exists or is being made. True if a rekey of it is in flight
/// (which then takes over).
fn end_child(sa: &mut IkeSa, ctx: &mut Ctx, c: &Ending, msg: &str) -> bool {
    let inbound = c.inbound;
    child::remove(sa, ctx, inbound, msg, 0);
    sa.owed.delete_queue.push((inbound, c.outbound, false));
    let rekeying = sa.rekeying_child() == Some(inbound);
    if !c.replaced {
        let next = if rekeying { "its rekey in flight takes over" } else { "creating it anew" };
        ctx.warn(sa.conn, format!("CHILD_SA {inbound:08x}: {msg}; {next}"));
    }
    if !c.replaced && !rekeying {
        child::recreate_later(sa, c.cfg);
    }
    rekeying
}

/// Forget an IKE SA and its CHILD SAs, telling the host.
pub(crate) fn drop_sa(mut sa: IkeSa, ctx: &mut Ctx, why: &str) {
    let spi = sa.our_spi();
    for c in std::mem::take(&mut sa.children) {
        ctx.out.sa_changes.push_back(SaChange::Delete {
            ike_spi: spi,
            inbound_spi: c.inbound_spi,
            outbound_spi: c.outbound_spi,
            inbound_key: c.keys.inbound,
            outbound_key: c.keys.outbound,
            keep_inbound_ms: 0,
        });
    }
    // Our half of a simultaneous IKE rekey dies with us: the peer's new
    // IKE SA (no CHILD SAs yet) is now redundant unless the peer uses it.
    if let Some(c) = sa.ike_collision.take() {
        let at = ctx.now + ctx.retransmit_span();
        if let Some(t) = ctx.sas.get_mut(&c.what).filter(|t| t.children.is_empty()) {
            t.redundant_at = at;
        }
    }
    for h in sa.keys.take().into_iter().chain(sa.take_dh_values()) {
        ctx.crypto.destroy(h);
    }
    ctx.dos.forget(spi);
    let was_up = matches!(sa.state, State::Established | State::Deleting);
    ctx.info(sa.conn, format!("IKE_SA {spi:016x} with {} deleted: {why}", sa.remote.addr));
    if was_up {
        let connection = ctx.conns[sa.conn].cfg.name.clone();
        ctx.out.events.push_back(Event::IkeDown { connection, ike_spi: spi });
    }
    // A failed reauthentication: the old IKE SA stays and tries again later.
    if let Some(old) = sa.replaces {
        let retry = ctx.retry_delay(ctx.conns[sa.conn].cfg.reauth_time_ms);
        if let Some(o) = ctx.sas.get_mut(&old) {
            o.reauth_at = ctx.now + retry;
        }
    }
}

/// DPD found the peer dead and the connection says restart: initiate again
/// (once the dead IKE SA and its CHILD SAs are gone).
pub(crate) fn restart(ctx: &mut Ctx, conn: usize) {
    ctx.info(conn, "peer is dead: re-initiating (dpd_action = restart)".into());
    if let Err(e) = exchange::ike_sa_init::initiate(ctx, conn) {
        ctx.warn(conn, format!("cannot re-initiate: {e}"));
    }
}
