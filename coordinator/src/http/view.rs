//! What the dashboard's JSON says about each run and stage: wall time, ETA, the tasks in
//! flight, and the cluster's throughput.

use super::ClusterView;
use crate::run_manager::{RunPhase, RunStatus, StageSummary};
use crate::workers::{WorkerState, WorkerView};

/// Total throughput of the workers that are not lost: (tokens/s, scripts/s).
pub(super) fn cluster_rates(workers: &[WorkerView]) -> (f64, f64) {
    workers
        .iter()
        .filter(|w| w.state != WorkerState::Lost)
        .fold((0.0, 0.0), |(t, s), w| {
            (t + w.tokens_per_s, s + w.scripts_per_s)
        })
}

/// When stage `i` of the run started (ms since the epoch): stages run one after another,
/// so at its predecessor's end, or at the run's submission.
pub fn stage_started_ms(run: &RunStatus, i: usize) -> u64 {
    match i {
        0 => run.submitted_ms,
        _ => run.stages[i - 1].finished_ms.max(run.submitted_ms),
    }
}

/// When stage `i` of a run started, its wall time (finished, or so far while the run
/// runs), and its ETA with the estimate's basis.
pub(super) struct StageTiming {
    pub(super) started_ms: u64,
    pub(super) elapsed_s: f64,
    pub(super) eta: Option<(f64, &'static str)>,
}

pub(super) fn stage_timing(
    view: &ClusterView,
    r: &RunStatus,
    i: usize,
    rates: (f64, f64),
) -> StageTiming {
    let st = &r.stages[i];
    let started_ms = stage_started_ms(r, i);
    let running = r.phase == RunPhase::Running;
    let end = match st.finished_ms {
        0 if running => view.at_ms,
        0 => started_ms,
        f => f,
    };
    let elapsed_s = end.saturating_sub(started_ms) as f64 / 1000.0;
    let eta = running
        .then(|| stage_eta(st, elapsed_s, rates, &in_flight(view, &r.id.0, st.index)))
        .flatten();
    StageTiming {
        started_ms,
        elapsed_s,
        eta,
    }
}

/// A task in flight with the progress its worker reports: seconds since it was leased,
/// and units (training steps, scripts) done of its total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InFlight {
    pub task: u32,
    pub held_s: f64,
    pub done: u64,
    pub total: u64,
}

/// The tasks of stage `stage` of `run` in flight with a known progress (the furthest
/// attempt of a task leased twice).
fn in_flight(view: &ClusterView, run: &str, stage: u32) -> Vec<InFlight> {
    let mut out: Vec<InFlight> = Vec::new();
    for l in view.workers.iter().flat_map(|w| &w.leases) {
        if l.run != run || l.stage != stage || l.total == 0 {
            continue;
        }
        let f = InFlight {
            task: l.task,
            held_s: view.at_ms.saturating_sub(l.since_ms) as f64 / 1000.0,
            done: l.done,
            total: l.total,
        };
        match out.iter_mut().find(|o| o.task == l.task) {
            Some(o) if o.done * f.total < f.done * o.total => *o = f,
            Some(_) => {}
            None => out.push(f),
        }
    }
    out
}

/// How long the open stage still needs, in seconds, and what the estimate rests on:
/// - "tokens": the tokens per script so far times the scripts left, at the cluster's
///   current tokens/s (stages that generate);
/// - "task progress": when every task left is in flight and reports its progress (a
///   training stage's steps), the slowest one's time so far scaled to what it has left;
/// - "scripts": the scripts left at the current scripts/s;
/// - "tasks": the time per committed task so far times the tasks left.
///
/// `None` when the stage is finished or nothing is known yet.
pub fn stage_eta(
    st: &StageSummary,
    elapsed_s: f64,
    rates: (f64, f64),
    in_flight: &[InFlight],
) -> Option<(f64, &'static str)> {
    let (c, t) = (&st.counts, &st.totals);
    let tasks_left = c.total.saturating_sub(c.done + c.quarantined);
    if st.finished_ms != 0 || tasks_left == 0 {
        return None;
    }
    let scripts_left =
        t.scripts_total
            .saturating_sub(t.scripts_done + t.scripts_in_quarantined_tasks) as f64;
    if t.tokens > 0 && t.scripts_done > 0 && rates.0 > 0.0 {
        let tokens_left = scripts_left * t.tokens as f64 / t.scripts_done as f64;
        return Some((tokens_left / rates.0, "tokens"));
    }
    let started: Vec<&InFlight> = in_flight.iter().filter(|f| f.done > 0).collect();
    if started.len() == tasks_left as usize {
        let eta = started
            .iter()
            .map(|f| f.held_s * (f.total - f.done) as f64 / f.done as f64)
            .fold(0.0, f64::max);
        return Some((eta, "task progress"));
    }
    if rates.1 > 0.0 && scripts_left > 0.0 {
        return Some((scripts_left / rates.1, "scripts"));
    }
    if c.done > 0 {
        return Some((elapsed_s / c.done as f64 * tasks_left as f64, "tasks"));
    }
    None
}

/// `/api/cluster`: the view, with each stage's name, start, duration and ETA, and the total
/// throughput.
pub(super) fn cluster_json(view: &ClusterView, leader: bool) -> serde_json::Value {
    let rates = cluster_rates(&view.workers);
    let runs: Vec<serde_json::Value> = view
        .runs
        .iter()
        .map(|r| {
            let mut run = serde_json::to_value(r).unwrap_or_default();
            for (i, st) in r.stages.iter().enumerate() {
                let StageTiming {
                    started_ms,
                    elapsed_s,
                    eta,
                } = stage_timing(view, r, i, rates);
                let name = r
                    .stage_names
                    .get(st.index as usize)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| format!("stage {} {}", st.index, st.kind));
                let s = &mut run["stages"][i];
                s["name"] = name.into();
                s["started_ms"] = started_ms.into();
                s["duration_s"] = elapsed_s.into();
                s["eta_s"] = eta.map(|e| e.0).into();
                s["eta_basis"] = eta.map(|e| e.1).into();
            }
            run
        })
        .collect();
    serde_json::json!({
        "at_ms": view.at_ms,
        "leader": leader,
        "tokens_per_s": rates.0,
        "scripts_per_s": rates.1,
        "workers": view.workers,
        "runs": runs,
    })
}
