//! The worker process's running totals, reported to the coordinator with every heartbeat:
//! scripts its executors finished, decode tokens generated, and model loads with their
//! time. Cumulative since the process started, so a lost heartbeat loses nothing; the
//! coordinator derives rates from successive reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static SCRIPTS: AtomicU64 = AtomicU64::new(0);
static TOKENS: AtomicU64 = AtomicU64::new(0);
static MODEL_LOADS: AtomicU64 = AtomicU64::new(0);
static MODEL_LOAD_MS: AtomicU64 = AtomicU64::new(0);

/// A copy of the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub scripts: u64,
    pub tokens: u64,
    pub model_loads: u64,
    pub model_load_ms: u64,
}

/// `scripts` more finished, having generated `tokens` decode tokens.
pub fn add_work(scripts: u64, tokens: u64) {
    SCRIPTS.fetch_add(scripts, Ordering::Relaxed);
    TOKENS.fetch_add(tokens, Ordering::Relaxed);
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
    }
}
