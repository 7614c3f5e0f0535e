//! The coordinator's gRPC services: WorkerService for workers and ControlService for
//! operators. Each request becomes a command to one event loop, the only owner of the
//! [`RunManager`]; the loop also expires silent leases on a timer, and applies what the
//! manager's jobs beside it (wrapping up a stage, sweeping garbage) report. Both services sit behind
//! the bearer-token check and, when configured, TLS. The standard gRPC health service
//! (`grpc.health.v1.Health`) answers without a token, for probes: SERVING for both
//! services while this coordinator leads and serves, NOT_SERVING once it stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use automaldesc_common::fault::FaultKind;
use automaldesc_common::ids::{LeaseRef, RunId, WorkerId};
use automaldesc_proto::security::{RequireToken, ServerTlsFiles};
use automaldesc_proto::v1::control_service_server::ControlServiceServer;
use automaldesc_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::http::ClusterView;
use crate::lease_manager::{FailOutcome, Refusal};
use crate::run_manager::{RunError, RunManager, RunStatus};
use crate::stage_manager::{Assignment, Completion, OutputRecord};
use crate::workers::{Ending, Registration, Reported, Workers};
use automaldesc_common::run_spec::RunSpec;

mod control_service;
mod wire;
mod worker_service;

use control_service::ControlGrpc;
pub use wire::to_proto;
use worker_service::WorkerGrpc;

/// How long a worker told "nothing now" waits before asking again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

type Reply<T> = oneshot::Sender<Result<T, RunError>>;

enum Command {
    Register {
        worker: WorkerId,
        registration: Registration,
    },
    Heartbeat {
        worker: WorkerId,
        leases: Vec<LeaseRef>,
        reported: Option<Reported>,
        draining: bool,
        reply: oneshot::Sender<Vec<LeaseRef>>,
    },
    Acquire {
        worker: WorkerId,
        kinds: Vec<String>,
        reported: Option<Reported>,
        reply: Reply<(Option<Assignment>, bool)>,
    },
    Complete {
        worker: WorkerId,
        lease: LeaseRef,
        done: Completion,
        reply: Reply<Result<(), Refusal>>,
    },
    Fail {
        worker: WorkerId,
        lease: LeaseRef,
        kind: FaultKind,
        error: String,
        released: bool,
        reply: Reply<Result<Option<FailOutcome>, Refusal>>,
    },
    Submit {
        id: Option<RunId>,
        spec: RunSpec,
        reply: Reply<RunStatus>,
    },
    Get {
        id: RunId,
        reply: Reply<RunStatus>,
    },
    List {
        reply: oneshot::Sender<Vec<RunStatus>>,
    },
    Watch {
        id: RunId,
        reply: Reply<watch::Receiver<RunStatus>>,
    },
    Cancel {
        id: RunId,
        reply: Reply<RunStatus>,
    },
    Retry {
        id: RunId,
        reply: Reply<RunStatus>,
    },
    Files {
        id: RunId,
        stages: Vec<u32>,
        reply: Reply<RunFiles>,
    },
}

/// A run's status and spec, and the files some of its stages committed.
type RunFiles = (RunStatus, RunSpec, Vec<(u32, Vec<OutputRecord>)>);

/// How the coordinator paces its workers and when it stops.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub heartbeat_interval: Duration,
    pub lease_ttl: Duration,
    /// How often silent leases are looked for.
    pub tick: Duration,
    /// Stop serving once no run is running (a batch job's coordinator); workers are told
    /// the work is finished.
    pub exit_when_done: bool,
    pub token: RequireToken,
    pub tls: Option<ServerTlsFiles>,
    /// Every run's status and every worker, published on each tick (for the HTTP side).
    pub snapshot: Option<Arc<watch::Sender<ClusterView>>>,
}

