//! Reader of Hugging Face safetensors checkpoints: one `model.safetensors`, or shards listed
//! by `model.safetensors.index.json`. Files are memory-mapped; tensors are converted to f32
//! on request, so a checkpoint is never held twice in memory.
//!
//! The format: an 8-byte little-endian header length, a JSON header mapping each tensor
//! name to `{dtype, shape, data_offsets}` (offsets relative to the end of the header), then
//! the data. Every entry is validated when the file is opened, so a truncated or corrupt
//! file is refused before any weight is built.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;

use crate::model::load::{LoadError, TensorSource};

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Element types the reader converts to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::BF16),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the mapped file.
    start: usize,
    end: usize,
}

/// An opened checkpoint (one or several files).
pub struct SafeTensors {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// Largest header accepted (the format's own reference reader uses the same bound).
const MAX_HEADER: usize = 100 << 20;

impl SafeTensors {
    /// Opens a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a
    /// directory holding either.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                return Self::open_index(&index);
            }
            return Self::open_files(&[path.join("model.safetensors")]);
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Self::open_index(path);
        }
        Self::open_files(&[path.to_path_buf()])
    }

    fn open_index(index: &Path) -> Result<Self, SafetensorsError> {
        let text = std::fs::read_to_string(index).map_err(|source| SafetensorsError::Io {
            path: index.display().to_string(),
            source,
        })?;
        let parsed: Index = serde_json::from_str(&text).map_err(|e| invalid(index, e))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = Vec::new();
        for name in parsed.weight_map.values() {
            if name.contains('/') || name.contains('\\') || name == ".." {
                return Err(invalid(
                    index,
                    format!("shard name {name:?} is not a file name"),
                ));
            }
            let p = dir.join(name);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        let st = Self::open_files(&files)?;
        // Every tensor the index names must be in the shard it names.
        for (tensor, shard) in &parsed.weight_map {
            let found = st.entries.get(tensor).map(|e| &st.paths[e.file]);
            if found != Some(&dir.join(shard)) {
                return Err(invalid(
                    index,
                    format!("tensor {tensor} is not in its shard {shard}"),
                ));
            }
        }
        Ok(st)
    }

    fn open_files(paths: &[PathBuf]) -> Result<Self, SafetensorsError> {
        let mut st = Self {
            paths: Vec::new(),
            maps: Vec::new(),
            entries: BTreeMap::new(),
        };
        for path in paths {
            let io = |source| SafetensorsError::Io {
                path: path.display().to_string(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            // SAFETY: the mapping is read-only and the file is not modified while mapped
            // (the same contract as every model runtime that maps its weights).
            let map = unsafe { Mmap::map(&file) }.map_err(io)?;
            let id = st.maps.len();
            for (name, entry) in parse_header(path, &map, id)? {
                if st.entries.insert(name.clone(), entry).is_some() {
                    return Err(invalid(path, format!("tensor {name} appears twice")));
                }
            }
            st.paths.push(path.clone());
            st.maps.push(map);
        }
        Ok(st)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// The tensor converted to f32, row-major.
    pub fn to_f32(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        let bytes = &self.maps[e.file][e.start..e.end];
        Some(match e.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

/// The string metadata (`__metadata__`) of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, SafetensorsError> {
    let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_HEADER && n + 8 <= bytes.len())
        .ok_or_else(|| invalid(path, "no valid header"))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).map_err(|e| invalid(path, e))?;
    match header.get("__metadata__") {
        None => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| invalid(path, format!("__metadata__: {e}"))),
    }
}

/// Writes f32 tensors `(name, shape, data)` as one safetensors file, with string metadata
/// (the `__metadata__` entry). Names are stored in order; the header is padded to 8 bytes.
pub fn write_f32(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &BTreeMap<String, String>,
) -> Result<(), SafetensorsError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(invalid(
                path,
                format!("{name}: shape {shape:?} but {} values", data.len()),
            ));
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}),
        );
        offset += 4 * n;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| invalid(path, e))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, _, data) in tensors {
        for v in data.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, out).map_err(|source| SafetensorsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, reason: impl ToString) -> SafetensorsError {
    SafetensorsError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn parse_header(
    path: &Path,
    map: &[u8],
    file: usize,
) -> Result<Vec<(String, Entry)>, SafetensorsError> {
    let len_bytes: [u8; 8] = map
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid(path, "shorter than the 8-byte header length"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    let data_start = usize::try_from(header_len)
        .ok()
        .filter(|&n| n <= MAX_HEADER)
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= map.len())
        .ok_or_else(|| {
            invalid(
                path,
                format!("header length {header_len} does not fit the file"),
            )
        })?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&map[8..data_start]).map_err(|e| invalid(path, e))?;
    let data_len = map.len() - data_start;
    let mut out = Vec::with_capacity(header.len());
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let h: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| invalid(path, format!("tensor {name}: {e}")))?;
        let dtype = Dtype::parse(&h.dtype).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "tensor {name}: dtype {} is not supported (F32, F16, BF16)",
                    h.dtype
                ),
            )
        })?;
        let [begin, end] = h.data_offsets;
        let numel = h
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size()));
        if begin > end || end > data_len || Some(end - begin) != expected {
            return Err(invalid(
                path,
                format!(
                    "tensor {name}: bytes {begin}..{end} do not hold shape {:?} of {} in {data_len} data bytes",
                    h.shape, h.dtype
                ),
            ));
        }
        out.push((
            name,
            Entry {
                file,
                dtype,
                shape: h.shape,
                start: data_start + begin,
                end: data_start + end,
            },
        ));
    }
    Ok(out)
}

