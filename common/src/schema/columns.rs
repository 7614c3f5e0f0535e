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
//! | `FinishReason`, `FunnelReason`, `JudgeVerdict` | `dictionary<int8, utf8>`, see [`super::coded`] |
//! | `Vec<String>` | `list<utf8>` |
//! | `Vec` of one of those enums | `list<dictionary<int8, utf8>>` |
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

use super::{floats_list, list_of, parse_label, parse_language, required, same_type, strings_list};
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

pub(crate) fn downcast<'a, T: Array + 'static>(col: &'a dyn Array, name: &str) -> Result<&'a T> {
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

/// The items of list column `name` at `row`.
pub(crate) fn items(col: &dyn Array, name: &str, row: usize) -> Result<ArrayRef> {
    required(col, name, row)?;
    Ok(downcast::<ListArray>(col, name)?.value(row))
}

/// `list<utf8>`; a null item reads as "".
impl Column for Vec<String> {
    fn data_type() -> DataType {
        list_of(DataType::Utf8)
    }

    fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        strings_list(values.map(|v| v.iter()))
    }

    fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self> {
        let list = items(col, name, row)?;
        let strings = downcast::<StringArray>(&list, name)?;
        Ok(strings
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect())
    }
}

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

#[cfg(test)]
mod tests {
    use arrow::array::{ListBuilder, StringBuilder};
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::schema::{AnswersRow, ArrowRow, FunnelRow, LabelledRow, ReleaseRecord};

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let arrays = columns.into_iter().map(|(_, a)| a).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    fn error<T: ArrowRow + std::fmt::Debug>(b: &RecordBatch) -> String {
        T::from_batch(b).unwrap_err().to_string()
    }

    #[test]
    fn the_schema_follows_the_fields_names_order_types_and_options() {
        let schema = ReleaseRecord::schema();
        let got: Vec<(&str, DataType, bool)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .collect();
        let want = vec![
            ("sha256", DataType::Utf8, false),
            ("label", DataType::UInt8, false),
            ("language", DataType::Utf8, false),
            ("summary", DataType::Utf8, false),
            ("provenance", DataType::Utf8, false),
            ("label_prob", DataType::Float32, true),
            ("iteration", DataType::UInt32, false),
        ];
        assert_eq!(got, want);
        let lists = AnswersRow::schema();
        assert_eq!(lists.field(2).data_type(), &list_of(DataType::Float32));
        assert_eq!(lists.field(3).data_type(), &list_of(DataType::Utf8));
        let codes = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
        assert_eq!(lists.field(5).data_type(), &list_of(codes));
    }

    #[test]
    fn reading_names_the_column_and_row_of_what_is_wrong() {
        let strs = |v: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
        let count: ArrayRef = Arc::new(UInt64Array::from(vec![1, 2]));
        let ok = batch(vec![
            ("stage", strs(vec![Some("a"), Some("b")])),
            ("reason", strs(vec![Some("x"), Some("y")])),
            ("count", count.clone()),
        ]);
        assert_eq!(FunnelRow::from_batch(&ok).unwrap()[1].count, 2);
        let missing = batch(vec![
            ("stage", strs(vec![Some("a")])),
            ("count", Arc::new(UInt64Array::from(vec![1]))),
        ]);
        assert_eq!(
            error::<FunnelRow>(&missing),
            "invalid input: column `reason` is missing (expected type Utf8)"
        );
        let wrong = batch(vec![
            ("stage", strs(vec![Some("a"), Some("b")])),
            ("reason", strs(vec![Some("x"), Some("y")])),
            ("count", Arc::new(UInt32Array::from(vec![1, 2]))),
        ]);
        assert_eq!(
            error::<FunnelRow>(&wrong),
            "invalid input: column `count` has type UInt32, expected UInt64"
        );
        let null = batch(vec![
            ("stage", strs(vec![Some("a"), Some("b")])),
            ("reason", strs(vec![Some("x"), None])),
            ("count", count),
        ]);
        assert_eq!(
            error::<FunnelRow>(&null),
            "invalid input: column `reason` row 1 is null but required"
        );

        let mut behaviours = ListBuilder::new(StringBuilder::new());
        behaviours.append(true);
        let labelled = |label: u8, language: &str| {
            batch(vec![
                ("sha256", strs(vec![Some("ab")])),
                ("language", strs(vec![Some(language)])),
                ("label", Arc::new(UInt8Array::from(vec![label]))),
                ("summary", strs(vec![Some("s")])),
                ("behaviours", Arc::new(behaviours.finish_cloned())),
                ("provenance", strs(vec![Some("seed")])),
            ])
        };
        assert_eq!(
            LabelledRow::from_batch(&labelled(1, "bash")).unwrap()[0].label,
            Label::Malicious
        );
        assert!(error::<LabelledRow>(&labelled(7, "bash"))
            .contains("column `label` row 0: label 7 is not 0 (benign) or 1 (malicious)"));
        assert!(error::<LabelledRow>(&labelled(0, "cobol")).contains("column `language` row 0"));
    }

    #[test]
    fn options_read_nulls_as_none_and_lists_parse_their_items() {
        use super::super::FinishReason;
        use arrow::array::{ListBuilder, StringDictionaryBuilder};
        use arrow::datatypes::Int8Type;

        let v: Vec<Option<f32>> = vec![Some(0.5), None];
        let col = <Option<f32>>::build(v.iter());
        assert_eq!(col.null_count(), 1);
        assert_eq!(
            <Option<f32>>::read(col.as_ref(), "p", 0).unwrap(),
            Some(0.5)
        );
        assert_eq!(<Option<f32>>::read(col.as_ref(), "p", 1).unwrap(), None);
        assert!(f32::read(col.as_ref(), "p", 1)
            .unwrap_err()
            .to_string()
            .contains("row 1 is null"));

        let finishes = [vec![FinishReason::Stop, FinishReason::Length], vec![]];
        let col = <Vec<FinishReason>>::build(finishes.iter());
        assert_eq!(
            <Vec<FinishReason>>::read(col.as_ref(), "finishes", 0).unwrap(),
            finishes[0]
        );
        assert_eq!(
            <Vec<FinishReason>>::read(col.as_ref(), "finishes", 1).unwrap(),
            vec![]
        );
        let mut b = ListBuilder::new(StringDictionaryBuilder::<Int8Type>::new());
        b.values().append_value("stop");
        b.values().append_value("melted");
        b.append(true);
        let bad = b.finish();
        let err = <Vec<FinishReason>>::read(&bad, "finishes", 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column `finishes` row 0") && err.contains("melted"),
            "{err}"
        );
    }
}
