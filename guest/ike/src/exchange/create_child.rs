//! CREATE_CHILD_SA for CHILD SAs (RFC 7296 sections 1.3.1, 1.3.3): new
//! CHILD SAs, their rekeys (make before break) with or without PFS, and
//! simultaneous rekeys (section 2.8.1). The responder side also routes an
//! IKE SA rekey to `rekey_ike`. The first CHILD SA of IKE_AUTH is accepted
//! and completed here too.
use wasmsec_wire::ike::{
    DhGroup, ExchangeType, Header, Notify, NotifyType, Payload, ProtocolId, TrafficSelector as Ts,
};

use super::payloads::{esp_spi, find_notify, first_error, ke, nonce, notify_u16, sa_tsi_tsr};
use crate::crypto::Handle;
use crate::ctx::{Ctx, Fate, notify_name};
use crate::error::Error;
use crate::policy::Grant;
use crate::proposal::{self, Kind};
use crate::sa::child::{self, NewChild};
use crate::sa::state::{Collision, IkeSa, InFlight, PendingChild};
use crate::ts;

/// Responder side of a CHILD SA request (in IKE_AUTH or CREATE_CHILD_SA):
/// choose the proposal, narrow the selectors, derive keys, install. With
/// `defer`, our new outbound SA waits (the peer is rekeying). Returns the
/// SA, KE (PFS) and TSi/TSr payloads for the response.
pub(crate) fn accept(
    sa: &mut IkeSa,
    ctx: &mut Ctx,
    ps: &[Payload],
    ni: &[u8],
    nr: &[u8],
    in_auth: bool,
    defer: bool,
) -> Result<Vec<Payload>, Error> {
    if find_notify(ps, NotifyType::UseTransportMode).is_some() {
        return Err(Error::Unsupported("peer asked for transport mode, which is not supported yet".into()));
    }
    let Some((offered, tsi, tsr)) = sa_tsi_tsr(ps) else {
        return Err(Error::Malformed("CHILD_SA request lacks SA, TSi or TSr".into()));
    };
    let conn = &ctx.conns[sa.conn];
    // The first CHILD config whose selectors overlap the peer's (section
    // 2.9), within what the policy granted this peer.
    let g = &sa.grant;
    let found = conn.children.iter().enumerate().find_map(|(i, c)| {
        let n_tsi = Grant::narrow(&ts::narrow(&tsi, &c.remote_ts), &g.peer_ts);
        let n_tsr = Grant::narrow(&ts::narrow(&tsr, &c.local_ts), &g.local_ts);
        (!n_tsi.is_empty() && !n_tsr.is_empty()).then_some((i, n_tsi, n_tsr))
    });
    let Some((cfg, n_tsi, n_tsr)) = found else {
        ctx.count(sa.conn, |s| &mut s.ts_unacceptable);
        let allowed: Vec<String> = conn
            .children
            .iter()
            .map(|c| format!("{}: local {} remote {}", c.name, ts::show_all(&c.local_ts), ts::show_all(&c.remote_ts)))
            .collect();
        let granted = if g.peer_ts.is_empty() && g.local_ts.is_empty() {
            String::new()
        } else {
            let show = |t: &[Ts]| if t.is_empty() { "any".to_string() } else { ts::show_all(t) };
            format!(
                ", within what the policy granted this peer: local {} remote {}",
                show(&g.local_ts),
                show(&g.peer_ts)
            )
        };
        return Err(Error::refused(
            NotifyType::TsUnacceptable,
            format!(
                "traffic selectors not allowed (TS_UNACCEPTABLE): peer proposed TSi {} TSr {}; we allow {}{granted}",
                ts::show_all(&tsi),
                ts::show_all(&tsr),
                allowed.join("; ")
            ),
        ));
    };
    let esp = g.esp(&conn.children[cfg]).map_err(|e| {
        ctx.count(sa.conn, |s| &mut s.no_proposal);
        Error::Unsupported(e)
    })?;
    let Some((chosen, num, their_spi)) = proposal::select(&offered, &esp, Kind::Esp, in_auth) else {
        ctx.count(sa.conn, |s| &mut s.no_proposal);
        let whose = if sa.grant.esp_proposals.is_empty() { "" } else { " (as the policy granted this peer)" };
        return Err(Error::Unsupported(format!(
            "no acceptable ESP proposal: peer offered {}, we accept {}{whose}",
            proposal::Display(&offered),
            proposal::Display(&proposal::to_wire(&esp, Kind::Esp, &[], false))
        )));
    };
    let Some(outbound_spi) = esp_spi(&their_spi) else {
        return Err(Error::Malformed("ESP proposal SPI is not 4 bytes".into()));
    };
    // PFS (section 1.3.1): a KE of the chosen group, or INVALID_KE_PAYLOAD
    // naming the group we want.
    let mut pfs = None;
    if !in_auth && chosen.dh != DhGroup::None {
        match ke(ps) {
            Some((g, public)) if DhGroup::from(g) == chosen.dh => {
                let (h, ours) = ctx
                    .crypto
                    .dh_generate(chosen.dh)
                    .map_err(|e| Error::failed(format!("crypto operation failed: {e:?}")))?;
                pfs = Some((h, public.to_vec(), ours));
            }
            Some((g, _)) => {
                return Err(Error::Refused {
                    notify: NotifyType::InvalidKePayload,
                    data: chosen.dh.raw().to_be_bytes().to_vec(),
                    message: format!("peer sent KE for DH group {g}, we chose {}: INVALID_KE_PAYLOAD", chosen.dh.raw()),
                });
            }
            None => return Err(Error::Malformed("PFS proposal chosen but no KE payload".into())),
        }
    }
    let inbound_spi = ctx.new_esp_spi(sa);
    let new = NewChild {
        cfg,
        chosen,
        inbound_spi,
        outbound_spi,
        local_ts: n_tsr.clone(),
        remote_ts: n_tsi.clone(),
        we_initiated: false,
        defer_outbound: defer,
    };
    let installed = child::install(sa, ctx, new, ni, nr, pfs.as_ref().map(|(h, theirs, _)| (*h, theirs.as_slice())));
    if let (Err(_), Some((h, _, _))) = (&installed, &pfs) {
        ctx.crypto.destroy(*h);
    }
    installed?;
    let mut out =
        vec![Payload::Sa(vec![proposal::chosen_to_wire(&chosen, Kind::Esp, num, &inbound_spi.to_be_bytes())])];
    if let Some((_, _, ours)) = pfs {
        out.push(Payload::Ke { group: chosen.dh.raw(), data: ours });
    }
    out.extend([Payload::TsI(n_tsi), Payload::TsR(n_tsr)]);
    Ok(out)
}