impl TensorSource for SafeTensors {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, LoadError> {
        self.to_f32(name).ok_or_else(|| LoadError::Missing {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_every_dtype_and_checks_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        for x in [1.5f32, -2.0] {
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        data.extend_from_slice(&half::bf16::from_f32(-3.0).to_le_bytes());
        let header = r#"{"__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},
            "b":{"dtype":"F16","shape":[1],"data_offsets":[8,10]},
            "c":{"dtype":"BF16","shape":[1],"data_offsets":[10,12]}}"#;
        let p = write(dir.path(), "m.safetensors", header, &data);
        let st = SafeTensors::open(&p).unwrap();
        assert_eq!(st.shape("a"), Some(vec![1, 2]));
        assert_eq!(st.to_f32("a").unwrap(), vec![1.5, -2.0]);
        assert_eq!(st.to_f32("b").unwrap(), vec![0.25]);
        assert_eq!(st.to_f32("c").unwrap(), vec![-3.0]);
        assert_eq!(st.names().collect::<Vec<_>>(), vec!["a", "b", "c"]);

        let bad = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let p = write(dir.path(), "bad.safetensors", bad, &data[..8]);
        let err = SafeTensors::open(&p).err().unwrap().to_string();
        assert!(err.contains("tensor a") && err.contains("[3]"), "{err}");

        let p = write(
            dir.path(),
            "i8.safetensors",
            r#"{"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#,
            &[1],
        );
        let err = SafeTensors::open(&p).err().unwrap().to_string();
        assert!(err.contains("dtype I8 is not supported"), "{err}");

        std::fs::write(dir.path().join("short.safetensors"), [1, 0, 0]).unwrap();
        assert!(SafeTensors::open(&dir.path().join("short.safetensors")).is_err());
    }

    #[test]
    fn sharded_index_maps_tensors_to_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = 1f32.to_le_bytes();
        let two = 2f32.to_le_bytes();
        write(
            dir.path(),
            "s1.safetensors",
            r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &one,
        );
        write(
            dir.path(),
            "s2.safetensors",
            r#"{"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &two,
        );
        let index = r#"{"metadata":{},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let st = SafeTensors::open(dir.path()).unwrap();
        assert_eq!(st.to_f32("x").unwrap(), vec![1.0]);
        assert_eq!(st.to_f32("y").unwrap(), vec![2.0]);

        let wrong = r#"{"weight_map":{"x":"s2.safetensors","y":"s2.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), wrong).unwrap();
        let err = SafeTensors::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("tensor x is not in its shard s2.safetensors"),
            "{err}"
        );
    }
}
