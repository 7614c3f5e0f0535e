//! Worker.

pub mod gguf;
pub mod tokenizer;
