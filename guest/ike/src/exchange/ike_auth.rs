//! IKE_AUTH (RFC 7296 section 1.2): identities, pre-shared-key AUTH
//! (section 2.15), INITIAL_CONTACT (section 2.4), the first CHILD SA, and
//! AUTH_LIFETIME (RFC 4478).
use wasmsec_wire::ike::{AuthMethod, ExchangeType, Header, Identification, NotifyType, Payload};

use super::payloads::{find_notify, first_error};
use super::{create_child, informational};
use crate::crypto::Handle;
use crate::ctx::{Ctx, Fate, jittered, notify_name};
use crate::error::Error;
use crate::identity::{Identity, Show};
use crate::output::Datagram;
use crate::policy::{AuthorizeRequest, Decision};
use crate::proposal::{self, Kind};
use crate::sa::lifecycle;
use crate::sa::state::{IkeSa, InitMessages, PendingChild, State};

/// The peer's AUTH payload: a PSK MIC (the one method we take) that the host
/// verifies (in constant time) with the connection's key, `real_message`
/// and `nonce` as section 2.15 pairs them. The host then holds the IKE SA
/// as authenticated with that key, and keys CHILD SAs from it only for that
/// connection.
struct PeerAuth<'a> {
    method: AuthMethod,
    data: &'a [u8],
    real_message: &'a [u8],
    nonce: &'a [u8],
    id_body: &'a [u8],
}

fn verified(ctx: &mut Ctx, keys: Handle, psk: Handle, a: PeerAuth) -> bool {
    a.method == AuthMethod::SharedKeyMic
        && ctx.crypto.verify_psk_auth(keys, psk, a.real_message, a.nonce, a.id_body, a.data) == Ok(true)
}

/// The policy question about the peer `peer` of `sa`, with the selectors
/// of the IKE_AUTH message `ps`: TSi is the initiator's side, TSr the
/// responder's, whichever of them is the peer.
fn policy_request(sa: &IkeSa, ctx: &Ctx, peer: &Identification, ps: &[Payload]) -> AuthorizeRequest {
    let (tsi, tsr) = super::payloads::sa_tsi_tsr(ps).map(|(_, i, r)| (i, r)).unwrap_or_default();
    let (peer_ts, local_ts) = if sa.initiator { (tsr, tsi) } else { (tsi, tsr) };
    AuthorizeRequest {
        connection: ctx.conns[sa.conn].cfg.name.clone(),
        peer: peer.clone(),
        peer_address: sa.remote,
        local_address: sa.local,
        peer_ts,
        local_ts,
    }
}

/// The AUTH_LIFETIME notify for our IKE_AUTH response, if we want the
/// initiator to reauthenticate.
fn auth_lifetime(ctx: &Ctx, conn: usize) -> Option<Payload> {
    let t = ctx.conns[conn].cfg.reauth_time_ms;
    (t > 0).then(|| Payload::notify(NotifyType::AuthLifetime, ((t / 1000).max(1) as u32).to_be_bytes().to_vec()))
}

/// As initiator: our IKE_AUTH request with the first CHILD SA.
pub(crate) fn request(sa: &mut IkeSa, ctx: &mut Ctx) -> Result<(Datagram, PendingChild), Error> {
    let c = &ctx.conns[sa.conn];
    let Identity::Id(idi) = c.local_id.clone() else {
        return Err(Error::failed("no local identity"));
    };
    let keys = sa.keys.ok_or_else(|| Error::failed("no keys"))?;
    let psk = c.cfg.psk;
    let auth = ctx
        .crypto
        .psk_auth(keys, psk, &sa.init.request, &sa.nr, &idi.body())
        .map_err(|e| Error::failed(format!("crypto operation failed: {e:?}")))?;
    let spi = ctx.new_requested_esp_spi(sa);
    // Section 2.4: INITIAL_CONTACT says this is the only IKE SA with the
    // peer, who drops the others at once. Not when reauthenticating, nor
    // beside another IKE SA with the peer in any state (a second
    // initiation, or the peer initiating at the same time): the old one
    // must live until the new one has its CHILD SAs, and then goes by a
    // DELETE (`sa::duplicates`). The peer is its address (any SA there,
    // up or not) and, where the connection names it, its identity: an
    // IKE SA the peer authenticated from another of its addresses counts
    // too, or our INITIAL_CONTACT would drop that one at the peer while we
    // kept it.
    let me = sa.our_spi();
    let named = match &ctx.conns[sa.conn].remote_id {
        Identity::Id(id) => ctx.sas.with_identity(sa.conn, &id.body(), |_| true),
        Identity::Any => Vec::new(),
    };
    let at_addr = ctx.sas.with_peer(sa.conn, sa.remote.addr, |_| true);
    let alone = at_addr.iter().chain(&named).all(|&k| k == me);
    let initial_contact = sa.replaces.is_none() && alone;
    let c = &ctx.conns[sa.conn];
    let child = &c.children[0];
    let mut ps = vec![Payload::IdI(idi)];
    if initial_contact {
        ps.push(Payload::notify(NotifyType::InitialContact, Vec::new()));
    }
    if let Identity::Id(idr) = &c.remote_id {
        ps.push(Payload::IdR(idr.clone()));
    }
    ps.push(Payload::Auth { method: AuthMethod::SharedKeyMic, data: auth });
    ps.push(Payload::Sa(proposal::to_wire(&child.esp, Kind::Esp, &spi.to_be_bytes(), false)));
    ps.push(Payload::TsI(child.local_ts.clone()));
    ps.push(Payload::TsR(child.remote_ts.clone()));
    sa.children_tried = vec![0];
    let pending = PendingChild {
        cfg: 0,
        inbound_spi: spi,
        local_ts: child.local_ts.clone(),
        remote_ts: child.remote_ts.clone(),
        nonce: None,
        rekeys: None,
        dh: None,
        recreate: false,
    };
    let d = super::encrypted(sa, ctx, ExchangeType::IkeAuth, false, sa.window.next_mid, &ps)?;
    Ok((d, pending))
}