impl ServeOptions {
    /// Plain (no TLS, no token) serving with the given lease TTL.
    pub fn plain(lease_ttl: Duration) -> Self {
        Self {
            heartbeat_interval: lease_ttl / 5,
            lease_ttl,
            tick: (lease_ttl / 10).max(Duration::from_millis(20)),
            exit_when_done: false,
            token: RequireToken::default(),
            tls: None,
            snapshot: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Security(#[from] automaldesc_proto::security::SecurityError),
    /// Another coordinator leads now; this one must stop.
    #[error("leadership lost: {0}")]
    Fenced(String),
    #[error("the coordinator's event loop failed: {0}")]
    Loop(String),
}

/// Why the event loop ended.
enum LoopEnd {
    /// Every sender dropped (the server stopped).
    Closed,
    /// No run is running and `exit_when_done` is set.
    Done,
    Fenced(String),
}

async fn event_loop(
    manager: &mut RunManager,
    rx: &mut mpsc::Receiver<Command>,
    opts: &ServeOptions,
) -> LoopEnd {
    let mut workers = Workers::new(opts.lease_ttl);
    let mut timer = tokio::time::interval(opts.tick);
    // Once done, keep answering for a while so polling workers (they ask every
    // `RETRY_AFTER`) learn it.
    let mut done_since: Option<Instant> = None;
    loop {
        let result = tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return LoopEnd::Closed,
                Some(cmd) => handle(manager, &mut workers, cmd, opts.exit_when_done).await,
            },
            // A job beside the loop ended (a stage wrapped up, a submission planned, a
            // sweep done); waiting for one is cancel-safe, applying it is not.
            done = manager.next_job() => manager.apply(done).await,
            _ = timer.tick() => {
                let r = manager.tick(Instant::now()).await.map(|expired| {
                    for (worker, lease) in &expired {
                        workers.expired(worker, lease);
                    }
                });
                workers.note_lost(Instant::now());
                if let Some(s) = &opts.snapshot {
                    s.send_replace(ClusterView {
                        at_ms: crate::run_manager::now_ms(),
                        runs: manager.list(),
                        workers: workers.views(Instant::now()),
                    });
                }
                r
            }
        };
        if let Err(e) = result {
            return LoopEnd::Fenced(e.to_string());
        }
        if opts.exit_when_done && manager.idle() {
            let since = *done_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= RETRY_AFTER * 5 {
                return LoopEnd::Done;
            }
        }
    }
}

/// Handles one command; only a lost leadership is an error for the loop.
async fn handle(
    m: &mut RunManager,
    workers: &mut Workers,
    cmd: Command,
    exit_when_done: bool,
) -> Result<(), RunError> {
    let now = Instant::now();
    // A reply the caller no longer waits for is dropped: nothing to do about it.
    use crate::run_manager::answer_fenced as answer;
    match cmd {
        Command::Register {
            worker,
            registration,
        } => {
            workers.register(&worker, registration, now);
            Ok(())
        }
        Command::Heartbeat {
            worker,
            leases,
            reported,
            draining,
            reply,
        } => {
            if draining {
                tracing::debug!(worker_id = %worker, "worker draining");
            }
            let lost = m.heartbeat(&worker, &leases, now);
            workers.heartbeat(&worker, &leases, &lost, reported, draining, now);
            let _ = reply.send(lost);
            Ok(())
        }
        Command::Acquire {
            worker,
            kinds,
            reported,
            reply,
        } => {
            let r = m.acquire(&worker, &kinds, now).await;
            let granted = r.as_ref().ok().and_then(|a| a.as_ref());
            workers.acquired(
                &worker,
                reported,
                granted.map(|a| (&a.lease, a.attempt)),
                now,
            );
            let finished = exit_when_done && m.idle();
            answer(reply, r.map(|a| (a, finished)))
        }
        Command::Complete {
            worker,
            lease,
            done,
            reply,
        } => {
            let r = m.complete(&worker, &lease, done, now).await;
            let ending = match r {
                Ok(Ok(())) => Ending::Committed,
                _ => Ending::Neither,
            };
            workers.finished(&worker, &lease, ending, now);
            answer(reply, r)
        }
        Command::Fail {
            worker,
            lease,
            kind,
            error,
            released,
            reply,
        } => {
            let r = m.fail(&worker, &lease, kind, &error, released, now).await;
            let ending = if released {
                Ending::Neither
            } else {
                Ending::Failed
            };
            workers.finished(&worker, &lease, ending, now);
            answer(reply, r)
        }
        Command::Submit { id, spec, reply } => m.submit_beside(id, spec, reply).await,
        Command::Get { id, reply } => answer(reply, m.status(&id)),
        Command::List { reply } => {
            let _ = reply.send(m.list());
            Ok(())
        }
        Command::Watch { id, reply } => answer(reply, m.subscribe(&id)),
        Command::Cancel { id, reply } => answer(reply, m.cancel(&id).await),
        Command::Retry { id, reply } => answer(reply, m.retry_quarantined(&id).await),
        Command::Files { id, stages, reply } => {
            answer(reply, m.committed_files(&id, &stages).await)
        }
    }
}

#[derive(Clone)]
struct Loop {
    tx: mpsc::Sender<Command>,
}

impl Loop {
    /// Hands the event loop a command that wants no answer.
    async fn tell(&self, cmd: Command) -> Result<(), Status> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (reply, rx) = oneshot::channel();
        self.tell(make(reply)).await?;
        rx.await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }
}

/// Serves both services on `listener` until `shutdown` resolves (or, with
/// `exit_when_done`, until no run is running); returns the manager.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut manager: RunManager,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunManager, ServeError> {
    let (tx, mut rx) = mpsc::channel::<Command>(1024);
    let inner = Loop { tx };
    let workers = WorkerGrpc {
        inner: inner.clone(),
        heartbeat_interval: opts.heartbeat_interval,
        lease_ttl: opts.lease_ttl,
    };
    let control = ControlGrpc { inner };
    let (health, health_service) = tonic_health::server::health_reporter();
    let names = [
        "",
        <WorkerServiceServer<WorkerGrpc> as tonic::server::NamedService>::NAME,
        <ControlServiceServer<ControlGrpc> as tonic::server::NamedService>::NAME,
    ];
    for name in names {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &opts.tls {
        builder = builder.tls_config(tls.load()?)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(WorkerServiceServer::with_interceptor(
            workers,
            opts.token.clone(),
        ))
        .add_service(ControlServiceServer::with_interceptor(
            control,
            opts.token.clone(),
        ));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // Small request/response exchanges: without TCP_NODELAY, Nagle's algorithm and delayed
    // ACKs hold each one back for tens of milliseconds.
    let incoming = futures::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(c) = &conn {
                if let Err(e) = c.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            }
            conn
        },
    );
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop_rx => {}
        }
    });
    let loop_opts = opts.clone();
    let event_loop = async move {
        let end = event_loop(&mut manager, &mut rx, &loop_opts).await;
        for name in names {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        // Stop the server (if it is not stopping already); the loop is over.
        let _ = stop_tx.send(());
        (manager, end)
    };
    let (served, (mut manager, end)) = tokio::join!(server, event_loop);
    served?;
    manager.drain();
    match end {
        LoopEnd::Fenced(msg) => Err(ServeError::Fenced(msg)),
        LoopEnd::Closed => Ok(manager),
        LoopEnd::Done => {
            // The finished runs' sweeps, before the process exits.
            manager
                .settle()
                .await
                .map_err(|e| ServeError::Loop(e.to_string()))?;
            Ok(manager)
        }
    }
}
