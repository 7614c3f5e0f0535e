//! The coordinator service and the `automaldesc` binary's commands.
//!
//! - The service: the durable coordination state (`state`: embedded or etcd), runs and
//!   their stages (`run_manager`, `stage_manager`, `run_spec`), task planning over Parquet
//!   row groups (`planner`), leases with fencing tokens (`lease_manager`), the worker
//!   registry (`workers`), the gRPC services and their event loop (`grpc_server`), the
//!   HTTP side: probes, API, metrics and dashboard (`http`, `http_access`), and what an
//!   error means to their clients (`error_status`).
//! - The commands (`*_cmd`): the self-training loop (`loop_cmd`), the cluster roles
//!   (`cluster_cmd`), run control, corpus tools, `annotate`, `train`, `eval`, `export` and
//!   the benchmarks.

pub mod annotate_cmd;
pub mod bench_cmd;
pub mod cluster_cmd;
pub mod control_cmd;
pub mod corpus_cmd;
pub mod device;
pub mod error_status;
pub mod eval_cmd;
pub mod export_cmd;
pub mod export_source;
pub mod grpc_server;
pub mod http;
pub mod http_access;
pub mod labelled_split;
pub mod lease_manager;
pub mod loop_cmd;
pub mod model_args;
pub mod planner;
pub mod run_manager;
pub mod run_spec;
pub mod stage_manager;
pub mod state;
pub mod train_cmd;
pub mod workers;
