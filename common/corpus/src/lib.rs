//! The corpus tooling: the synthetic corpus generator with its ground truth (`synth`, written
//! as Parquet splits by `synth_dataset`), the import of script files and of expert labels
//! (`import`, `import_labels`), language detection (`detect`) and corpus statistics
//! (`stats`).

pub mod detect;
pub mod import;
pub mod import_labels;
pub mod stats;
pub mod synth;
pub mod synth_dataset;
