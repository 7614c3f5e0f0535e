//! One stage of a run, owned by one event loop: its plan, its lease book, and the commit of
//! each task's output into the durable state, exactly once.
//!
//! A worker writes under a prefix unique to its attempt (the fencing token is part of it).
//! `complete` accepts the attempt only if its lease is live, then records the task's commit
//! with a create-if-absent write, so even across a coordinator restart the first commit wins
//! and a second is refused. Files of refused or abandoned attempts are referenced by no
//! commit record; a collector can delete them. Tokens are reserved durably in blocks
//! before they are handed out, and a restarted coordinator starts above the reservation,
//! so no token is ever issued twice.

use std::sync::Arc;

use automaldesc_common::ids::{LeaseRef, RunId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::lease_manager::{FailOutcome, LeaseBook, LeasePolicy, Refusal, StageCounts};
use crate::planner::{RowGroupRange, TaskPlan};
use crate::state::{Expect, StateError, StateStore};

/// What a stage runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSpec {
    pub run: RunId,
    pub stage: u32,
    /// The executor: "echo", "generate", ...
    pub kind: String,
    /// Object-store URL the plan's file paths are relative to.
    pub input_root: String,
    /// Object-store URL under which attempts write.
    pub output_root: String,
    pub config_json: String,
    pub tasks: Vec<TaskPlan>,
}

/// A task handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub lease: LeaseRef,
    pub attempt: u32,
    pub kind: String,
    pub input_root: String,
    pub input: Vec<RowGroupRange>,
    pub output_prefix: String,
    pub config_json: String,
}

/// One output file of an attempt, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// What a worker reports for a finished attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub rows_in: u64,
    pub outputs: Vec<OutputRecord>,
    /// Input scripts the executor could not process: (sha256, reason).
    pub quarantined: Vec<(String, String)>,
    /// Decode tokens the attempt generated.
    pub tokens: u64,
}

/// The durable record of a committed task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub token: u64,
    pub worker: String,
    pub rows_in: u64,
    pub outputs: Vec<OutputRecord>,
    /// Input scripts the executor could not process: (sha256, reason).
    pub quarantined: Vec<(String, String)>,
    /// Decode tokens the attempt generated (absent in records written before it was kept).
    #[serde(default)]
    pub tokens: u64,
}

/// A task or script in trouble, for operators: retried, or quarantined, with the error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trouble {
    pub task: u32,
    /// The script, when one script of a committed task was quarantined alone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Attempts so far (0 for a single script).
    pub attempts: u32,
    /// "retrying", "quarantined" (the whole task) or "script quarantined".
    pub state: String,
    pub error: String,
}

/// At most this many troubles are listed per stage (the counts stay exact).
pub const TROUBLES_LISTED: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("corrupt state record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Running totals of a stage, for progress reports. The script counts are rebuilt from the
/// commit records on open; the attempt counters count since this coordinator opened it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTotals {
    /// Input scripts of all planned tasks.
    pub scripts_total: u64,
    /// Input scripts of committed tasks.
    pub scripts_done: u64,
    /// Rows the committed tasks wrote.
    pub rows_out: u64,
    /// Single scripts quarantined inside committed tasks.
    pub scripts_quarantined: u64,
    /// Input scripts of quarantined tasks.
    pub scripts_in_quarantined_tasks: u64,
    pub completions_refused: u32,
    pub leases_expired: u32,
    pub attempts_failed: u32,
    /// Decode tokens of committed tasks.
    #[serde(default)]
    pub tokens: u64,
}

pub struct StageManager {
    spec: StageSpec,
    book: LeaseBook,
    store: Arc<dyn StateStore>,
    totals: StageTotals,
    /// Tokens up to this one are durably reserved (and may have been issued).
    tokens_reserved: u64,
    /// Scripts quarantined inside committed tasks, the first [`TROUBLES_LISTED`].
    scripts_quarantined: Vec<Trouble>,
}

/// Tokens reserved per durable write.
const TOKEN_BLOCK: u64 = 1000;

