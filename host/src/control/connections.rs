//! Connections from the config file into the IKE guest: the WIT record
//! of each (its PSK into the vault), the `trap` ones, the TUN routes to
//! their remote subnets, and the reload that adds and removes them while
//! the daemon runs ([`ControlPlane::reload`]).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::json;
use tracing::{info, warn};

use super::domains::connection_routes;
use super::{ControlPlane, Trap};
use crate::config::{self, Config, DpdAction, SecretReads, StartAction};
use crate::ops::{Answer, Refusal};
use crate::wasm::ike::{self, IkeInstance};

/// The tenant of each connection that has one.
pub fn tenant_of(connections: &[config::Connection]) -> std::collections::HashMap<String, String> {
    connections.iter().filter_map(|c| Some((c.name.get_ref().clone(), c.tenant.clone()?))).collect()
}

/// A step in the history of the IKE guest's connections, replayed in order
/// into a replacement instance (an SA names its connection by index).
#[derive(Debug, Clone)]
pub enum Step {
    Add(ike::Connection),
    Remove(String),
}

/// The steps the IKE guest's connections took, in order, and for every
/// name they ever added the number of its latest load.
///
/// The guest is untrusted: only names loaded once become metric labels, a
/// check made for every connection whose counters moved in a round (a
/// pass over a PoP's history cost thousands of string compares each). The
/// load numbers tell an IKE SA of a connection since removed, or changed
/// and loaded again, from one of the connection loaded now: a replacement
/// restores only the latter (`ControlPlane::replace`).
///
/// A reload that changes a connection adds two steps, and the guest keeps
/// the removed connection until it is replaced: `compact` turns the steps
/// into the loaded connections' additions, so that a PoP's reloads do not
/// pile them up (until 2026-12-05 the fifth reload changing 10,000
/// connections ran the IKE guest out of memory, and its replacements too).
#[derive(Debug, Default)]
pub struct History {
    steps: Vec<Step>,
    /// The load number of each step that is an addition (0 for a removal).
    step_loads: Vec<u64>,
    load_of: HashMap<String, u64>,
    /// Additions ever made: the last load number given.
    loads: u64,
    /// Removals among `steps`.
    removals: usize,
    /// Changes with every step and every compaction.
    version: u64,
}

impl History {
    /// The history of connections loaded at start.
    pub fn loaded(connections: Vec<ike::Connection>) -> History {
        let mut h = History::default();
        connections.into_iter().for_each(|c| h.push(Step::Add(c)));
        h
    }

    pub fn push(&mut self, step: Step) {
        match &step {
            Step::Add(c) => {
                self.loads += 1;
                self.load_of.insert(c.name.clone(), self.loads);
                self.step_loads.push(self.loads);
            }
            Step::Remove(_) => {
                self.removals += 1;
                self.step_loads.push(0);
            }
        }
        self.version += 1;
        self.steps.push(step);
    }

    /// The connections the first `steps` steps leave loaded, with the
    /// number of their load.
    pub fn loaded_after(&self, steps: usize) -> HashMap<&str, u64> {
        let mut loaded = HashMap::new();
        for (step, &load) in self.steps.iter().zip(&self.step_loads).take(steps) {
            match step {
                Step::Add(c) => loaded.insert(c.name.as_str(), load),
                Step::Remove(n) => loaded.remove(n.as_str()),
            };
        }
        loaded
    }

    /// Was a connection of this name ever loaded?
    pub fn ever_added(&self, name: &str) -> bool {
        self.load_of.contains_key(name)
    }

    /// The number of the latest load of connection `name`.
    pub fn load_of(&self, name: &str) -> Option<u64> {
        self.load_of.get(name).copied()
    }

    /// The number of the latest load of any connection.
    pub fn loads(&self) -> u64 {
        self.loads
    }

    /// Removals among the steps.
    pub fn removals(&self) -> usize {
        self.removals
    }

