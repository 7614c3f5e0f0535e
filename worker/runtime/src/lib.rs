//! The model runtime: a Llama-family decoder on burn (flex on the CPU with fused kernels in
//! `kernels`, CUDA with the `cuda` feature, chosen in `device`), checkpoint loading (`gguf`,
//! `safetensors`), tokenization (`tokenizer`), chat templates and the annotator's prompt
//! (`prompt`), a loaded model with its tokenizer and answer schema (`runtime`), batched
//! schema-constrained generation of annotations (`generate`, `annotate`), LoRA training
//! (`train`), the worker-local store of computed model states (`state_store`) and the
//! runtime's benchmarks (`bench`).

pub mod annotate;
pub mod bench;
pub mod device;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod prompt;
pub mod runtime;
pub mod safetensors;
pub mod state_store;
pub mod tokenizer;
pub mod train;
