//! The operator verbs (`wasmsec list-sas`, `initiate`, ...): a request to
//! the running daemon's admin API ([`crate::ops::client`]), printed as a
//! table for people or as the API's JSON with `--json`. The SA and
//! connection lists come in pages ([`crate::ops::page`]); the CLI asks for
//! every page.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::ops::client::{Reply, Target, request};
use crate::ops::{Command, Cursor, FaultPoint};

/// The API request that carries a command.
fn request_of(c: &Command) -> (&'static str, String, Option<Value>) {
    let conn = |n: &str| Some(json!({ "connection": n }));
    let (method, path, body) = match c {
        Command::Connections(p) => {
            let q = p.query();
            return ("GET", if q.is_empty() { "/v1/connections".into() } else { format!("/v1/connections?{q}") }, None);
        }
        Command::Sas(p) => return ("GET", format!("/v1/sas?{}", p.query()), None),
        Command::Status(p) => return ("GET", format!("/v1/status?{}", p.query()), None),
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
    };
    (method, path.to_string(), body)
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

/// The answer to `verb`, or None (said on stderr) for a 4xx/5xx.
fn answer(target: &Target, verb: &Command) -> Result<Option<Value>> {
    let (method, path, body) = request_of(verb);
    let Reply { status, body } = request(target, method, &path, body.as_ref())?;
    if !(200..300).contains(&status) {
        let why = body.get("error").and_then(Value::as_str).map_or_else(|| body.to_string(), str::to_string);
        eprintln!("wasmsec: {status}: {why}");
        return Ok(None);
    }
    Ok(Some(body))
}

/// Run `verb` against the daemon and print the answer; false on a 4xx/5xx.
pub fn run(target: &Target, verb: &Command, as_json: bool) -> Result<bool> {
    if let Command::Sas(_) | Command::Status(_) | Command::Connections(_) = verb {
        return run_pages(target, verb, as_json);
    }
    let Some(body) = answer(target, verb)? else { return Ok(false) };
    if as_json {
        println!("{body:#}");
        return Ok(true);
    }
    match verb {
        Command::Failures => {
            for f in body["failures"].as_array().into_iter().flatten() {
                println!("{}  {:<12} {}", f["at"], s(&f["connection"]), s(&f["reason"]));
            }
        }
        _ => println!("{}", compact(&body)),
    }
    Ok(true)
}

/// `list-sas`, `list-conns` and `stats`: a request per page, following
/// `next`. A table is printed page by page; JSON (and `stats`, whose
/// counters are many and nested, so JSON is the readable form) is one
/// document with every page's items and the last page's counters, written
/// as the pages come ([`JsonPages`]): at 100,000 SAs the whole document as
/// values took about 100 MB in the CLI. A page the daemon refuses midway
/// leaves the document cut short, and the exit status says so.
fn run_pages(target: &Target, verb: &Command, as_json: bool) -> Result<bool> {
    let mut verb = verb.clone();
    let table = !as_json && !matches!(verb, Command::Status(_));
    let lists: &[&str] = if let Command::Connections(_) = verb { &["connections"] } else { &["ike_sas", "child_sas"] };
    let mut doc = JsonPages::new(std::io::BufWriter::new(std::io::stdout().lock()), lists);
    let mut shown = (false, false);
    loop {
        let Some(mut body) = answer(target, &verb)? else { return Ok(false) };
        let next = body.as_object_mut().and_then(|o| o.remove("next"));
        if !table {
            doc.page(body)?;
        } else if let Command::Connections(_) = verb {
            print_conns(&body, !shown.0);
            shown.0 = true;
        } else {
            print_sas(&body, next.is_none(), &mut shown);
        }
        let Some(next) = next else { break };
        let again = || anyhow::anyhow!("the daemon answered the same page again ({next})");
        let name = next.as_str().filter(|n| !n.is_empty());
        match &mut verb {
            Command::Connections(page) => {
                let name = name.with_context(|| format!("the daemon's next page {next}"))?;
                if page.after.as_deref() == Some(name) {
                    return Err(again());
                }
                page.after = Some(name.to_string());
            }
            Command::Sas(page) | Command::Status(page) => {
                let cursor = name.and_then(Cursor::parse).with_context(|| format!("the daemon's next page {next}"))?;
                if page.after == Some(cursor) {
                    return Err(again());
                }
                page.after = Some(cursor);
            }
            _ => unreachable!("paged verbs only"),
        }
    }
    if !table {
        doc.finish()?.flush()?;
    }
    Ok(true)
}

/// The pages of a list written as one JSON object while they come: each
/// of `lists` in turn (the pages of an SA list hold every IKE SA before any
/// CHILD SA), then the last page's other fields (its counters, the
/// newest).
struct JsonPages<W: Write> {
    out: W,
    /// The lists' names, in the order the pages hold them.
    lists: &'static [&'static str],
    /// The list open now, by its place in `lists` (`None` before the first
    /// page), and whether it has an item yet.
    open: Option<(usize, bool)>,
    /// The last page's fields other than the lists.
    rest: serde_json::Map<String, Value>,
}

