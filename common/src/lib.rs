//! The vocabulary shared by the coordinator and the workers: script languages and labels,
//! Arrow schemas of every stage's data, Parquet IO over object storage, the synthetic
//! corpus generator, and corpus import and statistics.

pub mod synth;
pub mod types;

pub use types::{sha256_hex, Label, Language, Split};
