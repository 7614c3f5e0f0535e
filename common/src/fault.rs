//! What a failed task says about what to do next. An executor's error carries its
//! [`FaultKind`] from the worker, over the protocol, to the coordinator's lease book, which
//! treats the kinds differently: a transient fault (the object store, the local disk or the
//! state store unavailable) is retried without using up the task's attempts while the run's
//! stall budget lasts; a cancelled attempt is queued again at once; only a deterministic
//! failure (invalid input, or an internal error that comes back on every attempt) counts
//! towards quarantine.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Why an attempt failed, by what the coordinator should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The task's own input cannot be processed (a malformed file, a schema that does not
    /// match): retrying elsewhere will not help; it counts towards quarantine.
    InvalidInput,
    /// Something outside the task failed for a while (storage, disk, network): retried
    /// with backoff, without using up an attempt.
    Transient,
    /// The attempt was given up on purpose (the worker is shutting down, or its lease was
    /// lost): queued again, no attempt counted.
    Cancelled,
    /// A bug or an unclassified failure: counts towards quarantine like invalid input.
    Internal,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid input",
            Self::Transient => "transient",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }

    /// Whether a failure of this kind uses up one of the task's attempts.
    pub fn counts_attempt(self) -> bool {
        matches!(self, Self::InvalidInput | Self::Internal)
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed task: its kind and a message naming what failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub kind: FaultKind,
    pub message: String,
}

impl TaskError {
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(FaultKind::InvalidInput, message)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(FaultKind::Transient, message)
    }

    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(FaultKind::Cancelled, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(FaultKind::Internal, message)
    }

    /// The same error with `context: ` before its message.
    pub fn context(self, context: &str) -> Self {
        Self {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl From<Error> for TaskError {
    fn from(e: Error) -> Self {
        Self::new(e.fault_kind(), e.to_string())
    }
}

/// A bare message from an executor is an internal error: it counts towards quarantine, as
/// every failure did before errors had kinds.
impl From<String> for TaskError {
    fn from(message: String) -> Self {
        Self::internal(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        Self::internal(message)
    }
}

impl Error {
    /// What kind of fault this error is when it fails a task. Storage and local IO are
    /// transient: a task's input was there when the stage was planned, so a missing object
    /// means the store changed under the run (moved away, or not reachable), not that the
    /// task is bad. Malformed data is invalid input.
    pub fn fault_kind(&self) -> FaultKind {
        match self {
            Error::NotFound(_) | Error::Io { .. } | Error::Storage(_) => FaultKind::Transient,
            Error::Parquet(parquet::errors::ParquetError::External(_)) => FaultKind::Transient,
            Error::InvalidInput(_) | Error::Parquet(_) | Error::Arrow(_) | Error::Json(_) => {
                FaultKind::InvalidInput
            }
            Error::Internal(_) => FaultKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_and_disk_faults_are_transient_and_bad_data_is_invalid_input() {
        let disk = Error::io(
            "/out/x",
            std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"),
        );
        assert_eq!(TaskError::from(disk).kind, FaultKind::Transient);
        let store = Error::Storage(object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        });
        assert_eq!(store.fault_kind(), FaultKind::Transient);
        assert_eq!(
            Error::NotFound("parquet file a".into()).fault_kind(),
            FaultKind::Transient
        );
        let corrupt = Error::Parquet(parquet::errors::ParquetError::General("bad footer".into()));
        assert_eq!(corrupt.fault_kind(), FaultKind::InvalidInput);
        let wrapped = Error::Parquet(parquet::errors::ParquetError::External(
            "reset by peer".into(),
        ));
        assert_eq!(wrapped.fault_kind(), FaultKind::Transient);
        assert_eq!(
            Error::invalid("column `content` is missing").fault_kind(),
            FaultKind::InvalidInput
        );
        assert_eq!(
            Error::Internal("bug".into()).fault_kind(),
            FaultKind::Internal
        );
    }

    #[test]
    fn only_deterministic_failures_count_attempts_and_context_keeps_the_kind() {
        assert!(FaultKind::InvalidInput.counts_attempt());
        assert!(FaultKind::Internal.counts_attempt());
        assert!(!FaultKind::Transient.counts_attempt());
        assert!(!FaultKind::Cancelled.counts_attempt());
        let e = TaskError::transient("timed out").context("reading part-0.parquet");
        assert_eq!(e.kind, FaultKind::Transient);
        assert_eq!(e.to_string(), "reading part-0.parquet: timed out");
        assert_eq!(TaskError::from("boom").kind, FaultKind::Internal);
        assert_eq!(
            serde_json::to_string(&FaultKind::InvalidInput).unwrap(),
            "\"invalid_input\""
        );
    }
}
