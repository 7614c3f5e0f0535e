//! The worker process: its loop against the coordinator (`worker_process`: register,
//! acquire, run the task on its executor, complete or fail, drain on a signal) and the
//! coordinator connection it keeps (`coordinator_client`: endpoints tried in turn,
//! deadlines, heartbeats that renew the lease and carry the worker's counters). Executors
//! implement `automaldesc_common::executor::Executor`; the binary hands it the loop's
//! (`automaldesc-loop`).

pub mod coordinator_client;
pub mod worker_process;
