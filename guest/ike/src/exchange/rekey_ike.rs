//! CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 sections 1.3.2, 2.18):
//! a new IKE SA from a new DH exchange, SKEYSEED from the old SK_d, the
//! CHILD SAs moving over, and simultaneous rekeys (section 2.8.2).
use wasmsec_wire::ike::{DhGroup, ExchangeType, NotifyType, Payload};

use super::payloads::{find_notify, first_error, notify_u16, sa_ke_nonce};
use crate::crypto::Handle;
use crate::ctx::{Ctx, Fate, notify_name};
use crate::proposal::{self, Chosen, Kind};
use crate::sa::lifecycle;
use crate::sa::state::{Collision, IkeRekey, IkeSa, InFlight, State};

/// As the rekey's initiator: propose a new IKE SA (section 1.3.2). The KE
/// is of the current IKE SA's group unless the responder asked for another
/// one (INVALID_KE_PAYLOAD).
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx, group: Option<DhGroup>) {
    sa.rekey_ike_at = 0;
    let Some(group) = group.or(sa.suite.map(|c| c.dh)) else { return };
    let (dh, public) = match ctx.crypto.dh_generate(group) {
        Ok(x) => x,
        Err(e) => return ctx.warn(sa.conn, format!("cannot rekey the IKE SA: {e:?}")),
    };
    let new_spi = ctx.new_spi();
    let nonce = ctx.nonce();
    let ps = vec![
        Payload::Sa(proposal::to_wire(&ctx.conns[sa.conn].ike, Kind::Ike, &new_spi.to_be_bytes(), true)),
        Payload::Nonce(nonce.clone()),
        Payload::Ke { group: group.raw(), data: public },
    ];
    match super::encrypted(sa, ctx, ExchangeType::CreateChildSa, false, sa.window.next_mid, &ps) {
        Ok(d) => {
            ctx.info(sa.conn, format!("rekeying IKE_SA {:016x}", sa.our_spi()));
            super::request(sa, ctx, InFlight::RekeyIke(IkeRekey { new_spi, dh, group, nonce }), d);
        }
        Err(e) => {
            ctx.crypto.destroy(dh);
            ctx.warn(sa.conn, format!("cannot rekey the IKE SA: {e}"));
        }
    }
}

/// What a new IKE SA of a rekey is made of.
pub(crate) struct Successor {
    /// We sent the rekey request, so we are the new IKE SA's initiator (section 2.18).
    pub initiator: bool,
    /// The new IKE SA's initiator SPI (the rekey requester's).
    pub spi_i: u64,
    /// The new IKE SA's responder SPI.
    pub spi_r: u64,
    /// The negotiated IKE suite.
    pub chosen: Chosen,
    /// The host's handle on the new IKE SA's keys (SK_*). Its nonces are
    /// not kept: the keys are derived, and a PoP holds an IKE SA per tunnel.
    pub keys: Handle,
}

/// The IKE SA that replaces `old`; it takes over the CHILD SAs unless this
/// is the peer's half of a simultaneous rekey (section 2.8.2), which gets
/// them only if it wins.
pub(crate) fn successor(old: &mut IkeSa, ctx: &mut Ctx, s: Successor, take_children: bool) -> IkeSa {
    let mut new = IkeSa {
        initiator: s.initiator,
        spi_i: s.spi_i,
        spi_r: s.spi_r,
        state: State::Established,
        suite: Some(s.chosen),
        keys: Some(s.keys),
        dh_group: s.chosen.dh,
        nat_local: old.nat_local,
        nat_remote: old.nat_remote,
        children_tried: old.children_tried.clone(),
        next_keepalive: old.next_keepalive,
        auth_initiator: old.auth_initiator,
        authenticated_at: old.authenticated_at,
        peer_id: old.peer_id.clone(),
        grant: old.grant.clone(),
        ..IkeSa::fresh(old.conn, old.local, old.remote, ctx.now)
    };
    ctx.count(old.conn, |s| &mut s.ike_established);
    ctx.count(old.conn, |s| &mut s.ike_rekeys);
    if take_children {
        lifecycle::hand_over(old, &mut new, ctx);
        // The old SA only waits for its DELETE now; if that never comes
        // (the peer gave up on it), we delete it ourselves.
        if !s.initiator {
            old.redundant_at = ctx.now + ctx.retransmit_span();
        }
        let msg =
            format!("IKE_SA {:016x} rekeyed: now {:016x}, {}", old.our_spi(), new.our_spi(), s.chosen.name(Kind::Ike));
        ctx.info(new.conn, msg);
    } else {
        let msg = format!(
            "IKE_SA {:016x}: simultaneous rekey (section 2.8.2); new IKE_SA {:016x} waits for the tie-break",
            old.our_spi(),
            new.our_spi()
        );
        ctx.info(new.conn, msg);
    }
    ctx.ike_up(&new, true);
    new
}

