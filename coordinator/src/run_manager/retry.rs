//! `retry-quarantined`: an ended run goes again from the first stage that quarantined
//! anything (or, when nothing was quarantined, from the stage it failed in), once the
//! cause is fixed. That stage's quarantine records go, and so do the commit records of its
//! tasks that quarantined single scripts, so those tasks run again whole; every later
//! stage's plan, commits and summary go too, since they were computed without the
//! retried scripts, and are planned afresh. Token reservations stay, so no fencing token
//! is ever issued twice.

use automaldesc_common::ids::RunId;

use super::records::{run_key, stage_key, to_json};
use super::{load_run, RunError, RunManager, RunPhase, RunStatus};
use crate::state::Expect;

impl RunManager {
    /// Runs the ended run `id` again from its first stage with anything quarantined (or
    /// the stage it failed in).
    pub async fn retry_quarantined(&mut self, id: &RunId) -> Result<RunStatus, RunError> {
        let i = self.index(id)?;
        let run = &self.runs[i];
        let wrong = |what| RunError::WrongPhase {
            run: id.clone(),
            phase: run.record.phase.name(),
            what,
        };
        let from = match run.record.phase {
            RunPhase::Running => return Err(wrong("retry once it has ended")),
            RunPhase::Cancelled | RunPhase::Succeeded => return Err(wrong("nothing to retry")),
            RunPhase::SucceededWithQuarantine | RunPhase::Failed => run
                .finished
                .iter()
                .find(|s| s.scripts_lost() > 0)
                .map_or(run.record.stage, |s| s.index),
        };
        if !run.unsaved.is_empty() {
            return Err(RunError::Stage(crate::stage_manager::StageError::State(
                crate::state::StateError::Unavailable(
                    "the run's last records are not written yet".into(),
                ),
            )));
        }
        let last = run.record.stage;
        let store = self.store.clone();
        for (key, _) in store.list(&stage_key(id, from, "quarantined/")).await? {
            store.delete(&key, Expect::Any).await?;
        }
        for (key, v) in store.list(&stage_key(id, from, "committed/")).await? {
            let holds_quarantine =
                serde_json::from_slice::<crate::stage_manager::CommitRecord>(&v.value)
                    .is_ok_and(|c| !c.quarantined.is_empty());
            if holds_quarantine {
                store.delete(&key, Expect::Any).await?;
            }
        }
        store
            .delete(&stage_key(id, from, "summary"), Expect::Any)
            .await?;
        for k in from + 1..=last {
            for part in ["committed/", "quarantined/"] {
                for (key, _) in store.list(&stage_key(id, k, part)).await? {
                    store.delete(&key, Expect::Any).await?;
                }
            }
            for leaf in ["plan", "summary"] {
                store.delete(&stage_key(id, k, leaf), Expect::Any).await?;
            }
        }
        let mut record = run.record.clone();
        record.phase = RunPhase::Running;
        record.error = String::new();
        record.stage = from;
        store
            .put(&run_key(id, "record"), to_json(&record), Expect::Any)
            .await?;
        tracing::info!(run = %id, stage = from, "quarantined work queued again");
        let spec = run.spec.clone();
        self.runs[i] = load_run(store, self.policy, id.clone(), spec, record).await?;
        self.advance_or_log(i).await?;
        Ok(self.runs[i].status())
    }
}
