//! `local`: a whole run on this machine (a coordinator with the embedded state store and
//! workers in one process), and the progress it prints (a text line, or JSON log events).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use automaldesc_common::ids::RunId;
use automaldesc_common::run_spec::RunSpec;
use automaldesc_coordinator::grpc_server::{serve, to_proto, ServeOptions};
use automaldesc_coordinator::http_access::is_loopback;
use automaldesc_coordinator::lease_manager::LeasePolicy;
use automaldesc_coordinator::run_manager::{RunManager, RunPhase, RunStatus};
use automaldesc_coordinator::state::{EmbeddedStore, StateStore};
use automaldesc_proto::security::RequireToken;
use automaldesc_worker::worker_process::{run_worker, WorkerOptions};

use super::{executors, read_spec, runtime, terminated, LocalArgs, WorkerCatalog};
use crate::control_cmd::{exit_code, status_json};

pub fn local(args: LocalArgs) -> anyhow::Result<()> {
    let (_, spec) = read_spec(&args.spec)?;
    let policy = args.lease.policy()?;
    let workers = LocalWorkers {
        count: args.workers,
        executors: args.executors.clone(),
        label: kind_label,
        http_listen: args.http_listen.clone(),
    };
    let status = run_local(spec, args.run_id.clone(), &args.state_dir, policy, workers)?;
    let wire = to_proto(status.clone());
    println!("{}", serde_json::to_string_pretty(&status_json(&wire))?);
    if !status.phase.is_success() {
        tracing::error!(run = %status.id, phase = status.phase.name(), error = %status.error, "run did not succeed");
    }
    match exit_code(wire.state) {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

/// An error unless the run went through (a run that succeeded with quarantined scripts
/// passes, with a warning), naming how it ended and why.
pub fn ensure_succeeded(status: &RunStatus) -> anyhow::Result<()> {
    if !status.phase.is_success() {
        bail!(
            "run {} ended {}: {}",
            status.id,
            status.phase.name(),
            status.error
        );
    }
    if status.phase == RunPhase::SucceededWithQuarantine {
        tracing::warn!(run = %status.id, note = %status.error, "run succeeded with quarantined scripts");
    }
    Ok(())
}

/// The run id `local` uses when none is given: derived from the spec (its input, output
/// and stages), so starting `local` again with the same spec resumes the same run.
pub fn local_run_id(spec: &RunSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    format!("local-{}", &automaldesc_common::sha256_hex(&json)[..16])
}

/// Runs `spec` to its end on this machine: a coordinator with the embedded state store in
/// `state_dir` and `workers` workers offering `names`, in this process. A run interrupted
/// here resumes when started again with the same state directory and the same spec (and
/// run id, when one was given).
pub fn run_local(
    spec: RunSpec,
    run_id: Option<String>,
    state_dir: &std::path::Path,
    policy: LeasePolicy,
    local: LocalWorkers,
) -> anyhow::Result<RunStatus> {
    executors(&local.executors)?;
    let LocalWorkers {
        count: workers,
        executors: names,
        label,
        http_listen,
    } = local;
    let rt = runtime()?;
    let status = rt.block_on(async move {
        let store: Arc<dyn StateStore> = Arc::new(
            EmbeddedStore::open(state_dir)
                .with_context(|| format!("state directory {}", state_dir.display()))?,
        );
        let mut snapshot = None;
        if let Some(addr) = &http_listen {
            if !is_loopback(addr) {
                tracing::warn!(addr = %addr,
                    "serving HTTP beyond loopback without a token: anyone who reaches it can read the runs, the workers and every committed file");
            }
            let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let store = Arc::new(std::sync::OnceLock::from(store.clone()));
            let (tx, bound) =
                automaldesc_coordinator::http::start(addr, ready, RequireToken::default(), store).await?;
            if !logs_are_json() {
                eprintln!("dashboard: http://{bound}/");
            }
            snapshot = Some(tx);
        }
        let mut manager = RunManager::open(store, policy)
            .await?
            .with_catalog(Arc::new(WorkerCatalog));
        let id = RunId(run_id.unwrap_or_else(|| local_run_id(&spec)));
        let status = manager.submit(Some(id), spec).await?;
        let id = status.id.clone();
        let mut watch = manager.subscribe(&id)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let opts = ServeOptions {
            exit_when_done: true,
            snapshot,
            ..ServeOptions::plain(policy.ttl)
        };
        let server = tokio::spawn(serve(listener, manager, opts, terminated()));
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let opts = WorkerOptions {
                backend: automaldesc_runtime::device::backend_name().into(),
                device_memory_bytes: automaldesc_runtime::device::memory_bytes(),
                ..WorkerOptions::new(&endpoint, &format!("local-{i}"))
            };
            handles.push(tokio::spawn(run_worker(
                opts,
                executors(&names)?,
                terminated(),
            )));
        }
        let progress = tokio::spawn(async move {
            loop {
                print_progress(&watch.borrow_and_update(), label);
                if watch.changed().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        for w in handles {
            w.await??;
        }
        let manager = server.await??;
        progress.abort();
        Ok::<_, anyhow::Error>(manager.status(&id)?)
    })?;
    print_progress(&status, label);
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(status)
}

/// The workers of a local run.
pub struct LocalWorkers {
    pub count: u32,
    /// Stage kinds they run.
    pub executors: Vec<String>,
    /// Names stages in progress lines.
    pub label: StageLabel,
    /// Serve the dashboard and `/metrics` here while the run goes.
    pub http_listen: Option<String>,
}

/// Names a stage in progress lines: from its index and kind.
pub type StageLabel = fn(u32, &str) -> String;

/// A stage named by its kind.
pub fn kind_label(_: u32, kind: &str) -> String {
    kind.to_string()
}

static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs are JSON lines: progress goes through the log as events, not as free text.
pub fn log_json(on: bool) {
    JSON_LOGS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// True when logs are JSON lines (nothing else may be written to stderr).
pub fn logs_are_json() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The run's progress as a text bar: finished stages, plus the open stage's share of done
/// tasks.
pub fn progress_bar(s: &RunStatus) -> String {
    const WIDTH: usize = 24;
    let finished = s.stages.iter().filter(|st| st.finished_ms > 0).count() as f64;
    let open = s
        .stages
        .iter()
        .find(|st| st.finished_ms == 0)
        .map_or(0.0, |st| {
            f64::from(st.counts.done + st.counts.quarantined) / f64::from(st.counts.total.max(1))
        });
    let share = ((finished + open) / f64::from(s.stages_total.max(1))).clamp(0.0, 1.0);
    let filled = (share * WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        100.0 * share
    )
}

fn print_progress(s: &RunStatus, label: StageLabel) {
    let Some(st) = s.stages.last() else {
        return;
    };
    if logs_are_json() {
        tracing::info!(
            run = %s.id,
            phase = ?s.phase,
            stage = st.index,
            stage_name = %label(st.index, &st.kind),
            stages = s.stages_total,
            tasks_done = st.counts.done,
            tasks_total = st.counts.total,
            tasks_leased = st.counts.leased,
            tasks_quarantined = st.counts.quarantined,
            scripts_done = st.totals.scripts_done,
            scripts_total = st.totals.scripts_total,
            "progress"
        );
        return;
    }
    {
        eprintln!(
            "run {} {:?}: {} stage {}/{} ({}) tasks {}/{} done, {} leased, {} quarantined; scripts {}/{}",
            s.id,
            s.phase,
            progress_bar(s),
            st.index + 1,
            s.stages_total,
            label(st.index, &st.kind),
            st.counts.done,
            st.counts.total,
            st.counts.leased,
            st.counts.quarantined,
            st.totals.scripts_done,
            st.totals.scripts_total,
        );
    }
}
