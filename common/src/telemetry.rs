//! What a worker reports with every heartbeat, as both services see it: its running totals
//! (the worker's `telemetry::Telemetry` counts them; the coordinator's worker registry
//! derives rates from successive reports).

/// A worker's totals since it started, and the task in hand's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub scripts: u64,
    pub tokens: u64,
    pub model_loads: u64,
    pub model_load_ms: u64,
    /// The task in hand: units done of its total (0 of 0 when it reports none).
    pub task_done: u64,
    pub task_total: u64,
}
