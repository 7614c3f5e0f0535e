//! The operators' commands against a cluster's coordinators: `submit` (optionally waiting
//! for the run's end), `status` (optionally following a run), `cancel` and
//! `retry-quarantined`. Every call has a deadline and HTTP/2 keepalive, so a frozen or
//! cut-off coordinator is given up on and the next endpoint tried; a followed run is
//! followed across a takeover until it ends.
//!
//! `submit --wait` (and `local`) exit with the run's end: 0 succeeded, 3 succeeded with
//! quarantined scripts, 4 failed, 5 cancelled; 1 when no coordinator answered or the run
//! was refused, 2 on a bad command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use automaldesc_proto::security::{ClientSecurity, ClientTlsFiles, Deadlines, Token};
use automaldesc_proto::v1::control_service_client::ControlServiceClient;
use automaldesc_proto::{v1, PROTOCOL_VERSION};
use clap::Args;
use tokio::time::Instant;

use crate::cluster_cmd::{read_spec, runtime};

/// How a client (worker or operator) reaches the coordinator.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Coordinator endpoints, comma-separated (a leader and its standbys), e.g.
    /// http://coordinator:50051; https:// with --tls-ca.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    pub coordinator: Vec<String>,
    /// File holding the bearer token.
    #[arg(long, env = "AUTOMALDESC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA (PEM) that signed the coordinator's certificate.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate and key (PEM), for mutual TLS.
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the coordinator's certificate carries, if not the endpoint's host.
    #[arg(long, requires = "tls_ca")]
    pub tls_domain: Option<String>,
    /// Seconds a call may wait for a coordinator's answer (and a connection may go without
    /// an answered keepalive ping) before the next endpoint is tried.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Seconds to keep retrying while no coordinator answers (a restart, a takeover).
    #[arg(long, default_value_t = 120.0)]
    pub patience: f64,
}

impl ClientArgs {
    pub fn security(&self) -> anyhow::Result<ClientSecurity> {
        let token = self
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        let tls = self.tls_ca.as_ref().map(|ca| ClientTlsFiles {
            ca: ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            domain: self.tls_domain.clone(),
        });
        Ok(ClientSecurity { token, tls })
    }

    pub fn deadlines(&self) -> Deadlines {
        Deadlines::from_request(Duration::from_secs_f64(self.request_timeout.max(0.1)))
    }

    pub fn patience(&self) -> Duration {
        Duration::from_secs_f64(self.patience.max(0.0))
    }
}

#[derive(Args, Clone, Debug)]
pub struct SubmitArgs {
    /// The run spec (TOML).
    pub spec: PathBuf,
    /// The run's id (default: `run-<milliseconds since the epoch>`, chosen here so that a
    /// submission retried on another coordinator is the same run).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Follow the run until it ends, across a takeover; the exit status says how it ended
    /// (0 succeeded, 3 succeeded with quarantine, 4 failed, 5 cancelled).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// One run (default: every run).
    pub run_id: Option<String>,
    /// Follow the run until it ends (across a takeover).
    #[arg(long, requires = "run_id")]
    pub watch: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Clone, Debug)]
pub struct CancelArgs {
    pub run_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Clone, Debug)]
