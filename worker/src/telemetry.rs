//! The worker process's running totals, reported to the coordinator with every heartbeat:
//! scripts its executors finished, decode tokens generated, and model loads with their
//! time. Cumulative since the process started, so a lost heartbeat loses nothing; the
//! coordinator derives rates from successive reports. Also the task in hand's own
//! progress (training steps, or scripts of the task), for the stage's ETA.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static SCRIPTS: AtomicU64 = AtomicU64::new(0);
static TOKENS: AtomicU64 = AtomicU64::new(0);
static MODEL_LOADS: AtomicU64 = AtomicU64::new(0);
static MODEL_LOAD_MS: AtomicU64 = AtomicU64::new(0);
static TASK_DONE: AtomicU64 = AtomicU64::new(0);
static TASK_TOTAL: AtomicU64 = AtomicU64::new(0);

/// A copy of the totals.
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

/// `scripts` more finished, having generated `tokens` decode tokens.
pub fn add_work(scripts: u64, tokens: u64) {
    SCRIPTS.fetch_add(scripts, Ordering::Relaxed);
    TOKENS.fetch_add(tokens, Ordering::Relaxed);
}

/// The task in hand has done `done` of `total` units (steps, scripts).
pub fn task_progress(done: u64, total: u64) {
    TASK_TOTAL.store(total, Ordering::Relaxed);
    TASK_DONE.store(done.min(total), Ordering::Relaxed);
}

/// A new task starts: nothing known of its progress yet.
pub fn task_started() {
    task_progress(0, 0);
}

/// A model (and its adapter) loaded in `took`.
pub fn add_model_load(took: Duration) {
    MODEL_LOADS.fetch_add(1, Ordering::Relaxed);
    MODEL_LOAD_MS.fetch_add(took.as_millis() as u64, Ordering::Relaxed);
}

pub fn totals() -> Totals {
    Totals {
        scripts: SCRIPTS.load(Ordering::Relaxed),
        tokens: TOKENS.load(Ordering::Relaxed),
        model_loads: MODEL_LOADS.load(Ordering::Relaxed),
        model_load_ms: MODEL_LOAD_MS.load(Ordering::Relaxed),
        task_done: TASK_DONE.load(Ordering::Relaxed),
        task_total: TASK_TOTAL.load(Ordering::Relaxed),
    }
}
