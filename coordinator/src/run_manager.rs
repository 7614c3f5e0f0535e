//! The coordinator's runs: each is an ordered list of stages, one open at a time. A stage is
//! planned from its input's Parquet footers (stage 0 from the run's input, stage k from the
//! files stage k-1 committed), run through a [`StageManager`], and when every task is
//! committed or quarantined its summary is recorded, the files no commit references are
//! deleted, and the next stage is planned.
//!
//! Durable records, under `runs/<run>/`:
//! - `spec`: the run spec (JSON), written once;
//! - `stages/<k>/plan`: the stage's tasks, written once, before the stage is opened;
//! - `record`: phase, error and current stage, rewritten as the run moves;
//! - `stages/<k>/summary`: a finished stage's counts;
//! - and the stage manager's own commit, quarantine and token records.
//!
//! [`RunManager::open`] rebuilds everything from these records, so a coordinator that
//! restarts (or a standby that takes over) resumes every run at its last commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use automaldesc_common::ids::{LeaseRef, RunId, WorkerId};
use automaldesc_common::parquet_io::{file_layout, nonempty_dataset_layout};
use automaldesc_common::store::open_store;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lease_manager::{FailOutcome, LeasePolicy, Refusal, StageCounts};
use crate::planner::{plan, plan_single, InputFile, PlanOptions, TaskPlan};
use crate::run_spec::{RunSpec, SpecError, StageInput};
use crate::stage_manager::{
    read_commits, Assignment, Completion, OutputRecord, StageError, StageManager, StageSpec,
    StageTotals, Trouble,
};
use crate::state::{Expect, StateError, StateStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPhase {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// The durable record of a run's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub phase: RunPhase,
    pub error: String,
    pub submitted_ms: u64,
    /// The stage open now (or the last one, once the run ended).
    pub stage: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePlan {
    pub input_root: String,
    pub tasks: Vec<TaskPlan>,
    /// The executor's config with its refs resolved (absent in plans recorded before refs
    /// existed: the spec's config stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_json: Option<String>,
}

/// A stage's progress; durable once the stage finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSummary {
    pub index: u32,
    pub kind: String,
    pub counts: StageCounts,
    pub totals: StageTotals,
    /// Files of refused or abandoned attempts deleted when the stage finished.
    pub garbage_files_deleted: u64,
    /// When the stage finished (ms since the epoch; 0 while open). Stages run one after
    /// another, so a stage ran from its predecessor's end (the run's submission for the
    /// first) to this.
    #[serde(default)]
    pub finished_ms: u64,
    /// Tasks retried or quarantined and scripts quarantined, with their errors (the first
    /// [`crate::stage_manager::TROUBLES_LISTED`]).
    #[serde(default)]
    pub troubles: Vec<Trouble>,
}

/// A run as reported to operators (and, as JSON, by `/api/runs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunStatus {
    pub id: RunId,
    pub phase: RunPhase,
    pub error: String,
    /// Finished stages, then the open one.
    pub stages: Vec<StageSummary>,
    pub stages_total: u32,
    /// When the run was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// Where the stages write (the spec's `output`).
    pub output: String,
    /// Every stage's name from the spec, by index ("" where the spec names none).
    pub stage_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{context}: {source}")]
    Data {
        context: String,
        source: automaldesc_common::Error,
    },
    #[error("no run {0}")]
    NotFound(RunId),
    #[error("run {0} exists with a different spec")]
    Exists(RunId),
    #[error("invalid run id {0:?}: 1 to 64 characters of a-z, 0-9, '-', '_' and '.'")]
    BadId(String),
}

impl From<StateError> for RunError {
    fn from(e: StateError) -> Self {
        RunError::Stage(StageError::State(e))
    }
}

impl RunError {
    /// Errors worth retrying later (the state store or object storage is unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Stage(StageError::State(StateError::Unavailable(_))) => true,
            RunError::Data { source, .. } => {
                matches!(source, automaldesc_common::Error::Storage(_))
            }
            _ => false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            RunError::Stage(StageError::State(StateError::Fenced(_)))
        )
    }
}

fn data(context: impl Into<String>) -> impl FnOnce(automaldesc_common::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Data { context, source }
}

struct Run {
    id: RunId,
    spec: RunSpec,
    record: RunRecord,
    finished: Vec<StageSummary>,
    current: Option<StageManager>,
    watch: watch::Sender<RunStatus>,
}

