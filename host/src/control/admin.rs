//! The IKE thread's side of the admin API ([`crate::ops::api`]): each
//! [`Command`] answered between two guest calls. A request that names no
//! loaded connection, or that cannot be carried out now, is refused before
//! anything is changed.
use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Value, json};

use super::ControlPlane;
use super::children::socket_addr;
use crate::ops::{Answer, Command, ConnectionPage, FaultPoint, Only, Page, Refusal};
use crate::wasm::ike::{ChildSchedule, Connection};

/// How many recent negotiation failures the API keeps.
pub const FAILURES_KEPT: usize = 64;

/// A refused or failed negotiation, as logged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The connection ("" when none matched).
    pub connection: String,
    /// The reason, as in the log.
    pub reason: String,
}

/// The most recent failures, oldest first.
#[derive(Debug, Default)]
pub struct Failures(VecDeque<Failure>);

impl Failures {
    pub fn push(&mut self, connection: &str, reason: &str) {
        if self.0.len() == FAILURES_KEPT {
            self.0.pop_front();
        }
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.0.push_back(Failure { at, connection: connection.to_string(), reason: reason.to_string() });
    }
}

/// An admin command the guest trapped in is carried out again by the
/// replacement, once: if that traps too, it is refused, so that a command
/// that always traps the guest (a hostile or broken one) does not trap
/// every replacement for as long as its requester waits.
#[derive(Debug, Default)]
pub struct Retry(Option<Command>);

impl Retry {
    /// `cmd` trapped the guest: is it to be carried out again?
    pub fn again(&mut self, cmd: &Command) -> bool {
        if self.0.take().as_ref() == Some(cmd) {
            return false;
        }
        self.0 = Some(cmd.clone());
        true
    }

    /// `cmd` was carried out.
    pub fn done(&mut self, cmd: &Command) {
        if self.0.as_ref() == Some(cmd) {
            self.0 = None;
        }
    }

    /// The answer to a command given up.
    pub fn gave_up() -> Refusal {
        Refusal::new(
            503,
            "the IKE guest trapped in this command, and its replacement did again: given up; \
             what it did before the trap stays (a reload's steps, see the log)",
        )
    }
}

impl ControlPlane {
    /// Answer one admin command. The outer `Err` is a trap of the guest.
    pub(super) fn admin(&mut self, now: u64, cmd: Command) -> anyhow::Result<Answer> {
        // `fault ike output` and `call N` wait for the command they are meant for.
        if !matches!(cmd, Command::FaultIke(_) | Command::FaultIkeAt(_)) {
            self.ike.next_fault = self.fault_next.take();
        }
        let answer = self.carry_out(now, cmd);
        // A `call N` beyond the command's calls lapses with it; `output`
        // waits for the poll that takes the command's output.
        if matches!(self.ike.next_fault, Some(FaultPoint::Call(_))) {
            self.ike.next_fault = None;
        }
        answer
    }

    fn carry_out(&mut self, now: u64, cmd: Command) -> anyhow::Result<Answer> {
        Ok(match cmd {
            Command::Status(page) => self.status(now, &page)?,
            Command::Connections(page) => match self.only(&page.only) {
                Ok(only) => Ok(self.connections_json(&page, only.as_ref())),
                Err(r) => Err(r),
            },
            Command::Sas(page) => self.sas(now, &page)?,
            Command::Failures => Ok(json!({ "failures": self.failures.0 })),
            Command::Initiate(name) => match self.known(&name) {
                Err(r) => Err(r),
                Ok(()) => match self.ike.initiate(now, &name)? {
                    Ok(()) => {
                        self.terminated.remove(&name);
                        Ok(json!({ "initiating": name }))
                    }
                    Err(e) => Err(Refusal::new(409, e)),
                },
            },
            Command::Terminate(name) => match self.known(&name) {
                Err(r) => Err(r),
                Ok(()) => match self.ike.terminate(now, &name)? {
                    Ok(n) => {
                        self.terminated.insert(name.clone());
                        Ok(json!({ "connection": name, "ike_sas_deleted": n }))
                    }
                    Err(e) => Err(Refusal::new(409, e)),
                },
            },
            Command::Rekey(name) => match self.known(&name) {
                Err(r) => Err(r),
                Ok(()) => {
                    // A rekey is what a soft lifetime starts (RFC 7296
                    // section 2.8): make-before-break, the old SA deleted
                    // once the new one carries traffic.
                    let spis: Vec<u32> =
                        self.children.installed().filter(|c| *c.connection == *name).map(|c| c.inbound_spi).collect();
                    if spis.is_empty() {
                        Err(Refusal::new(409, format!("connection {name:?} has no CHILD SA to rekey")))
                    } else {
                        for &spi in &spis {
                            self.ike.child_expired(now, spi, false)?;
                        }
                        Ok(json!({ "connection": name, "child_sas_rekeying": spis.len() }))
                    }
                }
            },
            Command::Reload => self.reload(now)?,
            Command::FaultIke(calls) if self.fault_injection => {
                self.ike.faults_pending = calls;
                Ok(json!({ "fault": format!("the IKE guest traps on its next {calls} call(s)") }))
            }
            Command::FaultIkeAt(at) if self.fault_injection => {
                self.fault_next = Some(at);
                Ok(json!({ "fault": match at {
                    FaultPoint::Output => "the IKE guest traps when the output of the next admin command is taken".into(),
                    FaultPoint::Call(n) => format!("the IKE guest traps at call {n} of the next admin command"),
                } }))
            }
            Command::FaultIke(_) | Command::FaultIkeAt(_) => {
                Err(Refusal::new(403, "fault injection is off ([control] fault_injection)"))
            }
        })
    }

