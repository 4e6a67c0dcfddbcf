//! INFORMATIONAL (RFC 7296 section 1.4): DELETE of CHILD SAs and of the
//! IKE SA, and liveness checks (section 2.4).
use wasmsec_wire::ike::{Delete, ExchangeType, Header, Payload, ProtocolId};

use super::payloads::esp_spi;
use crate::ctx::{Ctx, Fate};
use crate::sa::child::{self, DELETED_INBOUND_LINGER_MS};
use crate::sa::lifecycle;
use crate::sa::state::{IkeSa, InFlight, State};

/// Send DELETE for the IKE SA itself (section 1.4.1).
pub(crate) fn send_delete_ike(sa: &mut IkeSa, ctx: &mut Ctx) {
    let del = [Payload::Delete(Delete { protocol: ProtocolId::Ike, spi_size: 0, spis: Vec::new() })];
    match super::send_request(sa, ctx, ExchangeType::Informational, InFlight::DeleteIke, &del) {
        Ok(()) => sa.state = State::Deleting,
        Err(e) => ctx.warn(sa.conn, format!("cannot send DELETE: {e}")),
    }
}

/// An empty INFORMATIONAL request proves the peer alive (section 2.4).
pub(crate) fn send_liveness_check(sa: &mut IkeSa, ctx: &mut Ctx) {
    ctx.count(sa.conn, |s| &mut s.dpd_checks);
    if let Err(e) = super::send_request(sa, ctx, ExchangeType::Informational, InFlight::Liveness, &[]) {
        ctx.warn(sa.conn, format!("cannot send liveness check: {e}"));
    }
}

/// DELETE for the CHILD SAs past their hard lifetime.
pub(crate) fn send_delete_expired(sa: &mut IkeSa, ctx: &mut Ctx) {
    let spis: Vec<Vec<u8>> = sa.owed.delete_queue.iter().filter(|q| !q.2).map(|q| q.0.to_be_bytes().to_vec()).collect();
    let del = [Payload::Delete(Delete { protocol: ProtocolId::Esp, spi_size: 4, spis })];
    match super::send_request(sa, ctx, ExchangeType::Informational, InFlight::DeleteExpired, &del) {
        Ok(()) => sa.owed.delete_queue.iter_mut().for_each(|q| q.2 = true),
        Err(e) => {
            sa.owed.delete_queue.clear();
            ctx.warn(sa.conn, format!("cannot send DELETE: {e}"));
        }
    }
}

/// As responder: an INFORMATIONAL request.
pub(crate) fn respond(sa: &mut IkeSa, ctx: &mut Ctx, h: Header, ps: Vec<Payload>) -> Fate {
    let mid = h.message_id;
    let mut delete_ike = false;
    let mut ours_deleted = Vec::new();
    let mut any_deleted = false;
    for p in &ps {
        let Payload::Delete(d) = p else { continue };
        match d.protocol {
            ProtocolId::Ike => delete_ike = true,
            ProtocolId::Esp => {
                for spi in d.spis.iter().filter_map(|s| esp_spi(s)) {
                    // Section 2.25.1: an SA we are deleting ourselves is
                    // answered without a Delete payload.
                    if let Some(pos) = sa.owed.delete_queue.iter().position(|q| q.1 == spi) {
                        if !sa.owed.delete_queue[pos].2 {
                            sa.owed.delete_queue.remove(pos);
                        }
                        continue;
                    }
                    // The peer names its inbound SPI: our outbound.
                    let Some(pos) = sa.children.iter().position(|c| c.outbound_spi == spi) else { continue };
                    let inbound = sa.children[pos].inbound_spi;
                    if !sa.deleting_child(inbound) {
                        ours_deleted.push(inbound.to_be_bytes().to_vec());
                    }
                    // Section 2.8: the rekey's initiator deletes the old SA
                    // once it sends on the new one; ours may start now. The
                    // new outbound SA goes in before the old one goes out,
                    // so that no packet finds neither.
                    if !any_deleted {
                        child::activate_deferred(sa, ctx, u64::MAX);
                    }
                    any_deleted = true;
                    child::remove(sa, ctx, inbound, "deleted by the peer", DELETED_INBOUND_LINGER_MS);
                }
            }
            _ => {}
        }
    }
    let out = if delete_ike || ours_deleted.is_empty() {
        Vec::new()
    } else {
        vec![Payload::Delete(Delete { protocol: ProtocolId::Esp, spi_size: 4, spis: ours_deleted })]
    };
    super::respond_encrypted(sa, ctx, ExchangeType::Informational, mid, &out);
    if !delete_ike {
        return Fate::Keep;
    }
    // Section 2.8.2: the peer won a simultaneous IKE rekey and deletes the
    // old SA; its new SA takes the CHILD SAs, if they are still here.
    if let Some(c) = sa.ike_collision.take() {
        lifecycle::adopt_children(sa, ctx, c.what);
    }
    child::activate_twins(sa, ctx);
    Fate::Drop("peer sent DELETE".into())
}