/// The responder's answer about a CHILD SA we proposed.
pub(crate) struct Answer<'a> {
    /// The response's payloads (decrypted).
    pub ps: &'a [Payload],
    /// Our nonce (the request's).
    pub ni: &'a [u8],
    /// The responder's nonce (empty in an error answer).
    pub nr: &'a [u8],
    /// The CHILD SA came with IKE_AUTH: no KE payloads (section 1.2).
    pub in_auth: bool,
}

/// Initiator side: check the responder's answer for the CHILD SA we
/// proposed and install it. Our PFS DH value is consumed either way.
pub(crate) fn complete(sa: &mut IkeSa, ctx: &mut Ctx, mut p: PendingChild, a: &Answer) -> Result<(), Error> {
    let dh = p.dh.take();
    let r = check_answer(sa, ctx, &p, dh, a);
    if let (Err(_), Some((h, _))) = (&r, dh) {
        // Not consumed by a key derivation.
        ctx.crypto.destroy(h);
    }
    r
}

fn check_answer(
    sa: &mut IkeSa,
    ctx: &mut Ctx,
    p: &PendingChild,
    dh: Option<(Handle, DhGroup)>,
    a: &Answer,
) -> Result<(), Error> {
    let Answer { ps, ni, nr, in_auth } = *a;
    let child = &ctx.conns[sa.conn].children[p.cfg];
    // What we offered: the request was built from the same grant.
    let esp = sa.grant.esp(child).map_err(Error::failed)?;
    if let Some(n) = first_error(ps) {
        if n == NotifyType::TsUnacceptable {
            ctx.count(sa.conn, |s| &mut s.ts_unacceptable);
        }
        if n == NotifyType::NoProposalChosen {
            ctx.count(sa.conn, |s| &mut s.no_proposal);
        }
        return Err(Error::failed(format!(
            "peer answered {} to child {} (our ESP proposals {}, TSi {}, TSr {})",
            notify_name(n),
            child.name,
            proposal::Display(&proposal::to_wire(&esp, Kind::Esp, &[], !in_auth)),
            ts::show_all(&p.local_ts),
            ts::show_all(&p.remote_ts)
        )));
    }
    let Some((answer, tsi, tsr)) = sa_tsi_tsr(ps) else {
        return Err(Error::failed("answer lacks SA, TSi or TSr"));
    };
    let Some((chosen, spi)) = proposal::check_answer(&answer, &esp, Kind::Esp, in_auth) else {
        return Err(Error::failed(format!("peer chose ESP {}, which we did not offer", proposal::Display(&answer))));
    };
    let Some(outbound_spi) = esp_spi(&spi) else {
        return Err(Error::failed("peer's ESP SPI is not 4 bytes"));
    };
    if !ts::within(&tsi, &p.local_ts) || !ts::within(&tsr, &p.remote_ts) {
        ctx.count(sa.conn, |s| &mut s.ts_unacceptable);
        return Err(Error::failed(format!(
            "peer narrowed to TSi {} TSr {}, outside what we proposed ({} / {})",
            ts::show_all(&tsi),
            ts::show_all(&tsr),
            ts::show_all(&p.local_ts),
            ts::show_all(&p.remote_ts)
        )));
    }
    // PFS (section 1.3.1): the answer's KE must be of the group we sent.
    let their_ke = ke(ps);
    let pfs = match (dh, chosen.dh) {
        (None, DhGroup::None) if !in_auth => None,
        (_, _) if in_auth => None,
        // The peer chose one of our proposals without a DH group: our KE
        // is ignored (section 1.3.1) and its private value goes.
        (Some((h, _)), DhGroup::None) => {
            ctx.crypto.destroy(h);
            None
        }
        (Some((h, g)), c) if c == g => match their_ke {
            Some((kg, public)) if DhGroup::from(kg) == g => Some((h, public)),
            _ => {
                return Err(Error::failed(format!(
                    "peer chose DH group {} for the CHILD_SA but sent no KE of it",
                    g.raw()
                )));
            }
        },
        (_, c) => {
            return Err(Error::failed(format!(
                "peer chose DH group {} for the CHILD_SA, not the one we sent",
                c.raw()
            )));
        }
    };
    let new = NewChild {
        cfg: p.cfg,
        chosen,
        inbound_spi: p.inbound_spi,
        outbound_spi,
        local_ts: tsi,
        remote_ts: tsr,
        we_initiated: true,
        defer_outbound: false,
    };
    child::install(sa, ctx, new, ni, nr, pfs)
}

