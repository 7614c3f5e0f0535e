//! One run as the coordinator holds it: its spec, its record, the summaries of its finished
//! stages and its open stage; rebuilt from the durable records.

use std::sync::Arc;

use automaldesc_common::ids::RunId;
use tokio::sync::watch;
use tokio::time::Instant;

use super::planning::{stage_policy, stage_spec};
use super::records::{from_json, placeholder_status, run_key, stage_key};
use super::{RunError, RunPhase, RunRecord, RunStatus, StagePlan, StageSummary};
use crate::lease_manager::{LeasePolicy, Stall};
use crate::stage_manager::{StageError, StageManager};
use crate::state::StateStore;
use automaldesc_common::run_spec::RunSpec;

pub(super) struct Run {
    pub(super) id: RunId,
    pub(super) spec: RunSpec,
    pub(super) record: RunRecord,
    pub(super) finished: Vec<StageSummary>,
    pub(super) current: Option<StageManager>,
    pub(super) watch: watch::Sender<RunStatus>,
    /// Records not durable yet (the store was down), written in order on later ticks.
    pub(super) unsaved: Vec<(String, Vec<u8>)>,
    /// A transient error keeps the run from moving to its next stage: since when, why.
    pub(super) held: Option<Stall>,
    /// Unreferenced files were swept since this coordinator opened the run.
    pub(super) swept: bool,
    /// The open stage is finished and a job is wrapping it up.
    pub(super) wrapping_up: bool,
}

impl Run {
    pub(super) fn status(&self) -> RunStatus {
        let mut stages = self.finished.clone();
        if let Some(m) = &self.current {
            stages.push(summary_of(m, 0, 0));
        }
        RunStatus {
            id: self.id.clone(),
            phase: self.record.phase,
            error: self.record.error.clone(),
            stages,
            stages_total: self.spec.stages.len() as u32,
            submitted_ms: self.record.submitted_ms,
            output: self.spec.output.clone(),
            stage_names: self
                .spec
                .stages
                .iter()
                .map(|s| s.name.clone().unwrap_or_default())
                .collect(),
            resumed_ms: self.record.resumed_ms.clone(),
        }
    }

    pub(super) fn publish(&self) {
        let status = self.status();
        self.watch.send_if_modified(|s| {
            let changed = *s != status;
            if changed {
                *s = status;
            }
            changed
        });
    }

    pub(super) fn is_active(&self) -> bool {
        self.record.phase == RunPhase::Running && self.current.is_some()
    }

    /// Why the run must fail now for what it quarantined, if it must: some stage lost more
    /// than `max_quarantined_fraction` of its input scripts.
    pub(super) fn over_quarantine_budget(&self) -> Option<String> {
        let max = self.spec.limits.max_quarantined_fraction;
        self.status().stages.iter().find_map(|st| {
            let (lost, total) = (st.scripts_lost(), st.totals.scripts_total);
            (total > 0 && lost as f64 > max * total as f64).then(|| {
                let first = st.troubles.iter().find(|t| t.state != "retrying");
                format!(
                    "stage {} ({}) quarantined {lost} of {total} input scripts, more than \
                     max_quarantined_fraction {max}; first error: {}",
                    st.index,
                    st.kind,
                    first.map_or("", |t| t.error.as_str())
                )
            })
        })
    }

    /// What a run that went through quarantined, for its record; `None` when nothing.
    pub(super) fn quarantine_note(&self) -> Option<String> {
        let lost: Vec<String> = self
            .finished
            .iter()
            .filter(|st| st.scripts_lost() > 0)
            .map(|st| {
                format!(
                    "stage {} ({}): {} of {} scripts",
                    st.index,
                    st.kind,
                    st.scripts_lost(),
                    st.totals.scripts_total
                )
            })
            .collect();
        (!lost.is_empty()).then(|| format!("quarantined {}", lost.join("; ")))
    }
}

/// A stage's summary as of now (`finished_ms` 0 while it is open).
pub(super) fn summary_of(m: &StageManager, finished_ms: u64, garbage: u64) -> StageSummary {
    StageSummary {
        index: m.spec().stage,
        kind: m.spec().kind.clone(),
        counts: m.counts(),
        totals: m.totals(),
        garbage_files_deleted: garbage,
        finished_ms,
        troubles: m.troubles(),
    }
}

/// A run's spec and record as stored, read without opening the run (for read-only tools
/// such as `export`); `None` for an unknown run.
pub async fn read_run(
    store: &dyn StateStore,
    id: &RunId,
) -> Result<Option<(RunSpec, RunRecord)>, RunError> {
    let key = run_key(id, "record");
    let Some(v) = store.get(&key).await? else {
        return Ok(None);
    };
    let record: RunRecord = from_json(&key, &v.value)?;
    let spec_key = run_key(id, "spec");
    match store.get(&spec_key).await? {
        Some(v) => Ok(Some((from_json(&spec_key, &v.value)?, record))),
        None => Err(RunError::Stage(StageError::Corrupt {
            key: spec_key,
            reason: "a run record without its spec".into(),
        })),
    }
}

/// A run from its records: finished stages' summaries, and the open stage (if running).
pub(super) async fn load_run(
    store: Arc<dyn StateStore>,
    policy: LeasePolicy,
    id: RunId,
    spec: RunSpec,
    record: RunRecord,
) -> Result<Run, RunError> {
    let mut finished = Vec::new();
    for k in 0..record.stage + 1 {
        let key = stage_key(&id, k, "summary");
        if let Some(v) = store.get(&key).await? {
            finished.push(from_json(&key, &v.value)?);
        }
    }
    let current = if record.phase == RunPhase::Running {
        let key = stage_key(&id, record.stage, "plan");
        let plan: StagePlan = match store.get(&key).await? {
            Some(v) => from_json(&key, &v.value)?,
            None => {
                return Err(RunError::Stage(StageError::Corrupt {
                    key,
                    reason: "the open stage has no plan".into(),
                }))
            }
        };
        if finished.last().map(|s: &StageSummary| s.index) == Some(record.stage) {
            finished.pop();
        }
        let policy = stage_policy(policy, &spec, record.stage);
        let spec = stage_spec(&id, &spec, record.stage, plan);
        Some(StageManager::open(spec, store.clone(), policy, Instant::now()).await?)
    } else {
        None
    };
    let mut run = Run {
        id,
        spec,
        record,
        finished,
        current,
        watch: watch::channel(placeholder_status()).0,
        unsaved: Vec::new(),
        held: None,
        swept: false,
        wrapping_up: false,
    };
    run.watch = watch::channel(run.status()).0;
    Ok(run)
}
