//! Arrow schemas and row structs for every dataset the pipeline stores, so that the importer,
//! the stages and the reports all speak one vocabulary. Each row type converts to and from a
//! `RecordBatch`; reading checks every column's presence and type and names the culprit.

mod corpus;
mod generation;
mod pipeline;
mod release;
mod report;

pub use corpus::{check_identity, CheckedRows, CorpusRow, LabelledRow};
pub use generation::FinishReason;
pub use pipeline::{AnswersRow, DecisionRow, JudgeVerdict};
pub use release::{rejected_json_line, ReleaseRecord};
pub use report::{FunnelRow, RejectedRow};

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, ListArray, ListBuilder,
    PrimitiveBuilder, StringArray, StringBuilder, UInt32Array, UInt64Array, UInt8Array,
};
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

pub(crate) fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Type equality that ignores the item field's name and nullability of lists, since other
/// writers (pyarrow) name list items "element" rather than "item".
fn same_type(found: &DataType, expected: &DataType) -> bool {
    match (found, expected) {
        (DataType::List(a), DataType::List(b)) => a.data_type() == b.data_type(),
        _ => found == expected,
    }
}

fn column<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    expected: &DataType,
) -> Result<&'a T> {
    let idx = batch.schema().index_of(name).map_err(|_| {
        Error::invalid(format!(
            "column `{name}` is missing (expected type {expected})"
        ))
    })?;
    let col = batch.column(idx);
    if !same_type(col.data_type(), expected) {
        return Err(Error::invalid(format!(
            "column `{name}` has type {}, expected {expected}",
            col.data_type()
        )));
    }
    col.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| Error::Internal(format!("column `{name}` did not downcast to {expected}")))
}

pub(crate) fn str_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    column(b, name, &DataType::Utf8)
}
pub(crate) fn bin_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray> {
    column(b, name, &DataType::Binary)
}
pub(crate) fn u8_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a UInt8Array> {
    column(b, name, &DataType::UInt8)
}
pub(crate) fn u32_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a UInt32Array> {
    column(b, name, &DataType::UInt32)
}
pub(crate) fn u64_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a UInt64Array> {
    column(b, name, &DataType::UInt64)
}
pub(crate) fn f32_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a Float32Array> {
    column(b, name, &DataType::Float32)
}
pub(crate) fn bool_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a BooleanArray> {
    column(b, name, &DataType::Boolean)
}
pub(crate) fn list_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    item: DataType,
) -> Result<&'a ListArray> {
    column(b, name, &list_of(item))
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

pub(crate) fn opt_str(a: &StringArray, row: usize) -> Option<String> {
    (!a.is_null(row)).then(|| a.value(row).to_string())
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

pub(crate) fn opt_language(a: &StringArray, name: &str, row: usize) -> Result<Option<Language>> {
    if a.is_null(row) {
        Ok(None)
    } else {
        parse_language(a.value(row), name, row).map(Some)
    }
}

pub(crate) fn opt_label(a: &UInt8Array, name: &str, row: usize) -> Result<Option<Label>> {
    if a.is_null(row) {
        Ok(None)
    } else {
        parse_label(a.value(row), name, row).map(Some)
    }
}

pub(crate) fn strings_at(a: &ListArray, name: &str, row: usize) -> Result<Vec<String>> {
    required(a, name, row)?;
    let v = a.value(row);
    let s = v
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Internal(format!("column `{name}` items are not utf8")))?;
    Ok(s.iter()
        .map(|x| x.unwrap_or_default().to_string())
        .collect())
}

/// The strings of list column `name` at `row`, each parsed; a value that does not parse is
/// an error naming the column and the row.
pub(crate) fn parsed_at<T: std::str::FromStr<Err = Error>>(
    a: &ListArray,
    name: &str,
    row: usize,
) -> Result<Vec<T>> {
    strings_at(a, name, row)?
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| Error::invalid(format!("column `{name}` row {row}: {e}")))
        })
        .collect()
}

pub(crate) fn floats_at(a: &ListArray, name: &str, row: usize) -> Result<Vec<f32>> {
    required(a, name, row)?;
    let v = a.value(row);
    let s = v
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| Error::Internal(format!("column `{name}` items are not f32")))?;
    Ok(s.iter().map(|x| x.unwrap_or(f32::NAN)).collect())
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

pub(crate) fn strs<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

pub(crate) fn opt_strs<'a>(v: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(v.collect::<StringArray>())
}