/// As responder: answer a rekey of the IKE SA (section 1.3.2); the new SA
/// takes the CHILD SAs, the old one waits for the peer's DELETE.
pub(crate) fn respond(sa: &mut IkeSa, ctx: &mut Ctx, ps: &[Payload]) -> Vec<Payload> {
    let error = |n: NotifyType| vec![Payload::notify(n, Vec::new())];
    let Some(offer) = sa_ke_nonce(ps) else {
        ctx.stats.malformed += 1;
        return error(NotifyType::InvalidSyntax);
    };
    let Some((chosen, num, their_spi)) = proposal::select(&offer.proposals, &ctx.conns[sa.conn].ike, Kind::Ike, false)
    else {
        ctx.count(sa.conn, |s| &mut s.no_proposal);
        let msg = format!("IKE rekey: no acceptable proposal in {}", proposal::Display(&offer.proposals));
        ctx.warn(sa.conn, msg);
        return error(NotifyType::NoProposalChosen);
    };
    if DhGroup::from(offer.group) != chosen.dh {
        return vec![Payload::notify(NotifyType::InvalidKePayload, chosen.dh.raw().to_be_bytes().to_vec())];
    }
    let Ok(spi_i) = <[u8; 8]>::try_from(&their_spi[..]).map(u64::from_be_bytes) else {
        return error(NotifyType::InvalidSyntax);
    };
    // Section 2.25.2: our own rekey of this IKE SA is no obstacle (the
    // nonces decide later, section 2.8.2), but any other exchange of ours
    // on it, a pending CHILD SA deletion, or closing it is.
    let colliding = sa.rekeying_ike();
    if sa.state != State::Established
        || (sa.request.is_some() && !colliding)
        || !sa.owed.delete_queue.is_empty()
        || sa.owed.close
    {
        ctx.count(sa.conn, |s| &mut s.temporary_failures);
        return error(NotifyType::TemporaryFailure);
    }
    let Some(old_keys) = sa.keys else { return error(NotifyType::NoProposalChosen) };
    let Ok((dh, public)) = ctx.crypto.dh_generate(chosen.dh) else { return error(NotifyType::NoProposalChosen) };
    let spi_r = ctx.new_spi();
    let nr = ctx.nonce();
    let suite = chosen.ike_suite();
    let kx = super::key_exchange(&suite, (dh, &offer.public), (&offer.nonce, &nr), (spi_i, spi_r), false);
    let keys = match ctx.crypto.derive_ike_sa(Some(old_keys), &kx) {
        Ok(k) => k,
        Err(e) => {
            ctx.warn(sa.conn, format!("IKE rekey key derivation failed: {e:?}"));
            return error(NotifyType::NoProposalChosen);
        }
    };
    if colliding {
        sa.ike_collision = Some(Collision { what: spi_r, their_ni: offer.nonce.clone(), our_nr: nr.clone() });
    }
    let s = Successor { initiator: false, spi_i, spi_r, chosen, keys };
    let new = successor(sa, ctx, s, !colliding);
    ctx.sas.insert(spi_r, new);
    vec![
        Payload::Sa(vec![proposal::chosen_to_wire(&chosen, Kind::Ike, num, &spi_r.to_be_bytes())]),
        Payload::Nonce(nr),
        Payload::Ke { group: chosen.dh.raw(), data: public },
    ]
}

