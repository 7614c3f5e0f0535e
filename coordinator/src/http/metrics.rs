//! `/metrics`: the cluster view as Prometheus text (runs, stages and workers).

use std::fmt::Write as _;

use super::view::{cluster_rates, stage_timing, StageTiming};
use super::ClusterView;
use crate::run_manager::{RunPhase, StageSummary};
use crate::workers::WorkerState;

fn phase_name(p: RunPhase) -> &'static str {
    p.name()
}

/// A label value as the exposition format wants it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// Every metric as Prometheus text: runs by phase; per stage, tasks by state, scripts,
/// rows, tokens, attempt counters, duration and ETA; per worker, leases, totals, rates,
/// heartbeat age and model loads; the cluster's tokens/s; whether this coordinator leads.
pub fn metrics_text(view: &ClusterView, leader: bool) -> String {
    let mut s = String::new();
    header(
        &mut s,
        "automaldesc_coordinator_leader",
        "gauge",
        "1 when this coordinator leads and serves.",
    );
    let _ = writeln!(s, "automaldesc_coordinator_leader {}", u8::from(leader));
    header(&mut s, "automaldesc_runs", "gauge", "Runs by phase.");
    for phase in [
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::SucceededWithQuarantine,
        RunPhase::Failed,
        RunPhase::Cancelled,
    ] {
        let n = view.runs.iter().filter(|r| r.phase == phase).count();
        let _ = writeln!(s, "automaldesc_runs{{phase=\"{}\"}} {n}", phase_name(phase));
    }
    stage_metrics(&mut s, view);
    worker_metrics(&mut s, view);
    s
}

