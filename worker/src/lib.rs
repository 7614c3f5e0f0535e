//! The worker: its loop against the coordinator (`worker_process`, `coordinator_client`,
//! its counters in `telemetry`), the executor contract (`executor`) and the self-training
//! loop's stage executors (`stages`: train, generate, judge, filter, aggregate, report),
//! which run the model runtime (`automaldesc-runtime`, in `worker/runtime/`).

pub mod coordinator_client;
pub mod executor;
pub mod stages;
pub mod telemetry;
pub mod worker_process;
