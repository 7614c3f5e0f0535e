//! The worker's model runtime: a Llama-family decoder on burn (flex on the CPU, CUDA with the
//! `cuda` feature), checkpoint loading, tokenization and batched, schema-constrained
//! generation of annotations.

pub mod generate;
pub mod model;
pub mod prompt;
