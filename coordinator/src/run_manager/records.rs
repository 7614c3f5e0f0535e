//! The durable records of a run and the shapes operators see: the run's phase and error,
//! each stage's plan and summary, the status reported over gRPC and HTTP, and the keys
//! they live under.

use std::time::{SystemTime, UNIX_EPOCH};

use automaldesc_common::ids::RunId;
use serde::{Deserialize, Serialize};

use crate::lease_manager::StageCounts;
use crate::planner::TaskPlan;
use crate::stage_manager::{StageError, StageTotals, Trouble};
use crate::state::StateError;
use automaldesc_common::run_spec::SpecError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    Running,
    /// Every input script was committed.
    Succeeded,
    /// Ended, with some scripts quarantined, no more than the run's
    /// `max_quarantined_fraction` of any stage's input.
    SucceededWithQuarantine,
    Failed,
    Cancelled,
}

impl RunPhase {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::SucceededWithQuarantine => "succeeded_with_quarantine",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The run went through (possibly with quarantine).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Succeeded | Self::SucceededWithQuarantine)
    }
}

/// The durable record of a run's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub phase: RunPhase,
    /// Why it failed; for a run that succeeded with quarantine, what was quarantined.
    pub error: String,
    pub submitted_ms: u64,
    /// The stage open now (or the last one, once the run ended).
    pub stage: u32,
    /// When a coordinator took the run up again after a restart or a takeover (ms since
    /// the epoch): a stage open across one of these was paused meanwhile.
    #[serde(default)]
    pub resumed_ms: Vec<u64>,
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

impl StageSummary {
    /// Input scripts lost to quarantine: alone, or inside quarantined tasks.
    pub fn scripts_lost(&self) -> u64 {
        self.totals.scripts_quarantined + self.totals.scripts_in_quarantined_tasks
    }
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
    /// When a coordinator took the run up again (see [`RunRecord::resumed_ms`]).
    pub resumed_ms: Vec<u64>,
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
    #[error("run {run} is {phase}: {what}")]
    WrongPhase {
        run: RunId,
        phase: &'static str,
        what: &'static str,
    },
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
            // The object store failing; a missing input is the spec's fault, not an outage.
            RunError::Data { source, .. } => matches!(
                source,
                automaldesc_common::Error::Storage(_)
                    | automaldesc_common::Error::Parquet(parquet::errors::ParquetError::External(
                        _
                    ))
            ),
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

pub(super) fn data(
    context: impl Into<String>,
) -> impl FnOnce(automaldesc_common::Error) -> RunError {
    let context = context.into();
    move |source| RunError::Data { context, source }
}

pub(super) fn run_key(run: &RunId, leaf: &str) -> String {
    format!("runs/{run}/{leaf}")
}

pub(super) fn stage_key(run: &RunId, stage: u32, leaf: &str) -> String {
    format!("runs/{run}/stages/{stage:03}/{leaf}")
}

/// Where stage `k` of a run writes, under the run's output location.
pub fn stage_output_url(output: &str, run: &RunId, stage: u32) -> String {
    format!(
        "{}/runs/{run}/stage-{stage:03}",
        output.trim_end_matches('/')
    )
}

pub(super) fn check_id(id: &str) -> Result<(), RunError> {
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

pub(super) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // The records are plain structs of strings and numbers: encoding cannot fail.
    serde_json::to_vec(v).expect("run records encode as JSON")
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(
    key: &str,
    bytes: &[u8],
) -> Result<T, RunError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RunError::Stage(StageError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn placeholder_status() -> RunStatus {
    RunStatus {
        id: RunId(String::new()),
        phase: RunPhase::Running,
        error: String::new(),
        stages: Vec::new(),
        stages_total: 0,
        submitted_ms: 0,
        output: String::new(),
        stage_names: Vec::new(),
        resumed_ms: Vec::new(),
    }
}
