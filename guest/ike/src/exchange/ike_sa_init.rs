//! IKE_SA_INIT (RFC 7296 section 1.2): proposals, Diffie-Hellman, nonces,
//! NAT detection (section 2.23), COOKIEs (section 2.6), INVALID_KE_PAYLOAD.
use std::net::IpAddr;

use wasmsec_wire::ike::{self, DhGroup, ExchangeType, Header, Message, NotifyType, Payload};

use super::payloads::{find_notify, first_error, notify_u16, sa_ke_nonce};
use crate::ctx::{Ctx, Fate, notify_name};
use crate::error::Error;
use crate::output::{Datagram, Endpoint, IKE_PORT, NAT_T_PORT};
use crate::proposal::{self, Kind};
use crate::sa::state::{IkeSa, InFlight, State};

/// Our NAT_DETECTION_SOURCE_IP. With encapsulation forced (`encap`), the
/// hash of no address of ours (each byte inverted), as strongSwan's
/// `encap = yes` does: the peer then sees a NAT in front of us and puts its
/// ESP in UDP too (section 2.23). Before, it sent raw ESP while we sent
/// ESP in UDP, which a peer or a path that passes only UDP does not carry.
fn source_hash(spi_i: u64, spi_r: u64, ep: &Endpoint, force_encap: bool) -> Vec<u8> {
    let h = nat_hash(spi_i, spi_r, ep);
    if force_encap { h.into_iter().map(|b| !b).collect() } else { h }
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | Port) (section 2.23).
fn nat_hash(spi_i: u64, spi_r: u64, ep: &Endpoint) -> Vec<u8> {
    let mut h = sha1_smol::Sha1::new();
    h.update(&spi_i.to_be_bytes());
    h.update(&spi_r.to_be_bytes());
    match ep.addr {
        IpAddr::V4(a) => h.update(&a.octets()),
        IpAddr::V6(a) => h.update(&a.octets()),
    }
    h.update(&ep.port.to_be_bytes());
    h.digest().bytes().to_vec()
}

/// Initiate connection `conn` to its first remote address.
pub(crate) fn initiate(ctx: &mut Ctx, conn: usize) -> Result<(), Error> {
    let c = &ctx.conns[conn].cfg;
    let remote = *c
        .remote_addrs
        .first()
        .ok_or_else(|| Error::Admin(format!("connection {:?} has no remote address to initiate to", c.name)))?;
    let local = c.local_addrs.first().copied().unwrap_or(match remote {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    });
    start(ctx, conn, local, remote, None)
}

/// A new IKE SA as initiator, in the table; `replaces`: the IKE SA (our
/// SPI) that it reauthenticates.
pub(crate) fn start(
    ctx: &mut Ctx,
    conn: usize,
    local: IpAddr,
    remote: IpAddr,
    replaces: Option<u64>,
) -> Result<(), Error> {
    let group = ctx.conns[conn].ike[0].dh[0];
    let spi = ctx.new_spi();
    let mut sa = IkeSa {
        initiator: true,
        spi_i: spi,
        spi_r: 0,
        state: State::InitSent,
        dh_group: group,
        ni: ctx.nonce(),
        replaces,
        ..IkeSa::fresh(
            conn,
            Endpoint { addr: local, port: IKE_PORT },
            Endpoint { addr: remote, port: IKE_PORT },
            ctx.now,
        )
    };
    ctx.info(conn, format!("initiating IKE_SA to {remote}"));
    send(&mut sa, ctx)?;
    ctx.count(sa.conn, |s| &mut s.handshakes_started);
    ctx.sas.insert(spi, sa);
    Ok(())
}

/// Send (again, after a COOKIE or INVALID_KE_PAYLOAD) our IKE_SA_INIT.
fn send(sa: &mut IkeSa, ctx: &mut Ctx) -> Result<(), Error> {
    if let Some(old) = sa.dh.take() {
        ctx.crypto.destroy(old);
    }
    let (dh, public) = ctx
        .crypto
        .dh_generate(sa.dh_group)
        .map_err(|e| Error::failed(format!("DH group {}: {e:?}", sa.dh_group.raw())))?;
    sa.dh = Some(dh);
    let c = &ctx.conns[sa.conn];
    let mut ps = Vec::new();
    if let Some(cookie) = &sa.init.cookie {
        ps.push(Payload::notify(NotifyType::Cookie, cookie.clone()));
    }
    ps.push(Payload::Sa(proposal::to_wire(&c.ike, Kind::Ike, &[], true)));
    ps.push(Payload::Ke { group: sa.dh_group.raw(), data: public });
    ps.push(Payload::Nonce(sa.ni.clone()));
    ps.push(Payload::notify(NotifyType::NatDetectionSourceIp, source_hash(sa.spi_i, 0, &sa.local, c.cfg.force_encap)));
    ps.push(Payload::notify(NotifyType::NatDetectionDestinationIp, nat_hash(sa.spi_i, 0, &sa.remote)));
    let m = Message { header: super::header(sa, ExchangeType::IkeSaInit, false, 0), payloads: ps };
    let data = m.emit();
    sa.init.request = data.clone();
    sa.window.next_mid = 0;
    sa.state = State::InitSent;
    super::request(sa, ctx, InFlight::Init, Datagram { local: sa.local, remote: sa.remote, data });
    Ok(())
}

