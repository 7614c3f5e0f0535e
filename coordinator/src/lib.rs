//! The coordinator service: the durable coordination state (`state`: embedded or etcd),
//! runs and their stages (`run_manager`, `stage_manager`; a run's spec is
//! `automaldesc_common::run_spec`), task planning over Parquet row groups (`planner`),
//! leases with fencing tokens (`lease_manager`), the worker registry (`workers`), the gRPC
//! services and their event loop (`grpc_server`), the HTTP side: probes, API, metrics and
//! dashboard (`http`, `http_access`), and what an error means to their clients
//! (`error_status`).
//!
//! It knows stages only by kind and config; it links neither burn nor the model runtime.
//! The `automaldesc` binary (the workspace's root package) starts it.

pub mod error_status;
pub mod grpc_server;
pub mod http;
pub mod http_access;
pub mod lease_manager;
pub mod planner;
pub mod run_manager;
pub mod stage_manager;
pub mod state;
pub mod workers;
