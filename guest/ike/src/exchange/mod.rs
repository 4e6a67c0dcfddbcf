//! The exchanges (RFC 7296 section 1), one module each, and what they
//! share: building and protecting messages, the request in flight and its
//! retransmission (section 2.1), the response cache and Message ID window
//! (section 2.2), and dispatching an authentic request or response to its
//! exchange.
pub(crate) mod create_child;
pub(crate) mod ike_auth;
pub(crate) mod ike_sa_init;
pub(crate) mod informational;
pub(crate) mod payloads;
pub(crate) mod rekey_ike;

use wasmsec_wire::ike::{self, ExchangeType, Header, NotifyType, Payload};

use crate::crypto::{Handle, IkeSuite, KeyExchange};
use crate::ctx::{Ctx, Fate};
use crate::error::Error;
use crate::output::{Datagram, SaChange};
use crate::sa::state::{IkeSa, InFlight, Request, State};

/// Our header for a message on this IKE SA.
/// The inputs of an IKE SA's key derivation (RFC 7296 sections 2.14,
/// 2.18): the initiator's and responder's nonces and SPIs, in that order.
pub(crate) fn key_exchange<'a>(
    suite: &'a IkeSuite,
    (dh, peer_public): (Handle, &'a [u8]),
    (ni, nr): (&'a [u8], &'a [u8]),
    (spi_i, spi_r): (u64, u64),
    we_initiated: bool,
) -> KeyExchange<'a> {
    KeyExchange { suite, dh, peer_public, ni, nr, spi_i, spi_r, we_initiated }
}

pub(crate) fn header(sa: &IkeSa, exchange: ExchangeType, response: bool, mid: u32) -> Header {
    let mut flags = ike::FLAG_INITIATOR * u8::from(sa.initiator);
    if response {
        flags |= ike::FLAG_RESPONSE;
    }
    Header {
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        next_payload: ike::PayloadType::None,
        version: ike::VERSION,
        exchange,
        flags,
        message_id: mid,
        length: 0,
    }
}

/// A whole message with these payloads in an Encrypted payload (section
/// 3.14), protected by the host with the IKE SA's keys.
pub(crate) fn encrypted(
    sa: &IkeSa,
    ctx: &mut Ctx,
    exchange: ExchangeType,
    response: bool,
    mid: u32,
    ps: &[Payload],
) -> Result<Datagram, Error> {
    let keys = sa.keys.ok_or_else(|| Error::failed("no keys yet"))?;
    let mut inner = Vec::new();
    let first = ike::emit_chain(ps, &mut inner);
    let h = header(sa, exchange, response, mid).to_bytes();
    let data = ctx
        .crypto
        .encrypt(keys, sa.initiator, &h, first, &inner)
        .map_err(|e| Error::failed(format!("crypto operation failed: {e:?}")))?;
    Ok(Datagram { local: sa.local, remote: sa.remote, data })
}

/// Send a request and arm its retransmission.
pub(crate) fn request(sa: &mut IkeSa, ctx: &mut Ctx, exchange: InFlight, datagram: Datagram) {
    let mid = sa.window.next_mid;
    sa.window.next_mid += 1;
    ctx.emit(datagram.clone());
    let next_at = ctx.now + ctx.timing.retransmit_base_ms;
    sa.request = Some(Request { exchange, mid, datagram, tries: 1, next_at });
}

/// Build an encrypted request with the next Message ID and send it.
pub(crate) fn send_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx,
    exchange: ExchangeType,
    in_flight: InFlight,
    ps: &[Payload],
) -> Result<(), Error> {
    let d = encrypted(sa, ctx, exchange, false, sa.window.next_mid, ps)?;
    request(sa, ctx, in_flight, d);
    Ok(())
}

pub(crate) fn respond(sa: &mut IkeSa, ctx: &mut Ctx, mid: u32, d: Datagram) {
    sa.window.last_response = Some((mid, d.clone()));
    sa.window.peer_next_mid = mid + 1;
    ctx.emit(d);
}

pub(crate) fn respond_encrypted(sa: &mut IkeSa, ctx: &mut Ctx, exchange: ExchangeType, mid: u32, ps: &[Payload]) {
    match encrypted(sa, ctx, exchange, true, mid, ps) {
        Ok(d) => respond(sa, ctx, mid, d),
        Err(e) => ctx.warn(sa.conn, format!("cannot build response: {e}")),
    }
}

/// Retransmit the request in flight when due (section 2.1); true when the
/// last try is used up and the peer is presumed dead.
pub(crate) fn retransmit(sa: &mut IkeSa, ctx: &mut Ctx) -> bool {
    let Some(r) = sa.request.as_mut() else { return false };
    if ctx.now < r.next_at {
        return false;
    }
    if r.tries >= ctx.timing.retransmit_tries {
        return true;
    }
    r.tries += 1;
    r.next_at = ctx.now + (ctx.timing.retransmit_base_ms << (r.tries - 1).min(16));
    let d = r.datagram.clone();
    ctx.stats.retransmits += 1;
    ctx.emit(d);
    false
}

/// Why an Encrypted message could not be read.
enum Unreadable {
    /// Not authentic (or no keys): dropped and counted.
    Dropped,
    /// Authentic but unparseable inside: INVALID_SYNTAX (section 2.21.2).
    Syntax,
}

