//! Arrow schemas and row structs for every dataset the pipeline stores, so that the importer,
//! the stages and the reports all speak one vocabulary. Each row type converts to and from a
//! `RecordBatch`; reading checks every column's presence and type and names the culprit.

mod coded;
mod columns;
mod corpus;
mod generation;
mod pipeline;
mod release;
mod report;

pub use corpus::{check_identity, CheckedRows, CorpusRow, LabelledRow};
pub use generation::FinishReason;
pub use pipeline::{AnswersRow, DecisionRow, FunnelReason, JudgeVerdict};
pub use release::{rejected_json_line, ReleaseRecord};
pub use report::{FunnelRow, RejectedRow};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ListBuilder, PrimitiveBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, Float32Type, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::types::{Label, Language};

/// A row type stored as Parquet: its schema and its conversions to and from Arrow.
pub trait ArrowRow: Sized + Clone + Send + 'static {
    /// The Arrow schema every file of this kind has.
    fn schema() -> SchemaRef;
    /// Builds one batch from rows, in order.
    fn to_batch(rows: &[Self]) -> Result<RecordBatch>;
    /// Reads rows back; errors name a missing column, a wrong type or a bad value.
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>>;
    /// Rough in-memory size, used by the writer to size row groups and files.
    fn approx_bytes(&self) -> usize;
}

/// The field of a `list<utf8>` or `list<f32>` column's items.
pub(crate) fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// Type equality that ignores the item field's name and nullability of lists, since other
/// writers (pyarrow) name list items "element" rather than "item".
fn same_type(found: &DataType, expected: &DataType) -> bool {
    match (found, expected) {
        (DataType::List(a), DataType::List(b)) => a.data_type() == b.data_type(),
        _ => found == expected,
    }
}

/// Fails when a required value is null, naming the column and row.
pub(crate) fn required(a: &dyn Array, name: &str, row: usize) -> Result<()> {
    if a.is_null(row) {
        Err(Error::invalid(format!(
            "column `{name}` row {row} is null but required"
        )))
    } else {
        Ok(())
    }
}

pub(crate) fn parse_language(v: &str, name: &str, row: usize) -> Result<Language> {
    v.parse()
        .map_err(|e| Error::invalid(format!("column `{name}` row {row}: {e}")))
}

pub(crate) fn parse_label(v: u8, name: &str, row: usize) -> Result<Label> {
    Label::from_u8(v).ok_or_else(|| {
        Error::invalid(format!(
            "column `{name}` row {row}: label {v} is not 0 (benign) or 1 (malicious)"
        ))
    })
}

pub(crate) fn strings_list<I, S>(rows: impl Iterator<Item = I>) -> ArrayRef
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut b = ListBuilder::new(StringBuilder::new());
    for items in rows {
        for s in items {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

pub(crate) fn floats_list<'a>(rows: impl Iterator<Item = &'a [f32]>) -> ArrayRef {
    let mut b = ListBuilder::new(PrimitiveBuilder::<Float32Type>::new());
    for items in rows {
        for v in items {
            b.values().append_value(*v);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}
