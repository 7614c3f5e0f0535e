//! The object-store work between two stages, run beside the coordinator's event loop: when
//! a stage's last task is committed, a job writes its committed-file list, deletes its
//! unreferenced files and plans the next stage from the committed files' Parquet footers;
//! the loop keeps answering heartbeats, acquires and status calls meanwhile, and applies
//! the job's result as an event ([`super::RunManager::next_job`], then
//! [`super::RunManager::apply`]). Checking and
//! planning a submitted run, and sweeping a finished run's stages, are jobs too.

use std::sync::Arc;

use automaldesc_common::ids::RunId;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::planning::{
    check_spec, new_plan, plan_stage, stage_policy, stage_spec, sweep_stage, write_committed_list,
};
use super::records::{from_json, run_key, stage_key, to_json};
use super::run::summary_of;
use super::submit::answer_fenced;
use super::{now_ms, RunError, RunManager, RunPhase, RunStatus, StagePlan};
use crate::stage_manager::StageManager;
use crate::state::{Expect, StateStore};
use automaldesc_common::run_spec::{RunSpec, StageCatalog};

/// What a job reports back to the event loop (which knows the run each job works for).
pub(super) enum Job {
    /// Stage `stage` is wrapped up: `garbage` files deleted and the next stage's plan
    /// (`None` after the last stage), or why that could not be done now.
    WrappedUp {
        stage: u32,
        result: Result<(u64, Option<StagePlan>), RunError>,
    },
    /// `files` unreferenced files were deleted from the run's finished stages.
    Swept { files: u64 },
    /// A submitted run was checked and its first stage planned (or refused): the loop
    /// starts it and answers `reply`.
    Submitted {
        id: RunId,
        spec: RunSpec,
        plan: Result<StagePlan, RunError>,
        reply: oneshot::Sender<Result<RunStatus, RunError>>,
    },
}

/// Checks a submitted `spec` against `catalog` (kinds, configs, the datasets it reads)
/// and plans its first stage; nothing of the run is recorded yet. A spec left without a
/// run record (an interrupted submission) keeps its plan when it is the same spec.
pub(super) async fn prepare(
    store: Arc<dyn StateStore>,
    catalog: Option<Arc<dyn StageCatalog>>,
    id: RunId,
    spec: RunSpec,
) -> Result<StagePlan, RunError> {
    if let Some(catalog) = &catalog {
        check_spec(catalog.as_ref(), &spec).await?;
    }
    let store = store.as_ref();
    let plan_key = stage_key(&id, 0, "plan");
    if let Some(v) = store.get(&run_key(&id, "spec")).await? {
        let same = serde_json::from_slice::<RunSpec>(&v.value).ok().as_ref() == Some(&spec);
        if !same {
            store.delete(&plan_key, Expect::Any).await?;
        }
    }
    match store.get(&plan_key).await? {
        Some(v) => from_json(&plan_key, &v.value),
        None => new_plan(store, &id, &spec, 0).await,
    }
}

/// [`prepare`] as a job.
pub(super) async fn submission(
    store: Arc<dyn StateStore>,
    catalog: Option<Arc<dyn StageCatalog>>,
    id: RunId,
    spec: RunSpec,
    reply: oneshot::Sender<Result<RunStatus, RunError>>,
) -> Job {
    let plan = prepare(store, catalog, id.clone(), spec.clone()).await;
    Job::Submitted {
        id,
        spec,
        plan,
        reply,
    }
}

/// Wraps up stage `k` of run `id`: the committed-file list, the garbage, the next plan
/// (recorded, so a coordinator that takes over finds the same one).
pub(super) async fn wrap_up(
    store: Arc<dyn StateStore>,
    id: RunId,
    spec: RunSpec,
    k: u32,
    kind: String,
) -> Job {
    let result = async {
        let store = store.as_ref();
        write_committed_list(store, &spec.output, &id, k, &kind).await?;
        let garbage = sweep_stage(store, &spec.output, &id, k).await;
        let next = if (k as usize) + 1 < spec.stages.len() {
            Some(plan_stage(store, &id, &spec, k + 1).await?)
        } else {
            None
        };
        Ok((garbage, next))
    }
    .await;
    Job::WrappedUp { stage: k, result }
}

/// Deletes the unreferenced files of stages `0..last` of run `id`.
pub(super) async fn sweep(store: Arc<dyn StateStore>, id: RunId, output: String, last: u32) -> Job {
    let mut files = 0;
    for k in 0..last {
        files += sweep_stage(store.as_ref(), &output, &id, k).await;
    }
    Job::Swept { files }
}

impl RunManager {
    pub(super) fn spawn(
        &mut self,
        run: RunId,
        job: impl std::future::Future<Output = Job> + Send + 'static,
    ) {
        let handle = self.jobs.spawn(job);
        self.job_runs.insert(handle.id(), run);
    }

    /// Waits for the next job beside the loop to end; never returns while no job runs. For
    /// a `select!` branch of the event loop: cancelling it loses nothing. What the job
    /// reports is then applied with [`RunManager::apply`].
    pub async fn next_job(&mut self) -> JobDone {
        match self.jobs.join_next_with_id().await {
            Some(Ok((task, job))) => JobDone { task, job: Ok(job) },
            Some(Err(e)) => JobDone {
                task: e.id(),
                job: Err(e),
            },
            None => std::future::pending().await,
        }
    }

