//! The command line: `--key value` pairs, each with a default but the
//! PSK file.
use std::net::Ipv4Addr;

pub const USAGE: &str = "usage: wasmsec-ikeload --psk-file FILE [--server 198.18.0.2] [--sources 198.19.0.0/18]
  [--in-flight 24] [--setups 5000] [--seconds 60] [--standing 0] [--responder-pid PID] [--label NAME]
  [--id load.bench.test (initiator N is iN.load.bench.test)] [--remote-id gwb.interop.test]
  [--local-ts 10.98.0.0/16] [--remote-ts 198.18.2.0/24]
  [--proposals aes256gcm16-prfsha256-x25519] [--esp aes256gcm16] [--children 1] [--hold 0]
  [--keep 0] [--keep-hold 0]
--standing N first sets up N IKE SAs and keeps them up while the setups are measured
(deleted at the end), so the responder holds that many at once.
--children K gives each IKE SA K CHILD SAs (the first in IKE_AUTH, the others by
CREATE_CHILD_SA), child j for the j-th address of --local-ts; a setup counts when all are up.
--hold S keeps the standing SAs up S seconds after the measured setups (a memory probe).
--keep N deletes all standing SAs but N after the hold, and those N --keep-hold S seconds later.
Every source address must be local (e.g. `ip route add local 198.19.0.0/18 dev lo`);
port 500 of them must be free.";

pub struct Args {
    pub psk_file: String,
    pub server: Ipv4Addr,
    pub sources: Vec<Ipv4Addr>,
    /// Setups in flight at once.
    pub in_flight: usize,
    /// Setups to start in all.
    pub setups: u64,
    /// Start no setup after this long (those in flight get 10 s more).
    pub seconds: u64,
    /// IKE SAs set up first and kept up during the measured setups (the
    /// responder's standing population); each holds a source address.
    pub standing: usize,
    /// The responder's process, for its CPU time (`/proc/PID/stat`).
    pub responder_pid: Option<u32>,
    pub label: String,
    pub id: String,
    pub remote_id: String,
    pub local_ts: String,
    pub remote_ts: String,
    pub proposals: String,
    pub esp: String,
    /// CHILD SAs per IKE SA.
    pub children: usize,
    /// Seconds the standing SAs stay up after the measured setups.
    pub hold: u64,
    /// Standing SAs that stay up `keep_hold` seconds more after the hold.
    pub keep: usize,
    pub keep_hold: u64,
}

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            psk_file: String::new(),
            server: Ipv4Addr::new(198, 18, 0, 2),
            sources: Vec::new(),
            in_flight: 24,
            setups: 5000,
            seconds: 60,
            standing: 0,
            responder_pid: None,
            label: "responder".into(),
            id: "load.bench.test".into(),
            remote_id: "gwb.interop.test".into(),
            local_ts: "10.98.0.0/16".into(),
            remote_ts: "198.18.2.0/24".into(),
            proposals: "aes256gcm16-prfsha256-x25519".into(),
            esp: "aes256gcm16".into(),
            children: 1,
            hold: 0,
            keep: 0,
            keep_hold: 0,
        };
        let mut sources = "198.19.0.0/18".to_string();
        while let Some(k) = it.next() {
            let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
            let num = |what: &str| v.parse::<u64>().map_err(|_| format!("{what}: {v:?} is not a number"));
            match k.as_str() {
                "--psk-file" => a.psk_file = v,
                "--server" => a.server = v.parse().map_err(|_| format!("--server: {v:?} is not an IPv4 address"))?,
                "--sources" => sources = v,
                "--in-flight" => a.in_flight = num("--in-flight")?.max(1) as usize,
                "--setups" => a.setups = num("--setups")?,
                "--seconds" => a.seconds = num("--seconds")?,
                "--standing" => a.standing = num("--standing")? as usize,
                "--responder-pid" => a.responder_pid = Some(num("--responder-pid")? as u32),
                "--label" => a.label = v,
                "--id" => a.id = v,
                "--remote-id" => a.remote_id = v,
                "--local-ts" => a.local_ts = v,
                "--remote-ts" => a.remote_ts = v,
                "--proposals" => a.proposals = v,
                "--esp" => a.esp = v,
                "--children" => a.children = num("--children")? as usize,
                "--hold" => a.hold = num("--hold")?,
                "--keep" => a.keep = num("--keep")? as usize,
                "--keep-hold" => a.keep_hold = num("--keep-hold")?,
                _ => return Err(format!("unknown option {k}")),
            }
        }
        if a.psk_file.is_empty() {
            return Err("--psk-file is required".into());
        }
        a.sources = crate::addresses(&sources)?;
        if a.sources.len() < a.in_flight + a.standing {
            return Err(format!(
                "--sources {sources} has {} addresses, fewer than --in-flight {} plus --standing {}",
                a.sources.len(),
                a.in_flight,
                a.standing
            ));
        }
        // No more initiators than setups can start (each takes the next
        // free address): 65,000 idle connections cost the generator.
        let usable =
            a.in_flight.saturating_add(a.standing).saturating_add(usize::try_from(a.setups).unwrap_or(usize::MAX));
        a.sources.truncate(usable);
        let ts_addresses = crate::addresses(&a.local_ts).map_err(|e| format!("--local-ts: {e}"))?.len();
        if a.children == 0 || (a.children > 1 && a.children > ts_addresses) {
            return Err(format!(
                "--children {}: at least 1, and at most the {ts_addresses} addresses of --local-ts {}",
                a.children, a.local_ts
            ));
        }
        Ok(a)
    }
}
