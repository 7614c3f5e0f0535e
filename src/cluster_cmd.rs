//! The distributed runtime's commands: `coordinator` and `worker` as separate processes
//! for a cluster, and `local` for both in one process on one machine. The operators'
//! commands (`submit`, `status`, `cancel`, `retry-quarantined`) are in `control_cmd`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use automaldesc_common::executor::{EchoExecutor, Executor};
use automaldesc_common::ids::RunId;
use automaldesc_loop::stages;
use automaldesc_proto::security::{RequireToken, ServerTlsFiles, Token};
use automaldesc_worker::worker_process::{run_worker, Executors, WorkerOptions, WorkerReport};
use clap::Args;

pub use crate::control_cmd::{
    cancel, retry_quarantined, status, submit, CancelArgs, ClientArgs, RetryArgs, StatusArgs,
    SubmitArgs,
};
use automaldesc_common::run_spec::{RunSpec, StageCatalog};
use automaldesc_coordinator::grpc_server::{serve, ServeOptions};
use automaldesc_coordinator::http_access::is_loopback;
use automaldesc_coordinator::lease_manager::LeasePolicy;
use automaldesc_coordinator::run_manager::RunManager;
use automaldesc_coordinator::state::{EmbeddedStore, EtcdStore, StateError, StateStore};

mod local;
pub use local::{
    ensure_succeeded, kind_label, local, local_run_id, log_json, logs_are_json, progress_bar,
    run_local, LocalWorkers, StageLabel,
};

/// Where the coordinator keeps its durable state.
#[derive(Args, Clone, Debug)]
pub struct StateArgs {
    /// etcd endpoints (comma-separated, e.g. http://etcd:2379); the coordinators elect a
    /// leader through etcd. Without it the state is a local directory (--state-dir).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix in etcd, so deployments can share one etcd.
    #[arg(long, default_value = "/automaldesc/")]
    pub etcd_namespace: String,
    /// Directory of the embedded state store (one coordinator at a time).
    #[arg(long, default_value = "data/state")]
    pub state_dir: PathBuf,
}

/// Lease pacing.
#[derive(Args, Clone, Debug)]
pub struct LeaseArgs {
    /// Seconds a lease lives without a heartbeat.
    #[arg(long, default_value_t = 30.0)]
    pub lease_ttl: f64,
    /// Attempts (failures and expired leases) before a task is quarantined.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds before a failed task is retried (doubling per attempt, at most 60 s).
    #[arg(long, default_value_t = 2.0)]
    pub retry_backoff: f64,
    /// Seconds after which, with nothing queued, a task still running may be leased to a
    /// second worker (the first completion wins); 0 turns it off.
    #[arg(long, default_value_t = 300.0)]
    pub speculate_after: f64,
}

impl LeaseArgs {
    pub fn policy(&self) -> anyhow::Result<LeasePolicy> {
        if self.lease_ttl.is_nan() || self.lease_ttl <= 0.0 || self.max_attempts == 0 {
            bail!("--lease-ttl must be positive and --max-attempts at least 1");
        }
        Ok(LeasePolicy {
            ttl: Duration::from_secs_f64(self.lease_ttl),
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_secs_f64(self.retry_backoff.max(0.0)),
            backoff_max: Duration::from_secs(60),
            speculate_after: (self.speculate_after > 0.0)
                .then(|| Duration::from_secs_f64(self.speculate_after)),
        })
    }
}

#[derive(Args, Clone, Debug)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// Serve the dashboard (`/`), its JSON API (`/api/cluster`, `/api/runs`), `/healthz`,
    /// `/readyz` and `/metrics` (Prometheus) over HTTP on this address.
    #[arg(long)]
    pub http_listen: Option<String>,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Submit this run spec (TOML) at start; submitting it again after a restart is harmless.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The submitted run's id (default: derived from the time).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Exit once no run is running (a batch job); workers are told the work is finished.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Seconds the leader's etcd lease lives: how soon a standby takes over from a leader
    /// that died.
    #[arg(long, default_value_t = 10)]
    pub leader_ttl: u64,
    /// This coordinator's name in the leader election.
    #[arg(long, env = "HOSTNAME", default_value = "coordinator")]
    pub name: String,
    /// File holding the bearer token every worker and client must present.
    #[arg(long, env = "AUTOMALDESC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate and key (PEM) to serve with.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must be signed by: mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// This worker's id (default: host name and process id).
    #[arg(long)]
    pub id: Option<String>,
    /// Stage kinds this worker runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "echo")]
    pub executors: Vec<String>,
    /// Seconds a worker told to stop lets its task run before giving it back.
    #[arg(long, default_value_t = 30.0)]
    pub grace: f64,
}

#[derive(Args, Clone, Debug)]
pub struct LocalArgs {
    /// The run spec (TOML).
    pub spec: PathBuf,
    /// Workers in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Directory of the embedded state; a run interrupted here resumes when started again.
    #[arg(long, default_value = "data/local/state")]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub run_id: Option<String>,
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Stage kinds the workers run.
    #[arg(long, value_delimiter = ',', default_value = "echo")]
    pub executors: Vec<String>,
    /// Serve the dashboard, its JSON API and `/metrics` on this address while the run goes
    /// (no token: keep it on a loopback address such as 127.0.0.1:8080).
    #[arg(long)]
    pub http_listen: Option<String>,
}

