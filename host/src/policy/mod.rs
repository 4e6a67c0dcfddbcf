//! Policy modules: operator code that decides who may connect (RFC 7296
//! leaves authorization to the implementation). A module is a component
//! of the `policy` world with no imports; the host compiles it (or loads
//! the artifact cached by content hash), instantiates it, runs its
//! `self-test` and the operator's [`cases`], and only then swaps it in (`crate::wasm::policy`). A file watcher on the
//! ops thread reloads it when the file changes ([`watch`]).
//!
//! The IKE guest asks at IKE_AUTH through `wasmsec:ike/authorizer`; the
//! host asks the module within a deadline (`crate::wasm::policy`). No module:
//! accept. A trap, a timeout or an answer the host cannot accept (a tenant
//! that does not exist) is a reject, logged and counted.
pub mod cases;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::wasm::{GUEST_LOG_CHARS, GUEST_REASON_CHARS, guest_text};
use tracing::{info, warn};

pub use crate::wasm::policy::{AuthMethod, AuthorizeRequest, Decision, Grant, IdKind, Identity, SaEvent, SaEventKind};
pub use crate::wasm::policy::{Served, Source, load};

/// Decisions made, for metrics.
#[derive(Debug, Default)]
pub struct PolicyStats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Calls that trapped, timed out or answered what the host refuses.
    pub failed: AtomicU64,
    /// Accepts naming another tenant than the connection's: refused, and
    /// told apart from failures (a tenant map refuses so on purpose).
    pub wrong_tenant: AtomicU64,
    pub swaps: AtomicU64,
    /// Modules refused at load (not wasm, imports, self-test failed, ...).
    pub refused: AtomicU64,
}

impl PolicyStats {
    /// [accepted, rejected, failed, wrong tenant, swaps, refused].
    pub fn snapshot(&self) -> [u64; 6] {
        [&self.accepted, &self.rejected, &self.failed, &self.wrong_tenant, &self.swaps, &self.refused]
            .map(|c| c.load(Ordering::Relaxed))
    }
}

/// The policy of the daemon: the module serving now, swapped atomically.
/// Calls in flight keep the `Arc` of the module they started on.
#[derive(Default)]
pub struct PolicySlot {
    current: Mutex<Option<Arc<Served>>>,
    pub stats: PolicyStats,
}

