//! The coordinator crate hosts the `automaldesc` binary's commands: corpus tools, the
//! analyst's `annotate`, and (to come) run planning, leases and state.

pub mod annotate_cmd;
pub mod bench_cmd;
pub mod corpus_cmd;
pub mod device;
pub mod labelled_split;
