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
mod planning;
mod records;
mod retry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use automaldesc_common::fault::FaultKind;
use automaldesc_common::ids::{LeaseRef, RunId, WorkerId};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::lease_manager::{FailOutcome, LeasePolicy, Refusal, Stall};
use crate::run_spec::{RunSpec, StageCatalog};
use crate::stage_manager::{
    read_commits, Assignment, Completion, OutputRecord, StageError, StageManager,
};
use crate::state::{Expect, StateError, StateStore};

use background::Job;
pub use planning::COMMITTED_LIST;
use planning::{record_plan, stage_policy, stage_spec};
use records::{check_id, from_json, placeholder_status, run_key, stage_key, to_json};
pub use records::{
    now_ms, stage_output_url, RunError, RunPhase, RunRecord, RunStatus, StagePlan, StageSummary,
};

struct Run {
    id: RunId,
    spec: RunSpec,
    record: RunRecord,
    finished: Vec<StageSummary>,
    current: Option<StageManager>,
    watch: watch::Sender<RunStatus>,
    /// Records not durable yet (the store was down), written in order on later ticks.
    unsaved: Vec<(String, Vec<u8>)>,
    /// A transient error keeps the run from moving to its next stage: since when, why.
    held: Option<Stall>,
    /// Unreferenced files were swept since this coordinator opened the run.
    swept: bool,
    /// The open stage is finished and a job is wrapping it up.
    wrapping_up: bool,
}

impl Run {
    fn status(&self) -> RunStatus {
        let mut stages = self.finished.clone();
        if let Some(m) = &self.current {
            stages.push(summary_of(m, 0, 0));
        }
        RunStatus {
            id: self.id.clone(),
            phase: self.record.phase,
            error: self.record.error.clone(),
            stages,
            stages_total: self.spec.stages.len() as u32,
            submitted_ms: self.record.submitted_ms,
            output: self.spec.output.clone(),
            stage_names: self
                .spec
                .stages
                .iter()
                .map(|s| s.name.clone().unwrap_or_default())
                .collect(),
        }
    }

    fn publish(&self) {
        let status = self.status();
        self.watch.send_if_modified(|s| {
            let changed = *s != status;
            if changed {
                *s = status;
            }
            changed
        });
    }

    fn is_active(&self) -> bool {
        self.record.phase == RunPhase::Running && self.current.is_some()
    }

    /// Why the run must fail now for what it quarantined, if it must: some stage lost more
    /// than `max_quarantined_fraction` of its input scripts.
    fn over_quarantine_budget(&self) -> Option<String> {
        let max = self.spec.limits.max_quarantined_fraction;
        self.status().stages.iter().find_map(|st| {
            let (lost, total) = (st.scripts_lost(), st.totals.scripts_total);
            (total > 0 && lost as f64 > max * total as f64).then(|| {
                let first = st.troubles.iter().find(|t| t.state != "retrying");
                format!(
                    "stage {} ({}) quarantined {lost} of {total} input scripts, more than \
                     max_quarantined_fraction {max}; first error: {}",
                    st.index,
                    st.kind,
                    first.map_or("", |t| t.error.as_str())
                )
            })
        })
    }

    /// What a run that went through quarantined, for its record; `None` when nothing.
    fn quarantine_note(&self) -> Option<String> {
        let lost: Vec<String> = self
            .finished
            .iter()
            .filter(|st| st.scripts_lost() > 0)
            .map(|st| {
                format!(
                    "stage {} ({}): {} of {} scripts",
                    st.index,
                    st.kind,
                    st.scripts_lost(),
                    st.totals.scripts_total
                )
            })
            .collect();
        (!lost.is_empty()).then(|| format!("quarantined {}", lost.join("; ")))
    }
}

