//! Example policy module for an edge PoP: which tenant a peer belongs to,
//! decided by the local address it came to (a PoP that gives each tenant
//! an address of its own) or else by the domain of its identity
//! (`gw1.a.wasmsec.test` is tenant `a`'s). A peer that maps to no tenant
//! is refused. The host holds the answer against the connection the peer
//! came in on: naming another tenant than the connection's is refused
//! too, so a peer of tenant `a` cannot come in on tenant `b`'s
//! connection even with `b`'s PSK. Users copy this crate and edit
//! `BY_LOCAL_ADDRESS`, `BY_DOMAIN` and `self_test`; the README's policy
//! guide has the rest.
#![deny(unsafe_code)] // generated bindings below are the only exception

#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        generate_all,
    });
}

use std::net::{IpAddr, SocketAddr};

use bindings::exports::wasmsec::policy::decide::Guest;
use bindings::wasmsec::policy::types::{AuthMethod, AuthorizeRequest, Decision, Grant, IdKind, Identity, SaEvent};

/// Local addresses that belong to one tenant: checked first, since the
/// address a peer reached is the operator's, the identity is the peer's.
const BY_LOCAL_ADDRESS: &[(&str, &str)] = &[("192.0.2.20", "b")];

/// Identity domains and their tenants: a name in the domain or below it
/// (`x.a.wasmsec.test`, `ops@a.wasmsec.test`), compared without case.
const BY_DOMAIN: &[(&str, &str)] = &[("a.wasmsec.test", "a"), ("b.wasmsec.test", "b")];

/// The domain part of an FQDN or RFC 822 identity, in lower case.
fn domain_of(id: &Identity) -> Option<String> {
    let v = id.value.to_ascii_lowercase();
    match id.kind {
        IdKind::Fqdn => Some(v),
        IdKind::Rfc822 => v.rsplit_once('@').map(|(_, d)| d.to_string()),
        _ => None,
    }
}

/// `name` is `domain` or a name below it (a label boundary, so
/// `pb.wasmsec.test` is not in `b.wasmsec.test`).
fn in_domain(name: &str, domain: &str) -> bool {
    name == domain || name.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
}

/// The tenant of a peer, or why it has none.
fn tenant_of(r: &AuthorizeRequest) -> Result<&'static str, String> {
    // "address:port", with brackets around an IPv6 address.
    let local: Option<IpAddr> = r.local_address.parse::<SocketAddr>().map(|a| a.ip()).ok();
    if let Some(&(_, t)) = BY_LOCAL_ADDRESS.iter().find(|(a, _)| a.parse::<IpAddr>().ok() == local && local.is_some()) {
        return Ok(t);
    }
    let domain = domain_of(&r.peer);
    match domain.as_deref().and_then(|d| BY_DOMAIN.iter().find(|(dom, _)| in_domain(d, dom))) {
        Some(&(_, t)) => Ok(t),
        None => Err(format!(
            "identity {:?} (local address {}) maps to no tenant of this policy",
            r.peer.value, r.local_address
        )),
    }
}

fn decide(r: &AuthorizeRequest) -> Decision {
    match tenant_of(r) {
        // Everything else as the connection says: this module only sorts
        // peers into tenants (see the allow-list for subnets).
        Ok(tenant) => Decision::Accept(Grant {
            tenant: tenant.to_string(),
            peer_subnets: Vec::new(),
            local_subnets: Vec::new(),
            esp_proposals: String::new(),
            child_rekey_time_s: 0,
            child_life_time_s: 0,
        }),
        Err(why) => Decision::Reject(why),
    }
}

/// The author's own cases, run by the host before the module serves.
fn self_test() -> Result<(), String> {
    let ask = |kind: IdKind, id: &str, local: &str| {
        let r = AuthorizeRequest {
            connection: "self-test".into(),
            peer: Identity { kind, value: id.into() },
            auth: AuthMethod::Psk,
            peer_address: "198.51.100.1:500".into(),
            local_address: local.into(),
            peer_ts: vec![],
            local_ts: vec![],
        };
        match decide(&r) {
            Decision::Accept(g) => g.tenant,
            Decision::Reject(_) => String::new(),
        }
    };
    let pop = "192.0.2.10:500";
    let cases = [
        (IdKind::Fqdn, "gw1.a.wasmsec.test", pop, "a"),
        (IdKind::Fqdn, "GW1.B.Wasmsec.Test", pop, "b"),
        (IdKind::Fqdn, "a.wasmsec.test", pop, "a"),
        (IdKind::Rfc822, "ops@b.wasmsec.test", pop, "b"),
        (IdKind::Fqdn, "pb.wasmsec.test", pop, ""),
        (IdKind::Fqdn, "evil.example", pop, ""),
        (IdKind::Ipv4, "198.51.100.1", pop, ""),
        // The local address decides before the identity does.
        (IdKind::Fqdn, "gw1.a.wasmsec.test", "192.0.2.20:4500", "b"),
        (IdKind::Ipv4, "198.51.100.1", "192.0.2.20:500", "b"),
    ];
    for (kind, id, local, want) in cases {
        let got = ask(kind, id, local);
        if got != want {
            return Err(format!("{id} at {local}: expected tenant {want:?} (\"\": refused), got {got:?}"));
        }
    }
    Ok(())
}

struct Policy;

impl Guest for Policy {
    fn authorize(request: AuthorizeRequest) -> Decision {
        decide(&request)
    }

    fn on_event(_event: SaEvent) {}

    fn self_test() -> Result<(), String> {
        self_test()
    }
}

#[allow(unsafe_code)]
mod export {
    use crate::Policy;
    crate::bindings::export!(Policy with_types_in crate::bindings);
}
