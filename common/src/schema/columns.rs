//! How each stored field type maps to an Arrow column, and [`arrow_row!`], which writes a
//! row type's [`ArrowRow`](super::ArrowRow) impl from its list of fields: the schema (one
//! column per field, named after it, nullable exactly for `Option` fields), the batch
//! builder and the reader. A field's type alone decides its column:
//!
//! | field type | column |
//! |---|---|
//! | `String` | `utf8` |
//! | `Vec<u8>` | `binary` |
//! | `u32`, `u64`, `f32`, `bool` | `uint32`, `uint64`, `float32`, `boolean` |
//! | `Language` | `utf8`, its name (`bash`, ...) |
//! | `Label` | `uint8`, 0 benign, 1 malicious |
//! | `Option<T>` | `T`'s column, nullable |
//! | `Vec<String>`, `Vec<FinishReason>`, `Vec<JudgeVerdict>` | `list<utf8>`, enums by their stored names |
//! | `Vec<f32>` | `list<float32>` |
//!
//! Reading checks each column's presence and type once per batch and every value once,
//! naming the column and row of the first bad one; a null in a column of a non-`Option`
//! field is an error.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, ListArray, StringArray, UInt32Array,
    UInt64Array, UInt8Array,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use super::{
    floats_list, list_of, parse_label, parse_language, required, same_type, strings_list,
    FinishReason, JudgeVerdict,
};
use crate::error::{Error, Result};
use crate::types::{Label, Language};

/// A field type stored as one Arrow column.
pub(crate) trait Column: Sized {
    /// Whether the column may hold nulls.
    const NULLABLE: bool = false;
    /// The column's Arrow type.
    fn data_type() -> DataType;
    /// The column of `values`, in row order.
    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// The value at `row` of `col` (of [`Column::data_type`]), errors naming `name`.
    fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self>;
}

/// A type stored as a nullable column when it is an `Option`.
pub(crate) trait Nullable: Column {
    fn build_opt<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef
    where
        Self: 'a;
}

fn downcast<'a, T: Array + 'static>(col: &'a dyn Array, name: &str) -> Result<&'a T> {
    col.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| Error::Internal(format!("column `{name}` did not downcast")))
}

/// Column `name` of `batch`, checked to be of `expected` type.
pub(crate) fn checked<'a>(
    batch: &'a RecordBatch,
    name: &str,
    expected: &DataType,
) -> Result<&'a ArrayRef> {
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
    Ok(col)
}

/// Implements [`Column`] and [`Nullable`] for a scalar stored in an Arrow array type:
/// `$to` maps `&Self` to the array's value, `$from` the array's value at a row to `Self`.
macro_rules! scalar_column {
    ($ty:ty, $array:ty, $dt:expr, |$v:ident| $to:expr, |$a:ident, $name:ident, $row:ident| $from:expr) => {
        impl Column for $ty {
            fn data_type() -> DataType {
                $dt
            }

            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Self::build_opt(values.map(Some))
            }

            fn read(col: &dyn Array, $name: &str, $row: usize) -> Result<Self> {
                required(col, $name, $row)?;
                let $a = downcast::<$array>(col, $name)?;
                $from
            }
        }

        impl Nullable for $ty {
            fn build_opt<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
                Arc::new(values.map(|o| o.map(|$v| $to)).collect::<$array>())
            }
        }
    };
}

scalar_column!(
    String,
    StringArray,
    DataType::Utf8,
    |v| v.as_str(),
    |a, _n, row| Ok(a.value(row).to_string())
);
scalar_column!(
    Vec<u8>,
    BinaryArray,
    DataType::Binary,
    |v| v.as_slice(),
    |a, _n, row| Ok(a.value(row).to_vec())
);
scalar_column!(u32, UInt32Array, DataType::UInt32, |v| *v, |a, _n, row| Ok(
    a.value(row)
));
scalar_column!(u64, UInt64Array, DataType::UInt64, |v| *v, |a, _n, row| Ok(
    a.value(row)
));
scalar_column!(
    f32,
    Float32Array,
    DataType::Float32,
    |v| *v,
    |a, _n, row| Ok(a.value(row))
);
scalar_column!(
    bool,
    BooleanArray,
    DataType::Boolean,
    |v| *v,
    |a, _n, row| Ok(a.value(row))
);
scalar_column!(
    Language,
    StringArray,
    DataType::Utf8,
    |v| v.as_str(),
    |a, name, row| parse_language(a.value(row), name, row)
);
scalar_column!(
    Label,
    UInt8Array,
    DataType::UInt8,
    |v| v.as_u8(),
    |a, name, row| parse_label(a.value(row), name, row)
);

impl<T: Nullable> Column for Option<T> {
    const NULLABLE: bool = true;

