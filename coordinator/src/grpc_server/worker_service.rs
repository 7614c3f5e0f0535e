//! `WorkerService`: registration, heartbeats, leases and task results, each a command to
//! the event loop.

use std::time::Duration;

use automaldesc_common::ids::LeaseRef;
use automaldesc_proto::v1::worker_service_server::WorkerService;
use automaldesc_proto::{fault_kind, require, v1, worker_id, PROTOCOL_VERSION};
use tonic::{Request, Response, Status};

use super::wire::{check_version, reported, status};
use super::{Command, Loop, RETRY_AFTER};
use crate::stage_manager::{Completion, OutputRecord};
use crate::workers::Registration;

#[derive(Clone)]
pub(super) struct WorkerGrpc {
    pub(super) inner: Loop,
    pub(super) heartbeat_interval: Duration,
    pub(super) lease_ttl: Duration,
}

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    async fn register(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version)?;
        let worker = worker_id(r.worker_id)?;
        let caps = r.capabilities.unwrap_or_default();
        tracing::info!(worker_id = %worker, backend = %caps.backend, slots = caps.slots,
            kinds = ?caps.stage_kinds, "worker registered");
        let registration = Registration {
            backend: caps.backend,
            device_memory_bytes: caps.device_memory_bytes,
            slots: caps.slots,
            kinds: caps.stage_kinds,
        };
        self.inner
            .tell(Command::Register {
                worker,
                registration,
            })
            .await?;
        Ok(Response::new(v1::RegisterResponse {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: self.lease_ttl.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let worker = worker_id(r.worker_id)?;
        let leases = r
            .leases
            .into_iter()
            .map(LeaseRef::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let lost = self
            .inner
            .ask(|reply| Command::Heartbeat {
                worker,
                leases,
                reported: r.progress.map(reported),
                draining: r.draining,
                reply,
            })
            .await?;
        Ok(Response::new(v1::HeartbeatResponse {
            lost: lost.into_iter().map(Into::into).collect(),
        }))
    }

    async fn acquire_task(
        &self,
        req: Request<v1::AcquireTaskRequest>,
    ) -> Result<Response<v1::AcquireTaskResponse>, Status> {
        let r = req.into_inner();
        let worker = worker_id(r.worker_id)?;
        let (task, finished) = self
            .inner
            .ask(|reply| Command::Acquire {
                worker,
                kinds: r.stage_kinds,
                reported: r.progress.map(reported),
                reply,
            })
            .await?
            .map_err(status)?;
        Ok(Response::new(v1::AcquireTaskResponse {
            task: task.map(|a| v1::TaskAssignment {
                lease: Some(a.lease.into()),
                stage_kind: a.kind,
                input: a
                    .input
                    .into_iter()
                    .map(|r| v1::RowGroupRange {
                        file: r.file,
                        start: r.start as u32,
                        end: r.end as u32,
                    })
                    .collect(),
                output_prefix: a.output_prefix,
                config_json: a.config_json,
                attempt: a.attempt,
                input_root: a.input_root,
            }),
            retry_after_ms: RETRY_AFTER.as_millis() as u64,
            finished,
        }))
    }

    async fn complete_task(
        &self,
        req: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        let r = req.into_inner();
        let worker = worker_id(r.worker_id)?;
        let lease = LeaseRef::try_from(require(r.lease, "lease")?)?;
        let outputs = r
            .outputs
            .into_iter()
            .map(|o| OutputRecord {
                path: o.path,
                rows: o.rows,
                bytes: o.size_bytes,
                sha256: o.sha256,
            })
            .collect();
        let quarantined = r
            .quarantined
            .into_iter()
            .map(|q| (q.sha256, q.reason))
            .collect();
        let outcome = self
            .inner
            .ask(|reply| Command::Complete {
                worker,
                lease,
                done: Completion {
                    rows_in: r.rows_in,
                    outputs,
                    quarantined,
                    tokens: r.tokens,
                    duplicates: r.duplicates,
                },
                reply,
            })
            .await?
            .map_err(status)?;
        Ok(Response::new(match outcome {
            Ok(()) => v1::CompleteTaskResponse {
                accepted: true,
                reason: String::new(),
            },
            Err(refusal) => v1::CompleteTaskResponse {
                accepted: false,
                reason: refusal.to_string(),
            },
        }))
    }

    async fn fail_task(
        &self,
        req: Request<v1::FailTaskRequest>,
    ) -> Result<Response<v1::FailTaskResponse>, Status> {
        let r = req.into_inner();
        let worker = worker_id(r.worker_id)?;
        let lease = LeaseRef::try_from(require(r.lease, "lease")?)?;
        let outcome = self
            .inner
            .ask(|reply| Command::Fail {
                worker,
                lease,
                kind: fault_kind(r.kind),
                error: r.error,
                released: r.released,
                reply,
            })
            .await?
            .map_err(status)?;
        Ok(Response::new(v1::FailTaskResponse {
            accepted: outcome.is_ok(),
        }))
    }
}