    /// A number that changes whenever the steps do.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Turn the first `applied` steps into the additions of the
    /// connections they leave loaded, in the order they were added; the
    /// steps after stay as they are. Returns how many steps the first
    /// `applied` became.
    pub fn compact(&mut self, applied: usize) -> usize {
        let applied = applied.min(self.steps.len());
        let tail = self.steps.split_off(applied);
        let tail_loads = self.step_loads.split_off(applied);
        let indexes: Vec<usize> = (0..applied).collect();
        let kept = live_of(self.steps.iter().zip(&indexes).map(|(step, i)| match step {
            Step::Add(c) => (c.name.as_str(), Some(i)),
            Step::Remove(n) => (n.as_str(), None),
        }));
        let kept: HashSet<usize> = kept.into_iter().copied().collect();
        let prefix = std::mem::take(&mut self.steps).into_iter().zip(std::mem::take(&mut self.step_loads));
        let live = prefix.enumerate().filter(|(i, _)| kept.contains(i)).map(|(_, s)| s);
        (self.steps, self.step_loads) = live.unzip();
        let applied = self.steps.len();
        self.removals = tail.iter().filter(|s| matches!(s, Step::Remove(_))).count();
        self.steps.extend(tail);
        self.step_loads.extend(tail_loads);
        self.version += 1;
        applied
    }
}

impl std::ops::Deref for History {
    type Target = [Step];

    fn deref(&self) -> &[Step] {
        &self.steps
    }
}

/// The `trap` of a connection, if it has one.
fn trap(c: &config::Connection) -> Option<Trap> {
    // `dpd_action = "hold"` is a trap that waits for traffic after a dead peer.
    let hold = c.dpd_action == DpdAction::Hold && !c.remote_addrs.is_empty();
    (c.start_action == StartAction::Trap || hold).then(|| Trap {
        connection: c.name.get_ref().clone(),
        remote: c.children.iter().flat_map(|ch| ch.remote_ts.iter().copied()).collect(),
        tenant: c.tenant.clone(),
    })
}

pub fn wit_connection(
    c: &config::Connection,
    base: &Path,
    ike: &mut IkeInstance,
    force_encap: bool,
    reads: &mut SecretReads,
) -> Result<ike::Connection> {
    let psk = c.psk.load_secret_via(base, reads).map_err(|e| anyhow::anyhow!("psk: {e}"))?;
    let addr = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(v) => v.octets().to_vec(),
        std::net::IpAddr::V6(v) => v.octets().to_vec(),
    };
    let cidrs = |v: &[config::Prefix]| v.iter().map(ToString::to_string).collect();
    Ok(ike::Connection {
        name: c.name.get_ref().clone(),
        local_addrs: c.local_addrs.iter().map(addr).collect(),
        remote_addrs: c.remote_addrs.iter().map(addr).collect(),
        local_id: c.local_id.0.clone(),
        remote_id: c.remote_id.0.clone(),
        psk: ike.store.data_mut().insert_psk(c.name.get_ref(), psk),
        ike_proposals: c.proposals.0.clone(),
        children: c
            .children
            .iter()
            .map(|ch| ike::ChildConfig {
                name: ch.name.clone(),
                local_ts: cidrs(&ch.local_ts),
                remote_ts: cidrs(&ch.remote_ts),
                esp_proposals: ch.esp_proposals.0.clone(),
                rekey_time_ms: u64::from(ch.rekey_time) * 1000,
                rekey_bytes: ch.rekey_bytes,
                rekey_packets: ch.rekey_packets,
                life_time_ms: u64::from(ch.life_time) * 1000,
                life_bytes: ch.life_bytes,
                life_packets: ch.life_packets,
            })
            .collect(),
        start_action: if c.start_action == StartAction::Start {
            ike::StartAction::Start
        } else {
            ike::StartAction::None
        },
        force_encap: c.encap || force_encap,
        nat_keepalive_ms: c.keepalive.saturating_mul(1000),
        rekey_time_ms: u64::from(c.rekey_time) * 1000,
        reauth_time_ms: u64::from(c.reauth_time) * 1000,
        dpd_delay_ms: c.dpd_delay.saturating_mul(1000),
        dpd_action: match c.dpd_action {
            DpdAction::Clear | DpdAction::Hold => ike::DpdAction::Clear,
            DpdAction::Restart => ike::DpdAction::Restart,
        },
    })
}

