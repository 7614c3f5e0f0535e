//! Durable coordination state behind one small compare-and-swap trait. Two implementations
//! pass the same conformance suite (`tests/state_store.rs`): etcd for a cluster, and an
//! embedded store (an fsynced log on local disk) for one machine. Only durable facts live
//! here (runs, stages, task records, leases' fencing tokens); schedulers rebuild their
//! in-memory view from them on start.
//!
//! Every successful write returns a revision, strictly greater than any revision the store
//! returned before; a conditional write names the revision it read (or `Absent`), so two
//! writers racing on one key cannot both win.

pub mod embedded;
pub mod etcd;

use std::future::Future;
use std::pin::Pin;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// A value and the revision of its last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: u64,
}

/// The state a conditional write requires the key to be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists and was last written at this revision.
    Revision(u64),
    /// No condition.
    Any,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The key was not in the expected state; `found` is its current revision, if any.
    #[error("conflict on {key}: expected {expected:?}, found revision {found:?}")]
    Conflict {
        key: String,
        expected: Expect,
        found: Option<u64>,
    },
    /// The store cannot be reached now; the caller may retry.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// This coordinator is no longer the leader: its writes are refused.
    #[error("not the leader any more: {0}")]
    Fenced(String),
    #[error("invalid state store request: {0}")]
    InvalidInput(String),
    #[error("state store failure: {0}")]
    Internal(String),
}

/// Keys are `/`-separated UTF-8 paths; values are bytes.
pub trait StateStore: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>>;

    /// Writes `value` if the key is in the `expect`ed state; returns the new revision.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Deletes the key if it is in the `expect`ed state. With `Expect::Any` a missing key
    /// is not an error. `Expect::Absent` is invalid here.
    fn delete<'a>(&'a self, key: &'a str, expect: Expect) -> BoxFuture<'a, Result<()>>;

    /// Every key under `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>>;
}

/// Checks a key before it reaches a store.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 1024 || key.contains('\0') {
        return Err(StateError::InvalidInput(format!(
            "key {key:?} must be 1 to 1024 bytes without NUL"
        )));
    }
    Ok(())
}

/// Checks a delete request before it reaches a store.
fn check_delete(key: &str, expect: Expect) -> Result<()> {
    check_key(key)?;
    if expect == Expect::Absent {
        return Err(StateError::InvalidInput(
            "delete cannot expect the key to be absent".into(),
        ));
    }
    Ok(())
}
