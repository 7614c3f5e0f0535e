//! Accounting datasets: how many rows each stage kept or dropped and why (the funnel), and
//! which scripts were rejected with the detail needed to audit the decision.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::error::Result;

/// One line of a stage's funnel: `count` rows left `stage` for `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunnelRow {
    pub stage: String,
    pub reason: String,
    pub count: u64,
}

impl ArrowRow for FunnelRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("stage", DataType::Utf8, false),
                Field::new("reason", DataType::Utf8, false),
                Field::new("count", DataType::UInt64, false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.stage.as_str())),
            strs(rows.iter().map(|r| r.reason.as_str())),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.count))),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let stage = str_col(b, "stage")?;
        let reason = str_col(b, "reason")?;
        let count = u64_col(b, "count")?;
        (0..b.num_rows())
            .map(|i| {
                required(stage, "stage", i)?;
                required(reason, "reason", i)?;
                required(count, "count", i)?;
                Ok(FunnelRow {
                    stage: stage.value(i).to_string(),
                    reason: reason.value(i).to_string(),
                    count: count.value(i),
                })
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        self.stage.len() + self.reason.len() + 8
    }
}

/// One script a stage rejected, with a machine-readable reason and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRow {
    pub sha256: String,
    pub stage: String,
    pub reason: String,
    pub detail: String,
}

impl ArrowRow for RejectedRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("stage", DataType::Utf8, false),
                Field::new("reason", DataType::Utf8, false),
                Field::new("detail", DataType::Utf8, false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.sha256.as_str())),
            strs(rows.iter().map(|r| r.stage.as_str())),
            strs(rows.iter().map(|r| r.reason.as_str())),
            strs(rows.iter().map(|r| r.detail.as_str())),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let stage = str_col(b, "stage")?;
        let reason = str_col(b, "reason")?;
        let detail = str_col(b, "detail")?;
        (0..b.num_rows())
            .map(|i| {
                for (a, n) in [
                    (sha as &dyn Array, "sha256"),
                    (stage as &dyn Array, "stage"),
                    (reason as &dyn Array, "reason"),
                    (detail as &dyn Array, "detail"),
                ] {
                    required(a, n, i)?;
                }
                Ok(RejectedRow {
                    sha256: sha.value(i).to_string(),
                    stage: stage.value(i).to_string(),
                    reason: reason.value(i).to_string(),
                    detail: detail.value(i).to_string(),
                })
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        64 + self.stage.len() + self.reason.len() + self.detail.len()
    }
}
