//! Enums stored as Arrow dictionary columns: a value is an `int8` code into a dictionary of
//! names (`dictionary<int8, utf8>`, or a list of them), so a file holds one byte per value
//! and still reads as names in pyarrow or DuckDB. The mapping is each type's
//! [`Coded::ALL`]: code `i` is `ALL[i]`, named [`Coded::name`]. Writers store that whole
//! dictionary; readers look a value up by its name, never by its code, so a file whose
//! dictionary lists the names in another order (another writer's) reads the same.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, DictionaryArray, Int8Array, ListArray, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int8Type};

use super::columns::{downcast, items, Column, Nullable};
use super::{required, FinishReason, FunnelReason, JudgeVerdict};
use crate::error::{Error, Result};

/// An enum with a fixed, documented code per value.
pub(crate) trait Coded: Copy + PartialEq + 'static {
    /// Every value, in code order.
    const ALL: &'static [Self];
    /// The stored name.
    fn name(self) -> &'static str;
    /// The value's position in [`Coded::ALL`].
    fn code(self) -> i8;
}

impl Coded for FinishReason {
    const ALL: &'static [Self] = &FinishReason::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }

    fn code(self) -> i8 {
        self as i8
    }
}

impl Coded for FunnelReason {
    const ALL: &'static [Self] = &FunnelReason::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }

    fn code(self) -> i8 {
        self as i8
    }
}

impl Coded for JudgeVerdict {
    const ALL: &'static [Self] = &JudgeVerdict::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }

    fn code(self) -> i8 {
        self.code()
    }
}

fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8))
}

fn dictionary<E: Coded>(values: impl Iterator<Item = Option<E>>) -> DictionaryArray<Int8Type> {
    let codes: Int8Array = values.map(|v| v.map(E::code)).collect();
    let names = StringArray::from_iter_values(E::ALL.iter().map(|e| e.name()));
    DictionaryArray::new(codes, Arc::new(names))
}

/// The value at `i` of a dictionary column (`name`, `row` for errors), by its name.
fn decode<E: Coded>(col: &dyn Array, i: usize, name: &str, row: usize) -> Result<E> {
    let dict = downcast::<DictionaryArray<Int8Type>>(col, name)?;
    let names = downcast::<StringArray>(dict.values().as_ref(), name)?;
    let code = dict.keys().value(i);
    let stored = usize::try_from(code)
        .ok()
        .filter(|&k| k < names.len())
        .map(|k| names.value(k))
        .ok_or_else(|| {
            Error::invalid(format!(
                "column `{name}` row {row}: code {code} is outside its dictionary"
            ))
        })?;
    E::ALL
        .iter()
        .copied()
        .find(|e| e.name() == stored)
        .ok_or_else(|| {
            let known: Vec<&str> = E::ALL.iter().map(|e| e.name()).collect();
            Error::invalid(format!(
                "column `{name}` row {row}: unknown value {stored:?} (expected one of {known:?})"
            ))
        })
}

macro_rules! coded_column {
    ($ty:ty) => {
        impl Column for $ty {
            fn data_type() -> DataType {
                dictionary_type()
            }

            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Self::build_opt(values.map(Some))
            }

            fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self> {
                required(col, name, row)?;
                decode(col, row, name, row)
            }
        }

        impl Nullable for $ty {
            fn build_opt<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
                Arc::new(dictionary(values.map(|v| v.copied())))
            }
        }

        impl Column for Vec<$ty> {
            fn data_type() -> DataType {
                super::list_of(dictionary_type())
            }

            fn build<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                let rows: Vec<&Self> = values.collect();
                let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.len()));
                let flat = rows.iter().flat_map(|r| r.iter().copied().map(Some));
                let field = Field::new_list_field(dictionary_type(), true);
                Arc::new(ListArray::new(
                    Arc::new(field),
                    offsets,
                    Arc::new(dictionary(flat)),
                    None,
                ))
            }

            fn read(col: &dyn Array, name: &str, row: usize) -> Result<Self> {
                let list = items(col, name, row)?;
                (0..list.len())
                    .map(|i| decode(list.as_ref(), i, name, row))
                    .collect()
            }
        }
    };
}

coded_column!(FinishReason);
coded_column!(FunnelReason);
coded_column!(JudgeVerdict);

#[cfg(test)]
mod tests {
    use super::*;

    fn codes_follow_all<E: Coded + std::fmt::Debug>() {
        for (i, e) in E::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, i, "{e:?}");
        }
        let mut names: Vec<&str> = E::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), E::ALL.len(), "names are distinct");
    }

    #[test]
    fn every_code_is_its_position_in_the_dictionary() {
        codes_follow_all::<FinishReason>();
        codes_follow_all::<FunnelReason>();
        codes_follow_all::<JudgeVerdict>();
    }

    #[test]
    fn values_are_read_by_name_whatever_the_dictionary_order() {
        // Another writer's dictionary: reversed, with a name no stage writes.
        let names = StringArray::from(vec!["label_only", "stop", "no_such_finish"]);
        let codes = Int8Array::from(vec![1, 0, 2]);
        let col = DictionaryArray::<Int8Type>::new(codes, Arc::new(names));
        assert_eq!(
            FinishReason::read(&col, "finish", 0).unwrap(),
            FinishReason::Stop
        );
        assert_eq!(
            FinishReason::read(&col, "finish", 1).unwrap(),
            FinishReason::LabelOnly
        );
        let err = FinishReason::read(&col, "finish", 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`finish` row 2") && err.contains("no_such_finish"),
            "{err}"
        );
    }
}
