//! Conversions between the coordinator's types and their wire (protobuf) forms, and the
//! checks every request's fields get.

use automaldesc_common::ids::RunId;
use automaldesc_proto::{v1, PROTOCOL_VERSION};
use tonic::Status;

use super::RunFiles;
use crate::run_manager::{RunError, RunPhase, RunStatus};
use crate::workers::Reported;

pub(super) fn status(e: RunError) -> Status {
    crate::error_status::grpc_status(&e)
}

pub(super) fn reported(p: v1::Progress) -> Reported {
    Reported {
        scripts: p.scripts_done,
        tokens: p.tokens_generated,
        model_loads: p.model_loads,
        model_load_ms: p.model_load_ms,
        task_done: p.task_done,
        task_total: p.task_total,
    }
}

pub(super) fn check_version(v: u32) -> Result<(), Status> {
    if v != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {v} is not {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

fn phase(p: RunPhase) -> v1::RunState {
    match p {
        RunPhase::Running => v1::RunState::Running,
        RunPhase::Succeeded => v1::RunState::Succeeded,
        RunPhase::SucceededWithQuarantine => v1::RunState::SucceededWithQuarantine,
        RunPhase::Failed => v1::RunState::Failed,
        RunPhase::Cancelled => v1::RunState::Cancelled,
    }
}

/// The wire form of a run's status.
pub fn to_proto(s: RunStatus) -> v1::RunStatus {
    v1::RunStatus {
        run_id: s.id.0,
        state: phase(s.phase) as i32,
        error: s.error,
        stages_total: s.stages_total,
        stages: s
            .stages
            .into_iter()
            .map(|st| v1::StageProgress {
                iteration: 0,
                kind: st.kind,
                tasks_total: st.counts.total,
                tasks_done: st.counts.done,
                tasks_leased: st.counts.leased,
                tasks_quarantined: st.counts.quarantined,
                scripts_done: st.totals.scripts_done,
                tokens: st.totals.tokens,
                index: st.index,
                rows_out: st.totals.rows_out,
                scripts_quarantined: st.totals.scripts_quarantined
                    + st.totals.scripts_in_quarantined_tasks,
                completions_refused: st.totals.completions_refused,
                leases_expired: st.totals.leases_expired,
                attempts_failed: st.totals.attempts_failed,
                scripts_total: st.totals.scripts_total,
                duplicates: st.totals.duplicates,
                transient_faults: st.totals.transient_faults,
            })
            .collect(),
    }
}

pub(super) fn run_id(v: String) -> Result<RunId, Status> {
    if v.is_empty() {
        return Err(Status::invalid_argument("missing field run_id"));
    }
    Ok(RunId(v))
}

/// The wire form of [`RunManager::committed_files`].
pub(super) fn files_to_proto((status, spec, stages): RunFiles) -> Result<v1::RunFiles, Status> {
    let spec_toml =
        toml::to_string(&spec).map_err(|e| Status::internal(format!("run spec: {e}")))?;
    Ok(v1::RunFiles {
        status: Some(to_proto(status)),
        spec_toml,
        stages: stages
            .into_iter()
            .map(|(stage, files)| v1::StageFiles {
                stage,
                files: files
                    .into_iter()
                    .map(|f| v1::OutputFile {
                        path: f.path,
                        size_bytes: f.bytes,
                        sha256: f.sha256,
                        rows: f.rows,
                    })
                    .collect(),
            })
            .collect(),
    })
}