/// A stage's summary as of now (`finished_ms` 0 while it is open).
fn summary_of(m: &StageManager, finished_ms: u64, garbage: u64) -> StageSummary {
    StageSummary {
        index: m.spec().stage,
        kind: m.spec().kind.clone(),
        counts: m.counts(),
        totals: m.totals(),
        garbage_files_deleted: garbage,
        finished_ms,
        troubles: m.troubles(),
    }
}

/// A run's spec and record as stored, read without opening the run (for read-only tools
/// such as `export`); `None` for an unknown run.
pub async fn read_run(
    store: &dyn StateStore,
    id: &RunId,
) -> Result<Option<(RunSpec, RunRecord)>, RunError> {
    let key = run_key(id, "record");
    let Some(v) = store.get(&key).await? else {
        return Ok(None);
    };
    let record: RunRecord = from_json(&key, &v.value)?;
    let spec_key = run_key(id, "spec");
    match store.get(&spec_key).await? {
        Some(v) => Ok(Some((from_json(&spec_key, &v.value)?, record))),
        None => Err(RunError::Stage(StageError::Corrupt {
            key: spec_key,
            reason: "a run record without its spec".into(),
        })),
    }
}

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
            let record: RunRecord = from_json(&key, &v.value)?;
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

    /// Starts a run. Submitting the same id with the same spec again is harmless (it
    /// returns the run as it is); the same id with another spec is refused. Nothing is
    /// recorded before the spec passed its checks and its first stage is planned, so a
    /// refused submission leaves the id free for a corrected one.
    pub async fn submit(
        &mut self,
        id: Option<RunId>,
        spec: RunSpec,
    ) -> Result<RunStatus, RunError> {
        let (id, spec) = match self.admit(id, spec).await? {
            Admission::Known(status) => return Ok(status),
            Admission::New(id, spec) => (id, spec),
        };
        let catalog = self.catalog.clone();
        let plan = background::prepare(self.store.clone(), catalog, id.clone(), spec.clone()).await;
        self.start(id, spec, plan).await
    }

    /// [`RunManager::submit`] with the object-store work (the spec's dataset checks, the
    /// first stage's plan) in a job beside the event loop; the answer goes to `reply` when
    /// the loop applies the job's result. Only a lost leadership is returned.
    pub async fn submit_beside(
        &mut self,
        id: Option<RunId>,
        spec: RunSpec,
        reply: oneshot::Sender<Result<RunStatus, RunError>>,
    ) -> Result<(), RunError> {
        let (id, spec) = match self.admit(id, spec).await {
            Ok(Admission::New(id, spec)) => (id, spec),
            Ok(Admission::Known(status)) => {
                let _ = reply.send(Ok(status));
                return Ok(());
            }
            Err(e) => return answer_fenced(reply, Err(e)),
        };
        let job = background::submission(
            self.store.clone(),
            self.catalog.clone(),
            id.clone(),
            spec,
            reply,
        );
        self.spawn(id, job);
        Ok(())
    }

    /// What a submission is before any object-store work: a run this coordinator has
    /// (the same spec again), a refusal, or a new run to check and plan.
    async fn admit(&mut self, id: Option<RunId>, spec: RunSpec) -> Result<Admission, RunError> {
        spec.validate()?;
        let id = match id {
            Some(id) => {
                check_id(&id.0)?;
                id
            }
            None => self.fresh_id().await?,
        };
        match self.index(&id) {
            Ok(i) if self.runs[i].spec != spec => Err(RunError::Exists(id)),
            Ok(i) => Ok(Admission::Known(self.runs[i].status())),
            Err(_) => Ok(Admission::New(id, spec)),
        }
    }

    /// Records a checked and planned submission (`plan`, or why it was refused) and starts
    /// the run.
    async fn start(
        &mut self,
        id: RunId,
        spec: RunSpec,
        plan: Result<StagePlan, RunError>,
    ) -> Result<RunStatus, RunError> {
        // Another submission of the same id may have started meanwhile.
        if let Admission::Known(status) = self.admit(Some(id.clone()), spec.clone()).await? {
            return Ok(status);
        }
        let plan = plan?;
        let spec_key = run_key(&id, "spec");
        self.store
            .put(&spec_key, to_json(&spec), Expect::Any)
            .await?;
        record_plan(self.store.as_ref(), &id, 0, plan).await?;
        let record = RunRecord {
            phase: RunPhase::Running,
            error: String::new(),
            submitted_ms: now_ms(),
            stage: 0,
        };
        let key = run_key(&id, "record");
        match self.store.put(&key, to_json(&record), Expect::Absent).await {
            Ok(_) | Err(StateError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let record: RunRecord = match self.store.get(&key).await? {
            Some(v) => from_json(&key, &v.value)?,
            None => record,
        };
        let run = load_run(self.store.clone(), self.policy, id.clone(), spec, record).await?;
        tracing::info!(run = %id, stages = run.spec.stages.len(), "run submitted");
        self.runs.push(run);
        let i = self.runs.len() - 1;
        self.advance_or_log(i).await?;
        Ok(self.runs[i].status())
    }

    async fn fresh_id(&self) -> Result<RunId, RunError> {
        let mut ms = now_ms();
        loop {
            let id = RunId(format!("run-{ms}"));
            if self.store.get(&run_key(&id, "spec")).await?.is_none() {
                return Ok(id);
            }
            ms += 1;
        }
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

    fn spawn(&mut self, run: RunId, job: impl std::future::Future<Output = Job> + Send + 'static) {
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

    /// Deletes unreferenced files from run `i`'s finished stages (once per opening), in a
    /// job beside the loop.
    fn sweep(&mut self, i: usize) {
        let run = &self.runs[i];
        if run.swept {
            return;
        }
        let last = match run.record.phase {
            RunPhase::Running => run.record.stage,
            _ => run.record.stage + 1,
        };
        let job = background::sweep(
            self.store.clone(),
            run.id.clone(),
            run.spec.output.clone(),
            last,
        );
        let id = run.id.clone();
        self.spawn(id, job);
        self.runs[i].swept = true;
    }

    /// The next task for `worker` among the running runs, oldest run first; only stages of
    /// `kinds` (all when empty).
    pub async fn acquire(
        &mut self,
        worker: &WorkerId,
        kinds: &[String],
        now: Instant,
    ) -> Result<Option<Assignment>, RunError> {
        if self.draining {
            return Ok(None);
        }
        for run in self.runs.iter_mut().filter(|r| r.is_active()) {
            let Some(stage) = run.current.as_mut() else {
                continue;
            };
            if !kinds.is_empty() && !kinds.contains(&stage.spec().kind) {
                continue;
            }
            if let Some(a) = stage.acquire(worker, now).await? {
                run.publish();
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    fn stage_of(&mut self, lease: &LeaseRef) -> Option<(usize, &mut StageManager)> {
        let i = self.runs.iter().position(|r| r.id == lease.run)?;
        let run = &mut self.runs[i];
        if run.record.phase != RunPhase::Running {
            return None;
        }
        run.current
            .as_mut()
            .filter(|s| s.spec().stage == lease.stage)
            .map(|s| (i, s))
    }

    /// Renews `worker`'s leases everywhere; returns the reported leases it no longer holds.
    pub fn heartbeat(
        &mut self,
        worker: &WorkerId,
        held: &[LeaseRef],
        now: Instant,
    ) -> Vec<LeaseRef> {
        let mut lost = Vec::new();
        for run in &mut self.runs {
            if let Some(stage) = run.current.as_mut() {
                stage.heartbeat(worker, &[], now);
            }
        }
        for lease in held {
            let live = match self.stage_of(lease) {
                Some((_, stage)) => stage
                    .heartbeat(worker, std::slice::from_ref(lease), now)
                    .is_empty(),
                None => false,
            };
            if !live {
                lost.push(lease.clone());
            }
        }
        lost
    }

    pub async fn complete(
        &mut self,
        worker: &WorkerId,
        lease: &LeaseRef,
        done: Completion,
        now: Instant,
    ) -> Result<Result<(), Refusal>, RunError> {
        let Some((i, stage)) = self.stage_of(lease) else {
            tracing::warn!(run = %lease.run, stage = lease.stage, task = %lease.task,
                token = lease.token, worker_id = %worker, "completion refused: no such open stage");
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        };
        let outcome = stage.complete(worker, lease, done, now).await?;
        self.advance_or_log(i).await?;
        Ok(outcome)
    }

    /// A failed attempt, by the kind of its error; or, with `released`, a task given back
    /// unfinished.
    pub async fn fail(
        &mut self,
        worker: &WorkerId,
        lease: &LeaseRef,
        kind: FaultKind,
        error: &str,
        released: bool,
        now: Instant,
    ) -> Result<Result<Option<FailOutcome>, Refusal>, RunError> {
        let Some((i, stage)) = self.stage_of(lease) else {
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        };
        let outcome = if released {
            stage.release(lease, now).map(|()| None)
        } else {
            match stage.fail(worker, lease, kind, error, now).await {
                Ok(o) => o.map(Some),
                Err(e) => {
                    // The attempt is recorded; only its quarantine record waits.
                    let e = RunError::from(e);
                    if e.is_fenced() {
                        return Err(e);
                    }
                    Ok(None)
                }
            }
        };
        self.advance_or_log(i).await?;
        Ok(outcome)
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

/// A job beside the event loop that ended, with what it reported (see
/// [`RunManager::next_job`]).
pub struct JobDone {
    task: tokio::task::Id,
    job: Result<Job, tokio::task::JoinError>,
}

/// See [`RunManager::admit`].
enum Admission {
    Known(RunStatus),
    New(RunId, RunSpec),
}

/// Sends `result` to `reply`; a lost leadership is also returned (the loop must stop).
fn answer_fenced<T>(
    reply: oneshot::Sender<Result<T, RunError>>,
    result: Result<T, RunError>,
) -> Result<(), RunError> {
    let fenced = match &result {
        Err(e) if e.is_fenced() => Some(e.to_string()),
        _ => None,
    };
    let _ = reply.send(result);
    match fenced {
        Some(msg) => Err(RunError::Stage(StageError::State(StateError::Fenced(msg)))),
        None => Ok(()),
    }
}

/// A run from its records: finished stages' summaries, and the open stage (if running).
async fn load_run(
    store: Arc<dyn StateStore>,
    policy: LeasePolicy,
    id: RunId,
    spec: RunSpec,
    record: RunRecord,
) -> Result<Run, RunError> {
    let mut finished = Vec::new();
    for k in 0..record.stage + 1 {
        let key = stage_key(&id, k, "summary");
        if let Some(v) = store.get(&key).await? {
            finished.push(from_json(&key, &v.value)?);
        }
    }
    let current = if record.phase == RunPhase::Running {
        let key = stage_key(&id, record.stage, "plan");
        let plan: StagePlan = match store.get(&key).await? {
            Some(v) => from_json(&key, &v.value)?,
            None => {
                return Err(RunError::Stage(StageError::Corrupt {
                    key,
                    reason: "the open stage has no plan".into(),
                }))
            }
        };
        if finished.last().map(|s: &StageSummary| s.index) == Some(record.stage) {
            finished.pop();
        }
        let policy = stage_policy(policy, &spec, record.stage);
        let spec = stage_spec(&id, &spec, record.stage, plan);
        Some(StageManager::open(spec, store.clone(), policy, Instant::now()).await?)
    } else {
        None
    };
    let mut run = Run {
        id,
        spec,
        record,
        finished,
        current,
        watch: watch::channel(placeholder_status()).0,
        unsaved: Vec::new(),
        held: None,
        swept: false,
        wrapping_up: false,
    };
    run.watch = watch::channel(run.status()).0;
    Ok(run)
}
