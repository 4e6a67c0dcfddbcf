//! The admin socket (`wasmsec ctl`): one command per connection,
//! `initiate NAME`, `terminate NAME` or `status`, answered in one line
//! (`status`: the IKE and CHILD SAs and every counter as JSON); with
//! `[control] fault_injection`, `fault ike` for tests.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::ControlPlane;

impl ControlPlane {
    pub(super) fn admin(&mut self, now: u64, s: UnixStream) -> anyhow::Result<()> {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("initiate"), Some(name)) => match self.ike.initiate(now, name)? {
                Ok(()) => format!("ok initiating {name}\n"),
                Err(e) => format!("error {e}\n"),
            },
            (Some("terminate"), Some(name)) => match self.ike.terminate(now, name)? {
                Ok(n) => format!("ok {n} IKE_SA(s) deleted\n"),
                Err(e) => format!("error {e}\n"),
            },
            (Some("status"), None) => format!("{}\n", self.status()?),
            (Some("fault"), Some("ike")) if self.fault_injection => {
                // The next call into the IKE guest traps.
                self.ike.fault_next_call = true;
                "ok the IKE guest traps on its next call\n".to_string()
            }
            (Some("fault"), _) => "error fault injection is off ([control] fault_injection)\n".to_string(),
            _ => "error commands: initiate NAME | terminate NAME | status\n".to_string(),
        };
        let _ = (&s).write_all(reply.as_bytes());
        Ok(())
    }

    fn status(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut ike = serde_json::to_value(self.ike.stats()?)?;
        ike["vault_secrets"] = self.ike.store.data().secrets().into();
        ike["guest_memory_peak"] = self.ike.store.data().memory_peak().into();
        let ike_sas: Vec<_> = self.children.ike_sas.values().collect();
        Ok(serde_json::json!({
            "ike_sas": ike_sas,
            "child_sas": self.children.list,
            "ike": ike,
            "esp": self.stats.snapshot(),
        }))
    }
}
