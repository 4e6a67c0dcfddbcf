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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    pub swaps: AtomicU64,
    /// Modules refused at load (not wasm, imports, self-test failed, ...).
    pub refused: AtomicU64,
}

impl PolicyStats {
    /// [accepted, rejected, failed, swaps, refused].
    pub fn snapshot(&self) -> [u64; 5] {
        [&self.accepted, &self.rejected, &self.failed, &self.swaps, &self.refused].map(|c| c.load(Ordering::Relaxed))
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

    /// The decision for an authenticated peer. Never fails: anything but a
    /// well-formed accept from the module is a reject.
    pub fn authorize(&self, request: &AuthorizeRequest) -> Decision {
        let Some(m) = self.current() else {
            return Decision::Accept(Grant { tenant: String::new() });
        };
        let answer = m.authorize(request);
        if m.first_decision() {
            let ms = m.noticed.elapsed().as_secs_f64() * 1e3;
            info!(policy = %m.file.display(), sha256 = %&m.hash[..16], ms_since_change = format!("{ms:.1}"),
                  "first peer decision by this policy module");
        }
        let d = match answer {
            // Tenants are not configured yet: only the connection's own.
            Ok(Decision::Accept(g)) if !g.tenant.is_empty() => {
                Err(format!("policy named tenant {:?}, which is not configured", g.tenant))
            }
            Ok(d) => Ok(d),
            Err(e) => Err(format!("policy module failed: {e:#}")),
        };
        match d {
            Ok(Decision::Accept(g)) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Decision::Accept(g)
            }
            Ok(Decision::Reject(why)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                // The module's words, bounded: they go into the log.
                Decision::Reject(why.chars().take(200).collect())
            }
            Err(why) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
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
