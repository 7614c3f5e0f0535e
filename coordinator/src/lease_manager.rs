//! Leases of one stage's tasks: who holds what, until when, and with which fencing token.
//! A worker holds a task while it heartbeats; a lease that is not renewed within its TTL
//! expires and the task goes back to the queue. Every lease gets a fencing token larger than
//! any before, and a completion is accepted only from a lease the task still holds and
//! that has not expired, so a worker that was cut off cannot commit late. Failed attempts
//! retry with exponential backoff, and a failure's [`FaultKind`] decides whether it counts:
//! invalid input and internal errors use up an attempt, and after `max_attempts` the task
//! is quarantined with its last error and the stage goes on; a transient fault (storage,
//! disk, state store) and a lease that expired while the coordinator itself could not hear
//! its workers only back off, and mark the stage stalled until the next commit; a cancelled
//! attempt is queued again at once. A task that failed or expired on a worker goes to
//! another worker first. Near the end of a stage a task held for long may be leased a
//! second time; the first completion wins.
//!
//! The book is plain state driven by the caller's clock (`now`), owned by one event loop;
//! tests drive it with tokio's paused time.

use std::time::Duration;

use tokio::time::Instant;

pub use automaldesc_common::fault::FaultKind;
pub use automaldesc_common::ids::{TaskId, WorkerId};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeasePolicy {
    pub ttl: Duration,
    /// Attempts (failures and expiries) before a task is quarantined.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// When no task is queued, a task whose only lease is older than this may be leased to
    /// a second worker.
    pub speculate_after: Option<Duration>,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_attempts: 3,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            speculate_after: Some(Duration::from_secs(300)),
        }
    }
}

/// What a worker receives with a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub task: TaskId,
    pub token: u64,
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("task {0:?} has no live lease with token {1} (expired, superseded or finished)")]
    StaleLease(TaskId, u64),
    #[error("no task {0:?} in this stage")]
    UnknownTask(TaskId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    RetryAt(Instant),
    Quarantined,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageCounts {
    pub total: u32,
    pub done: u32,
    pub leased: u32,
    pub quarantined: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Queued { ready_at: Instant },
    Leased,
    Done { token: u64 },
    Quarantined { error: String },
}

#[derive(Clone, Debug)]
struct Lease {
    worker: WorkerId,
    token: u64,
    started: Instant,
    expires: Instant,
}

#[derive(Clone, Debug)]
struct Entry {
    state: TaskState,
    leases: Vec<Lease>,
    attempts: u32,
    last_error: Option<String>,
    /// Transient faults in a row (they do not count as attempts, but they back off).
    transient: u32,
    /// The worker that last failed or lost the task: others get it first.
    avoid: Option<WorkerId>,
}

/// A lease that lapsed: its task, token and worker, and whether it was excused (the
/// coordinator itself could not hear its workers since the lease was last renewed, so no
/// attempt is counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub task: TaskId,
    pub token: u64,
    pub worker: WorkerId,
    pub excused: bool,
}

/// Why a stage cannot progress: since when, and the last transient fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub since: Instant,
    pub cause: String,
}

pub struct LeaseBook {
    entries: Vec<Entry>,
    policy: LeasePolicy,
    next_token: u64,
    /// Set by the first transient fault after the last commit, cleared by a commit.
    stall: Option<Stall>,
    /// The last moment the coordinator could not hear its workers (its store was
    /// unavailable, or its loop was held up).
    blind_at: Option<Instant>,
}

impl LeaseBook {
    /// `tasks` queued now; tokens start above `token_floor` (the highest token ever issued,
    /// kept durably, so a restarted coordinator never reissues one).
    pub fn new(tasks: u32, policy: LeasePolicy, token_floor: u64, now: Instant) -> Self {
        let entries = (0..tasks)
            .map(|_| Entry {
                state: TaskState::Queued { ready_at: now },
                leases: Vec::new(),
                attempts: 0,
                last_error: None,
                transient: 0,
                avoid: None,
            })
            .collect();
        Self {
            entries,
            policy,
            next_token: token_floor + 1,
            stall: None,
            blind_at: None,
        }
    }

    /// Since when the stage has made no progress through transient faults, and the last
    /// one; `None` while commits come.
    pub fn stall(&self) -> Option<&Stall> {
        self.stall.as_ref()
    }

    fn stalled(&mut self, cause: &str, now: Instant) {
        match &mut self.stall {
            Some(s) => s.cause = cause.to_string(),
            None => {
                self.stall = Some(Stall {
                    since: now,
                    cause: cause.to_string(),
                })
            }
        }
    }

    /// The coordinator could not hear its workers at `now` (its state store was
    /// unavailable, or its event loop was held up): leases not renewed since then that
    /// lapse are not the workers' fault and cost no attempt.
    pub fn blind(&mut self, now: Instant) {
        self.blind_at = Some(now);
    }

    pub fn state(&self, task: TaskId) -> Option<&TaskState> {
        self.entries.get(task.0 as usize).map(|e| &e.state)
    }

    pub fn last_error(&self, task: TaskId) -> Option<&str> {
        self.entries.get(task.0 as usize)?.last_error.as_deref()
    }

