//! The operator interfaces, on one tokio thread (`ops`): `/metrics`
//! (Prometheus text), `/healthz` and `/readyz`, and the admin API
//! ([`api`]), over HTTP/1 with hyper. The
//! packet threads and the IKE thread keep their own loops; this thread
//! reads their counters ([`crate::stats::Stats`] atomics) and asks the IKE
//! thread for its view through a [`Query`] on a channel that wakes its
//! `poll`. A scrape never blocks a packet.
pub mod api;
pub mod client;
pub mod page;
pub mod render;
pub mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::datapath::channel::Sender;
use crate::stats::Stats;
use crate::sys;
pub use page::{ConnectionPage, Cursor, Only, Page};
pub use render::render;
pub use view::{Answer, Command, FaultPoint, IkeTotals, IkeView, Query, Refusal};

/// How long a probe or scrape waits for the IKE thread. It answers
/// between two guest calls, so a longer wait means it is stuck.
const CONTROL_ANSWER: Duration = Duration::from_secs(2);

/// What the ops thread reads.
pub struct Ops {
    /// The data path's counters.
    pub stats: Arc<Stats>,
    /// Questions to the IKE thread (none when only manual tunnels run).
    pub control: Option<Sender<Query>>,
    /// Set once the config is loaded, the guests are instantiated and the
    /// sockets are bound and the packet threads run; cleared on shutdown.
    pub ready: Arc<AtomicBool>,
    /// The config file to watch: a change reloads it (`[control]
    /// watch_config`). SIGHUP reloads it in any case.
    pub watch: Option<std::path::PathBuf>,
}

impl Ops {
    /// The IKE view, or why there is none.
    async fn ike_view(&self) -> Result<Option<IkeView>, &'static str> {
        let Some(control) = &self.control else { return Ok(None) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !control.send(Query::Metrics(tx)) {
            return Err("the IKE thread has stopped");
        }
        match tokio::time::timeout(CONTROL_ANSWER, rx).await {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(_)) => Err("the IKE thread dropped the question"),
            Err(_) => Err("the IKE thread did not answer within 2 s"),
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let view = self.ike_view().await;
                if let Err(why) = &view {
                    warn!(reason = why, "/metrics without the IKE view");
                }
                let body = render(&self.stats, view.ok().flatten().as_ref());
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            // Alive: the IKE thread answers between its guest calls (a
            // stuck guest or loop fails this and the pod is restarted).
            // A guest waiting for its replacement is alive: the wait ends
            // by itself, and a restart would take every tunnel down.
            "/healthz" => match self.ike_view().await {
                Ok(Some(v)) if v.ike_guest_replacing => {
                    text(StatusCode::OK, "ok (the IKE guest trapped and waits for its replacement)\n".into())
                }
                Ok(_) => text(StatusCode::OK, "ok\n".into()),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")),
            },
            // Ready: serving tunnels, and not shutting down (a load
            // balancer stops sending new peers before the SAs go).
            "/readyz" if sys::stop_requested() => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into()),
            "/readyz" if !self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
            "/readyz" => match self.ike_view().await {
                Ok(Some(v)) if v.ike_guest_replacing => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the IKE guest waits for its replacement\n".into())
                }
                Ok(_) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            },
            _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// The listeners of the ops thread, bound by the daemon before any thread
/// starts (a taken port or path fails the start with its name).
#[derive(Default)]
pub struct Listeners {
    /// `/metrics`, `/healthz`, `/readyz` (`[control] metrics`).
    pub metrics: Option<std::net::TcpListener>,
    /// The admin API on the Unix socket (`[control] socket`, mode 0600).
    pub admin_unix: Option<std::os::unix::net::UnixListener>,
    /// The admin API on TCP (`[control] api`), with its bearer token.
    pub admin_tcp: Option<(std::net::TcpListener, Zeroizing<String>)>,
}

impl Listeners {
    pub fn any(&self) -> bool {
        self.metrics.is_some() || self.admin_unix.is_some() || self.admin_tcp.is_some()
    }
}

/// Bind a TCP listener for the ops thread; the error names the setting.
pub fn bind_tcp(addr: SocketAddr, setting: &str) -> Result<std::net::TcpListener> {
    let l =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind [control] {setting} = \"{addr}\""))?;
    l.set_nonblocking(true)?;
    info!(listen = %addr, "{setting} listening");
    Ok(l)
}

