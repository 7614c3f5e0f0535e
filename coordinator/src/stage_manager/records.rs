//! The durable records of a stage and what is read back from them: commit records (the
//! output files of a task, its quarantined scripts), the troubles listed for operators, and
//! the stage's running totals.

use automaldesc_common::ids::{RunId, TaskId};
use serde::{Deserialize, Serialize};

use super::StageError;
use crate::state::StateStore;

/// One output file of an attempt, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
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
    /// Input scripts that repeated an earlier script of the task.
    #[serde(default)]
    pub duplicates: u64,
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
    /// Attempts that failed on a transient fault (no attempt counted), since this
    /// coordinator opened the stage.
    #[serde(default)]
    pub transient_faults: u32,
    /// Input scripts of committed tasks that repeated an earlier script of their task.
    #[serde(default)]
    pub duplicates: u64,
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
pub(super) fn note_scripts(list: &mut Vec<Trouble>, task: TaskId, r: &CommitRecord) {
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
    pub(super) fn add_commit(&mut self, r: &CommitRecord) {
        self.tokens += r.tokens;
        self.scripts_done += r.rows_in;
        self.rows_out += r.outputs.iter().map(|o| o.rows).sum::<u64>();
        self.scripts_quarantined += r.quarantined.len() as u64;
        self.duplicates += r.duplicates;
    }
}

pub(super) fn parse_u64(key: &str, bytes: &[u8]) -> Result<u64, StageError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StageError::Corrupt {
            key: key.to_string(),
            reason: "not a number".into(),
        })
}

pub(super) fn task_of(key: &str) -> Result<TaskId, StageError> {
    key.rsplit('/')
        .next()
        .and_then(|t| t.parse().ok())
        .map(TaskId)
        .ok_or_else(|| StageError::Corrupt {
            key: key.to_string(),
            reason: "no task number".into(),
        })
}