    /// Marks a task done from a durable commit record (when the book is rebuilt on start).
    pub fn mark_done(&mut self, task: TaskId, token: u64) {
        if let Some(e) = self.entries.get_mut(task.0 as usize) {
            e.leases.clear();
            e.state = TaskState::Done { token };
        }
    }

    /// Marks a task quarantined from a durable record (when the book is rebuilt on start).
    pub fn mark_quarantined(&mut self, task: TaskId, error: String) {
        if let Some(e) = self.entries.get_mut(task.0 as usize) {
            e.leases.clear();
            e.last_error = Some(error.clone());
            e.state = TaskState::Quarantined { error };
        }
    }

    /// Whether `token` is a lease `task` holds now.
    pub fn is_live(&self, task: TaskId, token: u64, now: Instant) -> bool {
        self.live_lease(task, token, now).is_ok()
    }

    /// Tasks done, leased, quarantined, and in total.
    pub fn counts(&self) -> StageCounts {
        let mut c = StageCounts {
            total: self.entries.len() as u32,
            ..StageCounts::default()
        };
        for e in &self.entries {
            match e.state {
                TaskState::Done { .. } => c.done += 1,
                TaskState::Leased => c.leased += 1,
                TaskState::Quarantined { .. } => c.quarantined += 1,
                TaskState::Queued { .. } => {}
            }
        }
        c
    }

