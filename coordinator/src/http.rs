//! The coordinator's HTTP side for operators and Kubernetes: `/healthz` (the process
//! answers), `/readyz` (this coordinator leads and serves; a standby is not ready),
//! `/metrics` (Prometheus text) and `/api/runs` (every run as JSON, for scripts and
//! dashboards). A minimal HTTP/1.1 server: GET only, one request per connection.
//! `/metrics` and `/api/runs` require the bearer token when one is configured; the probes
//! do not (the kubelet sends none).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automaldesc_proto::security::RequireToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::run_manager::{RunPhase, RunStatus};

/// What the HTTP side reads.
#[derive(Clone)]
pub struct HttpState {
    /// Set once this coordinator leads and serves.
    pub ready: Arc<AtomicBool>,
    /// Every run, refreshed by the event loop on each tick.
    pub runs: watch::Receiver<Vec<RunStatus>>,
    pub token: RequireToken,
}

/// Serves until the task is dropped.
pub async fn serve_http(listener: TcpListener, state: HttpState) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &state).await {
                tracing::debug!(error = %e, "http request failed");
            }
        });
    }
}

async fn answer(mut conn: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // The request head; a client that sends nothing in 5 s or more than 16 KiB is dropped.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("request head timed out"))??;
        if n == 0 || buf.len() > 16 << 10 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let (method, path) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (status, body) = respond(method, path, authorization.as_deref(), state);
    let content_type = match (path, status) {
        ("/metrics", 200) => "text/plain; version=0.0.4",
        ("/api/runs", 200) => "application/json",
        _ => "text/plain",
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

fn respond(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    state: &HttpState,
) -> (u16, String) {
    if method != "GET" {
        return (405, "GET only\n".into());
    }
    match path {
        "/healthz" => (200, "ok\n".into()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => (200, "ready\n".into()),
        "/readyz" => (503, "not leading\n".into()),
        "/metrics" | "/api/runs" if !state.token.allows(authorization.map(str::as_bytes)) => {
            (401, "a bearer token is required\n".into())
        }
        "/metrics" => (200, metrics_text(&state.runs.borrow())),
        "/api/runs" => match serde_json::to_string(&*state.runs.borrow()) {
            Ok(json) => (200, json),
            Err(e) => (503, format!("{e}\n")),
        },
        _ => (404, "not found\n".into()),
    }
}

fn phase_name(p: RunPhase) -> &'static str {
    match p {
        RunPhase::Running => "running",
        RunPhase::Succeeded => "succeeded",
        RunPhase::Failed => "failed",
        RunPhase::Cancelled => "cancelled",
    }
}

/// The runs as Prometheus text exposition: runs by phase, and for each run's stages the
/// tasks by state, scripts, rows and the attempt counters.
pub fn metrics_text(runs: &[RunStatus]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# HELP automaldesc_runs Runs by phase.");
    let _ = writeln!(s, "# TYPE automaldesc_runs gauge");
    for phase in [
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
    ] {
        let n = runs.iter().filter(|r| r.phase == phase).count();
        let _ = writeln!(s, "automaldesc_runs{{phase=\"{}\"}} {n}", phase_name(phase));
    }
    type Metric = (&'static str, &'static str, &'static str);
    let stage_metrics: [Metric; 8] = [
        (
            "automaldesc_stage_tasks",
            "gauge",
            "Tasks of a stage by state.",
        ),
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
    ];
    for (name, kind, help) in stage_metrics {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} {kind}");
        for r in runs {
            for st in &r.stages {
                let labels = format!(
                    "run=\"{}\",stage=\"{}\",kind=\"{}\"",
                    r.id, st.index, st.kind
                );
                let (c, t) = (&st.counts, &st.totals);
                if name == "automaldesc_stage_tasks" {
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
                let v = match name {
                    "automaldesc_stage_scripts_total" => t.scripts_total,
                    "automaldesc_stage_scripts_done" => t.scripts_done,
                    "automaldesc_stage_rows_out" => t.rows_out,
                    "automaldesc_stage_scripts_quarantined" => {
                        t.scripts_quarantined + t.scripts_in_quarantined_tasks
                    }
                    "automaldesc_stage_lease_expiries" => u64::from(t.leases_expired),
                    "automaldesc_stage_failed_attempts" => u64::from(t.attempts_failed),
                    _ => u64::from(t.completions_refused),
                };
                let _ = writeln!(s, "{name}{{{labels}}} {v}");
            }
        }
    }
    s
}
