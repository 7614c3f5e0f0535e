//! What an error means to a client, decided once and spoken by both sides of the
//! coordinator: the gRPC code of the control and worker services and the HTTP status of the
//! JSON API and the dashboard's file reads.

use crate::run_manager::RunError;

/// An error's meaning to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// No such run (or stage, or file).
    NotFound,
    /// The id is taken by another spec.
    AlreadyExists,
    /// The request itself is malformed: a bad spec or run id.
    InvalidArgument,
    /// Well-formed, but the run's state or data does not allow it (a run that is not
    /// running, an input that holds no scripts).
    FailedPrecondition,
    /// An outage (the state store or the object store unreachable) or a coordinator that
    /// no longer leads: try again, perhaps elsewhere.
    Unavailable,
    /// A fault of the coordinator or of its records.
    Internal,
}

impl ErrorClass {
    pub fn of(e: &RunError) -> Self {
        match e {
            RunError::NotFound(_) => Self::NotFound,
            RunError::Exists(_) => Self::AlreadyExists,
            RunError::Spec(_) | RunError::BadId(_) => Self::InvalidArgument,
            RunError::WrongPhase { .. } => Self::FailedPrecondition,
            _ if e.is_transient() || e.is_fenced() => Self::Unavailable,
            RunError::Data { .. } => Self::FailedPrecondition,
            RunError::Stage(_) => Self::Internal,
        }
    }

    pub fn grpc(self) -> tonic::Code {
        match self {
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }

    pub fn http(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::InvalidArgument => 400,
            Self::FailedPrecondition => 409,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

/// The gRPC status of `e`.
pub fn grpc_status(e: &RunError) -> tonic::Status {
    tonic::Status::new(ErrorClass::of(e).grpc(), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage_manager::StageError;
    use crate::state::StateError;
    use automaldesc_common::ids::RunId;

    #[test]
    fn each_error_has_one_meaning_on_grpc_and_http() {
        let run = || RunId("r".into());
        let cases = [
            (RunError::NotFound(run()), tonic::Code::NotFound, 404),
            (RunError::Exists(run()), tonic::Code::AlreadyExists, 409),
            (
                RunError::BadId("A/B".into()),
                tonic::Code::InvalidArgument,
                400,
            ),
            (
                RunError::WrongPhase {
                    run: run(),
                    phase: "running",
                    what: "only an ended run can be retried",
                },
                tonic::Code::FailedPrecondition,
                409,
            ),
            (
                StateError::Unavailable("etcd down".into()).into(),
                tonic::Code::Unavailable,
                503,
            ),
            (
                StateError::Fenced("another leader".into()).into(),
                tonic::Code::Unavailable,
                503,
            ),
            (
                RunError::Data {
                    context: "input".into(),
                    source: automaldesc_common::Error::Storage(object_store::Error::Generic {
                        store: "s3",
                        source: "connection refused".into(),
                    }),
                },
                tonic::Code::Unavailable,
                503,
            ),
            (
                RunError::Data {
                    context: "input".into(),
                    source: automaldesc_common::Error::invalid("no scripts column"),
                },
                tonic::Code::FailedPrecondition,
                409,
            ),
            (
                RunError::Stage(StageError::Corrupt {
                    key: "runs/r/record".into(),
                    reason: "bad json".into(),
                }),
                tonic::Code::Internal,
                500,
            ),
        ];
        for (e, code, http) in cases {
            let class = ErrorClass::of(&e);
            assert_eq!((class.grpc(), class.http()), (code, http), "{e}");
            let status = grpc_status(&e);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), e.to_string());
        }
    }
}
