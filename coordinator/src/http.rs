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

use std::fmt::Write as _;
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
use crate::run_manager::{RunError, RunPhase, RunStatus, StageSummary};
use crate::stage_manager::read_commits;
use crate::state::StateStore;
use crate::workers::{WorkerState, WorkerView};

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

/// Total throughput of the workers that are not lost: (tokens/s, scripts/s).
fn cluster_rates(workers: &[WorkerView]) -> (f64, f64) {
    workers
        .iter()
        .filter(|w| w.state != WorkerState::Lost)
        .fold((0.0, 0.0), |(t, s), w| {
            (t + w.tokens_per_s, s + w.scripts_per_s)
        })
}

/// When stage `i` of the run started (ms since the epoch): stages run one after another,
/// so at its predecessor's end, or at the run's submission.
pub fn stage_started_ms(run: &RunStatus, i: usize) -> u64 {
    match i {
        0 => run.submitted_ms,
        _ => run.stages[i - 1].finished_ms.max(run.submitted_ms),
    }
}

/// When stage `i` of a run started, its wall time (finished, or so far while the run
/// runs), and its ETA with the estimate's basis.
struct StageTiming {
    started_ms: u64,
    elapsed_s: f64,
    eta: Option<(f64, &'static str)>,
}

fn stage_timing(view: &ClusterView, r: &RunStatus, i: usize, rates: (f64, f64)) -> StageTiming {
    let st = &r.stages[i];
    let started_ms = stage_started_ms(r, i);
    let running = r.phase == RunPhase::Running;
    let end = match st.finished_ms {
        0 if running => view.at_ms,
        0 => started_ms,
        f => f,
    };
    let elapsed_s = end.saturating_sub(started_ms) as f64 / 1000.0;
    let eta = running
        .then(|| stage_eta(st, elapsed_s, rates, &in_flight(view, &r.id.0, st.index)))
        .flatten();
    StageTiming {
        started_ms,
        elapsed_s,
        eta,
    }
}

/// A task in flight with the progress its worker reports: seconds since it was leased,
/// and units (training steps, scripts) done of its total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InFlight {
    pub task: u32,
    pub held_s: f64,
    pub done: u64,
    pub total: u64,
}

/// The tasks of stage `stage` of `run` in flight with a known progress (the furthest
/// attempt of a task leased twice).
fn in_flight(view: &ClusterView, run: &str, stage: u32) -> Vec<InFlight> {
    let mut out: Vec<InFlight> = Vec::new();
    for l in view.workers.iter().flat_map(|w| &w.leases) {
        if l.run != run || l.stage != stage || l.total == 0 {
            continue;
        }
        let f = InFlight {
            task: l.task,
            held_s: view.at_ms.saturating_sub(l.since_ms) as f64 / 1000.0,
            done: l.done,
            total: l.total,
        };
        match out.iter_mut().find(|o| o.task == l.task) {
            Some(o) if o.done * f.total < f.done * o.total => *o = f,
            Some(_) => {}
            None => out.push(f),
        }
    }
    out
}

/// How long the open stage still needs, in seconds, and what the estimate rests on:
/// - "tokens": the tokens per script so far times the scripts left, at the cluster's
///   current tokens/s (stages that generate);
/// - "task progress": when every task left is in flight and reports its progress (a
///   training stage's steps), the slowest one's time so far scaled to what it has left;
/// - "scripts": the scripts left at the current scripts/s;
/// - "tasks": the time per committed task so far times the tasks left.
///
/// `None` when the stage is finished or nothing is known yet.
pub fn stage_eta(
    st: &StageSummary,
    elapsed_s: f64,
    rates: (f64, f64),
    in_flight: &[InFlight],
) -> Option<(f64, &'static str)> {
    let (c, t) = (&st.counts, &st.totals);
    let tasks_left = c.total.saturating_sub(c.done + c.quarantined);
    if st.finished_ms != 0 || tasks_left == 0 {
        return None;
    }
    let scripts_left =
        t.scripts_total
            .saturating_sub(t.scripts_done + t.scripts_in_quarantined_tasks) as f64;
    if t.tokens > 0 && t.scripts_done > 0 && rates.0 > 0.0 {
        let tokens_left = scripts_left * t.tokens as f64 / t.scripts_done as f64;
        return Some((tokens_left / rates.0, "tokens"));
    }
    let started: Vec<&InFlight> = in_flight.iter().filter(|f| f.done > 0).collect();
    if started.len() == tasks_left as usize {
        let eta = started
            .iter()
            .map(|f| f.held_s * (f.total - f.done) as f64 / f.done as f64)
            .fold(0.0, f64::max);
        return Some((eta, "task progress"));
    }
    if rates.1 > 0.0 && scripts_left > 0.0 {
        return Some((scripts_left / rates.1, "scripts"));
    }
    if c.done > 0 {
        return Some((elapsed_s / c.done as f64 * tasks_left as f64, "tasks"));
    }
    None
}