impl Run {
    fn status(&self) -> RunStatus {
        let mut stages = self.finished.clone();
        if let Some(m) = &self.current {
            stages.push(StageSummary {
                index: m.spec().stage,
                kind: m.spec().kind.clone(),
                counts: m.counts(),
                totals: m.totals(),
                garbage_files_deleted: 0,
                finished_ms: 0,
                troubles: m.troubles(),
            });
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
}

fn run_key(run: &RunId, leaf: &str) -> String {
    format!("runs/{run}/{leaf}")
}

fn stage_key(run: &RunId, stage: u32, leaf: &str) -> String {
    format!("runs/{run}/stages/{stage:03}/{leaf}")
}

/// Where stage `k` of a run writes, under the run's output location.
pub fn stage_output_url(output: &str, run: &RunId, stage: u32) -> String {
    format!(
        "{}/runs/{run}/stage-{stage:03}",
        output.trim_end_matches('/')
    )
}

fn check_id(id: &str) -> Result<(), RunError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RunError::BadId(id.to_string()))
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // The records are plain structs of strings and numbers: encoding cannot fail.
    serde_json::to_vec(v).expect("run records encode as JSON")
}

fn from_json<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RunError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RunError::Stage(StageError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    })
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

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct RunManager {
    store: Arc<dyn StateStore>,
    policy: LeasePolicy,
    runs: Vec<Run>,
    draining: bool,
}