/// Answer AUTHENTICATION_FAILED (or INVALID_SYNTAX) and drop the half-open SA.
fn refuse(sa: &mut IkeSa, ctx: &mut Ctx, mid: u32, n: NotifyType, why: &str) -> Fate {
    super::respond_encrypted(sa, ctx, ExchangeType::IkeAuth, mid, &[Payload::notify(n, Vec::new())]);
    Fate::Drop(why.into())
}

/// As responder: the initiator's IKE_AUTH.
pub(crate) fn respond(sa: &mut IkeSa, ctx: &mut Ctx, h: Header, ps: Vec<Payload>) -> Fate {
    let id = sa.spi_r;
    let mid = h.message_id;
    let (Some(idi), Some((method, auth))) = id_and_auth(&ps, true) else {
        ctx.stats.malformed += 1;
        return refuse(sa, ctx, mid, NotifyType::InvalidSyntax, "IKE_AUTH without IDi or AUTH");
    };
    // Pick the connection by identity among those matching the addresses
    // (and the IKE proposal already chosen): one that names this identity
    // wins over a `%any` one, whichever IKE_SA_INIT matched first, as
    // strongSwan picks the best match (RFC 7296 section 2.15 leaves it to
    // the implementation).
    let named = |c: &crate::config::Connection| matches!(c.remote_id, Identity::Id(_)) && c.remote_id.matches(&idi);
    if !ctx.conns[sa.conn].remote_id.matches(&idi) || !named(&ctx.conns[sa.conn]) {
        let suite = sa.suite;
        let fits = |c: &crate::config::Connection| {
            c.remote_id.matches(&idi)
                && c.matches_addrs(&sa.local.addr, &sa.remote.addr)
                && suite.is_some_and(|s| {
                    let offer = [proposal::chosen_to_wire(&s, Kind::Ike, 1, &[])];
                    proposal::check_answer(&offer, &c.ike, Kind::Ike, false).is_some()
                })
        };
        let alt = ctx.conns.naming(&idi, |c| named(c) && fits(c)).or_else(|| {
            // No connection names it: the one IKE_SA_INIT chose, if it takes
            // any identity, else the first that does (one that names this
            // identity would have been found above).
            if ctx.conns[sa.conn].remote_id.matches(&idi) { Some(sa.conn) } else { ctx.conns.taking_any_id(fits) }
        });
        match alt {
            Some(c) => sa.conn = c,
            None => {
                ctx.count(sa.conn, |s| &mut s.auth_failed);
                let want = ctx.conns[sa.conn].remote_id.to_string();
                let msg = format!("peer identity {} does not match the configured remote id {want}", Show(&idi));
                ctx.warn(sa.conn, msg);
                return refuse(sa, ctx, mid, NotifyType::AuthenticationFailed, "AUTHENTICATION_FAILED (identity)");
            }
        }
    }
    let conn = sa.conn;
    let psk = ctx.conns[conn].cfg.psk;
    let Some(keys) = sa.keys else { return Fate::Drop("no keys".into()) };
    let peer_auth =
        PeerAuth { method, data: &auth, real_message: &sa.init.request, nonce: &sa.nr, id_body: &idi.body() };
    if !verified(ctx, keys, psk, peer_auth) {
        ctx.count(sa.conn, |s| &mut s.auth_failed);
        let method_note = if method != AuthMethod::SharedKeyMic {
            format!(" (method {}, we expect PSK)", method.raw())
        } else {
            String::new()
        };
        let msg = format!(
            "AUTH from {} ({}) does not verify{method_note}: wrong pre-shared key?",
            Show(&idi),
            sa.remote.addr
        );
        ctx.warn(conn, msg);
        return refuse(sa, ctx, mid, NotifyType::AuthenticationFailed, "AUTHENTICATION_FAILED");
    }
    // The peer is who it says: now the operator's policy decides.
    let request = policy_request(sa, ctx, &idi, &ps);
    match ctx.crypto.authorize(keys, id, &request) {
        Decision::Reject(why) => {
            ctx.count(conn, |s| &mut s.policy_rejected);
            ctx.warn(conn, format!("policy refused {} ({}): {why}", Show(&idi), sa.remote.addr));
            return refuse(sa, ctx, mid, NotifyType::AuthenticationFailed, "AUTHENTICATION_FAILED (policy)");
        }
        Decision::Accept(grant) => sa.grant = grant,
    }
    let Identity::Id(our_id) = ctx.conns[conn].local_id.clone() else {
        return Fate::Drop("no local identity".into());
    };
    let our_auth = match ctx.crypto.psk_auth(keys, psk, &sa.init.response, &sa.ni, &our_id.body()) {
        Ok(a) => a,
        Err(e) => return Fate::Drop(format!("AUTH computation failed: {e:?}")),
    };
    let mut out = vec![Payload::IdR(our_id), Payload::Auth { method: AuthMethod::SharedKeyMic, data: our_auth }];
    out.extend(auth_lifetime(ctx, sa.conn));
    // The nonces' last use: the first CHILD SA's keys (section 2.17). A
    // rekey brings its own, so the IKE SA (one per tunnel) keeps none.
    let (ni, nr) = (std::mem::take(&mut sa.ni), std::mem::take(&mut sa.nr));
    // A second IKE SA from this peer (its identity, from any address)
    // without INITIAL_CONTACT: it is reauthenticating. Send on the new
    // CHILD SA only once the old IKE SA is gone (or after a moment), as
    // after a CHILD SA rekey.
    let initial_contact = find_notify(&ps, NotifyType::InitialContact).is_some();
    let defer = !initial_contact && ctx.has_twin(sa.conn, &idi.body());
    match create_child::accept(sa, ctx, &ps, &ni, &nr, true, defer) {
        Ok(child_payloads) => out.extend(child_payloads),
        Err(e) => {
            // Section 1.2: the IKE SA stands even if the CHILD SA fails.
            ctx.warn(conn, format!("CHILD_SA not created: {e}"));
            if let Some((n, data)) = e.notify() {
                out.push(Payload::notify(n, data));
            }
        }
    }
    ctx.dos.forget(id);
    if initial_contact {
        replace_old_sas(sa, ctx, &idi);
    }
    established(sa, ctx, &idi, "responder");
    // Its CHILD SA is up: a duplicate of ours may go (`sa::duplicates`).
    crate::sa::duplicates::retire_duplicates(sa, ctx);
    super::respond_encrypted(sa, ctx, ExchangeType::IkeAuth, mid, &out);
    Fate::Keep
}