    /// Tasks whose last attempt failed or expired and that are not done: (task, attempts
    /// so far, quarantined, last error).
    pub fn troubled(&self) -> Vec<(TaskId, u32, bool, String)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let error = e.last_error.clone()?;
                match e.state {
                    TaskState::Done { .. } => None,
                    TaskState::Quarantined { .. } => {
                        Some((TaskId(i as u32), e.attempts, true, error))
                    }
                    _ => Some((TaskId(i as u32), e.attempts, false, error)),
                }
            })
            .collect()
    }

    /// The highest token issued so far (to persist).
    pub fn token_high_water(&self) -> u64 {
        self.next_token - 1
    }

    /// Every task is done or quarantined.
    pub fn is_finished(&self) -> bool {
        self.entries.iter().all(|e| {
            matches!(
                e.state,
                TaskState::Done { .. } | TaskState::Quarantined { .. }
            )
        })
    }

    fn issue(&mut self, task: usize, worker: &WorkerId, now: Instant) -> Grant {
        let token = self.next_token;
        self.next_token += 1;
        let e = &mut self.entries[task];
        e.leases.push(Lease {
            worker: worker.clone(),
            token,
            started: now,
            expires: now + self.policy.ttl,
        });
        e.state = TaskState::Leased;
        Grant {
            task: TaskId(task as u32),
            token,
            attempt: e.attempts + 1,
        }
    }

    /// The next task for `worker`: the first queued task whose backoff has passed (a task
    /// this worker just failed or lost only when no other worker took it within a TTL);
    /// else, with speculation on, a task held by someone else for longer than
    /// `speculate_after`.
    pub fn acquire(&mut self, worker: &WorkerId, now: Instant) -> Option<Grant> {
        let ttl = self.policy.ttl;
        let queued = self.entries.iter().position(|e| match e.state {
            TaskState::Queued { ready_at } => {
                ready_at <= now && (e.avoid.as_ref() != Some(worker) || now >= ready_at + ttl)
            }
            _ => false,
        });
        if let Some(i) = queued {
            return Some(self.issue(i, worker, now));
        }
        let after = self.policy.speculate_after?;
        let any_waiting = self
            .entries
            .iter()
            .any(|e| matches!(e.state, TaskState::Queued { .. }));
        if any_waiting {
            return None;
        }
        let straggler = self.entries.iter().position(|e| {
            matches!(e.state, TaskState::Leased)
                && e.leases.len() == 1
                && e.leases[0].worker != *worker
                && now.duration_since(e.leases[0].started) >= after
        })?;
        Some(self.issue(straggler, worker, now))
    }

    /// Renews every live lease `worker` holds; returns how many.
    pub fn heartbeat(&mut self, worker: &WorkerId, now: Instant) -> usize {
        let ttl = self.policy.ttl;
        let mut n = 0;
        for lease in self.entries.iter_mut().flat_map(|e| e.leases.iter_mut()) {
            if lease.worker == *worker && lease.expires > now {
                lease.expires = now + ttl;
                n += 1;
            }
        }
        n
    }

    fn live_lease(&self, task: TaskId, token: u64, now: Instant) -> Result<usize, Refusal> {
        let e = self
            .entries
            .get(task.0 as usize)
            .ok_or(Refusal::UnknownTask(task))?;
        e.leases
            .iter()
            .position(|l| l.token == token && l.expires > now)
            .ok_or(Refusal::StaleLease(task, token))
    }

    /// Accepts the result of the lease `token` if the task still holds it; the task is
    /// done and any other lease on it is cancelled.
    pub fn complete(&mut self, task: TaskId, token: u64, now: Instant) -> Result<(), Refusal> {
        self.live_lease(task, token, now)?;
        let e = &mut self.entries[task.0 as usize];
        e.leases.clear();
        e.state = TaskState::Done { token };
        // Progress: whatever stalled the stage has passed.
        self.stall = None;
        Ok(())
    }

    /// Whether `task` was committed by the lease `token` (a completion retried after its
    /// answer was lost is accepted again, not refused).
    pub fn committed_by(&self, task: TaskId, token: u64) -> bool {
        self.state(task) == Some(&TaskState::Done { token })
    }

    /// Records a failed attempt of the lease `token`, by its kind: invalid input and
    /// internal errors are retried after a backoff and quarantined with `error` once the
    /// task has used its attempts; a transient fault backs off without using an attempt
    /// and marks the stage stalled; a cancelled attempt is queued again at once.
    pub fn fail(
        &mut self,
        task: TaskId,
        token: u64,
        kind: FaultKind,
        error: &str,
        now: Instant,
    ) -> Result<FailOutcome, Refusal> {
        let at = self.live_lease(task, token, now)?;
        let e = &mut self.entries[task.0 as usize];
        let lease = e.leases.remove(at);
        match kind {
            FaultKind::Cancelled => {
                if e.leases.is_empty() {
                    e.state = TaskState::Queued { ready_at: now };
                }
                Ok(FailOutcome::RetryAt(now))
            }
            FaultKind::Transient => {
                e.last_error = Some(error.to_string());
                e.avoid = Some(lease.worker);
                self.stalled(error, now);
                Ok(self.after_transient(task.0 as usize, now))
            }
            FaultKind::InvalidInput | FaultKind::Internal => {
                e.last_error = Some(error.to_string());
                e.avoid = Some(lease.worker);
                Ok(self.after_attempt(task.0 as usize, now))
            }
        }
    }

    /// Takes back the lease `token` unfinished (its worker is shutting down): with no other
    /// lease on it, the task is queued again at once, and no attempt is counted.
    pub fn release(&mut self, task: TaskId, token: u64, now: Instant) -> Result<(), Refusal> {
        let at = self.live_lease(task, token, now)?;
        let e = &mut self.entries[task.0 as usize];
        e.leases.remove(at);
        if e.leases.is_empty() {
            e.state = TaskState::Queued { ready_at: now };
        }
        Ok(())
    }

    /// Drops leases whose TTL passed. A task left without a lease counts an attempt and is
    /// queued again (or quarantined), away from the worker that lost it; unless the
    /// coordinator could not hear its workers since the lease was last renewed, which
    /// excuses the expiry: queued again without an attempt counted.
    pub fn expire(&mut self, now: Instant) -> Vec<Expiry> {
        let ttl = self.policy.ttl;
        let blind_at = self.blind_at;
        let mut expired = Vec::new();
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            let before = expired.len();
            e.leases.retain(|l| {
                let live = l.expires > now;
                if !live {
                    let renewed = l.expires - ttl;
                    expired.push(Expiry {
                        task: TaskId(i as u32),
                        token: l.token,
                        worker: l.worker.clone(),
                        excused: blind_at.is_some_and(|b| b >= renewed),
                    });
                }
                live
            });
            let Some(last) = expired[before..].last().cloned() else {
                continue;
            };
            if !e.leases.is_empty() || !matches!(e.state, TaskState::Leased) {
                continue;
            }
            if last.excused {
                let why = "lease expired while the coordinator could not hear its workers";
                e.last_error = Some(why.into());
                e.state = TaskState::Queued { ready_at: now };
                self.stalled(why, now);
            } else {
                e.avoid = Some(last.worker.clone());
                e.last_error = Some("lease expired: the worker stopped heartbeating".into());
                self.after_attempt(i, now);
            }
        }
        expired
    }

    fn after_transient(&mut self, i: usize, now: Instant) -> FailOutcome {
        let policy = self.policy;
        let e = &mut self.entries[i];
        if !e.leases.is_empty() {
            return FailOutcome::RetryAt(now);
        }
        e.transient += 1;
        let ready_at = now + backoff(policy, e.transient);
        e.state = TaskState::Queued { ready_at };
        FailOutcome::RetryAt(ready_at)
    }

    fn after_attempt(&mut self, i: usize, now: Instant) -> FailOutcome {
        let policy = self.policy;
        let e = &mut self.entries[i];
        if !e.leases.is_empty() {
            // A speculative twin is still running; let it finish.
            return FailOutcome::RetryAt(now);
        }
        e.attempts += 1;
        if e.attempts >= policy.max_attempts {
            let error = e.last_error.clone().unwrap_or_default();
            e.state = TaskState::Quarantined { error };
            return FailOutcome::Quarantined;
        }
        let ready_at = now + backoff(policy, e.attempts);
        e.state = TaskState::Queued { ready_at };
        FailOutcome::RetryAt(ready_at)
    }
}

/// The wait before the `n`th retry (n ≥ 1): doubling from the base, at most the maximum.
fn backoff(policy: LeasePolicy, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(16);
    (policy.backoff_base * factor).min(policy.backoff_max)
}

#[cfg(test)]
mod tests;