/// As initiator, request the connection's further CHILD SAs one by one
/// (true if a request went out); once all are done, finish the
/// reauthentication this IKE SA is part of.
pub(crate) fn create_next(sa: &mut IkeSa, ctx: &mut Ctx) -> bool {
    let n = ctx.conns[sa.conn].children.len();
    // Only the IKE SA's initiator brings up the connection's other children.
    // Nor on an IKE SA that is closing (a duplicate, or terminated).
    let next = (0..n).find(|i| sa.initiator && !sa.owed.close && !sa.children_tried.contains(i));
    match next {
        Some(cfg) => {
            sa.children_tried.push(cfg);
            request(sa, ctx, cfg, None, None, false);
            true
        }
        None => {
            if let Some(old) = sa.replaces.take() {
                if sa.children.is_empty() {
                    // Make-before-break: without a CHILD SA on the new IKE
                    // SA the old one stays, and we try again later.
                    ctx.warn(sa.conn, "reauthentication brought up no CHILD SA: keeping the old IKE SA".into());
                    let retry = ctx.retry_delay(ctx.conns[sa.conn].cfg.reauth_time_ms);
                    if let Some(o) = ctx.sas.get_mut(&old) {
                        o.reauth_at = ctx.now + retry;
                    }
                    sa.owed.close = true;
                } else {
                    crate::sa::lifecycle::finish_reauth(sa, ctx, old);
                }
            }
            // Its CHILD SAs are up: an older IKE SA of ours it duplicates
            // goes.
            crate::sa::duplicates::retire_duplicates(sa, ctx);
            false
        }
    }
}

