//! A worker's running totals, reported to the coordinator with every heartbeat: scripts its
//! executors finished, decode tokens generated, and model loads with their time.
//! Cumulative since the worker started, so a lost heartbeat loses nothing; the coordinator
//! derives rates from successive reports. Also the task in hand's own progress (training
//! steps, or scripts of the task), for the stage's ETA.
//!
//! Each worker owns one [`Telemetry`] and hands it to its executors with every task
//! ([`crate::executor::TaskInput::telemetry`]), so workers sharing a process
//! (`local --workers N`) each report their own work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A copy of the totals: what a worker reports with every heartbeat, and what the
/// coordinator's worker registry derives rates from.
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

/// One worker's counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    scripts: AtomicU64,
    tokens: AtomicU64,
    model_loads: AtomicU64,
    model_load_ms: AtomicU64,
    task_done: AtomicU64,
    task_total: AtomicU64,
}

impl Telemetry {
    /// `scripts` more finished, having generated `tokens` decode tokens.
    pub fn add_work(&self, scripts: u64, tokens: u64) {
        self.scripts.fetch_add(scripts, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// The task in hand has done `done` of `total` units (steps, scripts).
    pub fn task_progress(&self, done: u64, total: u64) {
        self.task_total.store(total, Ordering::Relaxed);
        self.task_done.store(done.min(total), Ordering::Relaxed);
    }

    /// A new task starts: nothing known of its progress yet.
    pub fn task_started(&self) {
        self.task_progress(0, 0);
    }

    /// A model (and its adapter) loaded in `took`.
    pub fn add_model_load(&self, took: Duration) {
        self.model_loads.fetch_add(1, Ordering::Relaxed);
        self.model_load_ms
            .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            scripts: self.scripts.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            model_loads: self.model_loads.load(Ordering::Relaxed),
            model_load_ms: self.model_load_ms.load(Ordering::Relaxed),
            task_done: self.task_done.load(Ordering::Relaxed),
            task_total: self.task_total.load(Ordering::Relaxed),
        }
    }
}
