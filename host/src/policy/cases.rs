//! The operator's table of cases shipped beside a policy module
//! (`NAME.cases.json` next to `NAME.wasm`): requests and the decisions
//! the module must make on them. A module that decides one differently is
//! refused before it serves. The same table can hold two modules to the
//! same decisions (the Rust allow-list and the Python one).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{AuthMethod, AuthorizeRequest, Decision, IdKind, Identity};

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Accept,
    Reject,
}

/// One case as written in the file; everything but `peer` and `expect`
/// has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    peer: String,
    /// `fqdn` (default), `rfc822`, `ipv4`, `ipv6`, `der-dn`, `key-id`.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    connection: String,
    #[serde(default = "default_addr")]
    peer_address: String,
    #[serde(default = "default_addr")]
    local_address: String,
    #[serde(default)]
    peer_ts: Vec<String>,
    #[serde(default)]
    local_ts: Vec<String>,
    expect: Expect,
    /// With `accept`: the tenant the module must name ("" by default).
    #[serde(default)]
    tenant: String,
}

fn default_addr() -> String {
    "192.0.2.1:500".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cases: Vec<Row>,
}

/// A parsed case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub request: AuthorizeRequest,
    pub expect: Expect,
    pub tenant: String,
}

/// The cases file that goes with module `module` (`x.wasm` ->
/// `x.cases.json`).
pub fn path_for(module: &Path) -> PathBuf {
    module.with_extension("cases.json")
}

fn kind(k: Option<&str>) -> Result<IdKind> {
    Ok(match k.unwrap_or("fqdn") {
        "fqdn" => IdKind::Fqdn,
        "rfc822" => IdKind::Rfc822,
        "ipv4" => IdKind::Ipv4,
        "ipv6" => IdKind::Ipv6,
        "der-dn" => IdKind::DerDn,
        "key-id" => IdKind::KeyId,
        other => bail!("unknown identity kind {other:?}"),
    })
}

/// Parse a cases file's content.
pub fn parse(text: &str) -> Result<Vec<Case>> {
    let f: File = serde_json::from_str(text).context("not a cases file ({\"cases\": [...]})")?;
    f.cases
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(Case {
                request: AuthorizeRequest {
                    connection: r.connection,
                    peer: Identity {
                        kind: kind(r.kind.as_deref()).with_context(|| format!("case {}", i + 1))?,
                        value: r.peer,
                    },
                    auth: AuthMethod::Psk,
                    peer_address: r.peer_address,
                    local_address: r.local_address,
                    peer_ts: r.peer_ts,
                    local_ts: r.local_ts,
                },
                expect: r.expect,
                tenant: r.tenant,
            })
        })
        .collect()
}

/// The cases beside `module`, if there is a file (an unreadable or
/// malformed one refuses the module: the operator meant it to be checked).
pub fn load(module: &Path) -> Result<Option<Vec<Case>>> {
    let p = path_for(module);
    match std::fs::read_to_string(&p) {
        Ok(t) => parse(&t).with_context(|| format!("{}", p.display())).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Does `got` match what case `c` expects? Err: what differs, in words.
pub fn check(c: &Case, got: &Decision) -> Result<(), String> {
    let who = &c.request.peer.value;
    match (c.expect, got) {
        (Expect::Accept, Decision::Accept(g)) if g.tenant == c.tenant => Ok(()),
        (Expect::Accept, Decision::Accept(g)) => {
            Err(format!("{who}: expected tenant {:?}, the module named {:?}", c.tenant, g.tenant))
        }
        (Expect::Reject, Decision::Reject(_)) => Ok(()),
        (Expect::Accept, Decision::Reject(why)) => Err(format!("{who}: expected accept, the module rejected ({why})")),
        (Expect::Reject, Decision::Accept(_)) => Err(format!("{who}: expected reject, the module accepted")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_with_defaults_and_check() {
        let c = parse(
            r#"{"cases": [{"peer": "a.test", "peer_ts": ["10.0.0.0/8"], "expect": "accept"},
                                     {"peer": "1.2.3.4", "kind": "ipv4", "expect": "reject"}]}"#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].request.peer.kind, c[1].request.peer.kind), (IdKind::Fqdn, IdKind::Ipv4));
        assert_eq!(c[0].request.peer_address, "192.0.2.1:500");
        let accept = Decision::Accept(super::super::connection_grant(""));
        assert!(check(&c[0], &accept).is_ok());
        assert!(check(&c[1], &accept).unwrap_err().contains("expected reject"));
        assert!(parse(r#"{"cases": [{"peer": "x", "expect": "maybe"}]}"#).is_err());
        assert!(parse(r#"{"cases": [{"peer": "x", "expect": "accept", "colour": 1}]}"#).is_err(), "unknown keys");
    }
}