impl<W: Write> JsonPages<W> {
    fn new(out: W, lists: &'static [&'static str]) -> Self {
        JsonPages { out, lists, open: None, rest: serde_json::Map::new() }
    }

    fn page(&mut self, page: Value) -> Result<()> {
        let Value::Object(mut page) = page else { bail!("the daemon answered a page that is not an object") };
        for list in 0..self.lists.len() {
            let Some(Value::Array(items)) = page.remove(self.lists[list]) else { continue };
            for item in items {
                self.item(list, &item)?;
            }
        }
        self.rest = page;
        Ok(())
    }

    /// Make list `list` (by its place) the open one, closing those before
    /// it (and writing those between, empty).
    fn open(&mut self, list: usize) -> Result<()> {
        loop {
            let next = match self.open {
                Some((open, _)) if open == list => return Ok(()),
                Some((open, _)) if open > list => {
                    bail!("the daemon sent {} after {}", self.lists[list], self.lists[open])
                }
                Some((open, any)) => {
                    write!(self.out, "{}],\n  \"{}\": [", if any { "\n  " } else { "" }, self.lists[open + 1])?;
                    open + 1
                }
                None => {
                    write!(self.out, "{{\n  \"{}\": [", self.lists[0])?;
                    0
                }
            };
            self.open = Some((next, false));
        }
    }

    fn item(&mut self, list: usize, item: &Value) -> Result<()> {
        self.open(list)?;
        let first = matches!(self.open, Some((_, false)));
        write!(self.out, "{}\n    {}", if first { "" } else { "," }, indented(item, 4)?)?;
        self.open = Some((list, true));
        Ok(())
    }

    /// Close the document (every list, empty ones too) and hand back the
    /// writer.
    fn finish(mut self) -> Result<W> {
        self.open(self.lists.len() - 1)?;
        let any = matches!(self.open, Some((_, true)));
        write!(self.out, "{}]", if any { "\n  " } else { "" })?;
        for (k, v) in std::mem::take(&mut self.rest) {
            write!(self.out, ",\n  {}: {}", Value::String(k), indented(&v, 2)?)?;
        }
        writeln!(self.out, "\n}}")?;
        Ok(self.out)
    }
}

