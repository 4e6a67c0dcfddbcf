//! The engine's policy question on the WIT side: its request in the
//! `wasmsec:policy/types` representation, the host's decision back.
use wasmsec_ike::identity::{PolicyIdKind, for_policy};
use wasmsec_ike::output::Endpoint;
use wasmsec_ike::{AuthorizeRequest, Decision, Grant, ts};
use wasmsec_wire::ike::Identification;

use crate::bindings::wasmsec::ike::authorizer;
use crate::bindings::wasmsec::policy::types as wit;

fn identity(id: &Identification) -> wit::Identity {
    let (kind, value) = for_policy(id);
    let kind = match kind {
        PolicyIdKind::Ipv4 => wit::IdKind::Ipv4,
        PolicyIdKind::Ipv6 => wit::IdKind::Ipv6,
        PolicyIdKind::Fqdn => wit::IdKind::Fqdn,
        PolicyIdKind::Rfc822 => wit::IdKind::Rfc822,
        PolicyIdKind::DerDn => wit::IdKind::DerDn,
        PolicyIdKind::KeyId => wit::IdKind::KeyId,
    };
    wit::Identity { kind, value }
}

fn endpoint(e: &Endpoint) -> String {
    std::net::SocketAddr::new(e.addr, e.port).to_string()
}

/// Ask the host (see `wasmsec:ike/authorizer`).
pub fn authorize(sa: u64, ike_spi: u64, r: &AuthorizeRequest) -> Decision {
    let request = wit::AuthorizeRequest {
        connection: r.connection.clone(),
        peer: identity(&r.peer),
        auth: wit::AuthMethod::Psk,
        peer_address: endpoint(&r.peer_address),
        local_address: endpoint(&r.local_address),
        peer_ts: r.peer_ts.iter().map(wasmsec_ike::ts::show).collect(),
        local_ts: r.local_ts.iter().map(wasmsec_ike::ts::show).collect(),
    };
    match authorizer::authorize(sa, ike_spi, &request) {
        wit::Decision::Accept(g) => grant(g).map_or_else(Decision::Reject, Decision::Accept),
        wit::Decision::Reject(why) => Decision::Reject(why),
    }
}

/// The host's grant in the engine's types; the host checked it, so a
/// subnet that does not parse here is a refusal, not a guess.
fn grant(g: wit::Grant) -> Result<Grant, String> {
    let subnets = |v: &[String]| -> Result<Vec<_>, String> {
        v.iter().map(|s| ts::from_cidr(s).map_err(|e| format!("policy grant: subnet {s:?}: {e}"))).collect()
    };
    Ok(Grant {
        peer_ts: subnets(&g.peer_subnets)?,
        local_ts: subnets(&g.local_subnets)?,
        tenant: g.tenant,
        esp_proposals: g.esp_proposals,
        child_rekey_time_ms: u64::from(g.child_rekey_time_s) * 1000,
        child_life_time_ms: u64::from(g.child_life_time_s) * 1000,
    })
}
