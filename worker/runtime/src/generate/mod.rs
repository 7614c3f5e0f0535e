//! Generation: sampling, the answer schema, and the batched engine (schema-constrained
//! answers, or free text up to stop tokens).

pub mod engine;
pub mod sampler;
pub mod schema;

pub use automaldesc_common::schema::FinishReason;
pub use engine::{EarlyStop, Engine, Format, GenStats, PrefillReuse, Request, SampleOutput};
pub use sampler::{Sampler, SamplingParams};
pub use schema::{AnswerSchema, AnswerState, Vocab, ANSWER_PREFIX};

#[cfg(test)]
mod tests;
