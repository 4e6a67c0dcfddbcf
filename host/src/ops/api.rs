//! The admin API: JSON over HTTP/1 on the Unix socket (`[control] socket`,
//! 0600) and, optionally, on TCP with a bearer token (`[control] api`).
//!
//! | method | path | body | does |
//! |---|---|---|---|
//! | GET | `/v1/status` | | a page of SAs, and every counter |
//! | GET | `/v1/connections` | | a page of the loaded connections |
//! | GET | `/v1/sas` | | a page of IKE and CHILD SAs |
//! | GET | `/v1/failures` | | recent refused or failed negotiations |
//! | POST | `/v1/initiate`, `/v1/terminate`, `/v1/rekey` | `{"connection": NAME}` | start, delete, rekey its CHILD SAs |
//! | POST | `/v1/reload` | | re-read the config's connections |
//! | POST | `/v1/fault` | `{"guest": "ike", "calls": N}`, `{"guest": "ike", "at": "output"}` or `{"guest": "ike", "at": "call", "call": N}` | tests only: the IKE guest traps |
//!
//! `/v1/status` and `/v1/sas` take `?limit=N` (SAs per answer, 1 to
//! 10,000, default 1,000), `after=CURSOR` (the previous answer's `next`)
//! and one of `connection=NAME` and `tenant=NAME` (only those SAs; 404
//! for a name no loaded connection has): see [`super::page`]. Every
//! answer has `ike_sas_total` and `child_sas_total` (all SAs, filtered
//! or not). `/v1/connections` takes the same parameters, its cursor being
//! the last connection's name (they come by name), and has
//! `connections_total`.
//!
//! A request is checked completely (token, method, path, JSON) before the
//! IKE thread sees it; a refusal (4xx) has changed nothing.
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::page::{ConnectionPage, Page};
use super::view::{Command, FaultPoint, MAX_INJECTED_FAULTS, Query};
use super::{Ops, text};

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;
/// How long a command may take on the IKE thread (it answers between two
/// guest calls; initiate and terminate only queue messages).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

fn reply(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(status, format!("{v:#}\n"));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

/// Equal, in time that does not depend on where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is the request authorised? The Unix socket is (its mode is 0600); TCP
/// needs `Authorization: Bearer <token>`.
pub fn authorised(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|g| same_token(g.as_bytes(), token.as_bytes()))
}

/// Why a request is refused before it reaches the IKE thread.
type Bad = (StatusCode, String);

fn bad(status: StatusCode, message: impl Into<String>) -> Bad {
    (status, message.into())
}

/// The command a request asks for, or the 4xx that refuses it.
async fn command(req: Request<Incoming>) -> Result<Command, Bad> {
    let (parts, body) = req.into_parts();
    let get = parts.method == Method::GET;
    let post = parts.method == Method::POST;
    let path = parts.uri.path().to_string();
    let page = || Page::from_query(parts.uri.query()).map_err(|why| bad(StatusCode::BAD_REQUEST, why));
    let conns = || ConnectionPage::from_query(parts.uri.query()).map_err(|why| bad(StatusCode::BAD_REQUEST, why));
    let simple = match path.as_str() {
        "/v1/status" => Some(Command::Status(page()?)),
        "/v1/connections" => Some(Command::Connections(conns()?)),
        "/v1/sas" => Some(Command::Sas(page()?)),
        "/v1/failures" => Some(Command::Failures),
        _ => None,
    };
    if let Some(c) = simple {
        return if get { Ok(c) } else { Err(bad(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes GET"))) };
    }
    let known = ["/v1/initiate", "/v1/terminate", "/v1/rekey", "/v1/fault", "/v1/reload"];
    if !known.contains(&path.as_str()) {
        return Err(bad(StatusCode::NOT_FOUND, format!("no such endpoint {path}: see `wasmsec --help`")));
    }
    if !post {
        return Err(bad(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes POST")));
    }
    if path == "/v1/reload" {
        return Ok(Command::Reload);
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(bad(StatusCode::PAYLOAD_TOO_LARGE, format!("body unreadable or above 16 KiB: {e}"))),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")))?;
    let field = |k: &str| -> Result<String, Bad> {
        match v.get(k) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(bad(StatusCode::BAD_REQUEST, format!("the body needs {{\"{k}\": \"...\"}}"))),
        }
    };
    Ok(match path.as_str() {
        "/v1/initiate" => Command::Initiate(field("connection")?),
        "/v1/terminate" => Command::Terminate(field("connection")?),
        "/v1/rekey" => Command::Rekey(field("connection")?),
        _ => match field("guest")?.as_str() {
            "ike" if v.get("at").is_some() => match (v.get("at").and_then(|a| a.as_str()), v.get("call")) {
                (Some("output"), None) => Command::FaultIkeAt(FaultPoint::Output),
                (Some("call"), Some(n)) => match n.as_u64() {
                    Some(n) if (1..=u64::from(MAX_INJECTED_FAULTS)).contains(&n) => {
                        Command::FaultIkeAt(FaultPoint::Call(n as u32))
                    }
                    _ => {
                        let why =
                            format!("\"call\" is which call of the next command traps, 1 to {MAX_INJECTED_FAULTS}");
                        return Err(bad(StatusCode::BAD_REQUEST, why));
                    }
                },
                _ => {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        "\"at\" is \"output\", or \"call\" with \"call\": N (or leave it out and give \"calls\")",
                    ));
                }
            },
            "ike" => Command::FaultIke(match v.get("calls") {
                None => 1,
                Some(n) => match n.as_u64() {
                    Some(n) if (1..=u64::from(MAX_INJECTED_FAULTS)).contains(&n) => n as u32,
                    _ => {
                        let why = format!("\"calls\" is the number of calls that trap, 1 to {MAX_INJECTED_FAULTS}");
                        return Err(bad(StatusCode::BAD_REQUEST, why));
                    }
                },
            }),
            other => return Err(bad(StatusCode::BAD_REQUEST, format!("no fault for guest {other:?} (only \"ike\")"))),
        },
    })
}

/// Serve one admin request.
pub async fn route(ops: &Ops, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let cmd = match command(req).await {
        Ok(c) => c,
        Err((status, message)) => return error(status, message),
    };
    let Some(control) = &ops.control else {
        return match cmd {
            Command::Status(_) => reply(StatusCode::OK, json!({ "esp": ops.stats.snapshot() })),
            _ => error(StatusCode::CONFLICT, "no IKE connections are configured (manual tunnels only)"),
        };
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !control.send(Query::Admin(cmd, tx)) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the IKE thread has stopped");
    }
    match tokio::time::timeout(ANSWER_WITHIN, rx).await {
        Ok(Ok(Ok(v))) => reply(StatusCode::OK, v),
        Ok(Ok(Err(refusal))) => {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::CONFLICT);
            error(status, refusal.message)
        }
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the IKE thread dropped the request (its guest trapped?)"),
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "the IKE thread did not answer within 10 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_token(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_token(b"0123456789abcdef", b"0123456789abcde"));
    }
}
