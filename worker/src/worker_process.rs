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

use automaldesc_common::store::{child, open_store};
use automaldesc_proto::security::{AttachToken, ClientSecurity};
use automaldesc_proto::v1::worker_service_client::WorkerServiceClient;
use automaldesc_proto::{v1, PROTOCOL_VERSION};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::executor::{Executor, TaskInput, TaskOutput};
use crate::telemetry;

type Client = WorkerServiceClient<InterceptedService<Channel, AttachToken>>;

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
    pub backend: String,
    pub slots: u32,
    pub security: ClientSecurity,
    /// How long to keep retrying while no coordinator answers.
    pub patience: Duration,
    /// How long a draining worker lets its task run before giving it back.
    pub grace: Duration,
}

impl WorkerOptions {
    /// Options for a plain connection to one coordinator.
    pub fn new(endpoint: &str, worker_id: &str) -> Self {
        Self {
            endpoints: vec![endpoint.to_string()],
            worker_id: worker_id.to_string(),
            backend: crate::device::backend_name().into(),
            slots: 1,
            security: ClientSecurity::default(),
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

/// A status that means "no coordinator now" rather than an answer.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// Connections to the coordinator endpoints; calls go to the current one and move on to
/// the next when it does not answer.
struct Coordinator {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    current: usize,
    patience: Duration,
}

impl Coordinator {
    fn new(opts: &WorkerOptions) -> Result<Self, WorkerError> {
        if opts.endpoints.is_empty() {
            return Err(WorkerError::Setup("no coordinator endpoint given".into()));
        }
        let clients = opts
            .endpoints
            .iter()
            .map(|e| {
                let channel = opts.security.channel(e)?;
                Ok(WorkerServiceClient::with_interceptor(
                    channel,
                    opts.security.interceptor(),
                ))
            })
            .collect::<Result<Vec<_>, WorkerError>>()?;
        Ok(Self {
            endpoints: opts.endpoints.clone(),
            clients,
            current: 0,
            patience: opts.patience,
        })
    }

    /// Calls until an answer comes, or no coordinator answered for `patience`.
    async fn call<T, F, Fut>(&mut self, name: &'static str, mut f: F) -> Result<T, WorkerError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match f(self.clients[self.current].clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if transient(&s) => {
                    if started.elapsed() >= self.patience {
                        return Err(WorkerError::Unreachable {
                            endpoints: self.endpoints.clone(),
                            waited: started.elapsed(),
                            last: s,
                        });
                    }
                    tracing::debug!(call = name, endpoint = %self.endpoints[self.current], status = %s, "coordinator not answering");
                    self.current = (self.current + 1) % self.clients.len();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(status) => return Err(WorkerError::Rpc { call: name, status }),
            }
        }
    }

    /// Reports a failed attempt, or with `released` a task given back unfinished.
    async fn fail(
        &mut self,
        worker: &str,
        lease: &v1::LeaseRef,
        error: String,
        released: bool,
    ) -> Result<(), WorkerError> {
        let req = v1::FailTaskRequest {
            worker_id: worker.to_string(),
            lease: Some(lease.clone()),
            error,
            released,
        };
        let name = if released { "release" } else { "fail" };
        self.call(name, |mut c| {
            let r = req.clone();
            async move { c.fail_task(r).await }
        })
        .await?;
        Ok(())
    }

    /// One heartbeat attempt, no retries: returns whether the lease is lost, or `None`
    /// when the coordinator did not answer.
    async fn heartbeat(
        &mut self,
        worker: &str,
        lease: &v1::LeaseRef,
        draining: bool,
    ) -> Option<bool> {
        let req = v1::HeartbeatRequest {
            worker_id: worker.to_string(),
            leases: vec![lease.clone()],
            progress: Some(progress()),
            draining,
        };
        match self.clients[self.current].clone().heartbeat(req).await {
            Ok(r) => Some(!r.get_ref().lost.is_empty()),
            Err(s) => {
                tracing::warn!(worker_id = worker, status = %s, "heartbeat failed");
                if transient(&s) {
                    self.current = (self.current + 1) % self.clients.len();
                }
                None
            }
        }
    }
}

/// The process's running totals as the heartbeat carries them.
fn progress() -> v1::Progress {
    let t = telemetry::totals();
    v1::Progress {
        scripts_done: t.scripts,
        tokens_generated: t.tokens,
        model_loads: t.model_loads,
        model_load_ms: t.model_load_ms,
        task_done: t.task_done,
        task_total: t.task_total,
    }
}

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
            device_memory_bytes: crate::device::memory_bytes(),
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
            progress: Some(progress()),
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
    };
    // The executor runs on its own thread; this task keeps the lease meanwhile.
    let started = std::time::Instant::now();
    // One task at a time per process: the tokens generated meanwhile are the task's.
    let tokens_before = telemetry::totals().tokens;
    telemetry::task_started();
    let work = tokio::task::spawn_blocking(move || executor.run(&input));
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(heartbeat);
    let mut lost = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let result = loop {
        let give_up = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut work => break r.map_err(|e| format!("executor panicked: {e}")).and_then(|r| r),
            _ = &mut *stop, if !report.stopped => {
                report.stopped = true;
                deadline = Some(tokio::time::Instant::now() + opts.grace);
                tracing::info!(worker_id = %opts.worker_id, task = lease.task, grace = ?opts.grace, "draining: finishing the task in hand");
            }
            _ = give_up => {
                cancel.store(true, Ordering::SeqCst);
                tracing::warn!(worker_id = %opts.worker_id, task = lease.task, "grace period over: giving the task back");
                let why = "released: the worker is shutting down".to_string();
                coord.fail(&opts.worker_id, &lease, why, true).await?;
                report.released += 1;
                return Ok(());
            }
            _ = ticker.tick() => {
                if coord.heartbeat(&opts.worker_id, &lease, report.stopped).await == Some(true) {
                    lost = true;
                    // Nothing it produces can be committed any more.
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        }
    };
    report.executor_seconds += started.elapsed().as_secs_f64();
    if lost {
        tracing::warn!(worker_id = %opts.worker_id, task = lease.task, "lease lost; the output is abandoned");
        report.refused += 1;
        return Ok(());
    }
    match result.and_then(|out| output_files(&task.output_prefix, out)) {
        Ok((out, files)) => {
            let req = v1::CompleteTaskRequest {
                worker_id: opts.worker_id.clone(),
                lease: Some(lease),
                outputs: files,
                rows_in: out.rows_in,
                tokens: telemetry::totals().tokens - tokens_before,
                quarantined: out
                    .quarantined
                    .into_iter()
                    .map(|(sha256, reason)| v1::QuarantinedScript { sha256, reason })
                    .collect(),
            };
            let resp = coord
                .call("complete", |mut c| {
                    let r = req.clone();
                    async move { c.complete_task(r).await }
                })
                .await?;
            if resp.accepted {
                report.completed += 1;
            } else {
                tracing::warn!(worker_id = %opts.worker_id, reason = %resp.reason, "completion refused");
                report.refused += 1;
            }
        }
        Err(error) => {
            tracing::warn!(worker_id = %opts.worker_id, task = lease.task, %error, "task failed");
            coord.fail(&opts.worker_id, &lease, error, false).await?;
            report.failed += 1;
        }
    }
    Ok(())
}

/// The output files as the coordinator records them: paths inside the output store.
fn output_files(
    output_prefix: &str,
    out: TaskOutput,
) -> Result<(TaskOutput, Vec<v1::OutputFile>), String> {
    let (_, prefix) = open_store(output_prefix).map_err(|e| e.to_string())?;
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