/// Decrypt and parse an Encrypted message.
fn open(sa: &IkeSa, ctx: &mut Ctx, h: &Header, d: &Datagram) -> Result<Vec<Payload>, Unreadable> {
    let Some(keys) = sa.keys else { return Err(Unreadable::Dropped) };
    if h.next_payload != ike::PayloadType::Sk || d.data.len() < ike::HEADER_LEN + 4 {
        ctx.stats.malformed += 1;
        return Err(Unreadable::Dropped);
    }
    let inner = match ctx.crypto.decrypt(keys, h.is_initiator(), &d.data, ike::HEADER_LEN) {
        Ok(i) => i,
        Err(_) => {
            ctx.stats.integrity_failed += 1;
            return Err(Unreadable::Dropped);
        }
    };
    let first = ike::PayloadType::from(d.data[ike::HEADER_LEN]);
    ike::parse_chain(first, &inner).map_err(|_| {
        ctx.stats.malformed += 1;
        Unreadable::Syntax
    })
}

/// NAT-T (RFC 3948, section 2.23): follow the peer to where it sends from.
/// With a NAT in front of the peer, its public address may change too.
fn follow_peer(sa: &mut IkeSa, ctx: &mut Ctx, d: &Datagram) {
    if sa.remote == d.remote || (sa.remote.addr != d.remote.addr && !sa.nat_remote) {
        return;
    }
    let old = sa.remote;
    sa.remote = d.remote;
    sa.local = d.local;
    if sa.established() {
        let inbound_spis = sa.children.iter().map(|c| c.inbound_spi).collect();
        ctx.out.sa_changes.push_back(SaChange::PeerMoved { inbound_spis, remote: d.remote });
        let msg = format!(
            "peer moved from {}:{} to {}:{} (NAT mapping changed)",
            old.addr, old.port, d.remote.addr, d.remote.port
        );
        ctx.info(sa.conn, msg);
    }
}

/// A request from the peer on an existing IKE SA.
pub(crate) fn request_received(sa: &mut IkeSa, ctx: &mut Ctx, h: Header, d: Datagram) -> Fate {
    // Section 2.2: a retransmitted request gets the same response again.
    if let Some((mid, resp)) = &sa.window.last_response
        && h.message_id == *mid
    {
        let resp = resp.clone();
        ctx.stats.replayed_responses += 1;
        ctx.emit(resp);
        return Fate::Keep;
    }
    if h.message_id != sa.window.peer_next_mid {
        ctx.stats.unexpected += 1;
        return Fate::Keep;
    }
    let ps = match open(sa, ctx, &h, &d) {
        Ok(ps) => {
            sa.last_rx = ctx.now;
            ps
        }
        Err(Unreadable::Syntax) => {
            let e = [Payload::notify(NotifyType::InvalidSyntax, Vec::new())];
            respond_encrypted(sa, ctx, h.exchange, h.message_id, &e);
            return Fate::Keep;
        }
        Err(Unreadable::Dropped) => return Fate::Keep,
    };
    if let Some(k) = payloads::unknown_critical(&ps) {
        ctx.stats.malformed += 1;
        let e = [Payload::notify(NotifyType::UnsupportedCriticalPayload, vec![k])];
        respond_encrypted(sa, ctx, h.exchange, h.message_id, &e);
        return Fate::Keep;
    }
    follow_peer(sa, ctx, &d);
    match (h.exchange, sa.state) {
        (ExchangeType::IkeAuth, State::InitDone) => ike_auth::respond(sa, ctx, h, ps),
        (ExchangeType::Informational, State::Established | State::Deleting) => informational::respond(sa, ctx, h, ps),
        (ExchangeType::CreateChildSa, State::Established) => create_child::respond(sa, ctx, h, ps),
        (ExchangeType::CreateChildSa, State::Deleting) => {
            // Section 2.25.2: we are closing this IKE SA.
            ctx.count(sa.conn, |s| &mut s.temporary_failures);
            let tf = [Payload::notify(NotifyType::TemporaryFailure, Vec::new())];
            respond_encrypted(sa, ctx, ExchangeType::CreateChildSa, h.message_id, &tf);
            Fate::Keep
        }
        (exchange, state) => {
            ctx.stats.unexpected += 1;
            ctx.warn(sa.conn, format!("unexpected exchange {exchange} in state {state:?}"));
            Fate::Keep
        }
    }
}

/// The peer's response to our request in flight.
pub(crate) fn response_received(sa: &mut IkeSa, ctx: &mut Ctx, h: Header, d: Datagram) -> Fate {
    if sa.request.as_ref().is_none_or(|r| r.mid != h.message_id) {
        ctx.stats.unexpected += 1;
        return Fate::Keep;
    }
    let Ok(ps) = open(sa, ctx, &h, &d) else { return Fate::Keep };
    sa.last_rx = ctx.now;
    let Some(req) = sa.request.take() else { return Fate::Keep };
    match req.exchange {
        InFlight::Auth(pending) => ike_auth::response(sa, ctx, pending, ps),
        InFlight::DeleteIke => {
            // A duplicate's survivor that the peer initiated sends once
            // this one is gone (`sa::duplicates`), as after the peer's DELETE.
            crate::sa::child::activate_twins(sa, ctx);
            Fate::Drop("DELETE acknowledged".into())
        }
        InFlight::RekeyIke(ours) => rekey_ike::response(sa, ctx, ours, ps),
        InFlight::DeleteChild(old) => {
            crate::sa::child::remove(
                sa,
                ctx,
                old,
                "replaced by its rekeyed successor",
                crate::sa::child::DELETED_INBOUND_LINGER_MS,
            );
            Fate::Keep
        }
        InFlight::CreateChild(pending) => create_child::response(sa, ctx, pending, ps),
        InFlight::DeleteExpired => {
            sa.owed.delete_queue.retain(|q| !q.2);
            Fate::Keep
        }
        InFlight::Init | InFlight::Liveness => Fate::Keep,
    }
}