/// Load the connections into `ike`; returns the traps and the connections
/// as loaded (a replacement IKE instance gets them again).
pub fn load_connections(
    cfg: &Config,
    file: &Path,
    base: &Path,
    ike: &mut IkeInstance,
    force_encap: bool,
) -> Result<(Vec<Trap>, Vec<ike::Connection>)> {
    let mut traps = Vec::new();
    let mut loaded = Vec::new();
    let mut reads = SecretReads::default();
    for c in &cfg.connection {
        let at = format!("{}: connection {:?}", file.display(), c.name.get_ref());
        let conn = wit_connection(c, base, ike, force_encap, &mut reads).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        match ike.add_connection(&conn)? {
            Ok(warnings) => warnings.iter().for_each(|w| warn!(connection = %c.name.get_ref(), "{w}")),
            Err(e) => bail!("{at}: {e}"),
        }
        loaded.push(conn);
        traps.extend(trap(c));
        info!(
            connection = %c.name.get_ref(), local_id = %c.local_id.0, remote_id = %c.remote_id.0,
            remote_addrs = ?c.remote_addrs, proposals = %c.proposals.0, start_action = ?c.start_action,
            children = c.children.len(), "IKE connection loaded"
        );
    }
    Ok((traps, loaded))
}

/// What a list of steps leaves: each step names an item, and adds it
/// (`Some`) or removes it (`None`). In the order added; an item added
/// again without a removal between stands once, where it was added last.
fn live_of<'a, T>(steps: impl Iterator<Item = (&'a str, Option<&'a T>)>) -> Vec<&'a T> {
    let mut live: Vec<Option<&T>> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (name, item) in steps {
        if let Some(i) = at.remove(name) {
            live[i] = None;
        }
        if let Some(t) = item {
            at.insert(name, live.len());
            live.push(Some(t));
        }
    }
    live.into_iter().flatten().collect()
}

/// What a reload needs to know of how the daemon was started.
pub struct ReloadContext {
    /// The config file, and the directory relative paths are resolved in.
    pub path: std::path::PathBuf,
    pub base: std::path::PathBuf,
    /// No raw ESP socket: every tunnel is UDP-encapsulated.
    pub force_encap: bool,
    /// The routing domains (0 the daemon's, then the tenants').
    pub domains: super::domains::Domains,
    /// Where compiled policy modules are cached, and whether their files are watched.
    pub policy_cache: Option<std::path::PathBuf>,
    pub policy_watch: bool,
    /// The `[[connection]]` sections now loaded in the IKE guest, kept
    /// step by step with the history: a reload a trap interrupts leaves
    /// them as far as it got, so the next one (or the same one carried out
    /// again) starts from what is loaded, not from the last config.
    pub sections: Vec<config::Connection>,
    /// What reloads removed and added since the last one answered: a
    /// reload a trap interrupted and its second run answer as one.
    pub progress: ReloadProgress,
}

/// Connections a reload has removed and added so far, by name, each
/// once, in the order they went or came.
#[derive(Debug, Default)]
pub struct ReloadProgress {
    pub removed: Vec<String>,
    pub added: Vec<String>,
    /// Which are in the lists already (a PoP's reload notes thousands).
    noted: HashSet<(bool, String)>,
}

impl ReloadProgress {
    fn note_removed(&mut self, name: &str) {
        if self.noted.insert((false, name.to_string())) {
            self.removed.push(name.to_string());
        }
    }

    fn note_added(&mut self, name: &str) {
        if self.noted.insert((true, name.to_string())) {
            self.added.push(name.to_string());
        }
    }
}

impl ControlPlane {
    /// The connections now loaded, from the history, in the order they
    /// were added. One pass: a PoP's history holds thousands of steps,
    /// and removing each from the list as it came took a pass per removal.
    pub fn live_connections(&self) -> Vec<&ike::Connection> {
        live_of(self.history.iter().map(|s| match s {
            Step::Add(c) => (c.name.as_str(), Some(c)),
            Step::Remove(n) => (n.as_str(), None),
        }))
    }