    /// The names of the loaded connections `only` asks for (`None`: all).
    /// A filter that names no loaded connection, or no tenant of one, is
    /// refused with 404 and the loaded names, as a typo should be, not
    /// answered with an empty list.
    fn only(&self, only: &Option<Only>) -> Result<Option<HashSet<String>>, Refusal> {
        match only {
            None => Ok(None),
            Some(Only::Connection(name)) => self.known(name).map(|()| Some(HashSet::from([name.clone()]))),
            Some(Only::Tenant(t)) => {
                let tenant_of = &self.ike.store.data().policy.tenant_of;
                let names: HashSet<String> = self
                    .live_connections()
                    .iter()
                    .filter(|c| tenant_of.get(&c.name) == Some(t))
                    .map(|c| c.name.clone())
                    .collect();
                if names.is_empty() {
                    let mut tenants: Vec<&str> = tenant_of.values().map(String::as_str).collect();
                    tenants.sort_unstable();
                    tenants.dedup();
                    let msg = format!("no loaded connection of tenant {t:?} (tenants with one: {})", some_of(&tenants));
                    return Err(Refusal::new(404, msg));
                }
                Ok(Some(names))
            }
        }
    }

    /// A page of the IKE and CHILD SAs ([`crate::ops::page`]), of the
    /// connections the page's filter names, each CHILD SA with the engine's
    /// schedule of it now, and how many there are (all, filtered or not).
    fn sas(&mut self, now: u64, page: &Page) -> anyhow::Result<Answer> {
        let only = match self.only(&page.only) {
            Ok(o) => o,
            Err(r) => return Ok(Err(r)),
        };
        let s = self.children.page(page, |c| only.as_ref().is_none_or(|o| o.contains(c)));
        let spis: Vec<u32> = s.children.iter().map(|c| c.inbound_spi).collect();
        let schedules: HashMap<u32, ChildSchedule> = if spis.is_empty() {
            HashMap::new()
        } else {
            self.ike.child_schedules(now, &spis)?.into_iter().map(|s| (s.inbound_spi, s)).collect()
        };
        let child_sas: Vec<Value> = s.children.iter().map(|c| c.json(schedules.get(&c.inbound_spi))).collect();
        let mut v = json!({
            "ike_sas": s.ike,
            "child_sas": child_sas,
            "ike_sas_total": self.children.ike_sas.len(),
            "child_sas_total": self.children.installed_count(),
        });
        if let Some(next) = s.next {
            v["next"] = next.show().into();
        }
        Ok(Ok(v))
    }

    /// Refuse, with 404, a name that is not a loaded connection.
    fn known(&self, name: &str) -> Result<(), Refusal> {
        let live = self.live_connections();
        if live.iter().any(|c| c.name == name) {
            Ok(())
        } else {
            let names: Vec<&str> = live.iter().map(|c| c.name.as_str()).collect();
            Err(Refusal::new(404, format!("no connection {name:?} (loaded: {})", some_of(&names))))
        }
    }

