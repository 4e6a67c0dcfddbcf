//! The operator verbs (`wasmsec list-sas`, `initiate`, ...): a request to
//! the running daemon's admin API ([`crate::ops::client`]), printed as a
//! table for people or as the API's JSON with `--json`.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::ops::client::{Reply, Target, request};

/// The verbs, with what each asks the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    ListConns,
    ListSas,
    Stats,
    Failures,
    Initiate(String),
    Terminate(String),
    Rekey(String),
    Reload,
    FaultIke,
}

impl Verb {
    fn request(&self) -> (&'static str, &'static str, Option<Value>) {
        let conn = |n: &str| Some(json!({ "connection": n }));
        match self {
            Verb::ListConns => ("GET", "/v1/connections", None),
            Verb::ListSas => ("GET", "/v1/sas", None),
            Verb::Stats => ("GET", "/v1/status", None),
            Verb::Failures => ("GET", "/v1/failures", None),
            Verb::Initiate(n) => ("POST", "/v1/initiate", conn(n)),
            Verb::Terminate(n) => ("POST", "/v1/terminate", conn(n)),
            Verb::Rekey(n) => ("POST", "/v1/rekey", conn(n)),
            Verb::Reload => ("POST", "/v1/reload", Some(json!({}))),
            Verb::FaultIke => ("POST", "/v1/fault", Some(json!({ "guest": "ike" }))),
        }
    }
}

/// Which daemon: `--socket`, `--api` with `--token-file`, or the
/// `[control] socket` of `--config`.
pub fn target(
    socket: Option<PathBuf>,
    config: Option<&Path>,
    api: Option<std::net::SocketAddr>,
    token_file: Option<&Path>,
) -> Result<Target> {
    if let Some(a) = api {
        let Some(f) = token_file else { bail!("--api needs --token-file FILE (the daemon's [control] api_token)") };
        let t = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
        return Ok(Target::Tcp(a, t.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Some(s) = socket {
        return Ok(Target::Unix(s));
    }
    if let Some(c) = config {
        let cfg = crate::config::Config::load(c)?;
        let Some(s) = cfg.control.socket else { bail!("{} has no [control] socket", c.display()) };
        return Ok(Target::Unix(s));
    }
    bail!("which daemon? --socket PATH (its [control] socket), --config FILE, or --api ADDR --token-file FILE")
}

/// Run `verb` against the daemon and print the answer; false on a 4xx/5xx.
pub fn run(target: &Target, verb: &Verb, as_json: bool) -> Result<bool> {
    let (method, path, body) = verb.request();
    let Reply { status, body } = request(target, method, path, body.as_ref())?;
    if !(200..300).contains(&status) {
        let why = body.get("error").and_then(Value::as_str).map_or_else(|| body.to_string(), str::to_string);
        eprintln!("wasmsec: {status}: {why}");
        return Ok(false);
    }
    if as_json {
        println!("{body:#}");
        return Ok(true);
    }
    match verb {
        Verb::ListSas => print_sas(&body),
        Verb::ListConns => print_conns(&body),
        Verb::Failures => {
            for f in body["failures"].as_array().into_iter().flatten() {
                println!("{}  {:<12} {}", f["at"], s(&f["connection"]), s(&f["reason"]));
            }
        }
        // Counters are many and nested: JSON is the readable form.
        Verb::Stats => println!("{body:#}"),
        _ => println!("{}", compact(&body)),
    }
    Ok(true)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `{"a": 1, "b": "x"}` as `a=1 b=x`.
fn compact(v: &Value) -> String {
    match v.as_object() {
        Some(o) => o.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(" "),
        None => s(v),
    }
}

fn print_sas(body: &Value) {
    println!("IKE SAs");
    println!("  {:<14} {:<18} {:<24} {:<22} {:<22} role", "connection", "spi", "proposal", "local", "remote");
    for sa in body["ike_sas"].as_array().into_iter().flatten() {
        let role = if sa["initiator"].as_bool() == Some(true) { "initiator" } else { "responder" };
        println!(
            "  {:<14} {:<18} {:<24} {:<22} {:<22} {role}",
            s(&sa["connection"]),
            s(&sa["spi"]),
            s(&sa["proposal"]),
            s(&sa["local"]),
            s(&sa["remote"])
        );
    }
    println!("CHILD SAs");
    println!(
        "  {:<14} {:<10} {:<10} {:<18} {:<22} {:<22} encap",
        "connection", "in spi", "out spi", "proposal", "local ts", "remote ts"
    );
    for c in body["child_sas"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} {:<10} {:<10} {:<18} {:<22} {:<22} {}",
            s(&c["connection"]),
            s(&c["inbound_spi"]),
            s(&c["outbound_spi"]),
            s(&c["proposal"]),
            s(&c["local_ts"]),
            s(&c["remote_ts"]),
            if c["encap"].as_bool() == Some(true) { "udp" } else { "esp" }
        );
    }
}

fn print_conns(body: &Value) {
    println!("  {:<14} {:<18} {:<22} {:<22} {:<8} IKE/CHILD SAs", "name", "remote", "local id", "remote id", "start");
    for c in body["connections"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} {:<18} {:<22} {:<22} {:<8} {}/{}",
            s(&c["name"]),
            s(&c["remote_addrs"]),
            s(&c["local_id"]),
            s(&c["remote_id"]),
            s(&c["start_action"]),
            c["ike_sas"],
            c["child_sas"]
        );
        for ch in c["children"].as_array().into_iter().flatten() {
            println!(
                "    child {}: {} === {}  esp {}",
                s(&ch["name"]),
                s(&ch["local_ts"]),
                s(&ch["remote_ts"]),
                s(&ch["esp_proposals"])
            );
        }
    }
}