/// The executors of the self-training loop's stages.
pub const LOOP_EXECUTORS: [&str; 7] = [
    "train",
    "generate",
    "judge-train",
    "judge",
    "filter",
    "aggregate",
    "report",
];

/// The executors a worker offers, by name.
pub fn executors(names: &[String]) -> anyhow::Result<Executors> {
    let mut out = Executors::new();
    for name in names {
        let exec: Arc<dyn Executor> = match name.as_str() {
            "echo" => Arc::new(EchoExecutor),
            "train" => Arc::new(stages::train::TrainExecutor),
            "generate" => Arc::new(stages::generate::GenerateExecutor),
            "judge-train" => Arc::new(stages::judge_train::JudgeTrainExecutor),
            "judge" => Arc::new(stages::judge::JudgeExecutor),
            "filter" => Arc::new(stages::filter::FilterExecutor),
            "aggregate" => Arc::new(stages::aggregate::AggregateExecutor),
            "report" => Arc::new(stages::report::ReportExecutor),
            other => bail!(
                "no executor {other:?} (available: echo, {})",
                LOOP_EXECUTORS.join(", ")
            ),
        };
        out.insert(exec.kind().to_string(), exec);
    }
    Ok(out)
}

/// The stage kinds the workers of this build run, with their typed configs: submitted
/// specs are checked against them.
pub struct WorkerCatalog;

impl StageCatalog for WorkerCatalog {
    fn check_stage(
        &self,
        kind: &str,
        config: &serde_json::Value,
    ) -> Result<(), automaldesc_common::TaskError> {
        stages::catalog::check_config(kind, config)
    }

    fn input_schema(&self, kind: &str) -> Option<arrow::datatypes::SchemaRef> {
        stages::catalog::input_schema(kind)
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
}

/// Retries `f` while the state store is unavailable, for up to `patience`.
async fn with_store_retry<T, F, Fut>(what: &str, patience: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < patience && is_unavailable(&e) => {
                tracing::warn!(error = %e, "{what}: state store unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(what.to_string())),
        }
    }
}

fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<StateError>(),
            Some(StateError::Unavailable(_))
        ) || c
            .downcast_ref::<automaldesc_coordinator::run_manager::RunError>()
            .is_some_and(|r| r.is_transient())
    })
}

