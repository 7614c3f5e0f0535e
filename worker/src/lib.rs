//! Worker.

pub mod gguf;
