//! A minimal GGUF (version 3) writer, used to build small test models.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::{GgmlType, GgufError, MetaValue, Result, DEFAULT_ALIGNMENT};

/// Little-endian bytes of f32 values, for [`write_gguf`].
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian f16 bytes of f32 values (rounded), for [`write_gguf`].
pub fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(items) => {
            let elem_ty = items.first().map_or(0, MetaValue::type_id);
            if items.iter().any(|i| i.type_id() != elem_ty) {
                return Err(GgufError::Write(format!("array {key} mixes element types")));
            }
            out.extend_from_slice(&elem_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// Writes a GGUF v3 file with the given metadata and tensors.
///
/// Each tensor is `(name, dims, dtype, bytes)` with dims in GGUF order
/// (`dims[0]` innermost) and `bytes` its stored little-endian data; the byte
/// length must match the dims and type. The data alignment is taken from
/// `general.alignment` if present, else 32.
pub fn write_gguf(
    path: &Path,
    metadata: &BTreeMap<String, MetaValue>,
    tensors: &[(&str, &[u64], GgmlType, &[u8])],
) -> Result<()> {
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i128() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            _ => return Err(GgufError::Write("invalid general.alignment".to_string())),
        },
    };
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        out.extend_from_slice(&value.type_id().to_le_bytes());
        put_value(&mut out, key, value)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for (name, dims, dtype, bytes) in tensors {
        let (block, size) = dtype.block_layout().ok_or_else(|| {
            GgufError::Write(format!("tensor {name}: unknown layout of {dtype:?}"))
        })?;
        let n = dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d));
        let row = dims.first().copied().unwrap_or(1);
        if row % block as u64 != 0
            || (n / block as u64).saturating_mul(size as u64) != bytes.len() as u64
        {
            return Err(GgufError::Write(format!(
                "tensor {name}: {} bytes do not match dims {dims:?} of type {dtype:?}",
                bytes.len()
            )));
        }
        put_str(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims.iter() {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&dtype.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + bytes.len() as u64).div_ceil(alignment) * alignment;
    }
    let pad_to = |out: &mut Vec<u8>, len: u64| out.resize(len as usize, 0);
    let data_start = (out.len() as u64).div_ceil(alignment) * alignment;
    pad_to(&mut out, data_start);
    for ((_, _, _, bytes), off) in tensors.iter().zip(offsets) {
        pad_to(&mut out, data_start + off);
        out.extend_from_slice(bytes);
    }
    let io = |e: std::io::Error| GgufError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(&out).map_err(io)?;
    file.flush().map_err(io)
}