/// An unencrypted error response to an IKE_SA_INIT request.
fn error_response(ctx: &mut Ctx, h: &Header, d: &Datagram, n: NotifyType, data: Vec<u8>) {
    let hdr = Header { spi_r: 0, flags: ike::FLAG_RESPONSE, ..*h };
    let m = Message { header: hdr, payloads: vec![Payload::notify(n, data)] };
    ctx.emit(Datagram { local: d.local, remote: d.remote, data: m.emit() });
}

/// The first connection whose addresses match.
fn connection_for(ctx: &Ctx, local: &Endpoint, remote: &Endpoint) -> Option<usize> {
    ctx.conns.for_addrs(&local.addr, &remote.addr)
}

/// As responder: a new IKE_SA_INIT request (SPIr 0, Message ID 0).
pub(crate) fn respond(ctx: &mut Ctx, h: Header, d: Datagram) {
    if let Some((id, _)) = ctx.dos.half_open.get(&(d.remote, h.spi_i)).copied()
        && let Some(sa) = ctx.sas.get(&id)
    {
        if sa.init.request == d.data {
            let resp = Datagram { local: d.local, remote: d.remote, data: sa.init.response.clone() };
            ctx.stats.replayed_responses += 1;
            ctx.emit(resp);
        } else {
            ctx.stats.unexpected += 1;
        }
        return;
    }
    if !ctx.dos.allow_init_from(ctx.now, d.remote.addr, ctx.timing.init_per_source) {
        ctx.stats.rate_limited += 1;
        return;
    }
    let Ok(m) = Message::parse(&d.data) else {
        ctx.stats.malformed += 1;
        return;
    };
    if let Some(k) = super::payloads::unknown_critical(&m.payloads) {
        ctx.stats.malformed += 1;
        return error_response(ctx, &h, &d, NotifyType::UnsupportedCriticalPayload, vec![k]);
    }
    let Some(conn) = connection_for(ctx, &d.local, &d.remote) else {
        // No connection to count it for: the totals only.
        ctx.stats.no_proposal += 1;
        let msg = format!(
            "IKE_SA_INIT from {}:{} matches no connection (local {})",
            d.remote.addr, d.remote.port, d.local.addr
        );
        ctx.out.log(crate::output::Level::Warn, "", msg);
        return error_response(ctx, &h, &d, NotifyType::NoProposalChosen, Vec::new());
    };
    let Some(offer) = sa_ke_nonce(&m.payloads) else {
        ctx.stats.malformed += 1;
        return;
    };
    // Section 2.6: under load, state is only created for initiators that
    // prove they receive at their address, before any DH work.
    // Room for what this SA would hold: the request, and a response of
    // about its size.
    if !ctx.dos.fits(d.remote.addr, 2 * d.data.len(), ctx.timing) {
        ctx.stats.half_open_drops += 1;
        return;
    }
    if ctx.dos.half_open.len() >= ctx.timing.cookie_threshold {
        let got = match m.payloads.first() {
            Some(Payload::Notify(n)) if n.kind == NotifyType::Cookie => Some(n.data.clone()),
            _ => None,
        };
        if let Some(cookie) = ctx.crypto.cookie(h.spi_i, &offer.nonce, d.remote.addr, got.as_deref()) {
            ctx.stats.cookies_sent += 1;
            return error_response(ctx, &h, &d, NotifyType::Cookie, cookie);
        }
    }
    let ours = &ctx.conns[conn].ike;
    let Some((chosen, num, _)) = proposal::select(&offer.proposals, ours, Kind::Ike, false) else {
        ctx.count(conn, |s| &mut s.no_proposal);
        let msg = format!(
            "no acceptable IKE proposal: peer {} offered {}, we accept {}",
            d.remote.addr,
            proposal::Display(&offer.proposals),
            proposal::Display(&proposal::to_wire(ours, Kind::Ike, &[], true))
        );
        ctx.warn(conn, msg);
        return error_response(ctx, &h, &d, NotifyType::NoProposalChosen, Vec::new());
    };
    if DhGroup::from(offer.group) != chosen.dh {
        // Section 1.2: tell the initiator which group we want.
        let msg = format!("peer sent KE for group {}, we chose {}: INVALID_KE_PAYLOAD", offer.group, chosen.dh.raw());
        ctx.info(conn, msg);
        return error_response(ctx, &h, &d, NotifyType::InvalidKePayload, chosen.dh.raw().to_be_bytes().to_vec());
    }
    let spi_r = ctx.new_spi();
    let nat_src = find_notify(&m.payloads, NotifyType::NatDetectionSourceIp).map(|n| n.data.clone());
    let nat_dst = find_notify(&m.payloads, NotifyType::NatDetectionDestinationIp).map(|n| n.data.clone());
    let nat_remote = nat_src.is_some_and(|x| x != nat_hash(h.spi_i, 0, &d.remote));
    let nat_local = nat_dst.is_some_and(|x| x != nat_hash(h.spi_i, 0, &d.local));
    let nr = ctx.nonce();
    let (dh, public) = match ctx.crypto.dh_generate(chosen.dh) {
        Ok(x) => x,
        Err(e) => return ctx.warn(conn, format!("DH group {} failed: {e:?}", chosen.dh.raw())),
    };
    let suite = chosen.ike_suite();
    let kx = super::key_exchange(&suite, (dh, &offer.public), (&offer.nonce, &nr), (h.spi_i, spi_r), false);
    let keys = match ctx.crypto.derive_ike_sa(None, &kx) {
        Ok(k) => k,
        Err(e) => {
            ctx.stats.malformed += 1;
            ctx.warn(conn, format!("key derivation failed ({e:?}): bad KE payload from {}", d.remote.addr));
            return error_response(ctx, &h, &d, NotifyType::InvalidSyntax, Vec::new());
        }
    };
    let mut sa = IkeSa {
        initiator: false,
        spi_i: h.spi_i,
        spi_r,
        state: State::InitDone,
        suite: Some(chosen),
        keys: Some(keys),
        dh_group: chosen.dh,
        ni: offer.nonce,
        nr: nr.clone(),
        nat_local,
        nat_remote,
        ..IkeSa::fresh(conn, d.local, d.remote, ctx.now)
    };
    sa.init.request = d.data.clone();
    sa.window.peer_next_mid = 1;
    let force_encap = ctx.conns[conn].cfg.force_encap;
    let ps = vec![
        Payload::Sa(vec![proposal::chosen_to_wire(&chosen, Kind::Ike, num, &[])]),
        Payload::Ke { group: chosen.dh.raw(), data: public },
        Payload::Nonce(nr),
        Payload::notify(NotifyType::NatDetectionSourceIp, source_hash(h.spi_i, spi_r, &d.local, force_encap)),
        Payload::notify(NotifyType::NatDetectionDestinationIp, nat_hash(h.spi_i, spi_r, &d.remote)),
    ];
    let resp = Message { header: super::header(&sa, ExchangeType::IkeSaInit, true, 0), payloads: ps }.emit();
    sa.init.response = resp.clone();
    let nat = match (nat_local, nat_remote) {
        (false, false) => "",
        (true, false) => ", we are behind a NAT",
        (false, true) => ", peer is behind a NAT",
        (true, true) => ", NAT on both sides",
    };
    let msg = format!("IKE_SA_INIT from {}:{}: chose {}{nat}", d.remote.addr, d.remote.port, chosen.name(Kind::Ike));
    ctx.info(conn, msg);
    ctx.emit(Datagram { local: d.local, remote: d.remote, data: resp });
    ctx.count(sa.conn, |s| &mut s.handshakes_started);
    ctx.dos.remember(d.remote, h.spi_i, spi_r, sa.init.request.len() + sa.init.response.len());
    ctx.sas.insert(spi_r, sa);
}

