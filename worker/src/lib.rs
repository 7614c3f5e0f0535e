//! The worker: its loop against the coordinator (`worker_process`, `coordinator_client`,
//! its counters in `telemetry`), the executor contract (`executor`) and the self-training
//! loop's stage executors (`stages`), and the model runtime: a Llama-family decoder on burn
//! (flex on the CPU with fused kernels in `kernels`, CUDA with the `cuda` feature),
//! checkpoint loading (GGUF, safetensors), tokenization, batched schema-constrained
//! generation of annotations (`generate`, `annotate`), LoRA training (`train`) and the
//! worker-local store of computed model states (`state_store`).

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
