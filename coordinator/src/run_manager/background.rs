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

use super::planning::{check_spec, new_plan, plan_stage, sweep_stage, write_committed_list};
use super::records::{from_json, run_key, stage_key, RunError, RunStatus, StagePlan};
use crate::run_spec::{RunSpec, StageCatalog};
use crate::state::{Expect, StateStore};

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
