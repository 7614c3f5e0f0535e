//! One error type for the common crate, with variants grouped by what a caller can do about
//! them: fix the input, look elsewhere, retry the storage, or report a bug.

use std::path::PathBuf;

/// Errors of the common crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, object, column or key that was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// The data or arguments given are malformed; the message names what and where.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Local filesystem IO failed.
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The object store failed (network, permissions, missing bucket...).
    #[error("storage error: {0}")]
    Storage(#[from] object_store::Error),

    /// A Parquet file could not be written or read.
    #[error("parquet error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// Arrow failed to build or convert a batch.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// JSON (manifests, reports, label files) could not be encoded or decoded.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),

    /// An invariant of this crate was broken: a bug, not a user error.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}

impl From<object_store::path::Error> for Error {
    fn from(e: object_store::path::Error) -> Self {
        Error::InvalidInput(format!("bad object path: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
