//! Parsing of the GGUF header: metadata and tensor descriptors.

use std::collections::BTreeMap;

use super::{GgmlType, GgufError, MetaValue, Result, TensorInfo, DEFAULT_ALIGNMENT};

/// `"GGUF"` read as a little-endian u32.
pub(crate) const MAGIC: u32 = 0x4655_4747;

/// Deepest nesting of arrays accepted, to bound recursion on corrupt input.
const MAX_ARRAY_DEPTH: usize = 8;

/// The parsed header of a GGUF file.
pub(crate) struct Header {
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let truncated = || GgufError::Truncated {
            what: what.to_string(),
            offset: self.pos as u64,
            needed: n as u64,
        };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let out = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a count and checks that at least `count * min_size` bytes remain,
    /// so corrupt counts fail cleanly instead of allocating huge vectors.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let offset = self.pos as u64;
        let n = self.u64(what)?;
        let remaining = (self.buf.len() - self.pos) as u64;
        let needed = n.saturating_mul(min_size as u64);
        if needed > remaining {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset,
                needed,
            });
        }
        usize::try_from(n).map_err(|_| GgufError::Truncated {
            what: what.to_string(),
            offset,
            needed,
        })
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, what)?;
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8(start))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => MetaValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 if depth < MAX_ARRAY_DEPTH => {
                let elem_ty = self.u32(key)?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(GgufError::UnknownValueType {
                            key: key.to_string(),
                            ty: elem_ty,
                        })
                    }
                };
                let n = self.count(min_size, key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    ty,
                })
            }
        })
    }
}

/// Parses the header of a complete GGUF file held in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.u32("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32("version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(GgufError::BigEndian);
    }
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // Each tensor descriptor takes at least 8 (name) + 4 + 8 + 4 + 8 bytes.
    let n_tensors = c.count(32, "tensor count")?;
    // Each key/value pair takes at least 8 (key) + 4 + 1 bytes.
    let n_kv = c.count(13, "metadata count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            Some(a) => return Err(GgufError::BadAlignment(a.max(0) as u64)),
            None => {
                return Err(GgufError::WrongType {
                    key: "general.alignment".to_string(),
                    expected: "integer",
                    found: v.type_name(),
                })
            }
        },
    };

    let mut raw = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)? as usize;
        if n_dims > 8 {
            return Err(bad(&name, format!("{n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let id = c.u32(&name)?;
        let dtype = GgmlType::from_id(id).ok_or_else(|| GgufError::UnknownGgmlType {
            tensor: name.clone(),
            id,
        })?;
        let rel = c.u64(&name)?;
        raw.push((name, dims, dtype, rel));
    }

    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, dtype, rel) in raw {
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(&name, "element count overflows".to_string()))?;
        let n_bytes = match dtype.block_layout() {
            Some((block, size)) => {
                let row = dims.first().copied().unwrap_or(1);
                if row % block as u64 != 0 {
                    return Err(bad(
                        &name,
                        format!("row length {row} is not a multiple of the {dtype:?} block size {block}"),
                    ));
                }
                (n_elements / block as u64)
                    .checked_mul(size as u64)
                    .ok_or_else(|| bad(&name, "byte size overflows".to_string()))?
            }
            None => 0,
        };
        let start = data_start
            .checked_add(rel)
            .ok_or_else(|| bad(&name, "offset overflows".to_string()))?;
        let end = start.saturating_add(n_bytes);
        if end > file_len {
            return Err(GgufError::TensorOutOfBounds {
                tensor: name,
                start,
                end,
                file_len,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            dtype,
            offset: start,
        });
    }

    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
    })
}

fn bad(tensor: &str, reason: String) -> GgufError {
    GgufError::BadTensor {
        tensor: tensor.to_string(),
        reason,
    }
}