impl StageManager {
    fn prefix(spec: &StageSpec) -> String {
        format!("runs/{}/stages/{:03}", spec.run, spec.stage)
    }

    fn tokens_key(&self) -> String {
        format!("{}/token-high-water", Self::prefix(&self.spec))
    }

    fn commit_key(&self, task: TaskId) -> String {
        format!("{}/committed/{:05}", Self::prefix(&self.spec), task.0)
    }

    fn quarantine_key(&self, task: TaskId) -> String {
        format!("{}/quarantined/{:05}", Self::prefix(&self.spec), task.0)
    }

    /// Opens the stage, rebuilding its state from the durable records: committed and
    /// quarantined tasks stay so; every other task is queued again.
    pub async fn open(
        spec: StageSpec,
        store: Arc<dyn StateStore>,
        policy: LeasePolicy,
        now: Instant,
    ) -> Result<Self, StageError> {
        let prefix = Self::prefix(&spec);
        let floor = match store.get(&format!("{prefix}/token-high-water")).await? {
            Some(v) => parse_u64(&format!("{prefix}/token-high-water"), &v.value)?,
            None => 0,
        };
        let mut book = LeaseBook::new(spec.tasks.len() as u32, policy, floor, now);
        let mut scripts_quarantined = Vec::new();
        let mut totals = StageTotals {
            scripts_total: spec.tasks.iter().map(|t| t.rows).sum(),
            ..StageTotals::default()
        };
        for (key, v) in store.list(&format!("{prefix}/committed/")).await? {
            let record: CommitRecord =
                serde_json::from_slice(&v.value).map_err(|e| StageError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            let task = task_of(&key)?;
            book.mark_done(task, record.token);
            totals.add_commit(&record);
            note_scripts(&mut scripts_quarantined, task, &record);
        }
        for (key, v) in store.list(&format!("{prefix}/quarantined/")).await? {
            let error = String::from_utf8_lossy(&v.value).into_owned();
            let task = task_of(&key)?;
            book.mark_quarantined(task, error);
            totals.scripts_in_quarantined_tasks +=
                spec.tasks.get(task.0 as usize).map_or(0, |t| t.rows);
        }
        Ok(Self {
            spec,
            book,
            store,
            totals,
            tokens_reserved: floor,
            scripts_quarantined,
        })
    }

    pub fn totals(&self) -> StageTotals {
        self.totals
    }

    /// Tasks retried or quarantined, then scripts quarantined alone, with their errors (at
    /// most [`TROUBLES_LISTED`]).
    pub fn troubles(&self) -> Vec<Trouble> {
        let mut out: Vec<Trouble> = self
            .book
            .troubled()
            .into_iter()
            .map(|(task, attempts, quarantined, error)| Trouble {
                task: task.0,
                sha256: String::new(),
                attempts,
                state: if quarantined {
                    "quarantined"
                } else {
                    "retrying"
                }
                .into(),
                error,
            })
            .collect();
        out.extend(self.scripts_quarantined.iter().cloned());
        out.truncate(TROUBLES_LISTED);
        out
    }

    /// Every commit record of the stage, by task.
    pub async fn commits(&self) -> Result<Vec<(TaskId, CommitRecord)>, StageError> {
        read_commits(self.store.as_ref(), &self.spec.run, self.spec.stage).await
    }

    /// Every quarantined task of the stage with its last error.
    pub async fn quarantined(&self) -> Result<Vec<(TaskId, String)>, StageError> {
        let prefix = Self::prefix(&self.spec);
        let mut out = Vec::new();
        for (key, v) in self.store.list(&format!("{prefix}/quarantined/")).await? {
            out.push((
                task_of(&key)?,
                String::from_utf8_lossy(&v.value).into_owned(),
            ));
        }
        Ok(out)
    }

    pub fn spec(&self) -> &StageSpec {
        &self.spec
    }

    pub fn counts(&self) -> StageCounts {
        self.book.counts()
    }

    pub fn is_finished(&self) -> bool {
        self.book.is_finished()
    }

    /// The next task for `worker`, if any; its token is durable before it is returned.
    pub async fn acquire(
        &mut self,
        worker: &WorkerId,
        now: Instant,
    ) -> Result<Option<Assignment>, StageError> {
        let Some(grant) = self.book.acquire(worker, now) else {
            return Ok(None);
        };
        if grant.token > self.tokens_reserved {
            // Reserve a block of tokens at once, so most leases cost no durable write.
            let reserve = grant.token + TOKEN_BLOCK;
            let high = reserve.to_string().into_bytes();
            if let Err(e) = self.store.put(&self.tokens_key(), high, Expect::Any).await {
                // The worker never hears of this lease: take it back without counting it.
                let _ = self.book.release(grant.task, grant.token, now);
                return Err(e.into());
            }
            self.tokens_reserved = reserve;
        }
        let plan = &self.spec.tasks[grant.task.0 as usize];
        let s = &self.spec;
        Ok(Some(Assignment {
            lease: LeaseRef {
                run: s.run.clone(),
                stage: s.stage,
                task: grant.task,
                token: grant.token,
            },
            attempt: grant.attempt,
            kind: s.kind.clone(),
            input_root: s.input_root.clone(),
            input: plan.ranges.clone(),
            output_prefix: format!(
                "{}/runs/{}/stage-{:03}/task-{:05}/attempt-{}",
                s.output_root.trim_end_matches('/'),
                s.run,
                s.stage,
                grant.task.0,
                grant.token
            ),
            config_json: s.config_json.clone(),
        }))
    }

    /// Renews `worker`'s leases; returns the reported leases it no longer holds.
    pub fn heartbeat(
        &mut self,
        worker: &WorkerId,
        held: &[LeaseRef],
        now: Instant,
    ) -> Vec<LeaseRef> {
        self.book.heartbeat(worker, now);
        held.iter()
            .filter(|l| !self.owns(l) || !self.book.is_live(l.task, l.token, now))
            .cloned()
            .collect()
    }

    fn owns(&self, lease: &LeaseRef) -> bool {
        lease.run == self.spec.run && lease.stage == self.spec.stage
    }

    /// Commits an attempt's output if its lease is live and no other attempt committed
    /// first. `Ok(Err(_))` is a refusal the worker is told about.
    pub async fn complete(
        &mut self,
        worker: &WorkerId,
        lease: &LeaseRef,
        done: Completion,
        now: Instant,
    ) -> Result<Result<(), Refusal>, StageError> {
        if !self.owns(lease) || !self.book.is_live(lease.task, lease.token, now) {
            self.totals.completions_refused += 1;
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        }
        let record = CommitRecord {
            token: lease.token,
            worker: worker.0.clone(),
            rows_in: done.rows_in,
            outputs: done.outputs,
            quarantined: done.quarantined,
            tokens: done.tokens,
        };
        let json = serde_json::to_vec(&record).map_err(|e| StageError::Corrupt {
            key: self.commit_key(lease.task),
            reason: e.to_string(),
        })?;
        match self
            .store
            .put(&self.commit_key(lease.task), json, Expect::Absent)
            .await
        {
            Ok(_) => {
                self.totals.add_commit(&record);
                note_scripts(&mut self.scripts_quarantined, lease.task, &record);
                Ok(self.book.complete(lease.task, lease.token, now))
            }
            Err(StateError::Conflict { .. }) => {
                // Another attempt committed first (before a restart of this coordinator).
                let winner = self.committed(lease.task).await?.map_or(0, |r| r.token);
                self.book.mark_done(lease.task, winner);
                self.totals.completions_refused += 1;
                Ok(Err(Refusal::StaleLease(lease.task, lease.token)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a failed attempt; a task out of attempts is quarantined durably.
    pub async fn fail(
        &mut self,
        lease: &LeaseRef,
        error: &str,
        now: Instant,
    ) -> Result<Result<FailOutcome, Refusal>, StageError> {
        if !self.owns(lease) {
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        }
        let outcome = match self.book.fail(lease.task, lease.token, error, now) {
            Ok(o) => o,
            Err(r) => return Ok(Err(r)),
        };
        self.totals.attempts_failed += 1;
        if outcome == FailOutcome::Quarantined {
            self.persist_quarantine(lease.task).await?;
        }
        Ok(Ok(outcome))
    }

    /// Gives a task back unfinished (its worker is shutting down): queued again at once, the
    /// attempt not counted.
    pub fn release(&mut self, lease: &LeaseRef, now: Instant) -> Result<(), Refusal> {
        if !self.owns(lease) {
            return Err(Refusal::StaleLease(lease.task, lease.token));
        }
        self.book.release(lease.task, lease.token, now)
    }

    /// Expires silent leases; returns the expired (task, token) pairs.
    pub async fn tick(&mut self, now: Instant) -> Result<Vec<(TaskId, u64)>, StageError> {
        let expired = self.book.expire(now);
        self.totals.leases_expired += expired.len() as u32;
        for &(task, _) in &expired {
            if matches!(
                self.book.state(task),
                Some(crate::lease_manager::TaskState::Quarantined { .. })
            ) {
                self.persist_quarantine(task).await?;
            }
        }
        Ok(expired)
    }

    async fn persist_quarantine(&mut self, task: TaskId) -> Result<(), StageError> {
        self.totals.scripts_in_quarantined_tasks +=
            self.spec.tasks.get(task.0 as usize).map_or(0, |t| t.rows);
        let error = self
            .book
            .last_error(task)
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        self.store
            .put(&self.quarantine_key(task), error, Expect::Any)
            .await?;
        tracing::warn!(run = %self.spec.run, stage = self.spec.stage, task = %task, "task quarantined");
        Ok(())
    }

    /// The commit record of `task`, if it was committed.
    pub async fn committed(&self, task: TaskId) -> Result<Option<CommitRecord>, StageError> {
        let key = self.commit_key(task);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(&v.value)
                    .map(Some)
                    .map_err(|e| StageError::Corrupt {
                        key,
                        reason: e.to_string(),
                    })
            }
        }
    }
}

/// Every commit record of stage `stage` of `run`, by task.
pub async fn read_commits(
    store: &dyn StateStore,
    run: &RunId,
    stage: u32,
) -> Result<Vec<(TaskId, CommitRecord)>, StageError> {
    let prefix = format!("runs/{run}/stages/{stage:03}/committed/");
    let mut out = Vec::new();
    for (key, v) in store.list(&prefix).await? {
        let record = serde_json::from_slice(&v.value).map_err(|e| StageError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        out.push((task_of(&key)?, record));
    }
    Ok(out)
}

/// Lists the scripts a committed task quarantined alone, up to [`TROUBLES_LISTED`].
fn note_scripts(list: &mut Vec<Trouble>, task: TaskId, r: &CommitRecord) {
    let room = TROUBLES_LISTED.saturating_sub(list.len());
    list.extend(
        r.quarantined
            .iter()
            .take(room)
            .map(|(sha256, reason)| Trouble {
                task: task.0,
                sha256: sha256.clone(),
                attempts: 0,
                state: "script quarantined".into(),
                error: reason.clone(),
            }),
    );
}

impl StageTotals {
    fn add_commit(&mut self, r: &CommitRecord) {
        self.tokens += r.tokens;
        self.scripts_done += r.rows_in;
        self.rows_out += r.outputs.iter().map(|o| o.rows).sum::<u64>();
        self.scripts_quarantined += r.quarantined.len() as u64;
    }
}

fn parse_u64(key: &str, bytes: &[u8]) -> Result<u64, StageError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StageError::Corrupt {
            key: key.to_string(),
            reason: "not a number".into(),
        })
}

fn task_of(key: &str) -> Result<TaskId, StageError> {
    key.rsplit('/')
        .next()
        .and_then(|t| t.parse().ok())
        .map(TaskId)
        .ok_or_else(|| StageError::Corrupt {
            key: key.to_string(),
            reason: "no task number".into(),
        })
}
