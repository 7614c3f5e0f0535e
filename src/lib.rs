//! The `automaldesc` binary's commands, over the service and runtime crates.
//!
//! - The self-training loop on one machine (`loop_cmd`: reads the loop config and submits
//!   the run spec that `automaldesc-loop` builds from it, with the progress line) and the
//!   cluster roles (`cluster_cmd`: `local`, `coordinator`, `worker`, and the clients
//!   `submit`, `status`, `cancel`, `retry-quarantined` in `control_cmd`).
//! - The model commands: `annotate`, `train` (with `bench train`), `eval` and `mcnemar`
//!   (`eval_cmd`, over `labelled_split`), and the model and sampling arguments they share
//!   (`model_args`, `device`).
//! - The corpus tools (`corpus_cmd`), the release (`export_cmd`, reading a run through
//!   `export_source`) and the benchmarks (`bench_cmd`).
//!
//! The coordinator service (`automaldesc-coordinator`) does not depend on the model
//! runtime; this crate is where the two meet.

pub mod annotate_cmd;
pub mod bench_cmd;
pub mod cluster_cmd;
pub mod control_cmd;
pub mod corpus_cmd;
pub mod device;
pub mod eval_cmd;
pub mod export_cmd;
pub mod export_source;
pub mod labelled_split;
pub mod loop_cmd;
pub mod model_args;
pub mod train_cmd;