impl RunManager {
    /// Rebuilds every run from the durable records and resumes the running ones.
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
            runs.push(Self::load_run(store.clone(), policy, id, spec, record).await?);
        }
        runs.sort_by_key(|r| (r.record.submitted_ms, r.id.clone()));
        let mut me = Self {
            store,
            policy,
            runs,
            draining: false,
        };
        for i in 0..me.runs.len() {
            me.advance_or_log(i).await?;
        }
        Ok(me)
    }

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
        };
        run.watch = watch::channel(run.status()).0;
        Ok(run)
    }

    fn index(&self, id: &RunId) -> Result<usize, RunError> {
        self.runs
            .iter()
            .position(|r| r.id == *id)
            .ok_or_else(|| RunError::NotFound(id.clone()))
    }

    /// Starts a run. Submitting the same id with the same spec again is harmless (it
    /// returns the run as it is); the same id with another spec is refused.
    pub async fn submit(
        &mut self,
        id: Option<RunId>,
        spec: RunSpec,
    ) -> Result<RunStatus, RunError> {
        spec.validate()?;
        let id = match id {
            Some(id) => {
                check_id(&id.0)?;
                id
            }
            None => self.fresh_id().await?,
        };
        let spec_key = run_key(&id, "spec");
        match self
            .store
            .put(&spec_key, to_json(&spec), Expect::Absent)
            .await
        {
            Ok(_) => {}
            Err(StateError::Conflict { .. }) => {
                let stored = self.store.get(&spec_key).await?;
                let same = stored.is_some_and(|v| {
                    serde_json::from_slice::<RunSpec>(&v.value).ok().as_ref() == Some(&spec)
                });
                if !same {
                    return Err(RunError::Exists(id));
                }
                if let Ok(i) = self.index(&id) {
                    return Ok(self.runs[i].status());
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.plan_stage(&id, &spec, 0).await?;
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
        let run = Self::load_run(self.store.clone(), self.policy, id.clone(), spec, record).await?;
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

    /// Plans stage `k` (once: a plan already recorded is reused) and returns it. The plan
    /// also fixes the executor's config, with the stage's refs resolved to committed files.
    async fn plan_stage(&self, id: &RunId, spec: &RunSpec, k: u32) -> Result<StagePlan, RunError> {
        let key = stage_key(id, k, "plan");
        if let Some(v) = self.store.get(&key).await? {
            return from_json(&key, &v.value);
        }
        let stage = &spec.stages[k as usize];
        let source = match stage.input() {
            StageInput::Previous if k == 0 => StageInput::Url(spec.input.clone()),
            StageInput::Previous => StageInput::Stage(k - 1),
            other => other,
        };
        let (input_root, layouts) = match source {
            StageInput::Url(url) => {
                let layouts = nonempty_dataset_layout(&url)
                    .await
                    .map_err(data(format!("input of stage {k}: {url}")))?;
                (url, layouts)
            }
            StageInput::Stage(n) => {
                let (store, _) = open_store(&spec.output)
                    .map_err(data(format!("run output {}", spec.output)))?;
                let mut layouts = Vec::new();
                for out in self.committed_outputs(id, n).await? {
                    if !out.path.ends_with(".parquet") {
                        continue;
                    }
                    let path = Path::from(out.path.as_str());
                    let layout = file_layout(store.clone(), &path)
                        .await
                        .map_err(data(format!("output of stage {n}")))?;
                    layouts.push(layout);
                }
                (spec.output.clone(), layouts)
            }
            StageInput::Previous => unreachable!("resolved above"),
        };
        let files: Vec<InputFile> = layouts.iter().map(InputFile::from).collect();
        let tasks = if stage.single_task {
            plan_single(&files)
        } else {
            plan(
                &files,
                PlanOptions {
                    target_bytes: spec.task_bytes,
                },
            )
        };
        let mut config = stage.config.clone();
        if !stage.refs.is_empty() {
            let mut refs = serde_json::Map::new();
            for (name, &n) in &stage.refs {
                let files: Vec<String> = self
                    .committed_outputs(id, n)
                    .await?
                    .into_iter()
                    .map(|o| o.path)
                    .collect();
                refs.insert(
                    name.clone(),
                    serde_json::json!({ "root": spec.output, "stage": n, "files": files }),
                );
            }
            config["refs"] = serde_json::Value::Object(refs);
        }
        let plan = StagePlan {
            input_root,
            tasks,
            config_json: Some(config.to_string()),
        };
        match self.store.put(&key, to_json(&plan), Expect::Absent).await {
            Ok(_) => Ok(plan),
            // Planned concurrently by a previous leader: its plan stands.
            Err(StateError::Conflict { .. }) => match self.store.get(&key).await? {
                Some(v) => from_json(&key, &v.value),
                None => Ok(plan),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The files stage `n` of run `id` committed, in task order.
    async fn committed_outputs(&self, id: &RunId, n: u32) -> Result<Vec<OutputRecord>, RunError> {
        let commits = read_commits(self.store.as_ref(), id, n)
            .await
            .map_err(RunError::Stage)?;
        Ok(commits.into_iter().flat_map(|(_, c)| c.outputs).collect())
    }

    /// Moves run `i` past every finished stage. Errors that may pass are logged and left
    /// for the next tick; any other error fails the run (a lost leadership is returned).
    async fn advance_or_log(&mut self, i: usize) -> Result<(), RunError> {
        match self.advance(i).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_fenced() => Err(e),
            Err(e) if e.is_transient() => {
                tracing::warn!(run = %self.runs[i].id, error = %e, "cannot advance the run now; retrying");
                Ok(())
            }
            Err(e) => {
                tracing::error!(run = %self.runs[i].id, error = %e, "run failed");
                let run = &mut self.runs[i];
                run.record.phase = RunPhase::Failed;
                run.record.error = e.to_string();
                run.current = None;
                let key = run_key(&run.id, "record");
                self.store
                    .put(&key, to_json(&run.record), Expect::Any)
                    .await?;
                self.runs[i].publish();
                Ok(())
            }
        }
    }

    async fn advance(&mut self, i: usize) -> Result<(), RunError> {
        loop {
            let run = &self.runs[i];
            let Some(stage) = run.current.as_ref().filter(|_| run.is_active()) else {
                run.publish();
                return Ok(());
            };
            if !stage.is_finished() {
                run.publish();
                return Ok(());
            }
            let k = stage.spec().stage;
            let garbage = collect_garbage(&run.spec.output, &run.id, stage).await;
            let summary = StageSummary {
                index: k,
                kind: stage.spec().kind.clone(),
                counts: stage.counts(),
                totals: stage.totals(),
                garbage_files_deleted: garbage,
                finished_ms: now_ms(),
                troubles: stage.troubles(),
            };
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
            let next = if (k as usize) + 1 < run.spec.stages.len() {
                let plan = self.plan_stage(&run.id, &run.spec, k + 1).await?;
                record.stage = k + 1;
                Some(stage_spec(&run.id, &run.spec, k + 1, plan))
            } else {
                record.phase = RunPhase::Succeeded;
                None
            };
            self.store
                .put(&run_key(&run.id, "record"), to_json(&record), Expect::Any)
                .await?;
            let current = match next {
                Some(spec) => {
                    let policy = stage_policy(self.policy, &run.spec, spec.stage);
                    Some(
                        StageManager::open(spec, self.store.clone(), policy, Instant::now())
                            .await?,
                    )
                }
                None => None,
            };
            let run = &mut self.runs[i];
            run.record = record;
            run.finished.push(summary);
            run.current = current;
            if run.record.phase == RunPhase::Succeeded {
                tracing::info!(run = %run.id, "run succeeded");
            }
        }
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
        for run in self
            .runs
            .iter_mut()
            .filter(|r| r.record.phase == RunPhase::Running)
        {
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
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        };
        let outcome = stage.complete(worker, lease, done, now).await?;
        self.advance_or_log(i).await?;
        Ok(outcome)
    }

    /// A failed attempt; or, with `released`, a task given back unfinished.
    pub async fn fail(
        &mut self,
        lease: &LeaseRef,
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
            stage.fail(lease, error, now).await?.map(Some)
        };
        self.advance_or_log(i).await?;
        Ok(outcome)
    }

    /// Expires silent leases and moves finished stages on.
    pub async fn tick(&mut self, now: Instant) -> Result<(), RunError> {
        for i in 0..self.runs.len() {
            if let Some(stage) = self.runs[i].current.as_mut() {
                if let Err(e) = stage.tick(now).await {
                    let e = RunError::from(e);
                    if e.is_fenced() {
                        return Err(e);
                    }
                    tracing::warn!(run = %self.runs[i].id, error = %e, "expiring leases failed; retrying");
                }
            }
            self.advance_or_log(i).await?;
        }
        Ok(())
    }

    pub async fn cancel(&mut self, id: &RunId) -> Result<RunStatus, RunError> {
        let i = self.index(id)?;
        let run = &mut self.runs[i];
        if run.record.phase == RunPhase::Running {
            let mut record = run.record.clone();
            record.phase = RunPhase::Cancelled;
            self.store
                .put(&run_key(id, "record"), to_json(&record), Expect::Any)
                .await?;
            run.record = record;
            run.current = None;
            tracing::info!(run = %id, "run cancelled");
            run.publish();
        }
        Ok(run.status())
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

fn placeholder_status() -> RunStatus {
    RunStatus {
        id: RunId(String::new()),
        phase: RunPhase::Running,
        error: String::new(),
        stages: Vec::new(),
        stages_total: 0,
        submitted_ms: 0,
        output: String::new(),
        stage_names: Vec::new(),
    }
}

/// The lease policy of stage `k`: a single-task stage (training, aggregation, a report) is
/// never speculated, since a twin would redo the whole stage; a dead worker's lease still
/// expires and the task is retried.
fn stage_policy(policy: LeasePolicy, spec: &RunSpec, k: u32) -> LeasePolicy {
    if spec.stages[k as usize].single_task {
        LeasePolicy {
            speculate_after: None,
            ..policy
        }
    } else {
        policy
    }
}

fn stage_spec(id: &RunId, spec: &RunSpec, k: u32, plan: StagePlan) -> StageSpec {
    let stage = &spec.stages[k as usize];
    StageSpec {
        run: id.clone(),
        stage: k,
        kind: stage.kind.clone(),
        input_root: plan.input_root,
        output_root: spec.output.clone(),
        config_json: plan.config_json.unwrap_or_else(|| stage.config.to_string()),
        tasks: plan.tasks,
    }
}

/// Deletes the files under a finished stage's output that no commit references: outputs
/// of refused, abandoned and failed attempts. Returns how many; failures are logged, since
/// garbage left behind costs space, not correctness.
async fn collect_garbage(output: &str, run: &RunId, stage: &StageManager) -> u64 {
    let k = stage.spec().stage;
    let result: Result<u64, String> = async {
        let keep: BTreeSet<String> = stage
            .commits()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .flat_map(|(_, c)| c.outputs.into_iter().map(|o| o.path))
            .collect();
        let (store, prefix) =
            open_store(&stage_output_url(output, run, k)).map_err(|e| e.to_string())?;
        let all: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut deleted = 0;
        for meta in all {
            if !keep.contains(meta.location.as_ref()) {
                store
                    .delete(&meta.location)
                    .await
                    .map_err(|e| e.to_string())?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
    .await;
    result.unwrap_or_else(|e| {
        tracing::warn!(run = %run, stage = k, error = %e, "collecting unreferenced files failed");
        0
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::run_spec::StageConfig;

    #[test]
    fn single_task_stages_are_never_speculated() {
        let policy = LeasePolicy {
            speculate_after: Some(Duration::from_secs(300)),
            ..LeasePolicy::default()
        };
        let spec = RunSpec {
            input: "a".into(),
            output: "b".into(),
            task_bytes: 1,
            stages: vec![
                StageConfig::new("generate", serde_json::json!({})),
                StageConfig {
                    single_task: true,
                    ..StageConfig::new("train", serde_json::json!({}))
                },
            ],
        };
        assert_eq!(stage_policy(policy, &spec, 0), policy);
        let single = stage_policy(policy, &spec, 1);
        assert_eq!(single.speculate_after, None);
        assert_eq!(single.ttl, policy.ttl);
        assert_eq!(single.max_attempts, policy.max_attempts);
    }
}
