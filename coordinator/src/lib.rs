//! The coordinator crate hosts the `automaldesc` binary's commands: corpus tools, the
//! analyst's `annotate`, the durable coordination state (`state`), and (to come) run
//! planning and leases.

pub mod annotate_cmd;
pub mod bench_cmd;
pub mod cluster_cmd;
pub mod control_cmd;
pub mod corpus_cmd;
pub mod device;
pub mod eval_cmd;
pub mod export_cmd;
pub mod export_source;
pub mod grpc_server;
pub mod http;
pub mod http_access;
pub mod labelled_split;
pub mod lease_manager;
pub mod loop_cmd;
pub mod planner;
pub mod run_manager;
pub mod run_spec;
pub mod stage_manager;
pub mod state;
pub mod train_cmd;
pub mod workers;