/// `/api/cluster`: the view, with each stage's name, start, duration and ETA, and the total
/// throughput.
fn cluster_json(view: &ClusterView, leader: bool) -> serde_json::Value {
    let rates = cluster_rates(&view.workers);
    let runs: Vec<serde_json::Value> = view
        .runs
        .iter()
        .map(|r| {
            let mut run = serde_json::to_value(r).unwrap_or_default();
            for (i, st) in r.stages.iter().enumerate() {
                let StageTiming {
                    started_ms,
                    elapsed_s,
                    eta,
                } = stage_timing(view, r, i, rates);
                let name = r
                    .stage_names
                    .get(st.index as usize)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| format!("stage {} {}", st.index, st.kind));
                let s = &mut run["stages"][i];
                s["name"] = name.into();
                s["started_ms"] = started_ms.into();
                s["duration_s"] = elapsed_s.into();
                s["eta_s"] = eta.map(|e| e.0).into();
                s["eta_basis"] = eta.map(|e| e.1).into();
            }
            run
        })
        .collect();
    serde_json::json!({
        "at_ms": view.at_ms,
        "leader": leader,
        "tokens_per_s": rates.0,
        "scripts_per_s": rates.1,
        "workers": view.workers,
        "runs": runs,
    })
}

fn phase_name(p: RunPhase) -> &'static str {
    p.name()
}

/// A label value as the exposition format wants it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// Every metric as Prometheus text: runs by phase; per stage, tasks by state, scripts,
/// rows, tokens, attempt counters, duration and ETA; per worker, leases, totals, rates,
/// heartbeat age and model loads; the cluster's tokens/s; whether this coordinator leads.
pub fn metrics_text(view: &ClusterView, leader: bool) -> String {
    let mut s = String::new();
    header(
        &mut s,
        "automaldesc_coordinator_leader",
        "gauge",
        "1 when this coordinator leads and serves.",
    );
    let _ = writeln!(s, "automaldesc_coordinator_leader {}", u8::from(leader));
    header(&mut s, "automaldesc_runs", "gauge", "Runs by phase.");
    for phase in [
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::SucceededWithQuarantine,
        RunPhase::Failed,
        RunPhase::Cancelled,
    ] {
        let n = view.runs.iter().filter(|r| r.phase == phase).count();
        let _ = writeln!(s, "automaldesc_runs{{phase=\"{}\"}} {n}", phase_name(phase));
    }
    stage_metrics(&mut s, view);
    worker_metrics(&mut s, view);
    s
}