pub(crate) fn read_spec(path: &std::path::Path) -> anyhow::Result<(String, RunSpec)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading run spec {}", path.display()))?;
    let spec = RunSpec::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
    Ok((text, spec))
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let policy = args.lease.policy()?;
    let token = args
        .token_file
        .as_deref()
        .map(Token::from_file)
        .transpose()?;
    let tls = args.tls_cert.clone().map(|cert| ServerTlsFiles {
        cert,
        key: args.tls_key.clone().unwrap_or_default(),
        client_ca: args.tls_client_ca.clone(),
    });
    if token.is_none() && !is_loopback(&args.listen) {
        tracing::warn!(addr = %args.listen,
            "serving gRPC beyond loopback without a token: anyone who reaches it can submit runs and take tasks");
    }
    if let Some(addr) = args.http_listen.as_deref() {
        if token.is_none() && !is_loopback(addr) {
            tracing::warn!(addr = %addr,
                "serving HTTP beyond loopback without a token: anyone who reaches it can read the runs, the workers and every committed file");
        }
    }
    let submitted = args.run.as_deref().map(read_spec).transpose()?;
    let rt = runtime()?;
    rt.block_on(async move {
        // Probes and metrics answer from the start: a standby is alive but not ready.
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The event loop publishes every run's status on each tick only for the HTTP side.
        let mut snapshot = None;
        let store_for_http = Arc::new(std::sync::OnceLock::new());
        if let Some(addr) = &args.http_listen {
            let token = RequireToken::new(token.clone());
            let (tx, bound) = automaldesc_coordinator::http::start_tls(
                addr,
                ready.clone(),
                token,
                store_for_http.clone(),
                tls.as_ref(),
            )
            .await?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %bound, scheme, "dashboard, health and metrics over HTTP");
            snapshot = Some(tx);
        }
        let patience = Duration::from_secs(300);
        let (store, leadership): (Arc<dyn StateStore>, _) = if args.state.etcd.is_empty() {
            let store = EmbeddedStore::open(&args.state.state_dir)
                .with_context(|| format!("state directory {}", args.state.state_dir.display()))?;
            (Arc::new(store), None)
        } else {
            let etcd = with_store_retry("connecting to etcd", patience, || async {
                Ok(EtcdStore::connect(&args.state.etcd, &args.state.etcd_namespace).await?)
            })
            .await?;
            let ttl = Duration::from_secs(args.leader_ttl.max(1));
            let leadership = tokio::select! {
                l = with_store_retry("leader election", Duration::MAX, || async {
                    Ok(etcd.campaign("leader", &args.name, ttl).await?)
                }) => l?,
                _ = terminated() => return Ok(()),
            };
            (
                Arc::new(etcd.fenced(&leadership)) as Arc<dyn StateStore>,
                Some(leadership),
            )
        };
        let _ = store_for_http.set(store.clone());
        let mut manager = with_store_retry("opening the runs", patience, || async {
            Ok(RunManager::open(store.clone(), policy)
                .await?
                .with_catalog(Arc::new(WorkerCatalog)))
        })
        .await?;
        if let Some((_, spec)) = submitted {
            let id = args.run_id.clone().map(RunId);
            let status = manager.submit(id, spec).await?;
            println!("run {} submitted", status.id);
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "coordinator serving");
        let opts = ServeOptions {
            heartbeat_interval: (policy.ttl / 5).max(Duration::from_millis(50)),
            lease_ttl: policy.ttl,
            tick: (policy.ttl / 10).clamp(Duration::from_millis(20), Duration::from_secs(1)),
            exit_when_done: args.exit_when_done,
            token: RequireToken::new(token),
            tls,
            snapshot,
        };
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        let lost = async {
            match &leadership {
                Some(l) => l.lost().await,
                None => std::future::pending().await,
            }
        };
        let mut leadership_lost = false;
        let shutdown = async {
            tokio::select! {
                _ = terminated() => {}
                _ = lost => leadership_lost = true,
            }
        };
        let served = serve(listener, manager, opts, shutdown).await;
        if let Some(l) = leadership {
            if !leadership_lost {
                l.resign().await;
            }
        }
        if leadership_lost {
            bail!("leadership lost; exiting so that this process can stand by again");
        }
        served?;
        tracing::info!("coordinator stopped");
        Ok(())
    })
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let executors = executors(&args.executors)?;
    let id = args.id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let opts = WorkerOptions {
        endpoints: args.client.coordinator.clone(),
        worker_id: id,
        backend: automaldesc_runtime::device::backend_name().into(),
        device_memory_bytes: automaldesc_runtime::device::memory_bytes(),
        slots: 1,
        security: args.client.security()?,
        deadlines: args.client.deadlines(),
        patience: args.client.patience(),
        grace: Duration::from_secs_f64(args.grace.max(0.0)),
    };
    let rt = runtime()?;
    let report = rt.block_on(run_worker(opts, executors, terminated()))?;
    print_report(&report);
    // A task given back may still be running on its thread: do not wait for it.
    rt.shutdown_timeout(Duration::from_millis(100));
    if report.stopped {
        // Stopped by a signal before the work was finished: not a success, so a batch
        // job (a Kubernetes Job) replaces this worker instead of counting it complete.
        std::process::exit(STOPPED_EXIT_CODE);
    }
    Ok(())
}

/// A worker's exit status when a signal stopped it before the coordinator said the work is
/// finished (128 + SIGTERM, as a shell reports it).
pub const STOPPED_EXIT_CODE: i32 = 143;

fn print_report(r: &WorkerReport) {
    println!(
        "{}",
        serde_json::json!({
            "completed": r.completed,
            "refused": r.refused,
            "failed": r.failed,
            "released": r.released,
            "executor_seconds": r.executor_seconds,
            "stopped": r.stopped,
        })
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use automaldesc_coordinator::lease_manager::StageCounts;
    use automaldesc_coordinator::run_manager::{RunPhase, RunStatus, StageSummary};
    use automaldesc_coordinator::stage_manager::StageTotals;

    fn stage(index: u32, done: u32, total: u32, finished_ms: u64) -> StageSummary {
        StageSummary {
            index,
            kind: "echo".into(),
            counts: StageCounts {
                total,
                done,
                leased: 0,
                quarantined: 0,
            },
            totals: StageTotals::default(),
            garbage_files_deleted: 0,
            finished_ms,
            troubles: Vec::new(),
        }
    }

    #[test]
    fn the_bar_counts_finished_stages_and_the_open_stages_tasks() {
        let mut s = RunStatus {
            id: RunId("r".into()),
            phase: RunPhase::Running,
            error: String::new(),
            stages: vec![stage(0, 4, 4, 10), stage(1, 2, 4, 0)],
            stages_total: 4,
            submitted_ms: 0,
            output: String::new(),
            stage_names: Vec::new(),
            resumed_ms: Vec::new(),
        };
        // 1 stage finished and half of the second: 1.5 of 4.
        assert_eq!(
            progress_bar(&s),
            format!("[{}{}]  38%", "#".repeat(9), "-".repeat(15))
        );
        s.stages = vec![
            stage(0, 4, 4, 10),
            stage(1, 4, 4, 20),
            stage(2, 1, 1, 30),
            stage(3, 3, 3, 40),
        ];
        assert_eq!(progress_bar(&s), format!("[{}] 100%", "#".repeat(24)));
        s.stages.clear();
        assert_eq!(progress_bar(&s), format!("[{}]   0%", "-".repeat(24)));
    }
}
