//! What workers ask of the runs: a task, a heartbeat for their leases, a completion, a
//! failure.

use automaldesc_common::fault::FaultKind;
use automaldesc_common::ids::{LeaseRef, WorkerId};
use tokio::time::Instant;

use super::{RunError, RunManager, RunPhase};
use crate::lease_manager::{FailOutcome, Refusal};
use crate::stage_manager::{Assignment, Completion, StageManager};

impl RunManager {
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
}