/// CREATE_CHILD_SA for CHILD config `cfg`: a new CHILD SA, or the
/// successor of the one with inbound SPI `rekeys` (section 1.3.3, make
/// before break: the old SA works until the new one is in). With PFS in
/// the ESP proposals, a KE payload of `group` (default: our first). Nothing
/// goes out (and it is logged) if a local step fails.
pub(crate) fn request(
    sa: &mut IkeSa,
    ctx: &mut Ctx,
    cfg: usize,
    rekeys: Option<u32>,
    group: Option<DhGroup>,
    recreate: bool,
) {
    let (local_ts, remote_ts): (Vec<Ts>, Vec<Ts>) = match rekeys.and_then(|old| sa.child(old)) {
        Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
        None => {
            // A new CHILD SA stays within what the policy granted the peer.
            let c = &ctx.conns[sa.conn].children[cfg];
            (Grant::narrow(&c.local_ts, &sa.grant.local_ts), Grant::narrow(&c.remote_ts, &sa.grant.peer_ts))
        }
    };
    if local_ts.is_empty() || remote_ts.is_empty() {
        let name = &ctx.conns[sa.conn].children[cfg].name;
        return ctx.warn(
            sa.conn,
            format!("cannot request CHILD_SA {name}: the policy granted this peer none of its selectors"),
        );
    }
    let esp = match sa.grant.esp(&ctx.conns[sa.conn].children[cfg]) {
        Ok(esp) => esp,
        Err(e) => return ctx.warn(sa.conn, format!("cannot request CHILD_SA: {e}")),
    };
    let group = group.or_else(|| esp.iter().find_map(|p| p.dh.first().copied())).filter(|g| *g != DhGroup::None);
    let spi = ctx.new_requested_esp_spi(sa);
    let nonce = ctx.nonce();
    let mut ps = Vec::new();
    if let Some(old) = rekeys {
        ps.push(Payload::Notify(Notify {
            protocol: ProtocolId::Esp,
            spi: old.to_be_bytes().to_vec(),
            kind: NotifyType::RekeySa,
            data: Vec::new(),
        }));
    }
    ps.push(Payload::Sa(proposal::to_wire(&esp, Kind::Esp, &spi.to_be_bytes(), true)));
    ps.push(Payload::Nonce(nonce.clone()));
    let mut dh = None;
    if let Some(g) = group {
        match ctx.crypto.dh_generate(g) {
            Ok((h, public)) => {
                dh = Some((h, g));
                ps.push(Payload::Ke { group: g.raw(), data: public });
            }
            Err(e) => {
                return ctx.warn(sa.conn, format!("cannot request CHILD_SA: DH group {}: {e:?}", g.raw()));
            }
        }
    }
    ps.push(Payload::TsI(local_ts.clone()));
    ps.push(Payload::TsR(remote_ts.clone()));
    let pending = PendingChild { cfg, inbound_spi: spi, local_ts, remote_ts, nonce: Some(nonce), rekeys, dh, recreate };
    match super::encrypted(sa, ctx, ExchangeType::CreateChildSa, false, sa.window.next_mid, &ps) {
        Ok(d) => {
            let name = &ctx.conns[sa.conn].children[cfg].name;
            let msg = match rekeys {
                Some(old) => format!("rekeying CHILD_SA {name} {old:08x}"),
                None => format!("requesting CHILD_SA {name}"),
            };
            ctx.info(sa.conn, msg);
            super::request(sa, ctx, InFlight::CreateChild(pending), d);
        }
        Err(e) => {
            if let Some((h, _)) = dh {
                ctx.crypto.destroy(h);
            }
            ctx.warn(sa.conn, format!("cannot request CHILD_SA: {e}"));
        }
    }
}

/// As the rekey's initiator: ask for a successor of CHILD SA `pos`.
pub(crate) fn start_rekey(sa: &mut IkeSa, ctx: &mut Ctx, pos: usize) {
    let child = &mut sa.children[pos];
    child.rekey_at = 0;
    let (cfg, old) = (child.cfg, child.inbound_spi);
    request(sa, ctx, cfg, Some(old), None, false);
}

