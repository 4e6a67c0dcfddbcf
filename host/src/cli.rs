//! The operator verbs (`wasmsec list-sas`, `initiate`, ...): a request to
//! the running daemon's admin API ([`crate::ops::client`]), printed as a
//! table for people or as the API's JSON with `--json`.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::ops::client::{Reply, Target, request};
use crate::ops::{Command, FaultPoint};

/// The API request that carries a command.
fn request_of(c: &Command) -> (&'static str, &'static str, Option<Value>) {
    let conn = |n: &str| Some(json!({ "connection": n }));
    match c {
        Command::Connections => ("GET", "/v1/connections", None),
        Command::Sas => ("GET", "/v1/sas", None),
        Command::Status => ("GET", "/v1/status", None),
        Command::Failures => ("GET", "/v1/failures", None),
        Command::Initiate(n) => ("POST", "/v1/initiate", conn(n)),
        Command::Terminate(n) => ("POST", "/v1/terminate", conn(n)),
        Command::Rekey(n) => ("POST", "/v1/rekey", conn(n)),
        Command::Reload => ("POST", "/v1/reload", Some(json!({}))),
        Command::FaultIke(calls) => ("POST", "/v1/fault", Some(json!({ "guest": "ike", "calls": calls }))),
        Command::FaultIkeAt(FaultPoint::Output) => {
            ("POST", "/v1/fault", Some(json!({ "guest": "ike", "at": "output" })))
        }
        Command::FaultIkeAt(FaultPoint::Call(n)) => {
            ("POST", "/v1/fault", Some(json!({ "guest": "ike", "at": "call", "call": n })))
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
pub fn run(target: &Target, verb: &Command, as_json: bool) -> Result<bool> {
    let (method, path, body) = request_of(verb);
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
        Command::Sas => print_sas(&body),
        Command::Connections => print_conns(&body),
        Command::Failures => {
            for f in body["failures"].as_array().into_iter().flatten() {
                println!("{}  {:<12} {}", f["at"], s(&f["connection"]), s(&f["reason"]));
            }
        }
        // Counters are many and nested: JSON is the readable form.
        Command::Status => println!("{body:#}"),
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

/// A table: a header, then a row per item. `columns` is "title:width:field"
/// words (`_` in a title is a space); `last` gives the unpadded last column.
fn table(items: &Value, columns: &str, last: (&str, &dyn Fn(&Value) -> String)) {
    let cols: Vec<(String, usize, &str)> = columns
        .split_whitespace()
        .filter_map(|c| {
            let mut p = c.split(':');
            Some((p.next()?.replace('_', " "), p.next()?.parse().ok()?, p.next()?))
        })
        .collect();
    let head: String = cols.iter().map(|(t, w, _)| format!("{t:<w$} ", w = *w)).collect();
    println!("  {head}{}", last.0);
    for it in items.as_array().into_iter().flatten() {
        let row: String = cols.iter().map(|(_, w, k)| format!("{:<w$} ", s(&it[*k]), w = *w)).collect();
        println!("  {row}{}", (last.1)(it));
    }
}

fn print_sas(body: &Value) {
    println!("IKE SAs");
    let role = |sa: &Value| (if sa["initiator"].as_bool() == Some(true) { "initiator" } else { "responder" }).into();
    let ike = "connection:14:connection spi:18:spi proposal:28:proposal local:22:local remote:22:remote nat_here:9:nat_local nat_peer:9:nat_remote";
    table(&body["ike_sas"], ike, ("role", &role));
    println!("CHILD SAs");
    let encap = |c: &Value| (if c["encap"].as_bool() == Some(true) { "udp" } else { "esp" }).into();
    let child = "connection:14:connection in_spi:10:inbound_spi out_spi:10:outbound_spi proposal:18:proposal \
                 local_ts:22:local_ts remote_ts:22:remote_ts in_pkts:9:in_packets out_pkts:9:out_packets rekey_in_s:11:rekey_in_s";
    table(&body["child_sas"], child, ("encap", &encap));
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