    fn data_type() -> DataType {
        T::data_type()
    }

    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a,
    {
        T::build_opt(values.map(Option::as_ref))
    }

    fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self> {
        match col.is_null(row) {
            true => Ok(None),
            false => T::read(col, name, row).map(Some),
        }
    }
}

/// An item of a list column stored as its name (`list<utf8>`).
pub(crate) trait Named: Sized {
    fn name(&self) -> &str;
    fn from_name(name: &str) -> Result<Self>;
}

impl Named for String {
    fn name(&self) -> &str {
        self
    }

    fn from_name(name: &str) -> Result<Self> {
        Ok(name.to_string())
    }
}

impl Named for FinishReason {
    fn name(&self) -> &str {
        self.as_str()
    }

    fn from_name(name: &str) -> Result<Self> {
        name.parse()
    }
}

impl Named for JudgeVerdict {
    fn name(&self) -> &str {
        self.as_str()
    }

    fn from_name(name: &str) -> Result<Self> {
        name.parse()
    }
}

/// The items of list column `name` at `row`.
fn items<'a>(col: &'a dyn Array, name: &str, row: usize) -> Result<ArrayRef> {
    required(col, name, row)?;
    Ok(downcast::<ListArray>(col, name)?.value(row))
}

/// Implements [`Column`] for `Vec<$item>`, a [`Named`] item, as `list<utf8>`.
macro_rules! named_list {
    ($item:ty) => {
        impl Column for Vec<$item> {
            fn data_type() -> DataType {
                list_of(DataType::Utf8)
            }

            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                strings_list(values.map(|v| v.iter().map(Named::name)))
            }

            fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self> {
                let list = items(col, name, row)?;
                let strings = downcast::<StringArray>(&list, name)?;
                strings
                    .iter()
                    .map(|s| {
                        <$item>::from_name(s.unwrap_or_default())
                            .map_err(|e| Error::invalid(format!("column `{name}` row {row}: {e}")))
                    })
                    .collect()
            }
        }
    };
}

named_list!(String);
named_list!(FinishReason);
named_list!(JudgeVerdict);

/// `list<float32>`; a null item reads as NaN.
impl Column for Vec<f32> {
    fn data_type() -> DataType {
        list_of(DataType::Float32)
    }

    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        floats_list(values.map(Vec::as_slice))
    }

    fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self> {
        let list = items(col, name, row)?;
        let floats = downcast::<Float32Array>(&list, name)?;
        Ok(floats.iter().map(|x| x.unwrap_or(f32::NAN)).collect())
    }
}

/// Writes `impl ArrowRow for $row` from its fields (each `name: Type`, in column order),
/// its size estimate, and optionally a check of each row read (`check(row, index) => ...`,
/// a `Result<()>`).
macro_rules! arrow_row {
    (
        $row:ident { $($field:ident: $ty:ty),+ $(,)? }
        approx_bytes($me:ident) => $bytes:expr
        $(, check($r:ident, $i:ident) => $check:expr)?
        $(,)?
    ) => {
        impl $crate::schema::ArrowRow for $row {
            fn schema() -> arrow::datatypes::SchemaRef {
                use $crate::schema::columns::Column;
                static S: std::sync::OnceLock<arrow::datatypes::SchemaRef> =
                    std::sync::OnceLock::new();
                S.get_or_init(|| {
                    std::sync::Arc::new(arrow::datatypes::Schema::new(vec![$(
                        arrow::datatypes::Field::new(
                            stringify!($field),
                            <$ty as Column>::data_type(),
                            <$ty as Column>::NULLABLE,
                        ),
                    )+]))
                })
                .clone()
            }

            fn to_batch(rows: &[Self]) -> $crate::error::Result<arrow::record_batch::RecordBatch> {
                use $crate::schema::columns::Column;
                let columns = vec![$(<$ty as Column>::build(rows.iter().map(|r| &r.$field))),+];
                Ok(arrow::record_batch::RecordBatch::try_new(Self::schema(), columns)?)
            }

            fn from_batch(
                batch: &arrow::record_batch::RecordBatch,
            ) -> $crate::error::Result<Vec<Self>> {
                use $crate::schema::columns::{checked, Column};
                $(let $field = checked(batch, stringify!($field), &<$ty as Column>::data_type())?;)+
                (0..batch.num_rows())
                    .map(|i| {
                        let row = $row {
                            $($field: <$ty as Column>::read($field.as_ref(), stringify!($field), i)?,)+
                        };
                        $({
                            let ($r, $i) = (&row, i);
                            $check?;
                        })?
                        Ok(row)
                    })
                    .collect()
            }

            fn approx_bytes(&self) -> usize {
                let $me = self;
                $bytes
            }
        }
    };
}
pub(crate) use arrow_row;