    /// A page of the loaded connections (of those in `only`, if given),
    /// each with its children and its SA counts, and how many are loaded.
    fn connections_json(&self, page: &ConnectionPage, only: Option<&HashSet<String>>) -> Value {
        let live = self.live_connections();
        let (shown, next) = page
            .select(live.iter().copied().filter(|c| only.is_none_or(|o| o.contains(&c.name))), |c: &Connection| {
                c.name.as_str()
            });
        let mut list = Vec::with_capacity(shown.len());
        for c in shown {
            let addrs = |a: &[Vec<u8>]| -> Vec<String> {
                a.iter()
                    .filter_map(|b| socket_addr(&crate::wasm::ike::Endpoint { address: b.clone(), port: 0 }))
                    .map(|s| s.ip().to_string())
                    .collect()
            };
            let children: Vec<Value> = c
                .children
                .iter()
                .map(|ch| {
                    json!({ "name": ch.name, "local_ts": ch.local_ts, "remote_ts": ch.remote_ts,
                                  "esp_proposals": ch.esp_proposals })
                })
                .collect();
            list.push(json!({
                "name": c.name,
                "local_addrs": addrs(&c.local_addrs),
                "remote_addrs": addrs(&c.remote_addrs),
                "local_id": c.local_id,
                "remote_id": c.remote_id,
                "ike_proposals": c.ike_proposals,
                "start_action": match c.start_action {
                    crate::wasm::ike::StartAction::Start => "start",
                    crate::wasm::ike::StartAction::None => "none",
                },
                "tenant": self.ike.store.data().policy.tenant_of.get(&c.name),
                "children": children,
                "ike_sas": self.children.counts_of(&c.name).0,
                "child_sas": self.children.counts_of(&c.name).1,
            }));
        }
        let mut v = json!({ "connections": list, "connections_total": live.len() });
        if let Some(next) = next {
            v["next"] = next.into();
        }
        v
    }

    /// A page of the SAs, as `sas`, and every counter.
    fn status(&mut self, now: u64, page: &Page) -> anyhow::Result<Answer> {
        // Over the daemon's life, as /metrics: a replaced guest's counts stay.
        let mut ike = self.totals.status(&self.ike.stats()?);
        ike["vault_secrets"] = self.ike.store.data().secrets().into();
        ike["guest_memory_peak"] = self.ike.store.data().memory_peak().into();
        let mut v = match self.sas(now, page)? {
            Ok(v) => v,
            refused => return Ok(refused),
        };
        v["ike"] = ike;
        v["esp"] = serde_json::to_value(self.stats.snapshot())?;
        Ok(Ok(v))
    }
}

/// The names a 404 offers instead: a PoP has thousands of connections and
/// tenants, and a refusal should not be a megabyte, so the first
/// [`NAMES_OFFERED`] and how many there are.
fn some_of(names: &[&str]) -> String {
    if names.len() <= NAMES_OFFERED {
        return names.join(", ");
    }
    format!("{}, ... ({} in all)", names[..NAMES_OFFERED].join(", "), names.len())
}

/// How many names a refusal lists at most.
const NAMES_OFFERED: usize = 20;

#[cfg(test)]
mod tests {
    use super::{Command, Retry, some_of};

    #[test]
    fn a_refusal_lists_twenty_names_at_most() {
        assert_eq!(some_of(&["s2s", "extra"]), "s2s, extra");
        let many: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let s = some_of(&many);
        assert!(s.starts_with("c0, c1, ") && s.ends_with("c19, ... (1000 in all)"), "{s}");
    }

    #[test]
    fn a_trapped_command_is_carried_out_again_once() {
        let mut r = Retry::default();
        let reload = Command::Reload;
        assert!(r.again(&reload), "the first trap: again");
        assert!(!r.again(&reload), "the replacement trapped in it too: given up");
        assert!(r.again(&reload), "asked anew later, it gets its retry again");
        r.done(&reload);
        assert!(r.again(&reload), "carried out, then trapped in anew: again");
    }

    #[test]
    fn another_command_does_not_use_up_the_retry() {
        let mut r = Retry::default();
        let (reload, status) = (Command::Reload, Command::Status(crate::ops::Page::default()));
        assert!(r.again(&reload));
        r.done(&status);
        assert!(r.again(&status), "a trap in another command is its own first");
        assert!(r.again(&reload), "... and the reload's count starts over");
    }
}
