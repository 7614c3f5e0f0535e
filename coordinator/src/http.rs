//! The coordinator's HTTP side for operators and Kubernetes: an axum router served over
//! HTTP/1.1 by hyper (keep-alive; a client that sends no request head within 5 s is cut
//! off; request bodies, a sign-in form at most, are capped at 16 KiB). GET only, but the
//! sign-in form's POST.
//!
//! - `/healthz`: the process answers. `/readyz`: this coordinator leads and serves (a
//!   standby is not ready). The probes need no token (the kubelet sends none).
//! - `/`: the dashboard, a page that polls `/api/cluster`.
//! - `/api/cluster`: runs (with each stage's duration and ETA), workers and total
//!   throughput, as JSON. `/api/runs`: the runs alone.
//! - `/api/runs/{run}/stages/{k}/files/{name}`: a file stage k committed (a report, its
//!   charts, a funnel).
//! - `/metrics`: Prometheus text.
//!
//! Everything but the probes requires the token when one is configured: as a bearer header
//! (scripts, Prometheus), or as the session cookie a POST to `/login` sets (browsers); see
//! `http_access`, which also makes the TLS acceptor when the gRPC side's certificate is
//! given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use automaldesc_common::ids::RunId;
use automaldesc_proto::security::{RequireToken, ServerTlsFiles};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http_access::{tls_acceptor, Access};

use crate::error_status::ErrorClass;
use crate::run_manager::{RunError, RunStatus};
use crate::stage_manager::read_commits;
use crate::state::StateStore;
use crate::workers::WorkerView;

mod metrics;
#[cfg(test)]
mod tests;
mod view;

pub use metrics::metrics_text;
use view::cluster_json;
pub use view::{stage_eta, stage_started_ms, InFlight};

/// What the event loop publishes on each tick.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    /// When it was taken (ms since the epoch).
    pub at_ms: u64,
    pub runs: Vec<RunStatus>,
    pub workers: Vec<WorkerView>,
}

/// What the HTTP side reads.
#[derive(Clone)]
pub struct HttpState {
    /// Set once this coordinator leads and serves.
    pub ready: Arc<AtomicBool>,
    pub view: watch::Receiver<ClusterView>,
    pub access: Access,
    /// The state store, once this coordinator leads (for committed files).
    pub store: Arc<OnceLock<Arc<dyn StateStore>>>,
}

const DASHBOARD: &str = include_str!("dashboard.html");

struct Response {
    status: u16,
    content_type: &'static str,
    /// `no-store` but for committed files, which never change.
    cache_control: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            cache_control: "no-store",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    /// `e` as text, with the status its class has (the gRPC side maps it alike).
    fn error(e: &RunError) -> Self {
        Self::text(ErrorClass::of(e).http(), &format!("{e}\n"))
    }

    fn json(value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(200, "application/json", body),
            Err(e) => Self::text(500, &format!("{e}\n")),
        }
    }
}

/// Binds `addr` and serves there in a task of its own: returns the sender the event loop
/// publishes the view with, and the bound address.
pub async fn start(
    addr: &str,
    ready: Arc<AtomicBool>,
    token: RequireToken,
    store: Arc<OnceLock<Arc<dyn StateStore>>>,
) -> anyhow::Result<(Arc<watch::Sender<ClusterView>>, std::net::SocketAddr)> {
    start_tls(addr, ready, token, store, None).await
}

/// [`start`], serving HTTPS with the certificate and key of `tls` when given.
pub async fn start_tls(
    addr: &str,
    ready: Arc<AtomicBool>,
    token: RequireToken,
    store: Arc<OnceLock<Arc<dyn StateStore>>>,
    tls: Option<&ServerTlsFiles>,
) -> anyhow::Result<(Arc<watch::Sender<ClusterView>>, std::net::SocketAddr)> {
    let acceptor = tls.map(tls_acceptor).transpose()?;
    let (tx, view) = watch::channel(ClusterView::default());
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening for HTTP on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let state = HttpState {
        ready,
        view,
        access: Access::new(token, acceptor.is_some()),
        store,
    };
    tokio::spawn(serve_http(listener, state, acceptor));
    Ok((Arc::new(tx), bound))
}

/// Serves until the task is dropped; over TLS with `tls`.
pub async fn serve_http(
    listener: TcpListener,
    state: HttpState,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let app = Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => serve_connection(conn, app).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(conn));
                    match handshake.await {
                        Ok(Ok(conn)) => serve_connection(conn, app).await,
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection failed");
            }
        });
    }
}

/// One connection's requests, in turn (HTTP/1.1 keep-alive). Header names go out in title
/// case, as most servers write them.
async fn serve_connection(
    conn: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    app: Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5));
    let service = hyper_util::service::TowerToHyperService::new(app);
    http.serve_connection(hyper_util::rt::TokioIo::new(conn), service)
        .await?;
    Ok(())
}

/// The largest request body read (a sign-in form).
const MAX_BODY: usize = 16 << 10;

/// What a request is answered by: its method, path (the query is the page's own business,
/// `/?poll=MS`), credentials and body.
struct Request {
    method: Method,
    path: String,
    authorization: Option<String>,
    cookie: Option<String>,
    body: Bytes,
}

async fn handle(
    State(state): State<HttpState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let req = Request {
        method,
        path: uri.path().to_string(),
        authorization: header(header::AUTHORIZATION),
        cookie: header(header::COOKIE),
        body,
    };
    respond(&req, &state).await
}