    /// Applies what a job beside the loop reported. Only a lost leadership is an error.
    pub async fn apply(&mut self, done: JobDone) -> Result<(), RunError> {
        let JobDone { task, job } = done;
        let run = self.job_runs.remove(&task);
        let i = run.and_then(|id| self.runs.iter().position(|r| r.id == id));
        match (job, i) {
            (
                Ok(Job::Submitted {
                    id,
                    spec,
                    plan,
                    reply,
                }),
                _,
            ) => {
                let started = self.start(id, spec, plan).await;
                answer_fenced(reply, started)
            }
            (Err(e), None) => {
                tracing::error!(error = %e, "a job beside the event loop ended abnormally");
                Ok(())
            }
            // A run this coordinator no longer has.
            (_, None) => Ok(()),
            (Ok(Job::WrappedUp { stage, result }), Some(i)) => {
                self.wrapped_up(i, stage, result).await
            }
            (Ok(Job::Swept { files }), Some(i)) => {
                if files > 0 {
                    tracing::info!(run = %self.runs[i].id, files, "unreferenced files deleted");
                }
                Ok(())
            }
            (Err(e), Some(i)) => {
                self.runs[i].wrapping_up = false;
                let why = format!("a job beside the event loop ended abnormally: {e}");
                self.end(i, RunPhase::Failed, why);
                self.flush(i).await
            }
        }
    }

    /// Waits for every job beside the loop and applies what they report (before a
    /// coordinator whose runs are over exits).
    pub async fn settle(&mut self) -> Result<(), RunError> {
        while !self.jobs.is_empty() {
            let done = self.next_job().await;
            self.apply(done).await?;
        }
        Ok(())
    }

    /// Stage `k` of run `i` was wrapped up (or could not be, for now): record its summary
    /// and open the next stage, or end the run after the last.
    async fn wrapped_up(
        &mut self,
        i: usize,
        k: u32,
        result: Result<(u64, Option<StagePlan>), RunError>,
    ) -> Result<(), RunError> {
        let run = &mut self.runs[i];
        run.wrapping_up = false;
        let open = run.current.as_ref().filter(|_| run.is_active());
        if open.map(|s| s.spec().stage) != Some(k) {
            // Cancelled or failed meanwhile.
            return Ok(());
        }
        let result = match result {
            Ok((garbage, next)) => self.open_next(i, garbage, next).await,
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.runs[i].held = None;
        }
        self.hold_or_fail(i, result).await?;
        self.advance_or_log(i).await
    }

    /// Records the finished open stage of run `i` (with `garbage` files deleted) and opens
    /// the stage `next` plans, or ends the run.
    async fn open_next(
        &mut self,
        i: usize,
        garbage: u64,
        next: Option<StagePlan>,
    ) -> Result<(), RunError> {
        let run = &self.runs[i];
        let Some(stage) = run.current.as_ref() else {
            return Ok(());
        };
        let k = stage.spec().stage;
        let summary = summary_of(stage, now_ms(), garbage);
        self.store
            .put(
                &stage_key(&run.id, k, "summary"),
                to_json(&summary),
                Expect::Any,
            )
            .await?;
        tracing::info!(run = %run.id, stage = k, done = summary.counts.done,
            quarantined = summary.counts.quarantined, garbage, "stage finished");
        let mut record = run.record.clone();
        let next = next.map(|plan| {
            record.stage = k + 1;
            stage_spec(&run.id, &run.spec, k + 1, plan)
        });
        let run = &mut self.runs[i];
        run.finished.push(summary);
        if next.is_none() {
            match run.quarantine_note() {
                Some(note) => {
                    record.phase = RunPhase::SucceededWithQuarantine;
                    record.error = note;
                }
                None => record.phase = RunPhase::Succeeded,
            }
        }
        let saved = self
            .store
            .put(&run_key(&run.id, "record"), to_json(&record), Expect::Any)
            .await;
        if let Err(e) = saved {
            run.finished.pop();
            return Err(e.into());
        }
        let current = match next {
            Some(spec) => {
                let policy = stage_policy(self.policy, &run.spec, spec.stage);
                Some(StageManager::open(spec, self.store.clone(), policy, Instant::now()).await?)
            }
            None => None,
        };
        let run = &mut self.runs[i];
        run.record = record;
        run.current = current;
        if run.record.phase.is_success() {
            tracing::info!(run = %run.id, phase = run.record.phase.name(),
                note = %run.record.error, "run ended");
            run.publish();
            self.sweep(i);
        }
        Ok(())
    }

    /// Deletes unreferenced files from run `i`'s finished stages (once per opening), in a
    /// job beside the loop.
    pub(super) fn sweep(&mut self, i: usize) {
        let run = &self.runs[i];
        if run.swept {
            return;
        }
        let last = match run.record.phase {
            RunPhase::Running => run.record.stage,
            _ => run.record.stage + 1,
        };
        let job = sweep(
            self.store.clone(),
            run.id.clone(),
            run.spec.output.clone(),
            last,
        );
        let id = run.id.clone();
        self.spawn(id, job);
        self.runs[i].swept = true;
    }
}

/// A job beside the event loop that ended, with what it reported (see
/// [`RunManager::next_job`]).
pub struct JobDone {
    task: tokio::task::Id,
    job: Result<Job, tokio::task::JoinError>,
}