    /// Re-read the config file and apply its `[[connection]]` sections:
    /// a removed or changed connection is deleted (DELETE to the peer), an
    /// added or changed one is loaded (and initiated if `start_action =
    /// "start"`), an unchanged one is not touched: its SAs and SPIs stay.
    /// An unchanged connection whose PSK file changed gets the new key in
    /// place (as `swanctl --load-creds`): new authentications use it.
    /// A file that does not load, a PSK that cannot be read or an
    /// `esp_component` that is not loaded yet refuses the reload, with
    /// nothing changed. `[[tenant]]` sections are applied too
    /// (`super::tenants`); other sections need a restart.
    pub(super) fn reload(&mut self, now: u64) -> Result<Answer> {
        // The policy modules first: their outcome does not hold up the rest.
        let mut global = None;
        let mut tenants = serde_json::Map::new();
        for (tenant, r) in &self.policies {
            let outcome = match r.reload(std::time::Instant::now()) {
                Ok(Some(source)) => format!("loaded ({source:?})"),
                Ok(None) => "unchanged".to_string(),
                Err(e) => format!("refused, the previous module serves: {e:#}"),
            };
            if tenant.is_empty() {
                global = Some(outcome);
            } else {
                tenants.insert(tenant.clone(), outcome.into());
            }
        }
        let answer = self.reload_connections(now)?;
        // The config's document (a PoP's parses into a hundred megabytes)
        // and what the reload replaced are freed: the heap goes back to the
        // system, as after start-up.
        crate::sys::trim_heap();
        Ok(answer.map(|mut v| {
            v["policy"] = global.into();
            v["tenant_policies"] = tenants.into();
            v
        }))
    }

    /// A reload's removal of connection `name` (its key's handle `psk`):
    /// from the guest, the history and the maps by name. Its config
    /// section and traps are the caller's to drop. An error is a trap.
    fn remove_for_reload(&mut self, now: u64, name: &str, psk: Option<u64>) -> Result<()> {
        match self.ike.remove_connection(now, name)? {
            Ok(n) => {
                info!(connection = %name, ike_sas = n, "reload: connection removed");
                self.history.push(Step::Remove(name.to_string()));
                // Its key authenticates no one any more, and what its IKE
                // SAs would still key installs nowhere (a connection loaded
                // again under its name has a key handle of its own).
                if let Some(h) = psk {
                    self.ike.store.data_mut().forget_psk(h);
                }
            }
            // Not loaded in the guest (it refused it at an earlier reload):
            // nothing to replay, and a replayed removal the guest refuses
            // would fail every replacement.
            Err(e) => warn!(connection = %name, error = %e, "reload: cannot remove the connection"),
        }
        self.reload_ctx.progress.note_removed(name);
        // A connection loaded again under this name starts afresh.
        self.terminated.remove(name);
        self.children.groups.remove(name);
        self.children.bounds.remove(name);
        Ok(())
    }