/// As the rekey's initiator: the answer to our IKE rekey.
pub(crate) fn response(sa: &mut IkeSa, ctx: &mut Ctx, ours: IkeRekey, ps: Vec<Payload>) -> Fate {
    let IkeRekey { new_spi, dh, group, nonce: ni } = ours;
    // Section 1.3.2 with 1.2: the responder wants another DH group.
    if let Some(n) = find_notify(&ps, NotifyType::InvalidKePayload) {
        let want = notify_u16(n).map(DhGroup::from);
        let offered = &ctx.conns[sa.conn].ike;
        if let Some(g) = want.filter(|g| *g != group && offered.iter().any(|c| c.dh.contains(g))) {
            ctx.crypto.destroy(dh);
            ctx.info(sa.conn, format!("peer wants DH group {} for the IKE rekey, retrying", g.raw()));
            start(sa, ctx, Some(g));
            return Fate::Keep;
        }
    }
    let retry_at = ctx.now + ctx.retry_delay(ctx.conns[sa.conn].cfg.rekey_time_ms);
    let failure = first_error(&ps).map(|n| format!("peer answered {}", notify_name(n)));
    let answer = sa_ke_nonce(&ps).and_then(|a| {
        let (chosen, spi) = proposal::check_answer(&a.proposals, &ctx.conns[sa.conn].ike, Kind::Ike, false)?;
        let spi_r = u64::from_be_bytes(<[u8; 8]>::try_from(&spi[..]).ok()?);
        (DhGroup::from(a.group) == chosen.dh).then_some((chosen, spi_r, a.public, a.nonce))
    });
    let derived = match (answer, &failure, sa.keys) {
        (Some((chosen, spi_r, public, nr)), None, Some(old_keys)) => {
            let suite = chosen.ike_suite();
            let kx = super::key_exchange(&suite, (dh, &public), (&ni, &nr), (new_spi, spi_r), true);
            match ctx.crypto.derive_ike_sa(Some(old_keys), &kx) {
                Ok(k) => Ok((chosen, spi_r, nr, k)),
                Err(e) => Err(format!("key derivation failed: {e:?}")),
            }
        }
        (_, f, _) => {
            ctx.crypto.destroy(dh);
            Err(f.clone().unwrap_or_else(|| "malformed or unacceptable answer".into()))
        }
    };
    // The tie-break needs only the nonces: it holds even if the peer's new
    // IKE SA is gone already (the peer may have won and moved on).
    let collision = sa.ike_collision.take();
    let (chosen, spi_r, nr, keys) = match derived {
        Ok(x) => x,
        Err(why) => {
            if let Some(c) = collision {
                // Section 2.8.2: the peer finished its rekey and refused
                // ours; its new IKE SA is the one that stays.
                ctx.count(sa.conn, |s| &mut s.ike_rekey_collisions_lost);
                ctx.info(sa.conn, format!("IKE rekey collision: ours failed ({why}); theirs stays"));
                lifecycle::adopt_children(sa, ctx, c.what);
            } else {
                ctx.warn(sa.conn, format!("IKE rekey failed, keeping the IKE SA: {why}"));
                sa.rekey_ike_at = retry_at;
            }
            return Fate::Keep;
        }
    };
    let ours = Successor { initiator: true, spi_i: new_spi, spi_r, chosen, keys };
    // Section 2.8.2: after a simultaneous rekey, the new IKE SA made with
    // the lowest of the four nonces is deleted by its creator; the other
    // one takes the CHILD SAs, and its creator deletes the old IKE SA.
    if let Some(c) = collision {
        let lowest = [&ni, &nr, &c.their_ni, &c.our_nr].into_iter().min().cloned().unwrap_or_default();
        if lowest == ni || lowest == nr {
            ctx.count(sa.conn, |s| &mut s.ike_rekey_collisions_lost);
            let mut redundant = successor(sa, ctx, ours, false);
            let msg = format!("IKE rekey collision: our new IKE_SA {new_spi:016x} is redundant (lowest nonce)");
            ctx.info(sa.conn, msg);
            super::informational::send_delete_ike(&mut redundant, ctx);
            ctx.sas.insert(new_spi, redundant);
            lifecycle::adopt_children(sa, ctx, c.what);
            // The peer deletes the old IKE SA.
            return Fate::Keep;
        }
        ctx.count(sa.conn, |s| &mut s.ike_rekey_collisions_won);
        let theirs = c.what;
        let msg = format!("IKE rekey collision won: keeping {new_spi:016x}; the peer deletes its {theirs:016x}");
        ctx.info(sa.conn, msg);
        let at = ctx.now + ctx.retransmit_span();
        if let Some(t) = ctx.sas.get_mut(&theirs) {
            t.redundant_at = at;
        }
    }
    let new = successor(sa, ctx, ours, true);
    // Requests the old SA still owed (queued deletions, CHILD SAs to
    // create) go out on the new one.
    ctx.sas.insert(new_spi, new);
    // Section 1.3.2: the old IKE SA is deleted by the rekey's initiator.
    super::informational::send_delete_ike(sa, ctx);
    if sa.state == State::Deleting { Fate::Keep } else { Fate::Drop("replaced by its rekeyed successor".into()) }
}
