//! CHILD SAs of an IKE SA: installing one in the data plane (keys, volume
//! lifetimes, rekey and hard-expiry times), removing one, and the
//! make-before-break hand-off of a rekey (RFC 7296 sections 1.3.3, 2.8).
use wasmsec_wire::SaLimits;
use wasmsec_wire::ike::TrafficSelector as Ts;

use crate::crypto::{ChildKeying, Handle};
use crate::ctx::{Ctx, jittered};
use crate::error::Error;
use crate::output::{ChildSa, SaChange};
use crate::proposal::{Chosen, Kind};
use crate::sa::state::{Child, IkeSa};
use crate::ts;

/// How long the responder of a rekey keeps sending on the old SA if the
/// initiator's DELETE of it does not come.
pub(crate) const DEFERRED_OUTBOUND_MS: u64 = 2000;

/// How long the inbound half of a CHILD SA deleted by a DELETE exchange
/// (after a rekey, or by the peer) still accepts packets: those the peer
/// sent before it processed the exchange can arrive after it (they travel
/// through another queue than IKE). strongSwan keeps rekeyed inbound SAs
/// 5 s (`delete_rekeyed_delay`).
pub const DELETED_INBOUND_LINGER_MS: u32 = 5000;

/// A negotiated CHILD SA, before its keys exist.
pub(crate) struct NewChild {
    /// Index of the CHILD config in the connection.
    pub cfg: usize,
    /// The proposal both sides agreed on.
    pub chosen: Chosen,
    /// Ours, allocated when we built our SA payload.
    pub inbound_spi: u32,
    /// The peer's, from its SA payload.
    pub outbound_spi: u32,
    /// Our side's selectors after narrowing (section 2.9).
    pub local_ts: Vec<Ts>,
    /// The peer's side's.
    pub remote_ts: Vec<Ts>,
    /// We sent the CREATE_CHILD_SA (or IKE_AUTH) request.
    pub we_initiated: bool,
    /// Install only the inbound SA now (the peer is rekeying, section 2.8).
    pub defer_outbound: bool,
}