/// INITIAL_CONTACT (section 2.4): the peer has no other IKE SAs with us,
/// so ours with the same identity are stale: those authenticated before
/// this IKE SA's IKE_SA_INIT came. One that came up since is the peer's
/// own or ours from two ends initiating at once (its INITIAL_CONTACT may
/// have been lost and sent again); `sa::duplicates` ends such a pair by a
/// DELETE, where dropping it here would leave the peer holding it alone.
/// By identity, not address (the section speaks of the authenticated
/// identities): a peer that restarts behind a NAT which gave it another
/// address replaces its stale SAs, and one of several peers behind the
/// same NAT address replaces only its own.
fn replace_old_sas(new: &IkeSa, ctx: &mut Ctx, peer: &Identification) {
    let stale =
        ctx.sas.with_identity(new.conn, &peer.body(), |s| s.established() && s.authenticated_at < new.created_at);
    for k in stale {
        if let Some(old) = ctx.sas.remove(&k) {
            lifecycle::drop_sa(old, ctx, &format!("replaced: {} sent INITIAL_CONTACT", Show(peer)));
        }
    }
}

/// IKE_AUTH verified, the IKE SA is up (section 1.2): its rekey and
/// reauthentication are scheduled, and the IKE_SA_INIT messages AUTH signed
/// are freed (a retransmitted IKE_AUTH request gets the cached response).
fn established(sa: &mut IkeSa, ctx: &mut Ctx, peer: &Identification, role: &str) {
    sa.state = State::Established;
    sa.authenticated_at = ctx.now;
    sa.peer_id = peer.body();
    ctx.count(sa.conn, |s| &mut s.ike_established);
    lifecycle::schedule_ike_rekey(sa, ctx);
    lifecycle::schedule_reauth(sa, ctx);
    sa.init = InitMessages::default();
    let suite = sa.suite.map(|s| s.name(Kind::Ike)).unwrap_or_default();
    let (spi, remote) = (sa.our_spi(), sa.remote);
    let msg = format!(
        "IKE_SA {spi:016x} established with {} ({}:{}) as {role}, {suite}",
        Show(peer),
        remote.addr,
        remote.port
    );
    ctx.info(sa.conn, msg);
    ctx.ike_up(sa, false);
}

