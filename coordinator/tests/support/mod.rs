//! Support of the coordinator's own tests: a small synthetic corpus as the planner sees it,
//! and etcd on a loopback port. The system tests in the workspace's `tests/` include both
//! files too (`tests/support/mod.rs`).

#![allow(dead_code)]

mod corpus;
pub mod etcd;

// Each test binary uses its own part of the support.
#[allow(unused_imports)]
pub use corpus::small_corpus;
