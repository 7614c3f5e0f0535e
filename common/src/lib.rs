//! The vocabulary shared by the coordinator, the workers and the loop: script languages
//! and labels, ids, Arrow schemas of every stage's data, Parquet IO over object storage,
//! the fault kinds, the executor contract (`executor`) and a worker's counters
//! (`telemetry`). The corpus tooling is `automaldesc-corpus` (`common/corpus/`); the loop's
//! scoring, funnel, report and release are `automaldesc-loop` (`worker/loop/`).

pub mod error;
pub mod executor;
pub mod fault;
pub mod fault_store;
pub mod ids;
pub mod manifest;
pub mod parquet_io;
pub mod run_spec;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod types;

pub use error::{Error, Result};
pub use fault::{FaultKind, TaskError};
pub use types::{sha256_hex, Label, Language, Split};