/// Which interface a connection came in on.
#[derive(Clone)]
enum Face {
    /// Metrics and probes.
    Metrics,
    /// The admin API; TCP needs the token.
    Admin(Option<Arc<Zeroizing<String>>>),
}

/// Serve the listeners on a new `ops` thread until stop.
pub fn spawn(listeners: Listeners, ops: Ops) -> Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    Ok(std::thread::Builder::new().name("ops".into()).spawn(move || rt.block_on(serve(listeners, Arc::new(ops))))?)
}

async fn serve(listeners: Listeners, ops: Arc<Ops>) {
    let mut tasks = Vec::new();
    let tcp = |l: std::net::TcpListener, face: Face| {
        let ops = ops.clone();
        async move {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => accept_loop(|| l.accept(), ops, face).await,
                Err(e) => warn!(error = %e, "ops listener unusable"),
            }
        }
    };
    if ops.control.is_some() {
        tasks.push(tokio::spawn(reload_triggers(ops.clone())));
    }
    if let Some(l) = listeners.metrics {
        tasks.push(tokio::spawn(tcp(l, Face::Metrics)));
    }
    if let Some((l, token)) = listeners.admin_tcp {
        tasks.push(tokio::spawn(tcp(l, Face::Admin(Some(Arc::new(token))))));
    }
    if let Some(l) = listeners.admin_unix {
        let ops = ops.clone();
        tasks.push(tokio::spawn(async move {
            match tokio::net::UnixListener::from_std(l) {
                Ok(l) => accept_loop(|| l.accept(), ops, Face::Admin(None)).await,
                Err(e) => warn!(error = %e, "admin socket unusable"),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A digest of the config file's content, to notice edits (mtimes can
/// stay the same across a quick rewrite).
fn fingerprint(p: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(p).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// SIGHUP, and with `watch_config` a change of the file, reload the
/// config on the IKE thread. A file caught half-written does not load and
/// is refused with nothing changed; the finished write reloads.
async fn reload_triggers(ops: Arc<Ops>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "cannot handle SIGHUP; reload with `wasmsec reload`"),
    };
    let mut last = ops.watch.as_deref().and_then(fingerprint);
    let mut ticks = 0u32;
    while !sys::stop_requested() {
        // Short waits, to notice a stop within 100 ms; the file is read
        // once a second.
        let hupped = matches!(tokio::time::timeout(Duration::from_millis(100), hup.recv()).await, Ok(Some(())));
        ticks = ticks.wrapping_add(1);
        if !hupped && !ticks.is_multiple_of(10) {
            continue;
        }
        let changed = match ops.watch.as_deref().map(fingerprint) {
            Some(now @ Some(_)) if now != last => {
                last = now;
                true
            }
            _ => false,
        };
        if !(hupped || changed) {
            continue;
        }
        let why = if hupped { "SIGHUP" } else { "the config file changed" };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let Some(control) = &ops.control else { return };
        if !control.send(Query::Admin(Command::Reload, tx)) {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(v))) => info!(trigger = why, result = %v, "config reloaded"),
            Ok(Ok(Err(r))) => warn!(trigger = why, status = r.status, "config not reloaded: {}", r.message),
            _ => warn!(trigger = why, "config not reloaded: the IKE thread did not answer"),
        }
    }
}

/// Accept connections until stop, each served on a task of its own.
async fn accept_loop<S, A, F>(accept: impl Fn() -> F, ops: Arc<Ops>, face: Face)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = std::io::Result<(S, A)>>,
{
    while !sys::stop_requested() {
        // Wake at least every 100 ms to notice the stop.
        let Ok(accepted) = tokio::time::timeout(Duration::from_millis(100), accept()).await else { continue };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                debug!(error = %e, "ops accept failed");
                continue;
            }
        };
        let (ops, face) = (ops.clone(), face.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (ops, face) = (ops.clone(), face.clone());
                async move {
                    Ok::<_, Infallible>(match &face {
                        Face::Metrics => ops.answer(req).await,
                        Face::Admin(token) if !api::authorised(&req, token.as_deref().map(|t| t.as_str())) => {
                            let mut r = text(
                                StatusCode::UNAUTHORIZED,
                                "{\"error\": \"missing or wrong bearer token\"}\n".into(),
                            );
                            r.headers_mut().insert(
                                hyper::header::WWW_AUTHENTICATE,
                                hyper::header::HeaderValue::from_static("Bearer"),
                            );
                            r
                        }
                        Face::Admin(_) => api::route(&ops, req).await,
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "ops connection ended with an error");
            }
        });
    }
}
