//! Tenants added, changed or removed by a reload. Everything that can
//! fail (the namespace, the TUN device, the policy module) is done before
//! anything changes, so a refused reload leaves the tenants as they were;
//! a changed tenant is removed and added again, its connections with it.
//! The other tenants' SAs, TUN devices and guests are not touched.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::info;

use super::ControlPlane;
use super::domains::{Domain, Domains};
use crate::config::{self, Config};
use crate::datapath::channel::{DomainTun, SaCommand};
use crate::policy::watch::Reloader;
use crate::sys::Tun;

/// A tenant ready to join.
pub struct Prepared {
    name: String,
    domain: Domain,
    number: usize,
    tun: Tun,
    policy: Option<Arc<Reloader>>,
}

/// What a reload does to the tenants.
#[derive(Default)]
pub struct TenantChange {
    added: Vec<Prepared>,
    removed: Vec<String>,
    /// The domains as they will be.
    pub next: Option<Domains>,
}

impl TenantChange {
    /// Compare the tenants in force with `cfg`'s and prepare the added
    /// ones; an error is the reason to refuse the reload.
    pub fn prepare(
        now: &Domains,
        cfg: &Config,
        base: &Path,
        engines: &crate::wasm::PolicyEngines,
        cache: Option<PathBuf>,
    ) -> Result<TenantChange, String> {
        let name = |t: &config::Tenant| t.name.get_ref().clone();
        let removed: Vec<String> = now.sections.iter().filter(|o| !cfg.tenant.contains(o)).map(name).collect();
        let mut next = now.clone();
        for r in &removed {
            if let Some(n) = next.by_tenant.remove(r) {
                next.list[n] = None;
            }
        }
        let mut added = Vec::new();
        for t in cfg.tenant.iter().filter(|t| !now.sections.contains(t)) {
            let what = format!("tenant {:?}", t.name.get_ref());
            let domain = Domain::of_tenant(cfg, t);
            // A changed tenant's old device still exists until it is
            // removed: the new one must not need its name.
            if now.list.iter().flatten().any(|d| d.tun == domain.tun) && !removed.contains(t.name.get_ref()) {
                return Err(format!("{what}: TUN device {} is in use", domain.tun));
            }
            if let Some(old) = now.sections.iter().find(|o| o.name == t.name)
                && Domain::of_tenant(cfg, old).tun == domain.tun
            {
                return Err(format!(
                    "{what}: a changed tenant needs a TUN device name other than its current {} (set tun)",
                    domain.tun
                ));
            }
            let tun = domain.open(&what).map_err(|e| format!("{e:#}"))?;
            let policy = match &t.policy {
                None => None,
                Some(m) => {
                    let r = Reloader::new(Arc::default(), engines.clone(), base.join(m), cache.clone());
                    r.reload(std::time::Instant::now())
                        .map_err(|e| format!("{what}: policy {}: {e:#}", m.display()))?;
                    Some(Arc::new(r))
                }
            };
            let number = next.list.len();
            next.list.push(Some(domain.clone()));
            next.by_tenant.insert(t.name.get_ref().clone(), number);
            added.push(Prepared { name: t.name.get_ref().clone(), domain, number, tun, policy });
        }
        next.sections = cfg.tenant.clone();
        Ok(TenantChange { added, removed, next: Some(next) })
    }

    /// The tenants removed or added (a changed one is both): their
    /// connections go and come again.
    pub fn touched(&self) -> Vec<String> {
        self.removed.iter().cloned().chain(self.added.iter().map(|a| a.name.clone())).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// Names added and removed, for the reload's answer.
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        (self.added.iter().map(|a| a.name.clone()).collect(), self.removed.clone())
    }
}

impl ControlPlane {
    /// Apply a prepared change, once the removed tenants' connections are
    /// gone: close their domains, open the added ones in both data-path
    /// threads, and put their policy modules in service.
    pub(super) fn apply_tenants(&mut self, change: TenantChange, watch: bool) {
        let TenantChange { added, removed, next } = change;
        for name in &removed {
            if let Some(&n) = self.reload_ctx.domains.by_tenant.get(name) {
                self.children.outbound.send(SaCommand::RemoveDomain { domain: n });
                self.children.inbound.send(SaCommand::RemoveDomain { domain: n });
            }
            self.policies.retain(|(t, r)| {
                if t == name {
                    r.stop();
                }
                t != name
            });
            self.ike.store.data_mut().policy.tenants.remove(name);
            info!(tenant = %name, "reload: tenant removed");
        }
        for p in added {
            match p.tun.try_clone() {
                Ok(second) => {
                    self.children.outbound.send(SaCommand::AddDomain { domain: p.number, tun: DomainTun(p.tun) });
                    self.children.inbound.send(SaCommand::AddDomain { domain: p.number, tun: DomainTun(second) });
                }
                Err(e) => tracing::warn!(tenant = %p.name, error = %e, "reload: cannot hand the TUN device over"),
            }
            if let Some(r) = p.policy {
                self.ike.store.data_mut().policy.tenants.insert(p.name.clone(), r.slot.clone());
                if watch && let Err(e) = crate::policy::watch::spawn(r.clone()) {
                    tracing::warn!(tenant = %p.name, error = %e, "reload: cannot watch the policy module");
                }
                self.policies.push((p.name.clone(), r));
            }
            info!(tenant = %p.name, domain = p.number, netns = p.domain.netns.as_deref().unwrap_or(""), "reload: tenant added");
        }
        if let Some(next) = next {
            self.reload_ctx.domains = next;
        }
    }
}
