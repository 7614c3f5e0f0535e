//! The worker's loop: register with the coordinator, ask for tasks, run each on a dedicated
//! thread while a heartbeat keeps its lease, and report the output (or the failure). A
//! lease the coordinator says is lost is abandoned: its output is never committed.
//!
//! The coordinator may be away for a while (restarting, or a standby taking over): calls
//! that fail for want of a coordinator are retried, across the given endpoints, for up to
//! `patience`. When `stop` resolves the worker drains: it takes no new task, lets the one
//! it holds finish within `grace`, or else gives it back (released, not failed) and exits.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automaldesc_common::fault::{FaultKind, TaskError};
use automaldesc_common::store::{child, open_store, remove_prefix};
use automaldesc_proto::security::{ClientSecurity, Deadlines};
use automaldesc_proto::{v1, PROTOCOL_VERSION};
use tonic::Status;

use crate::coordinator_client::{Coordinator, LeaseKeeper};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("no coordinator answered at {endpoints:?} for {waited:?}: {last}")]
    Unreachable {
        endpoints: Vec<String>,
        waited: Duration,
        last: Status,
    },
    #[error("coordinator refused {call}: {status}")]
    Rpc { call: &'static str, status: Status },
    #[error("malformed task from the coordinator: {0}")]
    BadTask(String),
    #[error(transparent)]
    Security(#[from] automaldesc_proto::security::SecurityError),
    #[error("worker setup: {0}")]
    Setup(String),
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Coordinator endpoints, tried in turn (a leader and its standbys).
    pub endpoints: Vec<String>,
    pub worker_id: String,
    /// What the worker computes on ("cpu", "cuda"), and that device's memory (0: unknown),
    /// as it registers them.
    pub backend: String,
    pub device_memory_bytes: u64,
    pub slots: u32,
    pub security: ClientSecurity,
    /// When a call to a coordinator is given up (it is frozen or cut off) and the next
    /// endpoint is tried.
    pub deadlines: Deadlines,
    /// How long to keep retrying while no coordinator answers.
    pub patience: Duration,
    /// How long a draining worker lets its task run before giving it back.
    pub grace: Duration,
}

impl WorkerOptions {
    /// Options for a plain connection to one coordinator, as a CPU worker.
    pub fn new(endpoint: &str, worker_id: &str) -> Self {
        Self {
            endpoints: vec![endpoint.to_string()],
            worker_id: worker_id.to_string(),
            backend: "cpu".into(),
            device_memory_bytes: 0,
            slots: 1,
            security: ClientSecurity::default(),
            deadlines: Deadlines::default(),
            patience: Duration::from_secs(60),
            grace: Duration::from_secs(30),
        }
    }
}

/// What one worker did before it stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerReport {
    pub completed: u32,
    pub refused: u32,
    pub failed: u32,
    pub released: u32,
    /// Seconds spent inside executors.
    pub executor_seconds: f64,
    /// It stopped because it was told to (a signal), not because the coordinator said the
    /// work is finished.
    pub stopped: bool,
}

/// Executors by stage kind.
pub type Executors = BTreeMap<String, Arc<dyn Executor>>;

/// Works until the coordinator says the work is finished, or `stop` resolves.
pub async fn run_worker(
    opts: WorkerOptions,
    executors: Executors,
    stop: impl Future<Output = ()>,
) -> Result<WorkerReport, WorkerError> {
    let mut coord = Coordinator::new(&opts)?;
    let kinds: Vec<String> = executors.keys().cloned().collect();
    let register = v1::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: opts.worker_id.clone(),
        capabilities: Some(v1::Capabilities {
            backend: opts.backend.clone(),
            device_memory_bytes: opts.device_memory_bytes,
            models: Vec::new(),
            slots: opts.slots,
            stage_kinds: kinds.clone(),
        }),
    };
    let reg = coord
        .call("register", |mut c| {
            let r = register.clone();
            async move { c.register(r).await }
        })
        .await?;
    tracing::info!(worker_id = %opts.worker_id, kinds = ?kinds, "registered");
    let heartbeat = Duration::from_millis(reg.heartbeat_interval_ms.max(20));
    let mut report = WorkerReport::default();
    tokio::pin!(stop);
    loop {
        if report.stopped {
            return Ok(report);
        }
        let request = v1::AcquireTaskRequest {
            worker_id: opts.worker_id.clone(),
            stage_kinds: kinds.clone(),
            progress: Some(coord.progress()),
        };
        let acquire = coord.call("acquire", |mut c| {
            let r = request.clone();
            async move { c.acquire_task(r).await }
        });
        let resp = tokio::select! {
            _ = &mut stop => {
                report.stopped = true;
                return Ok(report);
            }
            r = acquire => r?,
        };
        let Some(task) = resp.task else {
            if resp.finished {
                return Ok(report);
            }
            tokio::select! {
                _ = &mut stop => {
                report.stopped = true;
                return Ok(report);
            }
                _ = tokio::time::sleep(Duration::from_millis(resp.retry_after_ms.clamp(10, 5000))) => {}
            }
            continue;
        };
        let Some(executor) = executors.get(&task.stage_kind).cloned() else {
            return Err(WorkerError::BadTask(format!(
                "stage kind {:?} has no executor here",
                task.stage_kind
            )));
        };
        run_one(
            &mut coord,
            &opts,
            executor,
            task,
            heartbeat,
            &mut stop,
            &mut report,
        )
        .await?;
    }
}

