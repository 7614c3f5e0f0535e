//! The gRPC protocol (`automaldesc.proto`, compiled by tonic/prost) and the one place where
//! its messages become domain types and back.

pub mod v1 {
    tonic::include_proto!("automaldesc.v1");
}

mod convert;
pub mod security;

pub use convert::{fault_kind, require, worker_id, ProtoError};

/// The protocol version this build speaks; `Register` and `SubmitRun` carry it.
pub const PROTOCOL_VERSION: u32 = 1;
