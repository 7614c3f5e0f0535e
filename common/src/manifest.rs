//! The manifest written beside each stage's output: which files make up the dataset, with
//! row counts and checksums, and what produced it, so a later stage (or an auditor) can verify
//! it read exactly what was written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One data file of a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the dataset prefix, e.g. `part-00000.parquet`.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

/// What one stage of one run wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub iteration: u32,
    pub stage: String,
    pub files: Vec<ManifestFile>,
    /// Hash of the configuration that produced the data.
    pub config_hash: String,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub adapter_id: Option<String>,
    /// Free-form counters: rows in, rows out, rejections by reason...
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
}

impl Manifest {
    pub fn total_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(s: &str) -> Result<Self> {
        Ok(serde_json::from_str(s)?)
    }
}