async fn run_one(
    coord: &mut Coordinator,
    opts: &WorkerOptions,
    executor: Arc<dyn Executor>,
    task: v1::TaskAssignment,
    heartbeat: Duration,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    report: &mut WorkerReport,
) -> Result<(), WorkerError> {
    let lease = task
        .lease
        .clone()
        .ok_or_else(|| WorkerError::BadTask("no lease".into()))?;
    tracing::info!(worker_id = %opts.worker_id, run = %lease.run_id, stage = lease.stage,
        task = lease.task, token = lease.token, attempt = task.attempt, "task started");
    let cancel = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(report.stopped));
    // Heartbeats keep the lease from now until the completion is answered.
    let keeper = LeaseKeeper::start(
        coord.clone(),
        opts.worker_id.clone(),
        lease.clone(),
        heartbeat,
        draining.clone(),
        cancel.clone(),
    );
    let telemetry = coord.telemetry.clone();
    let input = TaskInput {
        input_root: task.input_root.clone(),
        ranges: task
            .input
            .iter()
            .map(|r| (r.file.clone(), r.start as usize, r.end as usize))
            .collect(),
        output_prefix: task.output_prefix.clone(),
        config_json: task.config_json.clone(),
        cancel: cancel.clone(),
        telemetry: telemetry.clone(),
    };
    // The executor runs on its own thread.
    let started = std::time::Instant::now();
    // One task at a time per process: the tokens generated meanwhile are the task's.
    let tokens_before = telemetry.totals().tokens;
    telemetry.task_started();
    let work = tokio::task::spawn_blocking(move || executor.run(&input));
    tokio::pin!(work);
    let mut deadline: Option<tokio::time::Instant> = None;
    let result = loop {
        let give_up = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut work => break r.unwrap_or_else(|e| {
                Err(TaskError::internal(format!("executor panicked: {e}")))
            }),
            _ = &mut *stop, if !report.stopped => {
                report.stopped = true;
                draining.store(true, Ordering::Relaxed);
                deadline = Some(tokio::time::Instant::now() + opts.grace);
                tracing::info!(worker_id = %opts.worker_id, task = lease.task, grace = ?opts.grace, "draining: finishing the task in hand");
            }
            _ = give_up => {
                cancel.store(true, Ordering::SeqCst);
                tracing::warn!(worker_id = %opts.worker_id, task = lease.task, "grace period over: giving the task back");
                drop(keeper);
                discard_output(&task.output_prefix).await;
                coord.release(&opts.worker_id, &lease).await?;
                report.released += 1;
                return Ok(());
            }
        }
    };
    report.executor_seconds += started.elapsed().as_secs_f64();
    if keeper.lost() {
        tracing::warn!(worker_id = %opts.worker_id, task = lease.task, token = lease.token,
            "lease lost; the output is abandoned");
        drop(keeper);
        discard_output(&task.output_prefix).await;
        report.refused += 1;
        return Ok(());
    }
    match result.and_then(|out| output_files(&task.output_prefix, out)) {
        Ok((out, files)) => {
            let req = v1::CompleteTaskRequest {
                worker_id: opts.worker_id.clone(),
                lease: Some(lease.clone()),
                outputs: files,
                rows_in: out.rows_in,
                tokens: telemetry.totals().tokens - tokens_before,
                quarantined: out
                    .quarantined
                    .into_iter()
                    .map(|(sha256, reason)| v1::QuarantinedScript { sha256, reason })
                    .collect(),
                duplicates: out.duplicates,
            };
            // Retried until a coordinator answers, while the keeper heartbeats.
            let resp = coord
                .call("complete", |mut c| {
                    let r = req.clone();
                    async move { c.complete_task(r).await }
                })
                .await;
            drop(keeper);
            let resp = resp?;
            if resp.accepted {
                report.completed += 1;
            } else {
                tracing::warn!(worker_id = %opts.worker_id, task = lease.task, token = lease.token,
                    reason = %resp.reason, "completion refused; the output is abandoned");
                discard_output(&task.output_prefix).await;
                report.refused += 1;
            }
        }
        Err(mut error) => {
            if cancel.load(Ordering::SeqCst) {
                error.kind = FaultKind::Cancelled;
            }
            tracing::warn!(worker_id = %opts.worker_id, task = lease.task, token = lease.token,
                kind = %error.kind, error = %error.message, "task failed");
            drop(keeper);
            discard_output(&task.output_prefix).await;
            coord.fail(&opts.worker_id, &lease, &error).await?;
            report.failed += 1;
        }
    }
    Ok(())
}

/// Deletes what an attempt wrote that will never be committed (failed, refused, lost or
/// given back), so no partial output or empty directory is left behind. The coordinator's
/// sweep catches what this misses (a worker that died).
async fn discard_output(prefix: &str) {
    match remove_prefix(prefix).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(prefix, files = n, "abandoned attempt output deleted"),
        Err(e) => tracing::warn!(prefix, error = %e, "cannot delete an abandoned attempt's output"),
    }
}

/// The output files as the coordinator records them: paths inside the output store.
fn output_files(
    output_prefix: &str,
    out: TaskOutput,
) -> Result<(TaskOutput, Vec<v1::OutputFile>), TaskError> {
    let (_, prefix) = open_store(output_prefix)?;
    let files = out
        .files
        .iter()
        .map(|f| v1::OutputFile {
            path: child(&prefix, &f.path).to_string(),
            size_bytes: f.bytes,
            sha256: f.sha256.clone(),
            rows: f.rows,
        })
        .collect();
    Ok((out, files))
}