pub struct RetryArgs {
    pub run_id: String,
    /// Follow the run until it ends again (exit status as for `submit --wait`).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The exit status for a run that ended in `state`.
pub fn exit_code(state: i32) -> i32 {
    match v1::RunState::try_from(state) {
        Ok(v1::RunState::Succeeded) => 0,
        Ok(v1::RunState::SucceededWithQuarantine) => 3,
        Ok(v1::RunState::Failed) => 4,
        Ok(v1::RunState::Cancelled) => 5,
        _ => 1,
    }
}

pub(crate) fn status_json(s: &v1::RunStatus) -> serde_json::Value {
    serde_json::json!({
        "run_id": s.run_id,
        "state": v1::RunState::try_from(s.state).map(|p| p.as_str_name()).unwrap_or("UNKNOWN"),
        "error": s.error,
        "stages_total": s.stages_total,
        "stages": s.stages.iter().map(|st| serde_json::json!({
            "index": st.index,
            "kind": st.kind,
            "tasks_total": st.tasks_total,
            "tasks_done": st.tasks_done,
            "tasks_leased": st.tasks_leased,
            "tasks_quarantined": st.tasks_quarantined,
            "scripts_total": st.scripts_total,
            "scripts_done": st.scripts_done,
            "scripts_quarantined": st.scripts_quarantined,
            "duplicates": st.duplicates,
            "rows_out": st.rows_out,
            "tokens": st.tokens,
            "completions_refused": st.completions_refused,
            "leases_expired": st.leases_expired,
            "attempts_failed": st.attempts_failed,
            "transient_faults": st.transient_faults,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) type Control = ControlServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        automaldesc_proto::security::AttachToken,
    >,
>;

/// A status that means "no coordinator answered" rather than an answer.
fn unanswered(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
    )
}

/// A control client on the first endpoint that answers, retrying the endpoints in turn
/// for up to `--patience` while none does.
pub(crate) async fn control(args: &ClientArgs) -> anyhow::Result<Control> {
    let security = args.security()?;
    let started = Instant::now();
    loop {
        let mut last = None;
        for endpoint in &args.coordinator {
            let channel = security.channel_with(endpoint, args.deadlines())?;
            let mut client =
                ControlServiceClient::with_interceptor(channel, security.interceptor());
            match client.list_runs(v1::ListRunsRequest {}).await {
                Ok(_) => return Ok(client),
                Err(s) if unanswered(&s) => last = Some(s),
                Err(s) => bail!("{endpoint}: {}", s.message()),
            }
        }
        let Some(s) = last else {
            bail!("no coordinator endpoint given");
        };
        if started.elapsed() >= args.patience() {
            bail!(
                "no coordinator answered at {:?} for {:?}: {}",
                args.coordinator,
                started.elapsed(),
                s.message()
            );
        }
        tracing::debug!(status = %s, "no coordinator answers yet");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_status(s: &v1::RunStatus, json: bool) {
    if json {
        println!("{}", status_json(s));
        return;
    }
    let state = v1::RunState::try_from(s.state).map_or("UNKNOWN", |p| p.as_str_name());
    println!(
        "{} {}{}",
        s.run_id,
        state.trim_start_matches("RUN_STATE_"),
        if s.error.is_empty() {
            String::new()
        } else {
            format!(": {}", s.error)
        }
    );
    for st in &s.stages {
        println!(
            "  stage {}/{} {:<10} tasks {}/{} leased {} quarantined {}  scripts {}/{} out {} tokens {} duplicates {}  refused {} expired {} failed {} transient {}",
            st.index + 1, s.stages_total, st.kind, st.tasks_done, st.tasks_total, st.tasks_leased,
            st.tasks_quarantined, st.scripts_done, st.scripts_total, st.rows_out, st.tokens,
            st.duplicates, st.completions_refused, st.leases_expired, st.attempts_failed,
            st.transient_faults,
        );
    }
}

/// Follows run `id` until it ends; returns its last status. A broken stream (the leader
/// died or froze) is picked up again on whichever coordinator answers, for up to
/// `--patience` without news.
async fn follow(args: &ClientArgs, id: &str, json: bool) -> anyhow::Result<v1::RunStatus> {
    let mut heard = Instant::now();
    loop {
        match watch_once(args, id, json, &mut heard).await {
            Ok(Some(end)) => return Ok(end),
            Ok(None) => tracing::info!(run = id, "the watch ended early; watching again"),
            Err(e) => {
                let fatal = e
                    .downcast_ref::<tonic::Status>()
                    .is_some_and(|s| !unanswered(s));
                if fatal || heard.elapsed() >= args.patience() {
                    return Err(e.context(format!("watching run {id}")));
                }
                tracing::warn!(run = id, error = %e, "lost the coordinator; watching on the next one that answers");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One watch on one coordinator: `Some(status)` once the run ended, `None` if the stream
/// closed before that.
async fn watch_once(
    args: &ClientArgs,
    id: &str,
    json: bool,
    heard: &mut Instant,
) -> anyhow::Result<Option<v1::RunStatus>> {
    let mut client = control(args).await?;
    let request = v1::RunRequest {
        run_id: id.to_string(),
    };
    let mut stream = client.watch_run(request).await?.into_inner();
    while let Some(s) = stream.message().await? {
        *heard = Instant::now();
        print_status(&s, json);
        if s.state != v1::RunState::Running as i32 {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Calls `f` on a coordinator that answers, again on the next one while none answers,
/// for up to `--patience`. Only for calls that are safe to repeat.
async fn call<T, F, Fut>(args: &ClientArgs, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut(Control) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    loop {
        let client = control(args).await?;
        match f(client).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if unanswered(&s) && started.elapsed() < args.patience() => {
                tracing::warn!(status = %s, "{what}: no answer; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => bail!("{what} refused: {}", s.message()),
        }
    }
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let (text, _) = read_spec(&args.spec)?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("run-{}", automaldesc_coordinator::run_manager::now_ms()));
    let code = runtime()?.block_on(async move {
        let request = v1::SubmitRunRequest {
            protocol_version: PROTOCOL_VERSION,
            config_toml: text,
            run_id,
        };
        // The same id and spec again is harmless, so a submission whose answer was lost
        // can be sent again.
        let s = call(&args.client, "submit", |mut c| {
            let r = request.clone();
            async move { c.submit_run(r).await }
        })
        .await?;
        println!("run {} submitted", s.run_id);
        wait_code(&args.client, &s.run_id, args.wait).await
    })?;
    exit_with(code)
}

/// With `wait`, follows the run until it ends and gives its exit code; 0 without.
async fn wait_code(client: &ClientArgs, run_id: &str, wait: bool) -> anyhow::Result<i32> {
    if !wait {
        return Ok(0);
    }
    let last = follow(client, run_id, false).await?;
    Ok(exit_code(last.state))
}

/// Exits with `code` unless it is 0 (a run that ended otherwise than succeeded).
fn exit_with(code: i32) -> anyhow::Result<()> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match &args.run_id {
            Some(id) if args.watch => {
                follow(&args.client, id, args.json).await?;
            }
            Some(id) => {
                let request = v1::RunRequest { run_id: id.clone() };
                let s = call(&args.client, "status", |mut c| {
                    let r = request.clone();
                    async move { c.get_run(r).await }
                })
                .await?;
                print_status(&s, args.json);
            }
            None => {
                let runs = call(&args.client, "status", |mut c| async move {
                    c.list_runs(v1::ListRunsRequest {}).await
                })
                .await?;
                for s in &runs.runs {
                    print_status(s, args.json);
                }
            }
        }
        Ok(())
    })
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let request = v1::RunRequest {
            run_id: args.run_id.clone(),
        };
        let s = call(&args.client, "cancel", |mut c| {
            let r = request.clone();
            async move { c.cancel_run(r).await }
        })
        .await?;
        print_status(&s, false);
        Ok(())
    })
}

pub fn retry_quarantined(args: RetryArgs) -> anyhow::Result<()> {
    let code = runtime()?.block_on(async move {
        let request = v1::RunRequest {
            run_id: args.run_id.clone(),
        };
        let mut client = control(&args.client).await?;
        let s = client
            .retry_quarantined(request)
            .await
            .map_err(|s| anyhow::anyhow!("retry refused: {}", s.message()))
            .with_context(|| format!("run {}", args.run_id))?
            .into_inner();
        print_status(&s, false);
        wait_code(&args.client, &s.run_id, args.wait).await
    })?;
    exit_with(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_a_run_ends_has_its_own_exit_status() {
        let codes: Vec<i32> = [
            v1::RunState::Succeeded,
            v1::RunState::SucceededWithQuarantine,
            v1::RunState::Failed,
            v1::RunState::Cancelled,
            v1::RunState::Running,
        ]
        .iter()
        .map(|s| exit_code(*s as i32))
        .collect();
        assert_eq!(codes, vec![0, 3, 4, 5, 1]);
    }
}
