//! The object-store work between two stages, run beside the coordinator's event loop: when
//! a stage's last task is committed, a job writes its committed-file list, deletes its
//! unreferenced files and plans the next stage from the committed files' Parquet footers;
//! the loop keeps answering heartbeats, acquires and status calls meanwhile, and applies
//! the job's result as an event ([`super::RunManager::next_background`]). Sweeping a
//! finished run's stages is a job too.

use std::sync::Arc;

use automaldesc_common::ids::RunId;

use super::planning::{plan_stage, sweep_stage, write_committed_list};
use super::records::{RunError, StagePlan};
use crate::run_spec::RunSpec;
use crate::state::StateStore;

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
