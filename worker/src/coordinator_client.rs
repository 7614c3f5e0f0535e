//! The worker's side of the wire: connections to the coordinator endpoints (a leader and
//! its standbys) with request deadlines and HTTP/2 keepalive, calls retried across them
//! while no coordinator answers, and the heartbeats that keep a task's lease, run in the
//! background from the moment the task is taken until its completion is answered.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automaldesc_common::fault::TaskError;
use automaldesc_proto::security::AttachToken;
use automaldesc_proto::v1;
use automaldesc_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::worker_process::{WorkerError, WorkerOptions};
use automaldesc_common::telemetry::Telemetry;

type Client = WorkerServiceClient<InterceptedService<Channel, AttachToken>>;

/// A status that means "no coordinator now" rather than an answer: unreachable, timed
/// out (a frozen coordinator), or a broken connection.
pub(crate) fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// Connections to the coordinator endpoints; calls go to the current one and move on to
/// the next when it does not answer.
#[derive(Clone)]
pub(crate) struct Coordinator {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    current: usize,
    patience: Duration,
    /// The worker's counters, which its heartbeats and acquires carry.
    pub(crate) telemetry: Arc<Telemetry>,
}

impl Coordinator {
    pub(crate) fn new(opts: &WorkerOptions) -> Result<Self, WorkerError> {
        if opts.endpoints.is_empty() {
            return Err(WorkerError::Setup("no coordinator endpoint given".into()));
        }
        let clients = opts
            .endpoints
            .iter()
            .map(|e| {
                let channel = opts.security.channel_with(e, opts.deadlines)?;
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
            telemetry: Arc::default(),
        })
    }

    fn next_endpoint(&mut self) {
        self.current = (self.current + 1) % self.clients.len();
    }

    /// Calls until an answer comes, or no coordinator answered for `patience`.
    pub(crate) async fn call<T, F, Fut>(
        &mut self,
        name: &'static str,
        mut f: F,
    ) -> Result<T, WorkerError>
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
                    tracing::debug!(call = name, endpoint = %self.endpoints[self.current],
                        status = %s, "coordinator not answering");
                    self.next_endpoint();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(status) => return Err(WorkerError::Rpc { call: name, status }),
            }
        }
    }

    /// Reports a failed attempt with its kind.
    pub(crate) async fn fail(
        &mut self,
        worker: &str,
        lease: &v1::LeaseRef,
        error: &TaskError,
    ) -> Result<(), WorkerError> {
        let req = v1::FailTaskRequest {
            worker_id: worker.to_string(),
            lease: Some(lease.clone()),
            error: error.message.clone(),
            released: false,
            kind: v1::ErrorKind::from(error.kind) as i32,
        };
        self.send_fail("fail", req).await
    }

    /// Gives a task back unfinished (the worker is shutting down): no attempt counted.
    pub(crate) async fn release(
        &mut self,
        worker: &str,
        lease: &v1::LeaseRef,
    ) -> Result<(), WorkerError> {
        let req = v1::FailTaskRequest {
            worker_id: worker.to_string(),
            lease: Some(lease.clone()),
            error: "released: the worker is shutting down".into(),
            released: true,
            kind: v1::ErrorKind::Cancelled as i32,
        };
        self.send_fail("release", req).await
    }

    async fn send_fail(
        &mut self,
        name: &'static str,
        req: v1::FailTaskRequest,
    ) -> Result<(), WorkerError> {
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
            progress: Some(self.progress()),
            draining,
        };
        match self.clients[self.current].clone().heartbeat(req).await {
            Ok(r) => Some(!r.get_ref().lost.is_empty()),
            Err(s) => {
                tracing::warn!(worker_id = worker, endpoint = %self.endpoints[self.current],
                    status = %s, "heartbeat failed");
                if transient(&s) {
                    self.next_endpoint();
                }
                None
            }
        }
    }
}

impl Coordinator {
    /// The worker's running totals as heartbeats and acquires carry them.
    pub(crate) fn progress(&self) -> v1::Progress {
        let t = self.telemetry.totals();
        v1::Progress {
            scripts_done: t.scripts,
            tokens_generated: t.tokens,
            model_loads: t.model_loads,
            model_load_ms: t.model_load_ms,
            task_done: t.task_done,
            task_total: t.task_total,
        }
    }
}

/// Heartbeats for one lease, in the background, until stopped (or dropped): while the
/// executor runs and while its completion is retried, so a coordinator that cannot commit
/// for a while (its store is down) does not see the lease go silent.
pub(crate) struct LeaseKeeper {
    handle: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl LeaseKeeper {
    /// Starts heartbeating every `every`; a lease the coordinator reports lost sets
    /// `cancel`, so the executor stops early.
    pub(crate) fn start(
        mut coord: Coordinator,
        worker: String,
        lease: v1::LeaseRef,
        every: Duration,
        draining: Arc<AtomicBool>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let drain = draining.load(Ordering::Relaxed);
                if coord.heartbeat(&worker, &lease, drain).await == Some(true) {
                    flag.store(true, Ordering::SeqCst);
                    // Nothing it produces can be committed any more.
                    cancel.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
        Self { handle, lost }
    }

    /// Whether the coordinator said the lease is no longer this worker's.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