/// The sender's identity (IDi from the initiator, IDr from the responder)
/// and its AUTH payload (method and data), if present.
fn id_and_auth(ps: &[Payload], from_initiator: bool) -> (Option<Identification>, Option<(AuthMethod, Vec<u8>)>) {
    let (mut id, mut auth) = (None, None);
    for p in ps {
        match p {
            Payload::IdI(i) if from_initiator => id = Some(i.clone()),
            Payload::IdR(i) if !from_initiator => id = Some(i.clone()),
            Payload::Auth { method, data } => auth = Some((*method, data.clone())),
            _ => {}
        }
    }
    (id, auth)
}

/// As initiator: the responder's IKE_AUTH answer.
pub(crate) fn response(sa: &mut IkeSa, ctx: &mut Ctx, pending: PendingChild, ps: Vec<Payload>) -> Fate {
    let conn = sa.conn;
    let (Some(idr), Some((method, auth))) = id_and_auth(&ps, false) else {
        let why = match first_error(&ps) {
            Some(NotifyType::AuthenticationFailed) => {
                ctx.count(sa.conn, |s| &mut s.auth_failed);
                "peer answered AUTHENTICATION_FAILED: check the pre-shared key and both identities".to_string()
            }
            Some(n) => format!("peer answered {}", notify_name(n)),
            None => {
                ctx.stats.malformed += 1;
                "IKE_AUTH response lacks IDr or AUTH".to_string()
            }
        };
        return Fate::Drop(why);
    };
    let c = &ctx.conns[conn];
    if !c.remote_id.matches(&idr) {
        ctx.count(sa.conn, |s| &mut s.auth_failed);
        return Fate::Drop(format!(
            "peer identity {} does not match the configured remote id {}",
            Show(&idr),
            c.remote_id
        ));
    }
    let Some(keys) = sa.keys else { return Fate::Drop("no keys".into()) };
    let psk = c.cfg.psk;
    let peer_auth =
        PeerAuth { method, data: &auth, real_message: &sa.init.response, nonce: &sa.ni, id_body: &idr.body() };
    if !verified(ctx, keys, psk, peer_auth) {
        ctx.count(sa.conn, |s| &mut s.auth_failed);
        return Fate::Drop(format!("AUTH from {} does not verify: wrong pre-shared key?", Show(&idr)));
    }
    // The operator's policy decides for the peers we reach as well: the
    // host derives no CHILD SA keys from an IKE SA it did not accept,
    // whichever side started it.
    let request = policy_request(sa, ctx, &idr, &ps);
    match ctx.crypto.authorize(keys, sa.our_spi(), &request) {
        Decision::Reject(why) => {
            ctx.count(conn, |s| &mut s.policy_rejected);
            ctx.warn(conn, format!("policy refused {} ({}): {why}; deleting the IKE SA", Show(&idr), sa.remote.addr));
            // The peer has the IKE SA up: tell it (RFC 7296 section 1.4.1).
            informational::send_delete_ike(sa, ctx);
            return Fate::Keep;
        }
        Decision::Accept(grant) => sa.grant = grant,
    }
    sa.auth_initiator = true;
    established(sa, ctx, &idr, "initiator");
    // RFC 4478: the responder wants a reauthentication within this many
    // seconds; we start it a little earlier (up to 10 %).
    if let Some(n) = find_notify(&ps, NotifyType::AuthLifetime).filter(|n| n.data.len() == 4) {
        let secs = u64::from(u32::from_be_bytes([n.data[0], n.data[1], n.data[2], n.data[3]]));
        let at = ctx.now + jittered(secs.max(1) * 1000, sa.our_spi().rotate_left(17));
        sa.reauth_at = if sa.reauth_at == 0 { at } else { sa.reauth_at.min(at) };
    }
    // As the responder's: the nonces' last use.
    let (ni, nr) = (std::mem::take(&mut sa.ni), std::mem::take(&mut sa.nr));
    if let Err(e) =
        create_child::complete(sa, ctx, pending, &create_child::Answer { ps: &ps, ni: &ni, nr: &nr, in_auth: true })
    {
        ctx.warn(conn, format!("CHILD_SA not created: {e}"));
    }
    if sa.established() && sa.request.is_none() {
        create_child::create_next(sa, ctx);
    }
    Fate::Keep
}
