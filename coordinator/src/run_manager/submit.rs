//! Submitting a run: admitted in the event loop, checked against the catalog and planned
//! (object-store work) inline or in a job beside the loop, then recorded and started.

use automaldesc_common::ids::RunId;
use tokio::sync::oneshot;

use super::background;
use super::planning::record_plan;
use super::records::{check_id, from_json, run_key, to_json};
use super::run::load_run;
use super::{now_ms, RunError, RunManager, RunPhase, RunRecord, RunStatus, StagePlan};
use crate::stage_manager::StageError;
use crate::state::{Expect, StateError};
use automaldesc_common::run_spec::RunSpec;

impl RunManager {
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
        Ok(match self.known(&id, &spec)? {
            Some(status) => Admission::Known(status),
            None => Admission::New(id, spec),
        })
    }

    /// The run `id` as it is when this coordinator has it with `spec`; refused when it has
    /// it with another spec; `None` when it has no such run.
    fn known(&self, id: &RunId, spec: &RunSpec) -> Result<Option<RunStatus>, RunError> {
        match self.index(id) {
            Ok(i) if self.runs[i].spec != *spec => Err(RunError::Exists(id.clone())),
            Ok(i) => Ok(Some(self.runs[i].status())),
            Err(_) => Ok(None),
        }
    }

    /// Records a checked and planned submission (`plan`, or why it was refused) and starts
    /// the run.
    pub(super) async fn start(
        &mut self,
        id: RunId,
        spec: RunSpec,
        plan: Result<StagePlan, RunError>,
    ) -> Result<RunStatus, RunError> {
        // Another submission of the same id may have started meanwhile.
        if let Some(status) = self.known(&id, &spec)? {
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
            resumed_ms: Vec::new(),
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
}

/// See [`RunManager::admit`].
enum Admission {
    Known(RunStatus),
    New(RunId, RunSpec),
}

/// Sends `result` to `reply` (a reply no one waits for any more is dropped); a lost
/// leadership is also returned: the event loop must stop.
pub fn answer_fenced<T>(
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
