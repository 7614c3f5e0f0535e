//! Reader (and a tiny writer) for GGUF model files.
//!
//! GGUF is the single-file container used by llama.cpp: a little-endian
//! header with typed key/value metadata, a table of tensor descriptors, and
//! an aligned data section holding the (possibly block-quantised) tensors.
//! Versions 2 and 3 are supported. The file is memory-mapped; tensor bytes
//! are borrowed straight from the mapping and dequantised on demand.

mod quant;
mod reader;
mod types;
mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use quant::dequantize;
pub use types::{GgmlType, MetaValue};
pub use writer::{f16_bytes, f32_bytes, write_gguf};

/// Default alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Errors produced while reading, writing or decoding GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot access gguf file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a gguf file: bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("big-endian gguf files are not supported")]
    BigEndian,
    #[error("unsupported gguf version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("gguf file is truncated: need {needed} bytes at offset {offset} while reading {what}")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
    },
    #[error("invalid utf-8 string at offset {0}")]
    InvalidUtf8(u64),
    #[error("unknown metadata value type {ty} for key {key}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("unknown ggml type id {id} for tensor {tensor}")]
    UnknownGgmlType { tensor: String, id: u32 },
    #[error("invalid alignment {0}")]
    BadAlignment(u64),
    #[error("tensor {tensor}: {reason}")]
    BadTensor { tensor: String, reason: String },
    #[error("tensor {tensor} data ({start}..{end}) lies outside the file of {file_len} bytes")]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("missing metadata key {0}")]
    MissingKey(String),
    #[error("metadata key {key} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("dequantisation of type {0:?} is not supported")]
    UnsupportedType(GgmlType),
    #[error("tensor {tensor}: dequantisation of type {dtype:?} is not supported")]
    UnsupportedTensorType { tensor: String, dtype: GgmlType },
    #[error("{n_elements} elements of type {dtype:?} need {expected} bytes, got {got}")]
    SizeMismatch {
        dtype: GgmlType,
        n_elements: usize,
        expected: usize,
        got: usize,
    },
    #[error("cannot write gguf: {0}")]
    Write(String),
}

/// Result alias for this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Descriptor of one tensor stored in a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Absolute offset of the tensor data in the file.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Number of bytes the tensor occupies in the file.
    pub fn n_bytes(&self) -> u64 {
        let (block, size) = self.dtype.block_layout().unwrap_or((1, 0));
        (self.n_elements() / block as u64).saturating_mul(size as u64)
    }
}

/// A memory-mapped GGUF file with its parsed header.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays in the mapping.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the mapping is read-only and private to this struct. Model
        // files are not expected to be modified while in use; if they were,
        // we would read inconsistent bytes but every access stays bounds-checked.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let header = reader::parse(&mmap)?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            alignment: header.alignment,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
        })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the tensor data section.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// Raw metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&MetaValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// Value of `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Result<String> {
        self.get_str("general.architecture").map(str::to_string)
    }

    /// All tensor descriptors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Descriptor of a named tensor.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// Whether a tensor of this name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Raw stored bytes of a named tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor(name)?;
        let start = usize::try_from(info.offset).map_err(|_| out_of_bounds(info, &self.mmap))?;
        let len = usize::try_from(info.n_bytes()).map_err(|_| out_of_bounds(info, &self.mmap))?;
        start
            .checked_add(len)
            .and_then(|end| self.mmap.get(start..end))
            .ok_or_else(|| out_of_bounds(info, &self.mmap))
    }

    /// Dequantises a named tensor to f32, row-major (innermost dimension first
    /// in GGUF terms), with as many elements as the product of its dims.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        let bytes = self.tensor_bytes(name)?;
        let n = usize::try_from(info.n_elements()).map_err(|_| GgufError::BadTensor {
            tensor: name.to_string(),
            reason: "too many elements".to_string(),
        })?;
        dequantize(info.dtype, bytes, n).map_err(|e| match e {
            GgufError::UnsupportedType(dtype) => GgufError::UnsupportedTensorType {
                tensor: name.to_string(),
                dtype,
            },
            other => other,
        })
    }
}

fn out_of_bounds(info: &TensorInfo, mmap: &Mmap) -> GgufError {
    GgufError::TensorOutOfBounds {
        tensor: info.name.clone(),
        start: info.offset,
        end: info.offset.saturating_add(info.n_bytes()),
        file_len: mmap.len() as u64,
    }
}

mod getters;
