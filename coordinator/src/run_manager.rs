//! The coordinator's runs: each is an ordered list of stages, one open at a time. A stage is
//! planned from its input's Parquet footers (stage 0 from the run's input, stage k from the
//! files stage k-1 committed), run through a [`StageManager`], and when every task is
//! committed or quarantined, a job beside the event loop writes its committed-file list,
//! deletes the files no commit references and plans the next stage (see [`background`]);
//! the loop then records the stage's summary and opens the next one. The loop itself never
//! waits on the object store.
//!
//! Durable records, under `runs/<run>/`:
//! - `spec`: the run spec (JSON), written once the run is accepted;
//! - `stages/<k>/plan`: the stage's tasks, written once, before the stage is opened;
//! - `record`: phase, error and current stage, rewritten as the run moves;
//! - `stages/<k>/summary`: a finished stage's counts;
//! - and the stage manager's own commit, quarantine and token records.
//!
//! [`RunManager::open`] rebuilds everything from these records, so a coordinator that
//! restarts (or a standby that takes over) resumes every run at its last commit.
//!
//! How a run ends: SUCCEEDED when every input script of every stage was committed;
//! SUCCEEDED_WITH_QUARANTINE when some were quarantined, no more than the spec's
//! `max_quarantined_fraction` of any stage; FAILED, with the reason, as soon as a stage
//! quarantines more than that, when transient faults keep it from progressing for longer
//! than `max_stall`, or when its input cannot be planned. A record that cannot be written
//! (the store is down) is kept and written on a later tick.

mod background;
mod leases;
mod planning;
mod records;
mod retry;
mod run;
mod submit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use automaldesc_common::ids::{LeaseRef, RunId, WorkerId};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::lease_manager::{LeasePolicy, Stall};
use crate::stage_manager::{read_commits, OutputRecord, StageError};
use crate::state::{Expect, StateStore};
use automaldesc_common::run_spec::{RunSpec, StageCatalog};

use background::Job;
pub use background::JobDone;
pub use planning::COMMITTED_LIST;
use records::{from_json, run_key, stage_key, to_json};
pub use records::{
    now_ms, stage_output_url, RunError, RunPhase, RunRecord, RunStatus, StagePlan, StageSummary,
};
pub use run::read_run;
use run::{load_run, summary_of, Run};
pub use submit::answer_fenced;

pub struct RunManager {
    store: Arc<dyn StateStore>,
    policy: LeasePolicy,
    runs: Vec<Run>,
    draining: bool,
    /// What the workers can run: submitted specs are checked against it (without one,
    /// only the spec's own rules are).
    catalog: Option<Arc<dyn StageCatalog>>,
    last_tick: Option<Instant>,
    /// The jobs beside the event loop, and the run each works for.
    jobs: JoinSet<Job>,
    job_runs: HashMap<tokio::task::Id, RunId>,
}

impl RunManager {
    /// Rebuilds every run from the durable records and resumes the running ones; files no
    /// commit references are swept from their finished stages.
    pub async fn open(store: Arc<dyn StateStore>, policy: LeasePolicy) -> Result<Self, RunError> {
        let mut runs = Vec::new();
        for (key, v) in store.list("runs/").await? {
            let parts: Vec<&str> = key.split('/').collect();
            if parts.len() != 3 || parts[2] != "record" {
                continue;
            }
            let id = RunId(parts[1].to_string());
            let mut record: RunRecord = from_json(&key, &v.value)?;
            if record.phase == RunPhase::Running {
                // Taken up again: its open stage was paused since the last coordinator went.
                record.resumed_ms.push(now_ms());
                store.put(&key, to_json(&record), Expect::Any).await?;
            }
            let spec_key = run_key(&id, "spec");
            let spec = match store.get(&spec_key).await? {
                Some(v) => from_json(&spec_key, &v.value)?,
                None => {
                    return Err(RunError::Stage(StageError::Corrupt {
                        key: spec_key,
                        reason: "a run record without its spec".into(),
                    }))
                }
            };
            runs.push(load_run(store.clone(), policy, id, spec, record).await?);
        }
        runs.sort_by_key(|r| (r.record.submitted_ms, r.id.clone()));
        let mut me = Self {
            store,
            policy,
            runs,
            draining: false,
            catalog: None,
            last_tick: None,
            jobs: JoinSet::new(),
            job_runs: HashMap::new(),
        };
        for i in 0..me.runs.len() {
            me.sweep(i);
            me.advance_or_log(i).await?;
        }
        Ok(me)
    }