    fn reload_connections(&mut self, now: u64) -> Result<Answer> {
        let cfg = match Config::load(&self.reload_ctx.path) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Refusal::new(400, format!("the config does not load: {e:#}")))),
        };
        // An empty or truncated file would tear every tunnel down: almost
        // always a mistake.
        if cfg.connection.is_empty() {
            return Ok(Err(Refusal::new(409, "the new config has no [[connection]]: not removing every connection")));
        }
        let old = self.reload_ctx.sections.clone();
        let (base, force_encap) = (self.reload_ctx.base.clone(), self.reload_ctx.force_encap);
        // Tenants first: their namespaces, TUN devices and policy modules
        // are ready (or the reload is refused) before anything changes.
        let tenants = match super::tenants::TenantChange::prepare(
            &self.reload_ctx.domains,
            &cfg,
            &base,
            self.runtime.policy_engines(),
            self.reload_ctx.policy_cache.clone(),
        ) {
            Ok(t) => t,
            Err(why) => return Ok(Err(Refusal::new(400, why))),
        };
        let domains = tenants.next.clone().unwrap_or_else(|| self.reload_ctx.domains.clone());
        // A connection of a removed or changed tenant goes, and comes again
        // with its new domain.
        let touched = tenants.touched();
        // By name: a PoP reloads thousands of connections, and a search of
        // every old one for each new one took seconds.
        let old_by_name: HashMap<&str, &config::Connection> =
            old.iter().map(|o| (o.name.get_ref().as_str(), o)).collect();
        let same = |c: &config::Connection| {
            old_by_name.get(c.name.get_ref().as_str()).is_some_and(|o| *o == c)
                && !c.tenant.as_ref().is_some_and(|t| touched.contains(t))
        };
        let new_by_name: HashMap<&str, &config::Connection> =
            cfg.connection.iter().map(|c| (c.name.get_ref().as_str(), c)).collect();
        let gone: Vec<String> = old
            .iter()
            .filter(|o| !new_by_name.get(o.name.get_ref().as_str()).is_some_and(|c| same(c)))
            .map(|o| o.name.get_ref().clone())
            .collect();
        let fresh: Vec<&config::Connection> = cfg.connection.iter().filter(|c| !same(c)).collect();
        // Everything that can refuse, before anything changes.
        // A connection's guest group is its domain's group of its component.
        let components = self.runtime.esp_groups();
        // A loaded connection of each component (the first in load order).
        let mut of_component: HashMap<&Path, &config::Connection> = HashMap::new();
        for o in &old {
            if let Some(p) = &o.esp_component {
                of_component.entry(p.as_path()).or_insert(o);
            }
        }
        let mut groups = Vec::new();
        for c in &fresh {
            let component = match &c.esp_component {
                None => Some(0),
                Some(p) => match of_component.get(p.as_path()) {
                    Some(o) => self.children.groups.get(o.name.get_ref()).map(|g| g % components),
                    None => {
                        return Ok(Err(Refusal::new(
                            409,
                            format!(
                                "connection {:?}: esp_component {} is not loaded; a new ESP component needs a restart",
                                c.name.get_ref(),
                                p.display()
                            ),
                        )));
                    }
                },
            };
            groups.push(component.map(|k| domains.of(c) * components + k));
        }
        // Unchanged connections whose key file changed: the new key, read
        // before anything changes (an unreadable file refuses the reload).
        let mut new_keys = Vec::new();
        let mut reads = SecretReads::default();
        let psk_of: HashMap<String, u64> = self.live_connections().iter().map(|w| (w.name.clone(), w.psk)).collect();
        for c in cfg.connection.iter().filter(|c| same(c)) {
            let psk = c.psk.load_secret_via(&base, &mut reads).map_err(|e| anyhow::anyhow!("psk: {e}"));
            let handle = psk_of.get(c.name.get_ref()).copied();
            match (psk, handle) {
                (Ok(k), Some(h)) => new_keys.push((c.name.get_ref().clone(), h, k)),
                (Err(e), _) => return Ok(Err(Refusal::new(400, format!("connection {:?}: {e:#}", c.name.get_ref())))),
                (Ok(_), None) => {}
            }
        }
        let mut loaded = Vec::new();
        for c in &fresh {
            match wit_connection(c, &base, &mut self.ike, force_encap, &mut reads) {
                Ok(w) => loaded.push(w),
                Err(e) => {
                    for w in &loaded {
                        self.ike.store.data_mut().forget_psk(w.psk);
                    }
                    let msg = format!("connection {:?}: {e:#}", c.name.get_ref());
                    return Ok(Err(Refusal::new(400, msg)));
                }
            }
        }
        // The PSKs just read for `fresh`: one whose connection the guest
        // did not take (it refused it, or a trap came first) is not kept.
        let psks: Vec<u64> = loaded.iter().map(|w| w.psk).collect();
        let answer = (|| -> Result<Answer> {
            // The sections and traps of the connections removed, in one
            // pass after the removals (one pass per removal was quadratic
            // at a PoP's thousands), also when a trap cuts them short.
            let mut went: HashSet<&str> = HashSet::new();
            let removals = (|| -> Result<()> {
                for name in &gone {
                    self.remove_for_reload(now, name, psk_of.get(name).copied())?;
                    went.insert(name);
                }
                Ok(())
            })();
            self.reload_ctx.sections.retain(|s| !went.contains(s.name.get_ref().as_str()));
            self.traps.retain(|t| !went.contains(t.connection.as_str()));
            removals?;
            let tenant_names = tenants.names();
            if !tenants.is_empty() {
                self.apply_tenants(tenants, self.reload_ctx.policy_watch);
            }
            // What stays and what comes is the new config's.
            self.ike.store.data_mut().policy.tenant_of = tenant_of(&cfg.connection);
            let mut errors = Vec::new();
            // The routes first, each domain's in one `ip -batch`: before
            // the guest's calls, which a trap may cut short (the retry
            // only adds what is left), and for a connection the guest
            // refuses too, whose subnets then go into the TUN device and
            // are dropped there, not out in the clear.
            let mut routes: BTreeMap<usize, Vec<_>> = BTreeMap::new();
            for c in &fresh {
                routes.entry(domains.of(c)).or_default().extend(connection_routes(c));
            }
            for (i, wanted) in routes {
                let Some(d) = domains.list.get(i).and_then(Option::as_ref) else { continue };
                match d.routes(wanted) {
                    Ok(failed) => failed.iter().for_each(|e| warn!(error = %e, "reload: cannot route a remote subnet")),
                    Err(e) => warn!(error = %format!("{e:#}"), "reload: cannot route the remote subnets"),
                }
            }
            for ((c, w), group) in fresh.iter().zip(loaded).zip(groups) {
                let name = c.name.get_ref();
                let added = self.ike.add_connection(&w)?;
                self.reload_ctx.progress.note_added(name);
                if let Err(e) = added {
                    warn!(connection = %name, error = %e, "reload: the connection does not load");
                    errors.push(format!("{name}: {e}"));
                    continue;
                }
                self.history.push(Step::Add(w));
                self.reload_ctx.sections.push((*c).clone());
                self.traps.extend(trap(c));
                if let Some(g) = group {
                    self.children.groups.insert(name.clone(), g);
                }
                self.children.bounds.insert(name.clone(), super::bounds::ConnectionBounds::of(c));
                info!(connection = %name, "reload: connection loaded");
                if c.start_action == StartAction::Start {
                    self.initiate(now, name)?;
                }
            }
            let mut rekeyed = Vec::new();
            for (name, h, k) in new_keys {
                if self.ike.store.data_mut().replace_psk(h, k) == Some(true) {
                    // Never the key, only that it changed.
                    info!(connection = %name, "reload: new pre-shared key; established SAs keep theirs until reauthentication");
                    rekeyed.push(name);
                }
            }
            // With a run a trap interrupted before this one, both runs' steps.
            let ReloadProgress { removed: gone, added, .. } = std::mem::take(&mut self.reload_ctx.progress);
            let (added_set, gone_set): (HashSet<&String>, HashSet<&String>) =
                (added.iter().collect(), gone.iter().collect());
            let unchanged: Vec<String> = cfg
                .connection
                .iter()
                .filter(|c| same(c) && !added_set.contains(c.name.get_ref()))
                .map(|c| c.name.get_ref().clone())
                .collect();
            let changed: Vec<&String> = added.iter().filter(|a| gone_set.contains(a)).collect();
            let (tenants_added, tenants_removed) = tenant_names;
            Ok(Ok(json!({ "added": added, "removed": gone, "changed": changed, "unchanged": unchanged,
                      "new_psk": rekeyed, "errors": errors,
                      "tenants_added": tenants_added, "tenants_removed": tenants_removed })))
        })();
        let kept: HashSet<u64> =
            self.history.iter().filter_map(|s| if let Step::Add(c) = s { Some(c.psk) } else { None }).collect();
        for h in psks {
            if !kept.contains(&h) {
                self.ike.store.data_mut().forget_psk(h);
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::{History, Step, ike, live_of};

    #[test]
    fn what_the_steps_leave_in_the_order_added() {
        let (a, b, c, a2) = (1, 2, 3, 4);
        let steps = [("a", Some(&a)), ("b", Some(&b)), ("a", None), ("c", Some(&c)), ("a", Some(&a2)), ("x", None)];
        assert_eq!(live_of(steps.into_iter()), [&b, &c, &a2]);
        assert_eq!(live_of([("a", Some(&a)), ("a", Some(&a2))].into_iter()), [&a2], "added twice: once, the later");
        assert!(live_of(std::iter::empty::<(&str, Option<&u32>)>()).is_empty());
    }

    fn conn(name: &str) -> ike::Connection {
        ike::Connection {
            name: name.into(),
            local_addrs: vec![],
            remote_addrs: vec![],
            local_id: "gw.test".into(),
            remote_id: "%any".into(),
            psk: 1,
            ike_proposals: String::new(),
            children: vec![],
            start_action: ike::StartAction::None,
            force_encap: false,
            nat_keepalive_ms: 0,
            rekey_time_ms: 0,
            reauth_time_ms: 0,
            dpd_delay_ms: 0,
            dpd_action: ike::DpdAction::Clear,
        }
    }

    #[test]
    fn the_history_knows_every_name_it_ever_added() {
        let mut h = History::loaded(vec![conn("a"), conn("b")]);
        h.push(Step::Remove("a".into()));
        h.push(Step::Add(conn("c")));
        h.push(Step::Remove("c".into()));
        h.push(Step::Add(conn("c")));
        assert_eq!(h.len(), 6);
        assert!(matches!(&h[2], Step::Remove(n) if n == "a"));
        // Removed since, still a name the daemon loaded (its counters
        // stay on /metrics); never loaded: not a name to label with.
        assert!(["a", "b", "c"].iter().all(|n| h.ever_added(n)));
        assert!(!h.ever_added("d") && !h.ever_added(""));
        // Each load its own number; "c" loaded twice has the second.
        assert_eq!((h.load_of("a"), h.load_of("b"), h.load_of("c"), h.load_of("d")), (Some(1), Some(2), Some(4), None));
        assert_eq!(h.removals(), 2);
    }

    #[test]
    fn compacting_leaves_the_loaded_connections_and_the_steps_after() {
        let mut h = History::loaded(vec![conn("a"), conn("b"), conn("c")]);
        for step in [Step::Remove("a".into()), Step::Remove("b".into()), Step::Add(conn("b")), Step::Add(conn("d"))] {
            h.push(step);
        }
        // Not yet applied: a removal and an addition after step 7.
        h.push(Step::Remove("c".into()));
        h.push(Step::Add(conn("e")));
        let (loads, version) = ((h.load_of("b"), h.load_of("e")), h.version());
        assert_eq!(h.compact(7), 3);
        let names: Vec<String> = h
            .iter()
            .map(|s| match s {
                Step::Add(c) => format!("+{}", c.name),
                Step::Remove(n) => format!("-{n}"),
            })
            .collect();
        assert_eq!(names, ["+c", "+b", "+d", "-c", "+e"]);
        assert_eq!(h.removals(), 1, "the one after the compacted steps");
        assert_eq!((h.load_of("b"), h.load_of("e")), loads, "load numbers stay");
        assert!(h.ever_added("a") && h.version() != version);
        // As of the compacted steps: c, b (its second load) and d.
        let as_of = h.loaded_after(3);
        assert_eq!(as_of.len(), 3);
        assert_eq!((as_of["c"], as_of["b"], as_of["d"]), (3, 4, 5));
        assert_eq!(h.loaded_after(5).get("e"), Some(&6));
        assert!(!h.loaded_after(5).contains_key("c"));
        // What the steps leave loaded is the same as before.
        let live: Vec<&str> = live_of(h.iter().map(|s| match s {
            Step::Add(c) => (c.name.as_str(), Some(c)),
            Step::Remove(n) => (n.as_str(), None),
        }))
        .iter()
        .map(|c| c.name.as_str())
        .collect();
        assert_eq!(live, ["b", "d", "e"]);
        assert_eq!(History::default().compact(5), 0);
    }
}
