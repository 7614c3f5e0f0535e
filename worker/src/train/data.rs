//! Training examples rendered exactly as inference sees them: the annotation prompt (chat
//! template, system and user messages, head-and-tail truncation to the same budget, the
//! answer prefix) followed by the tokens constrained decoding would emit for the reference
//! answer ([`AnswerSchema::target_tokens`]).

use automaldesc_common::Language;

use super::Example;
use crate::runtime::Annotator;

/// Token budgets shared with inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Prompt tokens (longer scripts are truncated head and tail, as at inference).
    pub prompt: usize,
    /// Answer tokens: an answer longer than this is cut, as decoding would stop there.
    pub answer: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            prompt: 1024,
            answer: 256,
        }
    }
}

/// One script and its reference answer as an example.
pub fn render(
    annotator: &Annotator,
    script: &[u8],
    language: Language,
    malicious: bool,
    summary: &str,
    budget: Budget,
) -> Example {
    let prompt = annotator.annotation_prompt(script, budget.prompt).tokens;
    let target = annotator.schema.target_tokens(
        &annotator.tokenizer,
        language,
        u8::from(malicious),
        summary,
        budget.answer,
    );
    Example { prompt, target }
}
