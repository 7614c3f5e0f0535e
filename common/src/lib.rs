//! The vocabulary shared by the coordinator and the workers: script languages and labels,
//! Arrow schemas of every stage's data, Parquet IO over object storage, the synthetic
//! corpus generator, and corpus import and statistics.

pub mod dataset_card;
pub mod detect;
pub mod error;
pub mod eval;
pub mod fault;
pub mod fault_store;
pub mod filter;
pub mod ids;
pub mod import;
pub mod import_labels;
pub mod manifest;
pub mod parquet_io;
pub mod release;
pub mod report;
pub mod report_sections;
pub mod schema;
pub mod stats;
pub mod store;
pub mod synth;
pub mod synth_dataset;
pub mod telemetry;
pub mod types;

pub use error::{Error, Result};
pub use fault::{FaultKind, TaskError};
pub use types::{sha256_hex, Label, Language, Split};
