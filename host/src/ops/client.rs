//! The CLI's side of the admin API: one HTTP/1.1 request per connection,
//! blocking, over the Unix socket or TCP with a bearer token. Small enough
//! that the CLI needs no async runtime.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Where the daemon's admin API is.
#[derive(Debug, Clone)]
pub enum Target {
    /// `[control] socket`.
    Unix(PathBuf),
    /// `[control] api`, with the token.
    Tcp(SocketAddr, String),
}

/// An answer: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Send `method path` (with a JSON body for POST) and read the answer.
pub fn request(target: &Target, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<Reply> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = match target {
        Target::Tcp(_, token) => format!("Authorization: Bearer {token}\r\n"),
        Target::Unix(_) => String::new(),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: wasmsec\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let message = [head.as_bytes(), body.as_bytes()].concat();
    let timeout = Some(Duration::from_secs(15));
    let mut raw = Vec::new();
    match target {
        Target::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).with_context(|| {
                format!("cannot connect to {} (is the daemon running with [control] socket set?)", p.display())
            })?;
            s.set_read_timeout(timeout)?;
            exchange(&mut s, &message, &mut raw)?;
        }
        Target::Tcp(a, _) => {
            let mut s = std::net::TcpStream::connect_timeout(a, Duration::from_secs(5))
                .with_context(|| format!("cannot connect to {a} (is [control] api set?)"))?;
            s.set_read_timeout(timeout)?;
            exchange(&mut s, &message, &mut raw)?;
        }
    }
    parse(&raw)
}

/// Send the request and read the answer. The daemon may answer (a 4xx)
/// and close before it has read all of the request: a failed write is only
/// an error if no answer came.
fn exchange(s: &mut (impl Read + Write), message: &[u8], raw: &mut Vec<u8>) -> Result<()> {
    let sent = s.write_all(message);
    let read = s.read_to_end(raw);
    match (sent, read) {
        (_, Ok(_)) if !raw.is_empty() => Ok(()),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e.into()),
        (Ok(()), Ok(_)) => bail!("the daemon closed the connection without an answer"),
    }
}

/// An HTTP/1.1 response with a Content-Length body (what hyper sends for
/// the API's bodies).
fn parse(raw: &[u8]) -> Result<Reply> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the daemon's answer is not HTTP ({} bytes)", raw.len());
    };
    let head = std::str::from_utf8(&raw[..split]).context("the answer's head is not text")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {:?}", head.lines().next()))?;
    let body = &raw[split + 4..];
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or_else(|_| String::from_utf8_lossy(body).trim().into())
    };
    Ok(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn answers_parse() {
        let r = parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 16\r\n\r\n{\"error\": \"no\"}\n").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"], "no");
        assert!(parse(b"garbage").is_err());
    }
}