/// As initiator: the responder's answer to our IKE_SA_INIT.
pub(crate) fn response(sa: &mut IkeSa, ctx: &mut Ctx, h: Header, d: Datagram) -> Fate {
    let Ok(m) = Message::parse(&d.data) else {
        ctx.stats.malformed += 1;
        return Fate::Keep;
    };
    if let Some(n) = find_notify(&m.payloads, NotifyType::Cookie) {
        // Section 2.6: repeat the request with the cookie first.
        sa.init.cookie = Some(n.data.clone());
        if let Err(e) = send(sa, ctx) {
            ctx.warn(sa.conn, e.to_string());
        }
        return Fate::Keep;
    }
    if let Some(n) = find_notify(&m.payloads, NotifyType::InvalidKePayload) {
        let want = notify_u16(n).map(DhGroup::from);
        let ours = &ctx.conns[sa.conn].ike;
        match want.filter(|g| *g != sa.dh_group && ours.iter().any(|p| p.dh.contains(g))) {
            Some(g) => {
                ctx.info(sa.conn, format!("peer wants DH group {} (INVALID_KE_PAYLOAD), retrying", g.raw()));
                sa.dh_group = g;
                if let Err(e) = send(sa, ctx) {
                    ctx.warn(sa.conn, e.to_string());
                }
                return Fate::Keep;
            }
            None => {
                ctx.count(sa.conn, |s| &mut s.no_proposal);
                let want = want.map(DhGroup::raw);
                return Fate::Drop(format!("peer asked for DH group {want:?}, which we do not offer"));
            }
        }
    }
    if let Some(e) = first_error(&m.payloads) {
        if e == NotifyType::NoProposalChosen {
            ctx.count(sa.conn, |s| &mut s.no_proposal);
            let ours = proposal::Display(&proposal::to_wire(&ctx.conns[sa.conn].ike, Kind::Ike, &[], true)).to_string();
            return Fate::Drop(format!("peer answered NO_PROPOSAL_CHOSEN to our IKE proposals {ours}"));
        }
        return Fate::Drop(format!("peer answered {}", notify_name(e)));
    }
    let Some(answer) = sa_ke_nonce(&m.payloads) else {
        ctx.stats.malformed += 1;
        return Fate::Drop("IKE_SA_INIT response lacks SA, KE or Nonce".into());
    };
    let Some((chosen, _)) = proposal::check_answer(&answer.proposals, &ctx.conns[sa.conn].ike, Kind::Ike, false) else {
        ctx.count(sa.conn, |s| &mut s.no_proposal);
        return Fate::Drop(format!("peer chose {}, which we did not offer", proposal::Display(&answer.proposals)));
    };
    if chosen.dh != sa.dh_group || DhGroup::from(answer.group) != sa.dh_group {
        ctx.stats.malformed += 1;
        return Fate::Drop("peer's KE group differs from the one we sent".into());
    }
    sa.spi_r = h.spi_r;
    let nat_src = find_notify(&m.payloads, NotifyType::NatDetectionSourceIp).map(|n| n.data.clone());
    let nat_dst = find_notify(&m.payloads, NotifyType::NatDetectionDestinationIp).map(|n| n.data.clone());
    sa.nat_remote = nat_src.is_some_and(|x| x != nat_hash(sa.spi_i, sa.spi_r, &d.remote));
    sa.nat_local = nat_dst.is_some_and(|x| x != nat_hash(sa.spi_i, sa.spi_r, &d.local));
    let Some(dh) = sa.dh.take() else { return Fate::Drop("no DH value".into()) };
    let suite = chosen.ike_suite();
    let kx = super::key_exchange(&suite, (dh, &answer.public), (&sa.ni, &answer.nonce), (sa.spi_i, sa.spi_r), true);
    sa.keys = match ctx.crypto.derive_ike_sa(None, &kx) {
        Ok(k) => Some(k),
        Err(e) => return Fate::Drop(format!("key derivation failed: {e:?}")),
    };
    sa.nr = answer.nonce;
    sa.init.response = d.data.clone();
    sa.suite = Some(chosen);
    sa.request = None;
    // Section 2.23: with a NAT in the path, move to port 4500.
    if sa.encap(ctx.conns[sa.conn].cfg.force_encap) {
        sa.local.port = NAT_T_PORT;
        sa.remote.port = NAT_T_PORT;
    }
    sa.local.addr = d.local.addr;
    ctx.info(sa.conn, format!("IKE_SA_INIT done: {}", chosen.name(Kind::Ike)));
    match super::ike_auth::request(sa, ctx) {
        Ok((dg, pending)) => {
            sa.state = State::AuthSent;
            super::request(sa, ctx, InFlight::Auth(pending), dg);
            Fate::Keep
        }
        Err(e) => Fate::Drop(e.to_string()),
    }
}
