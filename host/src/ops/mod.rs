//! The operator interfaces, on one tokio thread (`ops`): `/metrics`
//! (Prometheus text), `/healthz` and `/readyz` over HTTP/1 with hyper. The
//! packet threads and the IKE thread keep their own loops; this thread
//! reads their counters ([`crate::stats::Stats`] atomics) and asks the IKE
//! thread for its view through a [`Query`] on a channel that wakes its
//! `poll`. A scrape never blocks a packet.
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

use crate::datapath::channel::Sender;
use crate::stats::Stats;
use crate::sys;
pub use render::render;
pub use view::{IkeTotals, IkeView, Query};

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
            "/healthz" => match self.ike_view().await {
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

/// Bind the metrics listener now (a taken port fails the start, with the
/// address in the error) and serve it on a new `ops` thread until stop.
pub fn spawn(listen: SocketAddr, ops: Ops) -> Result<std::thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot bind the metrics listener [control] metrics = \"{listen}\""))?;
    listener.set_nonblocking(true)?;
    info!(listen = %listen, "metrics and probes on http://{listen}/metrics, /healthz, /readyz");
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    Ok(std::thread::Builder::new().name("ops".into()).spawn(move || rt.block_on(serve(listener, Arc::new(ops))))?)
}

async fn serve(listener: std::net::TcpListener, ops: Arc<Ops>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return warn!(error = %e, "metrics listener unusable"),
    };
    while !sys::stop_requested() {
        // Wake at least every 250 ms to notice the stop.
        let Ok(accepted) = tokio::time::timeout(Duration::from_millis(250), listener.accept()).await else { continue };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let ops = ops.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ops = ops.clone();
                async move { Ok::<_, Infallible>(ops.answer(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