    /// Checks every submitted spec against `catalog` before accepting it.
    pub fn with_catalog(mut self, catalog: Arc<dyn StageCatalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    fn index(&self, id: &RunId) -> Result<usize, RunError> {
        self.runs
            .iter()
            .position(|r| r.id == *id)
            .ok_or_else(|| RunError::NotFound(id.clone()))
    }

    /// Moves run `i` on: fails it when it quarantined too much, and starts wrapping up its
    /// open stage once that is finished. Only a lost leadership is returned.
    async fn advance_or_log(&mut self, i: usize) -> Result<(), RunError> {
        let result = self.advance(i).await;
        self.hold_or_fail(i, result).await
    }

    /// What an error moving run `i` on does: a transient one holds the run (tried again on
    /// the next tick, within `max_stall`), a lost leadership is returned, any other fails
    /// the run.
    async fn hold_or_fail(
        &mut self,
        i: usize,
        result: Result<(), RunError>,
    ) -> Result<(), RunError> {
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_fenced() => Err(e),
            Err(e) if e.is_transient() => {
                let run = &mut self.runs[i];
                tracing::warn!(run = %run.id, error = %e, "cannot advance the run now; retrying");
                let now = Instant::now();
                if let Some(stage) = run.current.as_mut() {
                    stage.blind(now);
                }
                match &mut run.held {
                    Some(held) => held.cause = e.to_string(),
                    None => {
                        run.held = Some(Stall {
                            since: now,
                            cause: e.to_string(),
                        })
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.end(i, RunPhase::Failed, e.to_string());
                self.flush(i).await
            }
        }
    }

    async fn advance(&mut self, i: usize) -> Result<(), RunError> {
        let run = &self.runs[i];
        let Some(stage) = run.current.as_ref().filter(|_| run.is_active()) else {
            run.publish();
            return Ok(());
        };
        if let Some(why) = run.over_quarantine_budget() {
            self.end(i, RunPhase::Failed, why);
            return self.flush(i).await;
        }
        if stage.is_finished() && !run.wrapping_up {
            let job = background::wrap_up(
                self.store.clone(),
                run.id.clone(),
                run.spec.clone(),
                stage.spec().stage,
                stage.spec().kind.clone(),
            );
            let id = run.id.clone();
            self.spawn(id, job);
            self.runs[i].wrapping_up = true;
        }
        self.runs[i].publish();
        Ok(())
    }

    /// Ends run `i` now with `phase` and `error`: its open stage's summary and pending
    /// records are kept to be written, then its record.
    fn end(&mut self, i: usize, phase: RunPhase, error: String) {
        let run = &mut self.runs[i];
        if let Some(stage) = run.current.take() {
            let summary = summary_of(&stage, now_ms(), 0);
            run.unsaved.extend(stage.unwritten_records());
            run.unsaved.push((
                stage_key(&run.id, summary.index, "summary"),
                to_json(&summary),
            ));
            run.finished.push(summary);
        }
        match phase {
            RunPhase::Failed => tracing::error!(run = %run.id, error = %error, "run failed"),
            _ => tracing::info!(run = %run.id, phase = phase.name(), "run ended"),
        }
        run.record.phase = phase;
        run.record.error = error;
        run.unsaved
            .push((run_key(&run.id, "record"), to_json(&run.record)));
        run.swept = false;
        run.publish();
    }

    /// Writes run `i`'s unsaved records in order; what cannot be written now waits for the
    /// next tick. Once an ended run's records are all written, its stages are swept.
    async fn flush(&mut self, i: usize) -> Result<(), RunError> {
        while let Some((key, value)) = self.runs[i].unsaved.first().cloned() {
            if let Err(e) = self.store.put(&key, value, Expect::Any).await {
                let e = RunError::from(e);
                if e.is_fenced() {
                    return Err(e);
                }
                tracing::warn!(run = %self.runs[i].id, key, error = %e, "record not written yet; retrying");
                return Ok(());
            }
            self.runs[i].unsaved.remove(0);
        }
        if self.runs[i].record.phase != RunPhase::Running {
            self.sweep(i);
        }
        Ok(())
    }

    /// Expires silent leases, writes pending records, fails runs stalled for longer than
    /// their `max_stall`, and moves finished stages on. Returns the leases that expired,
    /// with their workers. A tick late by more than half a lease TTL means this coordinator
    /// was held up (its process paused, or its loop waiting on the store): leases are not
    /// expired on that tick, so the workers' queued heartbeats come first, and those that
    /// lapse meanwhile cost no attempt.
    pub async fn tick(&mut self, now: Instant) -> Result<Vec<(WorkerId, LeaseRef)>, RunError> {
        let late = self
            .last_tick
            .map(|t| now.duration_since(t))
            .filter(|gap| *gap > self.policy.ttl / 2);
        self.last_tick = Some(now);
        let mut expired = Vec::new();
        for i in 0..self.runs.len() {
            self.flush(i).await?;
            let run = &mut self.runs[i];
            if let Some(stage) = run.current.as_mut() {
                if let Some(gap) = late {
                    tracing::warn!(run = %run.id, held_up = ?gap,
                        "the coordinator was held up; leases lapsing meanwhile cost no attempt");
                    stage.blind(now);
                    continue;
                }
                match stage.tick(now).await {
                    Ok(x) => expired.extend(x.into_iter().map(|x| {
                        let lease = LeaseRef {
                            run: run.id.clone(),
                            stage: stage.spec().stage,
                            task: x.task,
                            token: x.token,
                        };
                        (x.worker, lease)
                    })),
                    Err(e) => {
                        let e = RunError::from(e);
                        if e.is_fenced() {
                            return Err(e);
                        }
                    }
                }
            }
            self.fail_if_stalled(i, now);
            self.flush(i).await?;
            self.advance_or_log(i).await?;
        }
        Ok(expired)
    }

    /// Fails run `i` when transient faults kept it from progressing for longer than its
    /// `max_stall`.
    fn fail_if_stalled(&mut self, i: usize, now: Instant) {
        let run = &self.runs[i];
        if !run.is_active() {
            return;
        }
        let stall = run.current.as_ref().and_then(|s| s.stall());
        let Some(stall) = stall.or(run.held.as_ref()) else {
            return;
        };
        let max = Duration::from_secs_f64(run.spec.limits.max_stall.max(0.0));
        let stalled = now.duration_since(stall.since);
        if stalled > max {
            let why = format!(
                "no progress for {:.0} s through transient faults (max_stall {} s): {}",
                stalled.as_secs_f64(),
                run.spec.limits.max_stall,
                stall.cause
            );
            self.end(i, RunPhase::Failed, why);
        }
    }

    pub async fn cancel(&mut self, id: &RunId) -> Result<RunStatus, RunError> {
        let i = self.index(id)?;
        if self.runs[i].record.phase == RunPhase::Running {
            self.end(i, RunPhase::Cancelled, String::new());
            self.flush(i).await?;
        }
        Ok(self.runs[i].status())
    }

    /// Stops handing out tasks (the coordinator is shutting down).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn status(&self, id: &RunId) -> Result<RunStatus, RunError> {
        Ok(self.runs[self.index(id)?].status())
    }

    pub fn list(&self) -> Vec<RunStatus> {
        self.runs.iter().map(Run::status).collect()
    }

    pub fn subscribe(&self, id: &RunId) -> Result<watch::Receiver<RunStatus>, RunError> {
        Ok(self.runs[self.index(id)?].watch.subscribe())
    }

    /// A run's status and spec, and the files each of `stages` committed (for `export`).
    pub async fn committed_files(
        &self,
        id: &RunId,
        stages: &[u32],
    ) -> Result<(RunStatus, RunSpec, Vec<(u32, Vec<OutputRecord>)>), RunError> {
        let run = &self.runs[self.index(id)?];
        let mut files = Vec::new();
        for &k in stages {
            let commits = read_commits(self.store.as_ref(), id, k).await?;
            files.push((
                k,
                commits.into_iter().flat_map(|(_, c)| c.outputs).collect(),
            ));
        }
        Ok((run.status(), run.spec.clone(), files))
    }

    /// True when no run is running.
    pub fn idle(&self) -> bool {
        self.runs
            .iter()
            .all(|r| r.record.phase != RunPhase::Running)
    }
}
