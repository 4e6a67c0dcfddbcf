//! Example policy component: admit a peer only if its identity is on a
//! list. Users copy this crate, edit `ALLOWED`, and build it with
//! `cargo xtask build`; the host loads policy components at run time.
//!
//! A policy has no imports at all: no clock, no I/O, no keys. It sees the
//! authenticated identity and answers.
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
use bindings::*;

use exports::wasmsec::policy::decide::{Guest, IdKind, Identity, Verdict};

/// FQDN and e-mail identities allowed to connect; `*.` matches a domain.
const ALLOWED: &[&str] = &["*.interop.test", "*.wasmsec.test"];

fn allowed(name: &str) -> bool {
    ALLOWED.iter().any(|pat| match pat.strip_prefix("*.") {
        Some(domain) => name.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.')),
        None => name.eq_ignore_ascii_case(pat),
    })
}

struct Policy;

impl Guest for Policy {
    fn admit_peer(_connection: String, peer: Identity) -> Verdict {
        match peer.kind {
            IdKind::Fqdn | IdKind::Rfc822 => match std::str::from_utf8(&peer.value) {
                Ok(name) if allowed(&name.to_ascii_lowercase()) => Verdict::Accept,
                Ok(name) => Verdict::Reject(format!("identity {name:?} is not on the allow list")),
                Err(_) => Verdict::Reject("identity is not valid UTF-8".into()),
            },
            other => Verdict::Reject(format!("identity kind {other:?} is not allowed by this policy")),
        }
    }

    fn tenant_of(_peer: Identity) -> String {
        String::new()
    }
}

#[allow(unsafe_code)]
mod export {
    use crate::Policy;
    crate::bindings::export!(Policy with_types_in crate::bindings);
}
