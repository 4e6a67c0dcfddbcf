//! Tests only: a policy module that misbehaves on demand, by the peer's
//! identity: `loop.*` never returns, `trap.*` traps, `alloc.*` allocates
//! until the host's memory cap stops it, `reject.*` is refused, anyone
//! else is accepted. Its self-test passes (so the host puts it in
//! service) unless it is built with the `failing-self-test` feature.
#![deny(unsafe_code)] // generated bindings below are the only exception

#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "policy",
        pub_export_macro: true,
        generate_all,
    });
}

use bindings::exports::wasmsec::policy::decide::Guest;
use bindings::wasmsec::policy::types::{AuthorizeRequest, Decision, Grant, SaEvent};

struct Hostile;

impl Guest for Hostile {
    fn authorize(request: AuthorizeRequest) -> Decision {
        let id = request.peer.value;
        if id.starts_with("loop.") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if id.starts_with("trap.") {
            std::process::abort();
        }
        if id.starts_with("alloc.") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if id.starts_with("reject.") {
            return Decision::Reject(format!("{id} is refused by the hostile test policy"));
        }
        // `tenant-NAME.*`: puts the peer in tenant NAME, whatever its
        // connection (the host allows only the connection's own tenant).
        if let Some(rest) = id.strip_prefix("tenant-") {
            return Decision::Accept(Grant { tenant: rest.split('.').next().unwrap_or("").to_string(), ..grant() });
        }
        // `narrow.*`: CHILD SAs narrowed to 198.18.1.64/27 on the peer's
        // side, with AES-128-GCM and a 10-minute rekey.
        if id.starts_with("narrow.") {
            return Decision::Accept(Grant {
                peer_subnets: vec!["198.18.1.64/27".into()],
                esp_proposals: "aes128gcm16".into(),
                child_rekey_time_s: 600,
                ..grant()
            });
        }
        // `badgrant.*`: a grant the host must refuse (not a CIDR prefix).
        if id.starts_with("badgrant.") {
            return Decision::Accept(Grant { peer_subnets: vec!["198.18.1.0/99".into()], ..grant() });
        }
        Decision::Accept(grant())
    }

    fn on_event(_event: SaEvent) {}

    fn self_test() -> Result<(), String> {
        if cfg!(feature = "failing-self-test") {
            return Err("built to fail its self-test".into());
        }
        Ok(())
    }
}

#[allow(unsafe_code)]
mod export {
    use crate::Hostile;
    crate::bindings::export!(Hostile with_types_in crate::bindings);
}

/// A grant of what the connection says.
fn grant() -> Grant {
    Grant {
        tenant: String::new(),
        peer_subnets: Vec::new(),
        local_subnets: Vec::new(),
        esp_proposals: String::new(),
        child_rekey_time_s: 0,
        child_life_time_s: 0,
    }
}