type Metric = (&'static str, &'static str, &'static str);

const STAGE_METRICS: [Metric; 11] = [
    (
        "automaldesc_stage_scripts_total",
        "gauge",
        "Input scripts of a stage's tasks.",
    ),
    (
        "automaldesc_stage_scripts_done",
        "counter",
        "Input scripts of committed tasks.",
    ),
    (
        "automaldesc_stage_rows_out",
        "counter",
        "Rows the committed tasks wrote.",
    ),
    (
        "automaldesc_stage_tokens",
        "counter",
        "Decode tokens the committed tasks generated.",
    ),
    (
        "automaldesc_stage_scripts_quarantined",
        "counter",
        "Scripts quarantined alone or in a quarantined task.",
    ),
    (
        "automaldesc_stage_lease_expiries",
        "counter",
        "Leases that expired (since this coordinator opened the stage).",
    ),
    (
        "automaldesc_stage_failed_attempts",
        "counter",
        "Attempts that failed (since this coordinator opened the stage).",
    ),
    (
        "automaldesc_stage_refused_completions",
        "counter",
        "Completions refused as late (since this coordinator opened the stage).",
    ),
    (
        "automaldesc_stage_duration_seconds",
        "gauge",
        "Wall time of a stage: finished, or so far.",
    ),
    (
        "automaldesc_stage_eta_seconds",
        "gauge",
        "Estimated seconds the open stage still needs (absent when unknown).",
    ),
    (
        "automaldesc_stage_tasks",
        "gauge",
        "Tasks of a stage by state.",
    ),
];

fn stage_metrics(s: &mut String, view: &ClusterView) {
    let rates = cluster_rates(&view.workers);
    // Each stage's labels and timing, once.
    let stages: Vec<(String, &StageSummary, StageTiming)> = view
        .runs
        .iter()
        .flat_map(|r| {
            r.stages.iter().enumerate().map(move |(i, st)| {
                let labels = format!(
                    "run=\"{}\",stage=\"{}\",kind=\"{}\"",
                    label(&r.id.0),
                    st.index,
                    label(&st.kind)
                );
                (labels, st, stage_timing(view, r, i, rates))
            })
        })
        .collect();
    for (name, kind, help) in STAGE_METRICS {
        header(s, name, kind, help);
        for (labels, st, timing) in &stages {
            let (c, t) = (&st.counts, &st.totals);
            let v: f64 = match name {
                "automaldesc_stage_tasks" => {
                    let pending = c.total.saturating_sub(c.done + c.leased + c.quarantined);
                    for (state, n) in [
                        ("total", c.total),
                        ("done", c.done),
                        ("leased", c.leased),
                        ("quarantined", c.quarantined),
                        ("pending", pending),
                    ] {
                        let _ = writeln!(s, "{name}{{{labels},state=\"{state}\"}} {n}");
                    }
                    continue;
                }
                "automaldesc_stage_eta_seconds" => match timing.eta {
                    Some((e, _)) => e,
                    None => continue,
                },
                "automaldesc_stage_duration_seconds" => timing.elapsed_s,
                "automaldesc_stage_scripts_total" => t.scripts_total as f64,
                "automaldesc_stage_scripts_done" => t.scripts_done as f64,
                "automaldesc_stage_rows_out" => t.rows_out as f64,
                "automaldesc_stage_tokens" => t.tokens as f64,
                "automaldesc_stage_scripts_quarantined" => {
                    (t.scripts_quarantined + t.scripts_in_quarantined_tasks) as f64
                }
                "automaldesc_stage_lease_expiries" => f64::from(t.leases_expired),
                "automaldesc_stage_failed_attempts" => f64::from(t.attempts_failed),
                _ => f64::from(t.completions_refused),
            };
            let _ = writeln!(s, "{name}{{{labels}}} {v}");
        }
    }
}

const WORKER_METRICS: [Metric; 9] = [
    (
        "automaldesc_worker_info",
        "gauge",
        "A worker heard from, with its backend (always 1).",
    ),
    (
        "automaldesc_worker_leases",
        "gauge",
        "Leases a worker holds.",
    ),
    (
        "automaldesc_worker_tokens_total",
        "counter",
        "Decode tokens a worker generated since it started.",
    ),
    (
        "automaldesc_worker_scripts_total",
        "counter",
        "Scripts a worker's executors finished since it started.",
    ),
    (
        "automaldesc_worker_tokens_per_second",
        "gauge",
        "A worker's decode tokens per second over the last minute.",
    ),
    (
        "automaldesc_worker_scripts_per_second",
        "gauge",
        "A worker's scripts per second over the last minute.",
    ),
    (
        "automaldesc_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since the worker was last heard from.",
    ),
    (
        "automaldesc_worker_model_load_seconds_total",
        "counter",
        "Seconds a worker spent loading models.",
    ),
    (
        "automaldesc_worker_model_loads_total",
        "counter",
        "Models a worker loaded.",
    ),
];

fn worker_metrics(s: &mut String, view: &ClusterView) {
    header(s, "automaldesc_workers", "gauge", "Workers by state.");
    for state in WorkerState::ALL {
        let n = view.workers.iter().filter(|w| w.state == state).count();
        let _ = writeln!(s, "automaldesc_workers{{state=\"{}\"}} {n}", state.name());
    }
    for (name, kind, help) in WORKER_METRICS {
        header(s, name, kind, help);
        for w in &view.workers {
            let id = label(&w.id);
            let v = match name {
                "automaldesc_worker_info" => {
                    let _ = writeln!(
                        s,
                        "{name}{{worker=\"{id}\",backend=\"{}\"}} 1",
                        label(&w.backend)
                    );
                    continue;
                }
                "automaldesc_worker_leases" => w.leases.len() as f64,
                "automaldesc_worker_tokens_total" => w.tokens as f64,
                "automaldesc_worker_scripts_total" => w.scripts as f64,
                "automaldesc_worker_tokens_per_second" => w.tokens_per_s,
                "automaldesc_worker_scripts_per_second" => w.scripts_per_s,
                "automaldesc_worker_heartbeat_age_seconds" => {
                    view.at_ms.saturating_sub(w.last_seen_ms) as f64 / 1000.0
                }
                "automaldesc_worker_model_load_seconds_total" => w.model_load_s,
                _ => w.model_loads as f64,
            };
            let _ = writeln!(s, "{name}{{worker=\"{id}\"}} {v}");
        }
    }
    header(
        s,
        "automaldesc_tokens_per_second",
        "gauge",
        "Decode tokens per second of all workers not lost.",
    );
    let _ = writeln!(
        s,
        "automaldesc_tokens_per_second {}",
        cluster_rates(&view.workers).0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use crate::lease_manager::StageCounts;
    use crate::stage_manager::StageTotals;

    fn stage(done: u32, total: u32, totals: StageTotals) -> StageSummary {
        StageSummary {
            index: 1,
            kind: "generate".into(),
            counts: StageCounts {
                total,
                done,
                leased: 1,
                quarantined: 0,
            },
            totals,
            garbage_files_deleted: 0,
            finished_ms: 0,
            troubles: Vec::new(),
        }
    }

    /// Sends `requests` on one connection and reads until the server closes it.
    async fn exchange(addr: std::net::SocketAddr, requests: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(requests.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
            .await
            .expect("the server answers and closes")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn one_connection_carries_several_requests_and_bad_ones_get_their_status() {
        let ready = Arc::new(AtomicBool::new(true));
        let (_view, addr) = start(
            "127.0.0.1:0",
            ready,
            RequireToken::default(),
            Default::default(),
        )
        .await
        .unwrap();
        // Two requests on one connection, the second asking to close it.
        let out = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(
            out.contains("\r\n\r\nok\n") && out.ends_with("ready\n"),
            "{out}"
        );
        assert!(out.contains("Cache-Control: no-store"), "{out}");
        // A method the server does not take, a body over the cap, a path it does not have.
        let out = exchange(
            addr,
            "DELETE /api/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        let big = "x".repeat(MAX_BODY + 1);
        let out = exchange(
            addr,
            &format!("POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{big}", big.len()),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        let out = exchange(
            addr,
            "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 404") && out.ends_with("not found\n"),
            "{out}"
        );
        // Not HTTP at all: an error status, and the connection closed.
        let out = exchange(addr, "hello\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn the_eta_rests_on_tokens_then_scripts_then_tasks() {
        // 40 of 100 scripts done with 8000 tokens: 200 tokens a script, 60 left = 12000
        // tokens; at 400 tokens/s, 30 s.
        let totals = StageTotals {
            scripts_total: 100,
            scripts_done: 40,
            tokens: 8000,
            ..StageTotals::default()
        };
        assert_eq!(
            stage_eta(&stage(4, 10, totals), 99.0, (400.0, 2.0), &[]),
            Some((30.0, "tokens"))
        );
        // No tokens (a stage that does not generate): 60 scripts at 2 scripts/s.
        let no_tokens = StageTotals {
            tokens: 0,
            ..totals
        };
        assert_eq!(
            stage_eta(&stage(4, 10, no_tokens), 99.0, (400.0, 2.0), &[]),
            Some((30.0, "scripts"))
        );
        // No rate either: 4 tasks in 20 s, 6 left.
        assert_eq!(
            stage_eta(&stage(4, 10, no_tokens), 20.0, (0.0, 0.0), &[]),
            Some((30.0, "tasks"))
        );
        // Nothing known yet; and nothing left.
        assert_eq!(
            stage_eta(&stage(0, 10, StageTotals::default()), 5.0, (0.0, 0.0), &[]),
            None
        );
        assert_eq!(
            stage_eta(&stage(10, 10, totals), 5.0, (400.0, 2.0), &[]),
            None
        );
        // A training stage: one task, in flight for 60 s, 20 of 50 steps done: 90 s left,
        // whatever the scripts rate says.
        let train = StageTotals {
            scripts_total: 20,
            ..StageTotals::default()
        };
        let steps = |done| InFlight {
            task: 0,
            held_s: 60.0,
            done,
            total: 50,
        };
        assert_eq!(
            stage_eta(&stage(0, 1, train), 60.0, (0.0, 2.0), &[steps(20)]),
            Some((90.0, "task progress"))
        );
        // No step done yet, or a task left that is not in flight: other bases.
        assert_eq!(
            stage_eta(&stage(0, 1, train), 60.0, (0.0, 2.0), &[steps(0)]),
            Some((10.0, "scripts"))
        );
        assert_eq!(
            stage_eta(&stage(0, 2, train), 60.0, (0.0, 0.0), &[steps(20)]),
            None
        );
    }

    /// The metric names and label names of a metrics text.
    fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut names, mut labels) = (BTreeSet::new(), BTreeSet::new());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let series = line.rsplit_once(' ').unwrap().0;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            names.insert(name.to_string());
            for pair in rest
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                labels.insert(pair.split_once('=').unwrap().0.to_string());
            }
        }
        (names, labels)
    }

    #[test]
    fn the_grafana_dashboard_uses_only_exported_metrics_and_labels() {
        let mut run_totals = StageTotals {
            scripts_total: 10,
            scripts_done: 4,
            tokens: 100,
            ..StageTotals::default()
        };
        run_totals.attempts_failed = 1;
        let run = RunStatus {
            id: RunId("r".into()),
            phase: RunPhase::Running,
            error: String::new(),
            stages: vec![stage(2, 5, run_totals)],
            stages_total: 3,
            submitted_ms: 1_000,
            output: String::new(),
            stage_names: Vec::new(),
            resumed_ms: Vec::new(),
        };
        let worker = WorkerView {
            id: "w0".into(),
            state: WorkerState::Busy,
            backend: "cuda".into(),
            device_memory_bytes: 0,
            slots: 1,
            kinds: Vec::new(),
            registered_ms: 1_000,
            last_seen_ms: 2_000,
            leases: Vec::new(),
            tasks_completed: 2,
            tasks_failed: 0,
            scripts: 4,
            tokens: 100,
            tokens_per_s: 10.0,
            scripts_per_s: 0.5,
            model_loads: 1,
            model_load_s: 0.5,
        };
        let view = ClusterView {
            at_ms: 3_000,
            runs: vec![run],
            workers: vec![worker],
        };
        let text = metrics_text(&view, true);
        let (names, labels) = exported(&text);
        assert!(names.contains("automaldesc_stage_eta_seconds"), "{text}");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/automaldesc.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut queries = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v.as_str()) {
                            ("expr" | "query" | "definition", Some(q)) => out.push(q.to_string()),
                            _ => walk(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut queries);
        assert!(queries.len() >= 10, "{queries:?}");
        let mut used = BTreeSet::new();
        for q in &queries {
            let mut rest = q.as_str();
            while let Some(i) = rest.find("automaldesc_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(names.contains(&name), "{q}: {name} is not exported");
                used.insert(name.clone());
                rest = &rest[i + name.len()..];
            }
            // Labels in selectors and in by (...) / label_values(..., label).
            for group in q.split(['{', '(']).skip(1) {
                let inner = group.split(['}', ')']).next().unwrap_or("");
                for part in inner.split(',') {
                    let label = part.split(['=', '!', '~']).next().unwrap_or("").trim();
                    let is_label = !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        && part.contains(['=', '~'])
                        || q.contains(&format!("by ({inner})"));
                    if is_label && !label.starts_with("automaldesc") && label != "le" {
                        assert!(labels.contains(label), "{q}: label {label} is not exported");
                    }
                }
            }
        }
        // The panels cover the throughput, progress, worker and failure series.
        for name in [
            "automaldesc_stage_tasks",
            "automaldesc_stage_tokens",
            "automaldesc_stage_eta_seconds",
            "automaldesc_worker_tokens_per_second",
            "automaldesc_worker_heartbeat_age_seconds",
            "automaldesc_stage_lease_expiries",
            "automaldesc_worker_model_load_seconds_total",
        ] {
            assert!(used.contains(name), "no panel shows {name}");
        }
    }
}
