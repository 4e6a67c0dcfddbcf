//! Example policy module: admit a peer only if its identity is on a list
//! and the subnets it asks for (its traffic selectors) are within the
//! ones listed for it. Users copy this crate, edit `RULES` and `CASES`,
//! build it with `cargo xtask build`, and drop the `.wasm` into the
//! daemon's policy directory (see the README's policy guide).
//!
//! A policy has no imports at all: no clock, no I/O, no keys. It sees the
//! authenticated identity, the addresses and the selectors, and answers.
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

use std::net::IpAddr;

use bindings::exports::wasmsec::policy::decide::Guest;
use bindings::wasmsec::policy::types::{AuthMethod, AuthorizeRequest, Decision, Grant, IdKind, Identity, SaEvent};

/// Who may connect: an identity (`*.` matches a whole domain) and the
/// subnets its side may use.
struct Rule {
    id: &'static str,
    subnets: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule { id: "*.interop.test", subnets: &["198.18.0.0/15"] },
    Rule { id: "*.wasmsec.test", subnets: &["10.0.0.0/8", "192.168.0.0/16"] },
];

fn id_matches(pat: &str, name: &str) -> bool {
    match pat.strip_prefix("*.") {
        Some(domain) => name.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')),
        None => name.eq_ignore_ascii_case(pat),
    }
}

/// An address range from `a.b.c.d/n` or `first..last` (a `[proto/ports]`
/// suffix is ignored: ports do not widen what a subnet allows).
fn range(s: &str) -> Option<(IpAddr, IpAddr)> {
    let s = s.split('[').next()?;
    if let Some((a, b)) = s.split_once("..") {
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    let (a, len) = s.split_once('/')?;
    let (a, len): (IpAddr, u32) = (a.parse().ok()?, len.parse().ok()?);
    let bits = if a.is_ipv4() { 32 } else { 128 };
    if len > bits {
        return None;
    }
    let n = match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    };
    let host = if len == bits { 0 } else { (1u128 << (bits - len)) - 1 };
    let (lo, hi) = (n & !host, n | host);
    Some(match a {
        IpAddr::V4(_) => (std::net::Ipv4Addr::from(lo as u32).into(), std::net::Ipv4Addr::from(hi as u32).into()),
        IpAddr::V6(_) => (std::net::Ipv6Addr::from(lo).into(), std::net::Ipv6Addr::from(hi).into()),
    })
}

fn within(ts: &str, subnets: &[&str]) -> bool {
    let Some((lo, hi)) = range(ts) else { return false };
    subnets.iter().filter_map(|s| range(s)).any(|(a, b)| a.is_ipv4() == lo.is_ipv4() && a <= lo && hi <= b)
}

fn decide(r: &AuthorizeRequest) -> Decision {
    if !matches!(r.peer.kind, IdKind::Fqdn | IdKind::Rfc822) {
        return Decision::Reject(format!("identity kind {:?} is not allowed by this policy", r.peer.kind));
    }
    let name = r.peer.value.to_ascii_lowercase();
    let Some(rule) = RULES.iter().find(|rule| id_matches(rule.id, &name)) else {
        return Decision::Reject(format!("identity {name:?} is not on the allow list"));
    };
    match r.peer_ts.iter().find(|ts| !within(ts, rule.subnets)) {
        Some(ts) => Decision::Reject(format!("{name} may not use {ts} (allowed: {})", rule.subnets.join(", "))),
        // Accepted: its CHILD SAs are also narrowed to its subnets (what
        // it proposed is within them; a later CREATE_CHILD_SA stays so).
        None => Decision::Accept(Grant {
            tenant: String::new(),
            peer_subnets: rule.subnets.iter().map(|s| s.to_string()).collect(),
            local_subnets: Vec::new(),
            esp_proposals: String::new(),
            child_rekey_time_s: 0,
            child_life_time_s: 0,
        }),
    }
}

/// The author's own cases, run by the host before the module serves.
fn self_test() -> Result<(), String> {
    let ask = |id: &str, ts: &str| {
        let r = AuthorizeRequest {
            connection: "self-test".into(),
            peer: Identity { kind: IdKind::Fqdn, value: id.into() },
            auth: AuthMethod::Psk,
            peer_address: "192.0.2.1:500".into(),
            local_address: "192.0.2.2:500".into(),
            peer_ts: vec![ts.into()],
            local_ts: vec![],
        };
        matches!(decide(&r), Decision::Accept(_))
    };
    let cases = [
        ("gwa.interop.test", "198.18.1.0/24", true),
        ("GWA.Interop.Test", "198.18.1.0..198.18.1.9[6/443-443]", true),
        ("gwa.interop.test", "10.1.0.0/16", false),
        ("interop.test", "198.18.1.0/24", false),
        ("evil.example", "198.18.1.0/24", false),
        ("a.wasmsec.test", "192.168.7.0/24", true),
    ];
    for (id, ts, want) in cases {
        if ask(id, ts) != want {
            return Err(format!("{id} asking for {ts}: expected {}", if want { "accept" } else { "reject" }));
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
