//! Typed metadata accessors for [`GgufFile`].
//!
//! Integer getters accept any stored integer type whose value fits the
//! requested type; float getters accept f32 and f64. A missing key is an
//! error naming the key; the `_opt` variants return `Ok(None)` instead.

use super::{GgufError, GgufFile, MetaValue, Result};

fn wrong(key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_name(),
    }
}

fn int<T: TryFrom<i128>>(key: &str, v: &MetaValue, expected: &'static str) -> Result<T> {
    v.as_i128()
        .and_then(|i| T::try_from(i).ok())
        .ok_or_else(|| wrong(key, expected, v))
}

fn array<'a>(key: &str, v: &'a MetaValue) -> Result<&'a [MetaValue]> {
    match v {
        MetaValue::Array(items) => Ok(items),
        other => Err(wrong(key, "array", other)),
    }
}

macro_rules! int_getters {
    ($($get:ident, $opt:ident, $ty:ty, $name:literal;)*) => {
        impl GgufFile {
            $(
                #[doc = concat!("Integer metadata value converted to ", $name, ".")]
                pub fn $get(&self, key: &str) -> Result<$ty> {
                    int(key, self.get(key)?, $name)
                }

                #[doc = concat!("Like [`GgufFile::", stringify!($get), "`], but a missing key is `None`.")]
                pub fn $opt(&self, key: &str) -> Result<Option<$ty>> {
                    self.metadata().get(key).map(|v| int(key, v, $name)).transpose()
                }
            )*
        }
    };
}

int_getters! {
    get_u32, get_u32_opt, u32, "u32";
    get_i32, get_i32_opt, i32, "i32";
    get_u64, get_u64_opt, u64, "u64";
    get_i64, get_i64_opt, i64, "i64";
    get_usize, get_usize_opt, usize, "usize";
}

impl GgufFile {
    /// Float metadata value (f32 or f64) as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.get(key)?;
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| wrong(key, "f32", v))
    }

    /// Like [`GgufFile::get_f32`], but a missing key is `None`.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.metadata().get(key) {
            None => Ok(None),
            Some(_) => self.get_f32(key).map(Some),
        }
    }

    /// Boolean metadata value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            MetaValue::Bool(b) => Ok(*b),
            other => Err(wrong(key, "bool", other)),
        }
    }

    /// Like [`GgufFile::get_bool`], but a missing key is `None`.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata().get(key) {
            None => Ok(None),
            Some(_) => self.get_bool(key).map(Some),
        }
    }

    /// String metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| wrong(key, "string", v))
    }

    /// Like [`GgufFile::get_str`], but a missing key is `None`.
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata().get(key) {
            None => Ok(None),
            Some(_) => self.get_str(key).map(Some),
        }
    }

    /// Array metadata value, as raw items.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        array(key, self.get(key)?)
    }

    /// Array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong(key, "string array", v))
            })
            .collect()
    }

    /// Array of floats (f32 or f64 items) as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| wrong(key, "f32 array", v))
            })
            .collect()
    }

    /// Array of integers that fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array(key)?
            .iter()
            .map(|v| int(key, v, "i32 array"))
            .collect()
    }

    /// Array of integers that fit in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.get_array(key)?
            .iter()
            .map(|v| int(key, v, "u32 array"))
            .collect()
    }
}