/// Derive the CHILD SA's keys (with `pfs`: our DH value, consumed, and the
/// peer's public value) and tell the host to install it.
pub(crate) fn install(
    sa: &mut IkeSa,
    ctx: &mut Ctx,
    n: NewChild,
    ni: &[u8],
    nr: &[u8],
    pfs: Option<(Handle, &[u8])>,
) -> Result<(), Error> {
    let suite = n.chosen.child_suite();
    let ike_keys = sa.keys.ok_or_else(|| Error::failed("no IKE keys"))?;
    let keying = ChildKeying { ike_sa: ike_keys, suite: &suite, ni, nr, we_initiated: n.we_initiated, pfs };
    let keys = ctx.crypto.child_keys(&keying).map_err(|e| {
        Error::refused(wasmsec_wire::ike::NotifyType::NoProposalChosen, format!("cannot derive CHILD_SA keys: {e:?}"))
    })?;
    let c = &ctx.conns[sa.conn];
    let template = &c.children[n.cfg];
    let life = sa.grant.lifetimes(template.life, ctx.retransmit_span());
    // Soft limits less up to 10 %, as rekey times (section 2.8.1 collisions
    // are rarer when the two ends do not count to the same number).
    let spread = u64::from(n.inbound_spi);
    let limits = SaLimits {
        soft_bytes: jittered(life.rekey_bytes, spread),
        soft_packets: jittered(life.rekey_packets, spread),
        hard_bytes: life.life_bytes,
        hard_packets: life.life_packets,
    };
    let rekey_at = if life.rekey_time > 0 { ctx.now + jittered(life.rekey_time, spread) } else { 0 };
    // The hard limit moves too, within the lower half of the room above
    // the soft one, so that two ends with the same settings do not both
    // delete (and create anew) the same CHILD SA.
    let hard = if life.rekey_time > 0 && life.life_time > life.rekey_time {
        let room = (life.life_time - life.rekey_time) / 2;
        life.life_time - if room == 0 { 0 } else { (spread.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % room }
    } else {
        jittered(life.life_time, spread.rotate_left(7))
    };
    let expire_at = if life.life_time > 0 { ctx.now + hard } else { 0 };
    let child = ChildSa {
        connection: c.cfg.name.clone(),
        child: template.name.clone(),
        ike_spi: sa.our_spi(),
        inbound_spi: n.inbound_spi,
        outbound_spi: n.outbound_spi,
        inbound_key: keys.inbound,
        outbound_key: keys.outbound,
        suite,
        local_ts: n.local_ts.clone(),
        remote_ts: n.remote_ts.clone(),
        local: sa.local,
        remote: sa.remote,
        encap: sa.encap(c.cfg.force_encap),
        outbound_deferred: n.defer_outbound,
        limits,
    };
    if n.defer_outbound {
        sa.deferred.push((n.inbound_spi, ctx.now + DEFERRED_OUTBOUND_MS));
    }
    let msg = format!(
        "CHILD_SA {} installed: SPIs in {:08x} out {:08x}, {}, {} === {}{}",
        template.name,
        n.inbound_spi,
        n.outbound_spi,
        n.chosen.name(Kind::Esp),
        ts::show_all(&n.local_ts),
        ts::show_all(&n.remote_ts),
        if child.encap { ", UDP-encapsulated" } else { "" }
    );
    sa.children.push(Child {
        cfg: n.cfg,
        inbound_spi: n.inbound_spi,
        outbound_spi: n.outbound_spi,
        keys,
        local_ts: n.local_ts,
        remote_ts: n.remote_ts,
        rekey_at,
        expire_at,
        replaced: false,
    });
    ctx.count(sa.conn, |s| &mut s.child_installed);
    ctx.out.sa_changes.push_back(SaChange::Install(child));
    ctx.info(sa.conn, msg);
    // One more CHILD SA may make this IKE SA cover a duplicate.
    super::duplicates::retire_duplicates(sa, ctx);
    Ok(())
}

/// Forget the CHILD SA with inbound SPI `inbound` and tell the host,
/// which keeps its inbound half `keep_inbound_ms` longer.
pub(crate) fn remove(sa: &mut IkeSa, ctx: &mut Ctx, inbound: u32, why: &str, keep_inbound_ms: u32) {
    let Some(pos) = sa.children.iter().position(|c| c.inbound_spi == inbound) else { return };
    let c = sa.children.remove(pos);
    ctx.out.sa_changes.push_back(SaChange::Delete {
        ike_spi: sa.our_spi(),
        inbound_spi: c.inbound_spi,
        outbound_spi: c.outbound_spi,
        inbound_key: c.keys.inbound,
        outbound_key: c.keys.outbound,
        keep_inbound_ms,
    });
    let name = ctx.conns[sa.conn].children[c.cfg].name.clone();
    let msg = format!("CHILD_SA {name} (SPIs in {:08x} out {:08x}) deleted: {why}", c.inbound_spi, c.outbound_spi);
    ctx.info(sa.conn, msg);
}

/// IKE SA `old` is going (a DELETE, the peer's or our acknowledged one):
/// an IKE SA that came up beside it, whose outbound halves wait for that
/// (a reauthentication, or a duplicate's survivor), may now send on them.
pub(crate) fn activate_twins(old: &IkeSa, ctx: &mut Ctx) {
    let twins = ctx.sas.with_identity(old.conn, &old.peer_id, |o| !o.deferred.is_empty());
    for k in twins {
        if let Some(mut o) = ctx.sas.remove(&k) {
            activate_deferred(&mut o, ctx, u64::MAX);
            ctx.sas.insert(k, o);
        }
    }
}

/// Start sending on deferred outbound SAs whose time has come (all of
/// them with `now = u64::MAX`, when the old SA's DELETE arrived).
pub(crate) fn activate_deferred(sa: &mut IkeSa, ctx: &mut Ctx, now: u64) {
    let (due, wait): (Vec<_>, Vec<_>) = sa.deferred.iter().partition(|(_, at)| *at <= now);
    sa.deferred = wait;
    for (inbound_spi, _) in due {
        ctx.out.sa_changes.push_back(SaChange::ActivateOutbound { inbound_spi });
    }
}

/// Create CHILD config `cfg` again once no exchange is in flight, unless
/// an SA of it exists.
pub(crate) fn recreate_later(sa: &mut IkeSa, cfg: usize) {
    if !sa.owed.recreate.contains(&cfg) && !sa.children.iter().any(|c| c.cfg == cfg) {
        sa.owed.recreate.push(cfg);
    }
}