/// As initiator: the answer to our CREATE_CHILD_SA (a new CHILD SA or a rekey).
pub(crate) fn response(sa: &mut IkeSa, ctx: &mut Ctx, pending: PendingChild, ps: Vec<Payload>) -> Fate {
    // Section 1.3.1: the responder wants another DH group for PFS.
    if let Some(n) = find_notify(&ps, NotifyType::InvalidKePayload) {
        let want = notify_u16(n).map(DhGroup::from);
        let ours = sa.grant.esp(&ctx.conns[sa.conn].children[pending.cfg]).unwrap_or_default();
        let sent = pending.dh.map(|d| d.1);
        if let Some(g) = want.filter(|g| Some(*g) != sent && ours.iter().any(|c| c.dh.contains(g))) {
            if let Some((h, _)) = pending.dh {
                ctx.crypto.destroy(h);
            }
            ctx.info(sa.conn, format!("peer wants DH group {} for the CHILD_SA, retrying", g.raw()));
            request(sa, ctx, pending.cfg, pending.rekeys, Some(g), pending.recreate);
            return Fate::Keep;
        }
    }
    let ni = pending.nonce.clone().unwrap_or_default();
    let (rekeys, recreating, cfg, new_inbound) = (pending.rekeys, pending.recreate, pending.cfg, pending.inbound_spi);
    let r = match nonce(&ps) {
        Some(nr) => complete(sa, ctx, pending, &Answer { ps: &ps, ni: &ni, nr: &nr, in_auth: false }),
        None if first_error(&ps).is_some() => {
            complete(sa, ctx, pending, &Answer { ps: &ps, ni: &ni, nr: &[], in_auth: false })
        }
        None => {
            if let Some((h, _)) = pending.dh {
                ctx.crypto.destroy(h);
            }
            Err(Error::failed("CREATE_CHILD_SA response without a nonce"))
        }
    };
    let rekey_time = ctx.conns[sa.conn].children[cfg].life.rekey_time;
    match (r, rekeys) {
        (Err(e), Some(old)) => {
            ctx.warn(sa.conn, format!("CHILD_SA rekey failed, keeping the old SA: {e}"));
            // Try again later (section 2.25: not at once, and not in step
            // with the peer); the old SA still carries traffic.
            let retry = ctx.retry_delay(rekey_time);
            let expired = sa.owed.delete_queue.iter().any(|q| q.0 == old);
            match sa.child_mut(old) {
                Some(c) if !c.replaced => c.rekey_at = ctx.now + retry,
                Some(_) => {}
                // Our old SA expired meanwhile: create the CHILD SA anew.
                None if expired => child::recreate_later(sa, cfg),
                // The peer deleted it: re-creating it is the peer's call.
                None => {}
            }
        }
        (Err(e), None) => {
            ctx.warn(sa.conn, format!("CHILD_SA not created: {e}"));
            if recreating {
                // Its predecessor expired: the tunnel needs it back.
                child::recreate_later(sa, cfg);
                sa.owed.recreate_at = ctx.now + ctx.retry_delay(rekey_time);
            }
        }
        (Ok(()), Some(old)) => rekeyed(sa, ctx, old, new_inbound, &ni, &ps),
        (Ok(()), None) => {}
    }
    if sa.established() && sa.request.is_none() {
        create_next(sa, ctx);
    }
    Fate::Keep
}

/// Our rekey of CHILD SA `old` made `new_inbound`: delete the old one, or,
/// after a simultaneous rekey we lost (section 2.8.1: the SA created with
/// the lowest of the four nonces is redundant and its creator deletes it),
/// our new one.
fn rekeyed(sa: &mut IkeSa, ctx: &mut Ctx, old: u32, new_inbound: u32, ni: &[u8], ps: &[Payload]) {
    let mut delete = old;
    if let Some(c) = sa.collision.take().filter(|c| c.what == old) {
        let their_nr = nonce(ps).unwrap_or_default();
        let lowest = [ni, &their_nr, &c.their_ni, &c.our_nr].into_iter().min().map(<[u8]>::to_vec).unwrap_or_default();
        if lowest == ni || lowest == their_nr {
            delete = new_inbound;
            ctx.count(sa.conn, |s| &mut s.rekey_collisions_lost);
            let msg = format!("rekey collision: our new SA {new_inbound:08x} is redundant (lowest nonce), deleting it");
            ctx.info(sa.conn, msg);
        } else {
            ctx.count(sa.conn, |s| &mut s.rekey_collisions_won);
            ctx.info(sa.conn, format!("rekey collision won: keeping {new_inbound:08x}, deleting the old SA"));
        }
    }
    let Some(c) = sa.child_mut(delete) else {
        // The old SA is gone already (the peer deleted it, or it expired
        // and its DELETE is queued).
        return;
    };
    c.replaced = true;
    c.rekey_at = 0;
    ctx.count(sa.conn, |s| &mut s.child_rekeys);
    // Section 1.3.3: the new SA is in place; now delete the old one.
    let del = [Payload::Delete(wasmsec_wire::ike::Delete {
        protocol: ProtocolId::Esp,
        spi_size: 4,
        spis: vec![delete.to_be_bytes().to_vec()],
    })];
    if let Err(e) = super::send_request(sa, ctx, ExchangeType::Informational, InFlight::DeleteChild(delete), &del) {
        ctx.warn(sa.conn, format!("cannot delete the rekeyed SA: {e}"));
    }
}

