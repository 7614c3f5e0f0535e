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
//!
//! A quarantine record that cannot be written now (the store is down) stays pending and is
//! written on a later tick; the stage does not finish before every record is durable, so
//! its summary's counts equal the records. A store that is unavailable also makes the
//! lease book excuse the leases that lapse meanwhile (the coordinator could not listen).

mod records;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;

use automaldesc_common::fault::FaultKind;
use automaldesc_common::ids::{LeaseRef, RunId, TaskId, WorkerId};
use tokio::time::Instant;

use crate::lease_manager::{
    Expiry, FailOutcome, LeaseBook, LeasePolicy, Refusal, StageCounts, Stall, TaskState,
};
use crate::planner::{RowGroupRange, TaskPlan};
use crate::state::{Expect, StateError, StateStore};

use records::{note_scripts, parse_u64, task_of};
pub use records::{
    read_commits, CommitRecord, OutputRecord, StageTotals, Trouble, TROUBLES_LISTED,
};

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

/// What a worker reports for a finished attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub rows_in: u64,
    pub outputs: Vec<OutputRecord>,
    /// Input scripts the executor could not process: (sha256, reason).
    pub quarantined: Vec<(String, String)>,
    /// Decode tokens the attempt generated.
    pub tokens: u64,
    /// Input scripts that repeated an earlier script of the task.
    pub duplicates: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("corrupt state record {key}: {reason}")]
    Corrupt { key: String, reason: String },
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
    /// Quarantined tasks whose durable record is not written yet.
    unwritten: BTreeSet<TaskId>,
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
            unwritten: BTreeSet::new(),
        })
    }

    /// Since when the stage has made no progress through transient faults, and why.
    pub fn stall(&self) -> Option<&Stall> {
        self.book.stall()
    }

    /// The coordinator could not reach its state store, or its loop was held up: leases
    /// that lapse because of it cost no attempt.
    pub fn blind(&mut self, now: Instant) {
        self.book.blind(now);
    }

    /// Notes a state store error: an unavailable store makes the coordinator blind.
    fn store_failed(&mut self, e: &StateError, now: Instant) {
        if matches!(e, StateError::Unavailable(_)) {
            self.book.blind(now);
        }
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

    /// Every task is committed or quarantined, and every record of it is durable.
    pub fn is_finished(&self) -> bool {
        self.book.is_finished() && self.unwritten.is_empty()
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
                self.store_failed(&e, now);
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
        if self.owns(lease) && self.book.committed_by(lease.task, lease.token) {
            // The same completion again (its answer was lost): it is committed.
            return Ok(Ok(()));
        }
        if !self.owns(lease) || !self.book.is_live(lease.task, lease.token, now) {
            self.totals.completions_refused += 1;
            tracing::warn!(run = %lease.run, stage = lease.stage, task = %lease.task,
                token = lease.token, worker_id = %worker, "completion refused: the lease is not live");
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        }
        let record = CommitRecord {
            token: lease.token,
            worker: worker.0.clone(),
            rows_in: done.rows_in,
            outputs: done.outputs,
            quarantined: done.quarantined,
            tokens: done.tokens,
            duplicates: done.duplicates,
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
                // Committed before a restart of this coordinator: by this very attempt
                // (its answer was lost), or by another one, which wins.
                let winner = self.committed(lease.task).await?.map_or(0, |r| r.token);
                self.book.mark_done(lease.task, winner);
                if winner == lease.token {
                    return Ok(Ok(()));
                }
                self.totals.completions_refused += 1;
                tracing::warn!(run = %lease.run, stage = lease.stage, task = %lease.task,
                    token = lease.token, winner, worker_id = %worker,
                    "completion refused: another attempt committed first");
                Ok(Err(Refusal::StaleLease(lease.task, lease.token)))
            }
            Err(e) => {
                self.store_failed(&e, now);
                Err(e.into())
            }
        }
    }

    /// Records a failed attempt by its kind; a task out of attempts is quarantined
    /// durably (the record is retried on later ticks while the store is down).
    pub async fn fail(
        &mut self,
        worker: &WorkerId,
        lease: &LeaseRef,
        kind: FaultKind,
        error: &str,
        now: Instant,
    ) -> Result<Result<FailOutcome, Refusal>, StageError> {
        if !self.owns(lease) {
            return Ok(Err(Refusal::StaleLease(lease.task, lease.token)));
        }
        let outcome = match self.book.fail(lease.task, lease.token, kind, error, now) {
            Ok(o) => o,
            Err(r) => return Ok(Err(r)),
        };
        match kind {
            FaultKind::Transient => self.totals.transient_faults += 1,
            FaultKind::InvalidInput | FaultKind::Internal => self.totals.attempts_failed += 1,
            FaultKind::Cancelled => {}
        }
        tracing::warn!(run = %lease.run, stage = lease.stage, task = %lease.task,
            token = lease.token, worker_id = %worker, kind = %kind, error,
            outcome = ?outcome, "attempt failed");
        if outcome == FailOutcome::Quarantined {
            self.quarantined_now(lease.task);
        }
        self.write_pending(now).await?;
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

    /// Expires silent leases and writes the records still pending; returns the expiries.
    /// Records that cannot be written now stay pending (the error is returned after every
    /// expiry was applied).
    pub async fn tick(&mut self, now: Instant) -> Result<Vec<Expiry>, StageError> {
        let expired = self.book.expire(now);
        self.totals.leases_expired += expired.len() as u32;
        for x in &expired {
            tracing::warn!(run = %self.spec.run, stage = self.spec.stage, task = %x.task,
                token = x.token, worker_id = %x.worker, excused = x.excused, "lease expired");
            if matches!(self.book.state(x.task), Some(TaskState::Quarantined { .. })) {
                self.quarantined_now(x.task);
            }
        }
        self.write_pending(now).await?;
        Ok(expired)
    }

    /// A task just went to quarantine: counted now, its record written as soon as it can.
    fn quarantined_now(&mut self, task: TaskId) {
        if self.unwritten.insert(task) {
            self.totals.scripts_in_quarantined_tasks +=
                self.spec.tasks.get(task.0 as usize).map_or(0, |t| t.rows);
            tracing::warn!(run = %self.spec.run, stage = self.spec.stage, task = %task,
                error = self.book.last_error(task).unwrap_or_default(), "task quarantined");
        }
    }

    /// The quarantine records not written yet, as (key, value): handed over when the run
    /// ends before they could be written, so they are still written.
    pub fn unwritten_records(&self) -> Vec<(String, Vec<u8>)> {
        self.unwritten
            .iter()
            .map(|&t| {
                let error = self.book.last_error(t).unwrap_or_default();
                (self.quarantine_key(t), error.as_bytes().to_vec())
            })
            .collect()
    }

    /// Writes every pending quarantine record; stops at the first failure (the rest stay
    /// pending for the next tick).
    async fn write_pending(&mut self, now: Instant) -> Result<(), StageError> {
        while let Some(&task) = self.unwritten.first() {
            let error = self
                .book
                .last_error(task)
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            if let Err(e) = self
                .store
                .put(&self.quarantine_key(task), error, Expect::Any)
                .await
            {
                self.store_failed(&e, now);
                tracing::warn!(run = %self.spec.run, stage = self.spec.stage, task = %task,
                    pending = self.unwritten.len(), error = %e,
                    "quarantine record not written yet; retrying");
                return Err(e.into());
            }
            self.unwritten.remove(&task);
        }
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
