//! The worker service over gRPC. Each request becomes a command to the stage's event loop,
//! the only owner of the `StageManager`; the loop also expires silent leases on a timer.

use std::future::Future;
use std::time::Duration;

use automaldesc_common::ids::{LeaseRef, WorkerId};
use automaldesc_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use automaldesc_proto::{require, v1, worker_id, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::lease_manager::{FailOutcome, Refusal};
use crate::stage_manager::{Assignment, OutputRecord, StageError, StageManager};
use crate::state::StateError;

type Reply<T> = oneshot::Sender<Result<T, StageError>>;

enum Command {
    Heartbeat {
        worker: WorkerId,
        leases: Vec<LeaseRef>,
        reply: oneshot::Sender<Vec<LeaseRef>>,
    },
    Acquire {
        worker: WorkerId,
        reply: Reply<(Option<Assignment>, bool)>,
    },
    Complete {
        worker: WorkerId,
        lease: LeaseRef,
        rows_in: u64,
        outputs: Vec<OutputRecord>,
        quarantined: Vec<(String, String)>,
        reply: Reply<Result<(), Refusal>>,
    },
    Fail {
        lease: LeaseRef,
        error: String,
        reply: Reply<Result<FailOutcome, Refusal>>,
    },
}

/// Runs the stage's event loop until every sender is dropped; returns the manager.
fn spawn_stage_loop(
    mut manager: StageManager,
    tick: Duration,
) -> (mpsc::Sender<Command>, JoinHandle<StageManager>) {
    let (tx, mut rx) = mpsc::channel::<Command>(256);
    let handle = tokio::spawn(async move {
        let mut timer = tokio::time::interval(tick);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(cmd) => handle(&mut manager, cmd).await,
                },
                _ = timer.tick() => {
                    if let Err(e) = manager.tick(Instant::now()).await {
                        tracing::warn!(error = %e, "expiring leases failed; retrying on the next tick");
                    }
                }
            }
        }
        manager
    });
    (tx, handle)
}

async fn handle(m: &mut StageManager, cmd: Command) {
    let now = Instant::now();
    // A dropped reply means the caller went away; nothing to do about it.
    match cmd {
        Command::Heartbeat {
            worker,
            leases,
            reply,
        } => {
            let _ = reply.send(m.heartbeat(&worker, &leases, now));
        }
        Command::Acquire { worker, reply } => {
            let r = m.acquire(&worker, now).await;
            let finished = m.is_finished();
            let _ = reply.send(r.map(|a| (a, finished)));
        }
        Command::Complete {
            worker,
            lease,
            rows_in,
            outputs,
            quarantined,
            reply,
        } => {
            let r = m
                .complete(&worker, &lease, rows_in, outputs, quarantined, now)
                .await;
            let _ = reply.send(r);
        }
        Command::Fail {
            lease,
            error,
            reply,
        } => {
            let _ = reply.send(m.fail(&lease, &error, now).await);
        }
    }
}

fn status(e: StageError) -> Status {
    match e {
        StageError::State(StateError::Unavailable(m)) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

#[derive(Clone)]
pub struct WorkerGrpc {
    tx: mpsc::Sender<Command>,
    heartbeat_interval: Duration,
    lease_ttl: Duration,
}

impl WorkerGrpc {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| Status::unavailable("the stage is closed"))?;
        rx.await
            .map_err(|_| Status::internal("the stage loop dropped a request"))
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    async fn register(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not {PROTOCOL_VERSION}",
                r.protocol_version
            )));
        }
        let worker = worker_id(r.worker_id)?;
        let caps = r.capabilities.unwrap_or_default();
        tracing::info!(worker_id = %worker, backend = %caps.backend, slots = caps.slots, "worker registered");
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
            .ask(|reply| Command::Heartbeat {
                worker,
                leases,
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
        let worker = worker_id(req.into_inner().worker_id)?;
        let (task, finished) = self
            .ask(|reply| Command::Acquire { worker, reply })
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
            retry_after_ms: 200,
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
            .ask(|reply| Command::Complete {
                worker,
                lease,
                rows_in: r.rows_in,
                outputs,
                quarantined,
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
        let lease = LeaseRef::try_from(require(r.lease, "lease")?)?;
        let outcome = self
            .ask(|reply| Command::Fail {
                lease,
                error: r.error,
                reply,
            })
            .await?
            .map_err(status)?;
        Ok(Response::new(v1::FailTaskResponse {
            accepted: outcome.is_ok(),
        }))
    }
}

/// How the coordinator paces its workers.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub heartbeat_interval: Duration,
    pub lease_ttl: Duration,
    /// How often silent leases are looked for.
    pub tick: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("the stage's event loop failed: {0}")]
    Loop(String),
}

/// Serves one stage on `listener` until `shutdown` resolves; returns the stage's manager.
pub async fn serve_stage(
    listener: tokio::net::TcpListener,
    manager: StageManager,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<StageManager, ServeError> {
    let (tx, handle) = spawn_stage_loop(manager, opts.tick);
    let svc = WorkerGrpc {
        tx,
        heartbeat_interval: opts.heartbeat_interval,
        lease_ttl: opts.lease_ttl,
    };
    tonic::transport::Server::builder()
        .add_service(WorkerServiceServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    // The service (and its sender) is dropped with the server: the loop ends.
    handle.await.map_err(|e| ServeError::Loop(e.to_string()))
}