/// As responder: a CREATE_CHILD_SA request.
pub(crate) fn respond(sa: &mut IkeSa, ctx: &mut Ctx, h: Header, ps: Vec<Payload>) -> Fate {
    let mid = h.message_id;
    let ike_rekey =
        ps.iter().any(|p| matches!(p, Payload::Sa(props) if props.iter().any(|x| x.protocol == ProtocolId::Ike)));
    let rekey_spi =
        find_notify(&ps, NotifyType::RekeySa).filter(|n| n.protocol == ProtocolId::Esp).and_then(|n| esp_spi(&n.spi));
    // The peer names its inbound SPI: our outbound.
    let known = rekey_spi.and_then(|old| sa.children.iter().find(|c| c.outbound_spi == old)).map(|c| c.inbound_spi);
    // Section 2.25.1: a rekey of a CHILD SA we are closing.
    let closing = rekey_spi.is_some_and(|old| {
        sa.owed.delete_queue.iter().any(|d| d.1 == old) || known.is_some_and(|x| sa.deleting_child(x))
    });
    let out = if ike_rekey {
        super::rekey_ike::respond(sa, ctx, &ps)
    } else if sa.rekeying_ike() || closing {
        // Section 2.25.2: no new or rekeyed CHILD SAs while we rekey the
        // IKE SA; section 2.25.1: nor a rekey of an SA we are deleting.
        ctx.count(sa.conn, |s| &mut s.temporary_failures);
        vec![Payload::notify(NotifyType::TemporaryFailure, Vec::new())]
    } else if let (Some(old), None) = (rekey_spi, known) {
        vec![Payload::Notify(Notify {
            protocol: ProtocolId::Esp,
            spi: old.to_be_bytes().to_vec(),
            kind: NotifyType::ChildSaNotFound,
            data: Vec::new(),
        })]
    } else if let Some(ni) = nonce(&ps) {
        answer(sa, ctx, &ps, ni, rekey_spi.is_some(), known)
    } else {
        ctx.stats.malformed += 1;
        vec![Payload::notify(NotifyType::InvalidSyntax, Vec::new())]
    };
    super::respond_encrypted(sa, ctx, ExchangeType::CreateChildSa, mid, &out);
    Fate::Keep
}

/// Accept a new or rekeyed CHILD SA (`ours`: our inbound SPI of the SA it
/// rekeys) and build the answer.
fn answer(sa: &mut IkeSa, ctx: &mut Ctx, ps: &[Payload], ni: Vec<u8>, rekey: bool, ours: Option<u32>) -> Vec<Payload> {
    let nr = ctx.nonce();
    // Section 2.8.1: the peer rekeys the SA we are rekeying too. Answer as
    // usual; the nonces decide later which new SA is redundant.
    let colliding = ours.filter(|x| sa.rekeying_child() == Some(*x));
    let defer = rekey || ctx.has_twin(sa.conn, &sa.peer_id);
    match accept(sa, ctx, ps, &ni, &nr, false, defer) {
        Ok(mut child) => {
            // Recorded only for an answer that made an SA: the tie-break
            // compares the nonces of two successful exchanges.
            if let Some(x) = colliding {
                sa.collision = Some(Collision { what: x, their_ni: ni, our_nr: nr.clone() });
            }
            // The old SA now only waits for the initiator's DELETE; if that
            // never comes (the peer gave up), it goes by itself.
            let deadline = ctx.now + ctx.retransmit_span();
            let (rekeying, conn) = (sa.rekeying_child(), sa.conn);
            if let Some(c) = ours.and_then(|x| sa.child_mut(x)) {
                c.replaced = true;
                ctx.count(conn, |s| &mut s.child_rekeys);
                c.expire_at = if c.expire_at == 0 { deadline } else { c.expire_at.min(deadline) };
                if rekeying != Some(c.inbound_spi) {
                    c.rekey_at = 0;
                }
            }
            child.insert(1, Payload::Nonce(nr));
            child
        }
        Err(e) => {
            ctx.warn(sa.conn, format!("CHILD_SA not created: {e}"));
            let (n, data) = e.notify().unwrap_or((NotifyType::NoProposalChosen, Vec::new()));
            vec![Payload::notify(n, data)]
        }
    }
}
