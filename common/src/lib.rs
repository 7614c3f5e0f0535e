//! The vocabulary shared by the coordinator and the workers: script languages and labels,
//! ids, Arrow schemas of every stage's data, Parquet IO over object storage, the fault
//! kinds, a worker's reported totals, and the loop's scoring, filter funnel, report and
//! release formats. The corpus tooling (synthesis, import, detection, statistics) is
//! `automaldesc-corpus`, in `common/corpus/`.

pub mod dataset_card;
pub mod error;
pub mod eval;
pub mod fault;
pub mod fault_store;
pub mod filter;
pub mod ids;
pub mod manifest;
pub mod parquet_io;
pub mod release;
pub mod report;
pub mod report_sections;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod types;

pub use error::{Error, Result};
pub use fault::{FaultKind, TaskError};
pub use types::{sha256_hex, Label, Language, Split};
