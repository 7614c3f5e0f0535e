//! Conversions between prost messages and domain types, all here: a message that lacks a
//! field or carries an invalid one becomes `ProtoError`, which maps to `INVALID_ARGUMENT`.

use automaldesc_common::fault::FaultKind;
use automaldesc_common::ids::{LeaseRef, RunId, TaskId, WorkerId};

use crate::v1;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<ProtoError> for tonic::Status {
    fn from(e: ProtoError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// The value of an optional message field, or `MissingField`.
pub fn require<T>(field: Option<T>, name: &'static str) -> Result<T, ProtoError> {
    field.ok_or(ProtoError::MissingField(name))
}

fn non_empty(value: String, field: &'static str) -> Result<String, ProtoError> {
    if value.is_empty() {
        return Err(ProtoError::Invalid {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(ProtoError::Invalid {
            field,
            reason: "at most 256 characters, no control characters".into(),
        });
    }
    Ok(value)
}

/// A worker id from the wire.
pub fn worker_id(v: String) -> Result<WorkerId, ProtoError> {
    non_empty(v, "worker_id").map(WorkerId)
}

impl TryFrom<v1::LeaseRef> for LeaseRef {
    type Error = ProtoError;
    fn try_from(m: v1::LeaseRef) -> Result<Self, ProtoError> {
        if m.token == 0 {
            return Err(ProtoError::Invalid {
                field: "lease.token",
                reason: "tokens start at 1".into(),
            });
        }
        Ok(LeaseRef {
            run: RunId(non_empty(m.run_id, "lease.run_id")?),
            stage: m.stage,
            task: TaskId(m.task),
            token: m.token,
        })
    }
}

impl From<LeaseRef> for v1::LeaseRef {
    fn from(l: LeaseRef) -> Self {
        v1::LeaseRef {
            run_id: l.run.0,
            stage: l.stage,
            task: l.task.0,
            token: l.token,
        }
    }
}

impl From<FaultKind> for v1::ErrorKind {
    fn from(k: FaultKind) -> Self {
        match k {
            FaultKind::InvalidInput => v1::ErrorKind::InvalidInput,
            FaultKind::Transient => v1::ErrorKind::Transient,
            FaultKind::Cancelled => v1::ErrorKind::Cancelled,
            FaultKind::Internal => v1::ErrorKind::Internal,
        }
    }
}

/// The kind of a failure from the wire; unspecified (an older worker) or unknown values
/// are internal errors, which count towards quarantine as every failure did before.
pub fn fault_kind(wire: i32) -> FaultKind {
    match v1::ErrorKind::try_from(wire) {
        Ok(v1::ErrorKind::InvalidInput) => FaultKind::InvalidInput,
        Ok(v1::ErrorKind::Transient) => FaultKind::Transient,
        Ok(v1::ErrorKind::Cancelled) => FaultKind::Cancelled,
        Ok(v1::ErrorKind::Internal | v1::ErrorKind::Unspecified) | Err(_) => FaultKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_refs_round_trip_and_bad_ones_are_named() {
        let lease = LeaseRef {
            run: RunId("run-7".into()),
            stage: 3,
            task: TaskId(12),
            token: 99,
        };
        let wire = v1::LeaseRef::from(lease.clone());
        assert_eq!(LeaseRef::try_from(wire.clone()).unwrap(), lease);
        let no_token = v1::LeaseRef {
            token: 0,
            ..wire.clone()
        };
        assert!(LeaseRef::try_from(no_token)
            .unwrap_err()
            .to_string()
            .contains("lease.token"));
        let no_run = v1::LeaseRef {
            run_id: String::new(),
            ..wire
        };
        let status = tonic::Status::from(LeaseRef::try_from(no_run).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("lease.run_id"));
        assert_eq!(
            require(None::<u8>, "lease"),
            Err(ProtoError::MissingField("lease"))
        );
        assert!(worker_id("w\n1".to_string()).is_err());
        assert_eq!(
            worker_id("w-1".to_string()).unwrap(),
            WorkerId("w-1".into())
        );
    }

    #[test]
    fn error_kinds_round_trip_and_unknown_ones_are_internal() {
        for k in [
            FaultKind::InvalidInput,
            FaultKind::Transient,
            FaultKind::Cancelled,
            FaultKind::Internal,
        ] {
            assert_eq!(fault_kind(v1::ErrorKind::from(k) as i32), k);
        }
        assert_eq!(fault_kind(0), FaultKind::Internal);
        assert_eq!(fault_kind(99), FaultKind::Internal);
    }
}
