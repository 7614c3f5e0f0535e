//! The worker: its loop against the coordinator (`worker_process`), the stage executors
//! (`executor`), and the model runtime: a Llama-family decoder on burn (flex on the CPU, CUDA with the
//! `cuda` feature), checkpoint loading (GGUF, safetensors), tokenization and batched, schema-constrained
//! generation of annotations.

pub mod annotate;
pub mod bench;
pub mod coordinator_client;
pub mod device;
pub mod executor;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod prompt;
pub mod runtime;
pub mod safetensors;
pub mod stages;
pub mod state_store;
pub mod telemetry;
pub mod tokenizer;
pub mod train;
pub mod worker_process;