/// `v` pretty-printed, its lines after the first indented by `by` spaces.
fn indented(v: &Value, by: usize) -> Result<String> {
    Ok(serde_json::to_string_pretty(v)?.replace('\n', &format!("\n{:by$}", "")))
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
/// The header only with `head` (a later page of the same table has none).
fn table(items: &Value, columns: &str, last: (&str, &dyn Fn(&Value) -> String), head: bool) {
    let cols: Vec<(String, usize, &str)> = columns
        .split_whitespace()
        .filter_map(|c| {
            let mut p = c.split(':');
            Some((p.next()?.replace('_', " "), p.next()?.parse().ok()?, p.next()?))
        })
        .collect();
    if head {
        let titles: String = cols.iter().map(|(t, w, _)| format!("{t:<w$} ", w = *w)).collect();
        println!("  {titles}{}", last.0);
    }
    for it in items.as_array().into_iter().flatten() {
        let row: String = cols.iter().map(|(_, w, k)| format!("{:<w$} ", s(&it[*k]), w = *w)).collect();
        println!("  {row}{}", (last.1)(it));
    }
}

/// One page of `list-sas`: the IKE SAs' table, then the CHILD SAs' (the
/// pages hold IKE SAs first). `shown` is which titles are printed already.
fn print_sas(body: &Value, last: bool, shown: &mut (bool, bool)) {
    let role = |sa: &Value| (if sa["initiator"].as_bool() == Some(true) { "initiator" } else { "responder" }).into();
    let ike = "connection:14:connection spi:18:spi proposal:28:proposal local:22:local remote:22:remote remote_id:24:remote_id nat_here:9:nat_local nat_peer:9:nat_remote";
    if !shown.0 {
        println!("IKE SAs");
    }
    table(&body["ike_sas"], ike, ("role", &role), !shown.0);
    shown.0 = true;
    let children = &body["child_sas"];
    if !last && children.as_array().is_none_or(Vec::is_empty) {
        return;
    }
    if !shown.1 {
        println!("CHILD SAs");
    }
    let encap = |c: &Value| (if c["encap"].as_bool() == Some(true) { "udp" } else { "esp" }).into();
    let child = "connection:14:connection in_spi:10:inbound_spi out_spi:10:outbound_spi proposal:18:proposal \
                 local_ts:22:local_ts remote_ts:22:remote_ts in_pkts:9:in_packets out_pkts:9:out_packets rekey_in_s:11:rekey_in_s";
    table(children, child, ("encap", &encap), !shown.1);
    shown.1 = true;
}

/// One page of `list-conns`; the header with `head` (the first page).
fn print_conns(body: &Value, head: bool) {
    if head {
        println!(
            "  {:<14} {:<18} {:<22} {:<22} {:<8} IKE/CHILD SAs",
            "name", "remote", "local id", "remote id", "start"
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn written(pages: &[Value]) -> Result<String> {
        written_as(pages, &["ike_sas", "child_sas"])
    }

    fn written_as(pages: &[Value], lists: &'static [&'static str]) -> Result<String> {
        let mut doc = JsonPages::new(Vec::new(), lists);
        for p in pages {
            doc.page(p.clone())?;
        }
        Ok(String::from_utf8(doc.finish()?)?)
    }

    #[test]
    fn pages_are_one_document_with_every_sa_and_the_last_counters() {
        let pages = [
            json!({ "ike_sas": [{ "spi": "01" }, { "spi": "02" }], "child_sas": [], "ike_sas_total": 3, "child_sas_total": 2, "next": "ike-02" }),
            json!({ "ike_sas": [{ "spi": "03" }], "child_sas": [{ "inbound_spi": "c1", "ts": ["10.0.0.0/24"] }], "ike_sas_total": 3 }),
            json!({ "ike_sas": [], "child_sas": [{ "inbound_spi": "c2" }], "ike_sas_total": 3, "child_sas_total": 2, "esp": { "drops": 1 } }),
        ];
        let doc: Value = serde_json::from_str(&written(&pages).unwrap()).expect("valid JSON");
        let spis = |list: &str, k: &str| doc[list].as_array().unwrap().iter().map(|x| x[k].clone()).collect::<Vec<_>>();
        assert_eq!(spis("ike_sas", "spi"), ["01", "02", "03"]);
        assert_eq!(spis("child_sas", "inbound_spi"), ["c1", "c2"]);
        assert_eq!(doc["child_sas"][0]["ts"][0], "10.0.0.0/24");
        assert_eq!((&doc["esp"]["drops"], &doc["child_sas_total"]), (&json!(1), &json!(2)), "the last page's");

        // No SA at all, or IKE SAs only: both lists all the same.
        for pages in
            [vec![json!({ "ike_sas": [], "child_sas": [], "esp": {} })], vec![json!({ "ike_sas": [{ "spi": "01" }] })]]
        {
            let doc: Value = serde_json::from_str(&written(&pages).unwrap()).expect("valid JSON");
            assert!(doc["ike_sas"].is_array() && doc["child_sas"].as_array().is_some_and(Vec::is_empty), "{doc}");
        }
        // A daemon that breaks the order is not believed.
        let disorder = [json!({ "child_sas": [{ "inbound_spi": "c1" }] }), json!({ "ike_sas": [{ "spi": "01" }] })];
        assert!(written(&disorder).is_err());
        // CHILD SAs on the first page: the IKE SAs' list is there, empty.
        let doc: Value = serde_json::from_str(&written(&disorder[..1]).unwrap()).expect("valid JSON");
        assert!(doc["ike_sas"].as_array().is_some_and(Vec::is_empty) && doc["child_sas"][0]["inbound_spi"] == "c1");
    }

    #[test]
    fn connection_pages_are_one_list() {
        let pages = [
            json!({ "connections": [{ "name": "a" }, { "name": "b" }], "connections_total": 3, "next": "b" }),
            json!({ "connections": [{ "name": "c" }], "connections_total": 3 }),
        ];
        let doc: Value = serde_json::from_str(&written_as(&pages, &["connections"]).unwrap()).expect("valid JSON");
        let names: Vec<&str> =
            doc["connections"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!((names, &doc["connections_total"]), (vec!["a", "b", "c"], &json!(3)));
        let empty = [json!({ "connections": [], "connections_total": 0 })];
        let none: Value = serde_json::from_str(&written_as(&empty, &["connections"]).unwrap()).expect("valid JSON");
        assert_eq!(none, json!({ "connections": [], "connections_total": 0 }));
    }
}