impl IntoResponse for Response {
    fn into_response(self) -> axum::response::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, self.body).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        for (name, value) in self.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(name), Ok(value)) => {
                    h.append(name, value);
                }
                _ => tracing::warn!(
                    name,
                    "a response header that HTTP cannot carry was left out"
                ),
            }
        }
        r
    }
}

async fn respond(req: &Request, state: &HttpState) -> Response {
    match (&req.method, req.path.as_str()) {
        (&Method::POST, "/login") => return login(&req.body, &state.access),
        (&Method::GET, "/login") => {
            return Response::new(200, "text/html; charset=utf-8", LOGIN_PAGE)
        }
        (&Method::GET, _) => {}
        _ => return Response::text(405, "GET only (and POST to /login)\n"),
    }
    match req.path.as_str() {
        "/healthz" => return Response::text(200, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => return Response::text(200, "ready\n"),
        "/readyz" => return Response::text(503, "not leading\n"),
        "/favicon.ico" => return Response::new(204, "image/x-icon", Vec::new()),
        _ => {}
    }
    let allowed = state
        .access
        .allows(req.authorization.as_deref(), req.cookie.as_deref());
    if !allowed {
        if req.path == "/" {
            return Response::new(401, "text/html; charset=utf-8", LOGIN_PAGE);
        }
        return Response::text(401, "a bearer token is required\n");
    }
    if let Some(rest) = req.path.strip_prefix("/api/runs/") {
        // The run's output is read from the view before the await: the view is borrowed
        // only briefly (it is replaced on every tick).
        let file = stage_file_of(rest, &state.view.borrow());
        return match file {
            Ok((run, stage, name, output)) => stage_file(run, stage, name, &output, state).await,
            Err(r) => r,
        };
    }
    let leader = state.ready.load(Ordering::Relaxed);
    let view = state.view.borrow();
    match req.path.as_str() {
        "/" => {
            let mut r = Response::new(200, "text/html; charset=utf-8", DASHBOARD);
            r.headers.push((
                "Content-Security-Policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:".into(),
            ));
            r
        }
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4",
            metrics_text(&view, leader),
        ),
        "/api/runs" => Response::json(&view.runs),
        "/api/cluster" => Response::json(&cluster_json(&view, leader)),
        _ => Response::text(404, "not found\n"),
    }
}

const LOGIN_PAGE: &str =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>automaldesc: sign in</title></head>\
<body><form method=\"post\" action=\"/login\"><p>This coordinator requires its token.</p>\
<input type=\"password\" name=\"token\" autofocus> <button>Sign in</button></form></body></html>";

/// `POST /login` with the form `token=...`: a valid token gets the session cookie.
fn login(form: &[u8], access: &Access) -> Response {
    match access.sign_in(form) {
        Some(cookie) => {
            let mut r = Response::text(303, "signed in\n");
            r.headers.push(("Location", "/".into()));
            r.headers.push(("Set-Cookie", cookie));
            r
        }
        None => Response::new(401, "text/html; charset=utf-8", LOGIN_PAGE),
    }
}

/// `{run}/stages/{k}/files/{name}` as (run, stage, file name, the run's output URL).
fn stage_file_of<'a>(
    rest: &'a str,
    view: &ClusterView,
) -> Result<(&'a str, u32, &'a str, String), Response> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [run, "stages", stage, "files", name] = parts.as_slice() else {
        return Err(Response::text(404, "not found\n"));
    };
    match (
        view.runs.iter().find(|r| r.id.0 == *run),
        stage.parse::<u32>(),
    ) {
        (Some(r), Ok(stage)) => Ok((run, stage, name, r.output.clone())),
        _ => Err(Response::text(404, "no such run or stage\n")),
    }
}

/// A file stage `stage` of `run` committed, by its name. Only committed files are served,
/// so nothing else in the store can be read this way; they never change, so browsers may
/// keep them.
async fn stage_file(
    run: &str,
    stage: u32,
    name: &str,
    output: &str,
    state: &HttpState,
) -> Response {
    let Some(store) = state.store.get() else {
        return Response::text(503, "not leading\n");
    };
    let commits = match read_commits(store.as_ref(), &RunId(run.to_string()), stage).await {
        Ok(c) => c,
        Err(e) => return Response::error(&e.into()),
    };
    let Some(path) = commits
        .iter()
        .flat_map(|(_, c)| &c.outputs)
        .map(|o| o.path.as_str())
        .find(|p| p.rsplit('/').next() == Some(name))
        .map(str::to_string)
    else {
        return Response::text(404, "the stage committed no such file\n");
    };
    let content_type = match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("md") => "text/markdown; charset=utf-8",
        _ => "application/octet-stream",
    };
    let read = async {
        let (out, _) = automaldesc_common::store::open_store(output)?;
        let bytes = out
            .get(&object_store::path::Path::from(path.as_str()))
            .await?
            .bytes()
            .await?;
        Ok::<_, automaldesc_common::Error>(bytes)
    };
    match read.await {
        Ok(bytes) => Response {
            cache_control: "private, max-age=86400, immutable",
            ..Response::new(200, content_type, bytes.to_vec())
        },
        Err(source) => Response::error(&RunError::Data {
            context: format!("reading {path}"),
            source,
        }),
    }
}