type Metric = (&'static str, &'static str, &'static str);

const STAGE_METRICS: [Metric; 11] = [
    (
        "automaldesc_stage_scripts_total",
        "gauge",
        "Input scripts of a stage's tasks.",
    ),
    (
        "automaldesc_stage_scripts_done",
        "counter",
        "Input scripts of committed tasks.",
    ),
    (
        "automaldesc_stage_rows_out",
        "counter",
        "Rows the committed tasks wrote.",
    ),
    (
        "automaldesc_stage_tokens",
        "counter",
        "Decode tokens the committed tasks generated.",
    ),
    (
        "automaldesc_stage_scripts_quarantined",
        "counter",
        "Scripts quarantined alone or in a quarantined task.",
    ),
    (
        "automaldesc_stage_lease_expiries",
        "counter",
        "Leases that expired (since this coordinator opened the stage).",
    ),
    (
        "automaldesc_stage_failed_attempts",
        "counter",
        "Attempts that failed (since this coordinator opened the stage).",
    ),
    (
        "automaldesc_stage_refused_completions",
        "counter",
        "Completions refused as late (since this coordinator opened the stage).",
    ),
    (
        "automaldesc_stage_duration_seconds",
        "gauge",
        "Wall time of a stage: finished, or so far.",
    ),
    (
        "automaldesc_stage_eta_seconds",
        "gauge",
        "Estimated seconds the open stage still needs (absent when unknown).",
    ),
    (
        "automaldesc_stage_tasks",
        "gauge",
        "Tasks of a stage by state.",
    ),
];

fn stage_metrics(s: &mut String, view: &ClusterView) {
    let rates = cluster_rates(&view.workers);
    // Each stage's labels and timing, once.
    let stages: Vec<(String, &StageSummary, StageTiming)> = view
        .runs
        .iter()
        .flat_map(|r| {
            r.stages.iter().enumerate().map(move |(i, st)| {
                let labels = format!(
                    "run=\"{}\",stage=\"{}\",kind=\"{}\"",
                    label(&r.id.0),
                    st.index,
                    label(&st.kind)
                );
                (labels, st, stage_timing(view, r, i, rates))
            })
        })
        .collect();
    for (name, kind, help) in STAGE_METRICS {
        header(s, name, kind, help);
        for (labels, st, timing) in &stages {
            let (c, t) = (&st.counts, &st.totals);
            let v: f64 = match name {
                "automaldesc_stage_tasks" => {
                    let pending = c.total.saturating_sub(c.done + c.leased + c.quarantined);
                    for (state, n) in [
                        ("total", c.total),
                        ("done", c.done),
                        ("leased", c.leased),
                        ("quarantined", c.quarantined),
                        ("pending", pending),
                    ] {
                        let _ = writeln!(s, "{name}{{{labels},state=\"{state}\"}} {n}");
                    }
                    continue;
                }
                "automaldesc_stage_eta_seconds" => match timing.eta {
                    Some((e, _)) => e,
                    None => continue,
                },
                "automaldesc_stage_duration_seconds" => timing.elapsed_s,
                "automaldesc_stage_scripts_total" => t.scripts_total as f64,
                "automaldesc_stage_scripts_done" => t.scripts_done as f64,
                "automaldesc_stage_rows_out" => t.rows_out as f64,
                "automaldesc_stage_tokens" => t.tokens as f64,
                "automaldesc_stage_scripts_quarantined" => {
                    (t.scripts_quarantined + t.scripts_in_quarantined_tasks) as f64
                }
                "automaldesc_stage_lease_expiries" => f64::from(t.leases_expired),
                "automaldesc_stage_failed_attempts" => f64::from(t.attempts_failed),
                _ => f64::from(t.completions_refused),
            };
            let _ = writeln!(s, "{name}{{{labels}}} {v}");
        }
    }
}

const WORKER_METRICS: [Metric; 9] = [
    (
        "automaldesc_worker_info",
        "gauge",
        "A worker heard from, with its backend (always 1).",
    ),
    (
        "automaldesc_worker_leases",
        "gauge",
        "Leases a worker holds.",
    ),
    (
        "automaldesc_worker_tokens_total",
        "counter",
        "Decode tokens a worker generated since it started.",
    ),
    (
        "automaldesc_worker_scripts_total",
        "counter",
        "Scripts a worker's executors finished since it started.",
    ),
    (
        "automaldesc_worker_tokens_per_second",
        "gauge",
        "A worker's decode tokens per second over the last minute.",
    ),
    (
        "automaldesc_worker_scripts_per_second",
        "gauge",
        "A worker's scripts per second over the last minute.",
    ),
    (
        "automaldesc_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since the worker was last heard from.",
    ),
    (
        "automaldesc_worker_model_load_seconds_total",
        "counter",
        "Seconds a worker spent loading models.",
    ),
    (
        "automaldesc_worker_model_loads_total",
        "counter",
        "Models a worker loaded.",
    ),
];

fn worker_metrics(s: &mut String, view: &ClusterView) {
    header(s, "automaldesc_workers", "gauge", "Workers by state.");
    for state in WorkerState::ALL {
        let n = view.workers.iter().filter(|w| w.state == state).count();
        let _ = writeln!(s, "automaldesc_workers{{state=\"{}\"}} {n}", state.name());
    }
    for (name, kind, help) in WORKER_METRICS {
        header(s, name, kind, help);
        for w in &view.workers {
            let id = label(&w.id);
            let v = match name {
                "automaldesc_worker_info" => {
                    let _ = writeln!(
                        s,
                        "{name}{{worker=\"{id}\",backend=\"{}\"}} 1",
                        label(&w.backend)
                    );
                    continue;
                }
                "automaldesc_worker_leases" => w.leases.len() as f64,
                "automaldesc_worker_tokens_total" => w.tokens as f64,
                "automaldesc_worker_scripts_total" => w.scripts as f64,
                "automaldesc_worker_tokens_per_second" => w.tokens_per_s,
                "automaldesc_worker_scripts_per_second" => w.scripts_per_s,
                "automaldesc_worker_heartbeat_age_seconds" => {
                    view.at_ms.saturating_sub(w.last_seen_ms) as f64 / 1000.0
                }
                "automaldesc_worker_model_load_seconds_total" => w.model_load_s,
                _ => w.model_loads as f64,
            };
            let _ = writeln!(s, "{name}{{worker=\"{id}\"}} {v}");
        }
    }
    header(
        s,
        "automaldesc_tokens_per_second",
        "gauge",
        "Decode tokens per second of all workers not lost.",
    );
    let _ = writeln!(
        s,
        "automaldesc_tokens_per_second {}",
        cluster_rates(&view.workers).0
    );
}