impl PolicySlot {
    /// The module serving now.
    pub fn current(&self) -> Option<Arc<Served>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put a checked module in service.
    pub fn swap(&self, s: Served) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(s));
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
    }

    /// The decision for an authenticated peer of a connection of
    /// `tenant` ("" for the daemon's own). Never fails: anything but a
    /// well-formed accept from the module is a reject. An accept names the
    /// connection's tenant or none (which means the connection's).
    pub fn authorize(&self, request: &AuthorizeRequest, tenant: &str) -> Decision {
        let Some(m) = self.current() else {
            return Decision::Accept(connection_grant(tenant));
        };
        let answer = m.authorize(request);
        if m.first_decision() {
            let ms = m.noticed.elapsed().as_secs_f64() * 1e3;
            info!(policy = %m.file.display(), sha256 = %&m.hash[..16], ms_since_change = format!("{ms:.1}"),
                  "first peer decision by this policy module");
        }
        let failed = &self.stats.failed;
        let d = match answer {
            // A peer lands in the routing domain of the connection it came
            // in on; moving it to another tenant's is not supported.
            Ok(Decision::Accept(g)) if !g.tenant.is_empty() && g.tenant != tenant => Err((
                &self.stats.wrong_tenant,
                format!(
                    "policy named tenant {:?}, but connection {:?} belongs to {}",
                    g.tenant,
                    request.connection,
                    if tenant.is_empty() { "no tenant".to_string() } else { format!("tenant {tenant:?}") }
                ),
            )),
            Ok(Decision::Accept(g)) => match check_grant(&g) {
                Ok(()) => Ok(Decision::Accept(Grant { tenant: tenant.to_string(), ..g })),
                Err(why) => Err((failed, format!("policy granted {why}"))),
            },
            Ok(d) => Ok(d),
            Err(e) => Err((failed, format!("policy module failed: {e:#}"))),
        };
        match d {
            Ok(Decision::Accept(g)) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Decision::Accept(g)
            }
            Ok(Decision::Reject(why)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                // The module's words, bounded: they go into the log.
                Decision::Reject(guest_text(&why, GUEST_REASON_CHARS).into_owned())
            }
            Err((counter, why)) => {
                counter.fetch_add(1, Ordering::Relaxed);
                // Host words around the module's (quoted, so already
                // escaped), which may be of any length.
                let why = guest_text(&why, GUEST_LOG_CHARS).into_owned();
                warn!(policy = %m.file.display(), "{why}: rejecting");
                Decision::Reject(why)
            }
        }
    }

    /// Tell the module an IKE SA came or went (accounting); failures are
    /// counted, never waited on beyond the deadline.
    pub fn event(&self, e: &SaEvent) {
        if let Some(m) = self.current()
            && m.event(e).is_err()
        {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Which module decides for which connection: its tenant's module if the
/// tenant has one, else the daemon's `[policy] module`, else accept.
#[derive(Default)]
pub struct Policies {
    /// `[policy] module`.
    pub global: Option<Arc<PolicySlot>>,
    /// Each tenant's module, by tenant name.
    pub tenants: BTreeMap<String, Arc<PolicySlot>>,
    /// The tenant of each connection that has one (kept by reloads).
    pub tenant_of: HashMap<String, String>,
}

impl Policies {
    /// The tenant of `connection` ("" for none) and the module that decides for it.
    pub fn for_connection(&self, connection: &str) -> (&str, Option<&Arc<PolicySlot>>) {
        let tenant = self.tenant_of.get(connection).map_or("", String::as_str);
        (tenant, self.tenants.get(tenant).or(self.global.as_ref()))
    }

    /// The decision for an authenticated peer (see [`PolicySlot::authorize`]).
    pub fn authorize(&self, request: &AuthorizeRequest) -> Decision {
        match self.for_connection(&request.connection) {
            (tenant, Some(slot)) => slot.authorize(request, tenant),
            (tenant, None) => Decision::Accept(connection_grant(tenant)),
        }
    }

    /// Tell the module that decided for the SA's connection.
    pub fn event(&self, e: &SaEvent) {
        if let (_, Some(slot)) = self.for_connection(&e.connection) {
            slot.event(e);
        }
    }

    /// Each module's counters ([`PolicyStats::snapshot`]) by tenant ("" for
    /// `[policy] module`).
    pub fn snapshot(&self) -> Vec<(String, [u64; 6])> {
        let global = self.global.iter().map(|g| (String::new(), g.stats.snapshot()));
        global.chain(self.tenants.iter().map(|(t, s)| (t.clone(), s.stats.snapshot()))).collect()
    }
}

/// What a peer gets without a policy module: its connection's tenant, and
/// the connection's selectors, proposals and lifetimes.
pub fn connection_grant(tenant: &str) -> Grant {
    Grant {
        tenant: tenant.to_string(),
        peer_subnets: Vec::new(),
        local_subnets: Vec::new(),
        esp_proposals: String::new(),
        child_rekey_time_s: 0,
        child_life_time_s: 0,
    }
}

/// A grant from a module is operator code's answer, but still checked
/// before the IKE engine sees it: subnets must be CIDR prefixes, ESP
/// proposals words of strongSwan's syntax, a hard lifetime above the
/// rekey time and both at least a minute. Err: what is wrong, in words.
pub fn check_grant(g: &Grant) -> Result<(), String> {
    const MAX_SUBNETS: usize = 64;
    for (side, list) in [("peer", &g.peer_subnets), ("local", &g.local_subnets)] {
        if list.len() > MAX_SUBNETS {
            return Err(format!("{} {side} subnets (at most {MAX_SUBNETS})", list.len()));
        }
        for s in list {
            crate::config::Prefix::parse(s).map_err(|e| format!("{side} subnet {s:?}: {e}"))?;
        }
    }
    let p = &g.esp_proposals;
    if p.len() > 512 || !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ',' | '-' | '_')) {
        return Err(format!("ESP proposals {:?}: not strongSwan's syntax", p.chars().take(64).collect::<String>()));
    }
    let (rekey, life) = (g.child_rekey_time_s, g.child_life_time_s);
    if (rekey != 0 && rekey < 60) || (life != 0 && life < 60) {
        return Err(format!("CHILD SA lifetimes of {rekey} s / {life} s (at least 60 s each, or 0)"));
    }
    if rekey != 0 && life != 0 && life <= rekey {
        return Err(format!("a CHILD SA life time of {life} s, not above its rekey time of {rekey} s"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_checked_before_the_engine_sees_them() {
        let ok = Grant {
            peer_subnets: vec!["198.18.1.0/25".into()],
            esp_proposals: "aes256gcm16-x25519,chacha20poly1305".into(),
            child_rekey_time_s: 600,
            child_life_time_s: 700,
            ..connection_grant("blue")
        };
        assert_eq!(check_grant(&ok), Ok(()));
        assert_eq!(check_grant(&connection_grant("")), Ok(()));
        let bad = |g: Grant| check_grant(&g).unwrap_err();
        assert!(bad(Grant { peer_subnets: vec!["198.18.1.0/99".into()], ..ok.clone() }).contains("peer subnet"));
        assert!(bad(Grant { local_subnets: vec!["host.example".into()], ..ok.clone() }).contains("local subnet"));
        assert!(bad(Grant { esp_proposals: "aes; rm -rf".into(), ..ok.clone() }).contains("syntax"));
        assert!(bad(Grant { child_rekey_time_s: 5, ..ok.clone() }).contains("at least 60"));
        assert!(bad(Grant { child_life_time_s: 600, ..ok.clone() }).contains("not above"));
    }
}
