//! The worker's loop: register with the coordinator, ask for tasks, run each on a dedicated
//! thread while a heartbeat keeps its lease, and report the output (or the failure). A
//! lease the coordinator says is lost is abandoned: its output is never committed.

use std::sync::Arc;
use std::time::Duration;

use automaldesc_proto::v1::worker_service_client::WorkerServiceClient;
use automaldesc_proto::{v1, PROTOCOL_VERSION};
use tonic::transport::Channel;

use crate::executor::{Executor, TaskInput};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot reach the coordinator at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("coordinator refused {call}: {status}")]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("malformed task from the coordinator: {0}")]
    BadTask(String),
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub endpoint: String,
    pub worker_id: String,
    pub backend: String,
    pub slots: u32,
}

/// What one worker did before the stage finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub completed: u32,
    pub refused: u32,
    pub failed: u32,
}

fn rpc(call: &'static str) -> impl Fn(tonic::Status) -> WorkerError {
    move |status| WorkerError::Rpc { call, status }
}

/// Works until the coordinator says the stage is finished, or `stop` resolves.
pub async fn run_worker(
    opts: WorkerOptions,
    executor: Arc<dyn Executor>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<WorkerReport, WorkerError> {
    let mut client = WorkerServiceClient::connect(opts.endpoint.clone())
        .await
        .map_err(|e| WorkerError::Connect {
            endpoint: opts.endpoint.clone(),
            reason: e.to_string(),
        })?;
    let reg = client
        .register(v1::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: opts.worker_id.clone(),
            capabilities: Some(v1::Capabilities {
                backend: opts.backend.clone(),
                device_memory_bytes: 0,
                models: Vec::new(),
                slots: opts.slots,
            }),
        })
        .await
        .map_err(rpc("register"))?
        .into_inner();
    let heartbeat = Duration::from_millis(reg.heartbeat_interval_ms.max(50));
    let mut report = WorkerReport::default();
    tokio::pin!(stop);
    loop {
        let resp = tokio::select! {
            _ = &mut stop => return Ok(report),
            r = client.acquire_task(v1::AcquireTaskRequest { worker_id: opts.worker_id.clone() }) => {
                r.map_err(rpc("acquire"))?.into_inner()
            }
        };
        let Some(task) = resp.task else {
            if resp.finished {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(resp.retry_after_ms.max(10))).await;
            continue;
        };
        run_one(
            &mut client,
            &opts,
            executor.clone(),
            task,
            heartbeat,
            &mut report,
        )
        .await?;
    }
}

async fn run_one(
    client: &mut WorkerServiceClient<Channel>,
    opts: &WorkerOptions,
    executor: Arc<dyn Executor>,
    task: v1::TaskAssignment,
    heartbeat: Duration,
    report: &mut WorkerReport,
) -> Result<(), WorkerError> {
    let lease = task
        .lease
        .clone()
        .ok_or_else(|| WorkerError::BadTask("no lease".into()))?;
    let input = TaskInput {
        input_root: task.input_root.clone(),
        ranges: task
            .input
            .iter()
            .map(|r| (r.file.clone(), r.start as usize, r.end as usize))
            .collect(),
        output_prefix: task.output_prefix.clone(),
        config_json: task.config_json.clone(),
    };
    // The executor runs on its own thread; this task keeps the lease meanwhile.
    let work = tokio::task::spawn_blocking(move || executor.run(&input));
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(heartbeat);
    let mut lost = false;
    let result = loop {
        tokio::select! {
            r = &mut work => break r.map_err(|e| format!("executor panicked: {e}")).and_then(|r| r),
            _ = ticker.tick() => {
                let resp = client
                    .heartbeat(v1::HeartbeatRequest {
                        worker_id: opts.worker_id.clone(),
                        leases: vec![lease.clone()],
                        progress: None,
                        draining: false,
                    })
                    .await;
                match resp {
                    Ok(r) if !r.get_ref().lost.is_empty() => lost = true,
                    Ok(_) => {}
                    Err(status) => tracing::warn!(worker_id = %opts.worker_id, %status, "heartbeat failed"),
                }
            }
        }
    };
    if lost {
        tracing::warn!(worker_id = %opts.worker_id, task = lease.task, "lease lost; the output is abandoned");
        report.refused += 1;
        return Ok(());
    }
    match result {
        Ok(out) => {
            let prefix = task.output_prefix.trim_end_matches('/');
            let resp = client
                .complete_task(v1::CompleteTaskRequest {
                    worker_id: opts.worker_id.clone(),
                    lease: Some(lease),
                    outputs: out
                        .files
                        .into_iter()
                        .map(|f| v1::OutputFile {
                            path: format!("{prefix}/{}", f.path),
                            size_bytes: f.bytes,
                            sha256: f.sha256,
                            rows: f.rows,
                        })
                        .collect(),
                    rows_in: out.rows_in,
                    quarantined: out
                        .quarantined
                        .into_iter()
                        .map(|(sha256, reason)| v1::QuarantinedScript { sha256, reason })
                        .collect(),
                })
                .await
                .map_err(rpc("complete"))?
                .into_inner();
            if resp.accepted {
                report.completed += 1;
            } else {
                tracing::warn!(worker_id = %opts.worker_id, reason = %resp.reason, "completion refused");
                report.refused += 1;
            }
        }
        Err(error) => {
            client
                .fail_task(v1::FailTaskRequest {
                    worker_id: opts.worker_id.clone(),
                    lease: Some(lease),
                    error,
                })
                .await
                .map_err(rpc("fail"))?;
            report.failed += 1;
        }
    }
    Ok(())
}
