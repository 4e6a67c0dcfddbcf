//! The engine's policy question on the WIT side: its request in the
//! `wasmsec:policy/types` representation, the host's decision back.
use wasmsec_ike::identity::Show;
use wasmsec_ike::output::Endpoint;
use wasmsec_ike::{AuthorizeRequest, Decision, Grant, ts};
use wasmsec_wire::ike::{IdType, Identification};

use crate::bindings::wasmsec::ike::authorizer;
use crate::bindings::wasmsec::policy::types as wit;

fn identity(id: &Identification) -> wit::Identity {
    let hex = || id.data.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (kind, value) = match id.id_type {
        IdType::Ipv4Addr => (wit::IdKind::Ipv4, Show(id).to_string()),
        IdType::Ipv6Addr => (wit::IdKind::Ipv6, Show(id).to_string()),
        IdType::Fqdn => (wit::IdKind::Fqdn, Show(id).to_string()),
        IdType::Rfc822Addr => (wit::IdKind::Rfc822, Show(id).to_string()),
        IdType::DerAsn1Dn => (wit::IdKind::DerDn, hex()),
        _ => (wit::IdKind::KeyId, hex()),
    };
    wit::Identity { kind, value }
}

fn endpoint(e: &Endpoint) -> String {
    std::net::SocketAddr::new(e.addr, e.port).to_string()
}

/// Ask the host (see `wasmsec:ike/authorizer`).
pub fn authorize(ike_spi: u64, r: &AuthorizeRequest) -> Decision {
    let request = wit::AuthorizeRequest {
        connection: r.connection.clone(),
        peer: identity(&r.peer),
        auth: wit::AuthMethod::Psk,
        peer_address: endpoint(&r.peer_address),
        local_address: endpoint(&r.local_address),
        peer_ts: r.peer_ts.iter().map(wasmsec_ike::ts::show).collect(),
        local_ts: r.local_ts.iter().map(wasmsec_ike::ts::show).collect(),
    };
    match authorizer::authorize(ike_spi, &request) {
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
