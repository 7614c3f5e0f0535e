//! Training examples rendered exactly as inference sees them: the annotation prompt (chat
//! template, system and user messages, head-and-tail truncation to the same budget, the
//! answer prefix) followed by the tokens constrained decoding would emit for the reference
//! answer, each with its role ([`TokenRole`]).
//!
//! A reference summary longer than `summary_tokens` is cut at its last whole sentence
//! within the budget before it is rendered, so every target ends with its closing quote,
//! `}` and the end of the turn: a model trained on cut targets learns never to stop.

use automaldesc_common::Language;

use super::{ChoiceIds, Example, TokenRole};
use crate::generate::schema::Vocab;
use crate::runtime::Annotator;

/// Token budgets shared with inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Prompt tokens (longer scripts are truncated head and tail, as at inference).
    pub prompt: usize,
    /// Answer tokens: an answer longer than this is cut, as decoding would stop there.
    pub answer: usize,
    /// Summary tokens: a longer reference summary keeps its whole sentences that fit.
    pub summary: Option<usize>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            prompt: 1024,
            answer: 512,
            summary: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DataError {
    #[error("`summary_tokens` = {budget} is below the first sentence of a reference summary ({needed} tokens): {sentence:?}")]
    SentenceTooLong {
        budget: usize,
        needed: usize,
        sentence: String,
    },
}

/// One rendered example and whether the answer budget cut its target before its end.
pub struct Rendered {
    pub example: Example,
    pub cut: bool,
}

/// The choice candidates of an annotator's answer schema.
pub fn choice_ids(annotator: &Annotator) -> ChoiceIds {
    ChoiceIds {
        language: annotator.schema.language_first.to_vec(),
        label: annotator.schema.label_ids.to_vec(),
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
) -> Result<Rendered, DataError> {
    let summary = match budget.summary {
        Some(n) => cut_summary(&annotator.tokenizer, summary, n)?,
        None => summary.to_string(),
    };
    let prompt = annotator.annotation_prompt(script, budget.prompt).tokens;
    let parts = annotator.schema.target_parts(
        &annotator.tokenizer,
        language,
        u8::from(malicious),
        &summary,
    );
    let mut roles = vec![TokenRole::Language(parts.language.0)];
    roles.extend(parts.language_rest.iter().map(|_| TokenRole::Forced));
    roles.push(TokenRole::Label(parts.label.0));
    roles.extend(parts.after_label.iter().map(|_| TokenRole::Forced));
    roles.extend(parts.summary.iter().map(|_| TokenRole::Free));
    roles.extend(parts.end.iter().map(|_| TokenRole::Forced));
    let mut target = parts.tokens();
    let cut = target.len() > budget.answer;
    target.truncate(budget.answer);
    roles.truncate(budget.answer);
    Ok(Rendered {
        example: Example {
            prompt,
            target,
            roles,
        },
        cut,
    })
}

/// Byte offsets just after each sentence of `text`: after `.`, `!` or `?` followed by
/// whitespace or the end, and at the end of the text.
fn sentence_ends(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut ends = Vec::new();
    for i in 0..b.len() {
        let terminal = matches!(b[i], b'.' | b'!' | b'?');
        let boundary = i + 1 == b.len() || b[i + 1].is_ascii_whitespace();
        if terminal && boundary {
            ends.push(i + 1);
        }
    }
    if ends.last() != Some(&text.trim_end().len()) && !text.trim().is_empty() {
        ends.push(text.trim_end().len());
    }
    ends
}

/// Tokens of `text` as the summary renders it (JSON-escaped, without the quotes).
fn summary_token_count(vocab: &dyn Vocab, text: &str) -> usize {
    let escaped = serde_json::to_string(text).unwrap_or_default();
    vocab
        .encode_plain(&escaped[1..escaped.len().saturating_sub(1).max(1)])
        .len()
}

/// `summary` cut after its last whole sentence whose rendering fits in `max_tokens`
/// tokens; the summary itself when it fits. An error when even the first sentence does not.
pub fn cut_summary(
    vocab: &dyn Vocab,
    summary: &str,
    max_tokens: usize,
) -> Result<String, DataError> {
    let summary = summary.trim();
    if summary_token_count(vocab, summary) <= max_tokens {
        return Ok(summary.to_string());
    }
    let ends = sentence_ends(summary);
    // Longest prefix of whole sentences that fits: token counts grow with the prefix.
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if summary_token_count(vocab, &summary[..ends[mid - 1]]) <= max_tokens {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if lo == 0 {
        let first = &summary[..ends.first().copied().unwrap_or(summary.len())];
        return Err(DataError::SentenceTooLong {
            budget: max_tokens,
            needed: summary_token_count(vocab, first),
            sentence: first.chars().take(80).collect(),
        });
    }
    Ok(summary[..ends[lo - 1]].trim_end().to_string())
}

/// One labelled script to train on.
pub struct Labelled<'a> {
    pub sha256: &'a str,
    pub script: &'a [u8],
    pub language: Language,
    pub malicious: bool,
    pub summary: &'a str,
}

/// A labelled set rendered and split for training.
pub struct Prepared {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    /// sha256 of each training and validation script, in example order.
    pub train_shas: Vec<String>,
    pub val_shas: Vec<String>,
    /// Targets the answer budget cut before their end (should be 0: see `summary_tokens`).
    pub targets_cut: usize,
    /// Reference summaries shortened to `summary_tokens`.
    pub summaries_shortened: usize,
}

/// Renders every script (in sha256 order, so the result does not depend on the order of the
/// files) and holds out a validation split stratified by label and language: `val_fraction`
/// of each stratum, and at least 30 scripts in all when there are 300 or more.
pub fn prepare(
    annotator: &Annotator,
    items: &[Labelled],
    budget: Budget,
    val_fraction: f64,
) -> Result<Prepared, DataError> {
    let mut order: Vec<&Labelled> = items.iter().collect();
    order.sort_by(|a, b| a.sha256.cmp(b.sha256));
    let strata: Vec<(&str, String)> = order
        .iter()
        .map(|l| {
            (
                l.sha256,
                format!("{}/{}", u8::from(l.malicious), l.language),
            )
        })
        .collect();
    let held = super::stratified_hold_out(&strata, val_fraction, 30);
    let mut out = Prepared {
        train: Vec::new(),
        val: Vec::new(),
        train_shas: Vec::new(),
        val_shas: Vec::new(),
        targets_cut: 0,
        summaries_shortened: 0,
    };
    for (l, held) in order.into_iter().zip(held) {
        let r = render(
            annotator,
            l.script,
            l.language,
            l.malicious,
            l.summary,
            budget,
        )?;
        out.targets_cut += usize::from(r.cut);
        if let Some(n) = budget.summary {
            out.summaries_shortened +=
                usize::from(summary_token_count(&annotator.tokenizer, l.summary.trim()) > n);
        }
        if held {
            out.val.push(r.example);
            out.val_shas.push(l.sha256.to_string());
        } else {
            out.train.push(r.example);
            out.train_shas.push(l.sha256.to_string());
        }
    }
    Ok(out)
}

/// The example cut right after its label: what a label-only evaluation scores.
pub fn through_label(e: &Example) -> Example {
    let end = e
        .roles
        .iter()
        .position(|r| matches!(r, TokenRole::Label(_)))
        .map_or(e.target.len(), |i| i + 1);
    Example {
        prompt: e.prompt.clone(),
        target: e.target[..end].to_vec(),
        roles: e.roles[..end.min(e.roles.len())].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per byte: token counts are byte counts of the JSON-escaped text.
    struct Bytes;

    impl Vocab for Bytes {
        fn vocab_size(&self) -> usize {
            256
        }
        fn token_bytes(&self, _: u32) -> &[u8] {
            &[]
        }
        fn is_control(&self, _: u32) -> bool {
            false
        }
        fn encode_plain(&self, text: &str) -> Vec<u32> {
            text.bytes().map(u32::from).collect()
        }
    }

    #[test]
    fn a_summary_is_cut_after_its_last_whole_sentence_that_fits() {
        let s = "It writes \"C:\\\\Temp\\\\x.ps1\". Then it runs it!\nIs it hidden? Yes, with -w hidden. The end";
        for n in [16, 40, 60, 80, 200] {
            let cut = match cut_summary(&Bytes, s, n) {
                Ok(c) => c,
                Err(DataError::SentenceTooLong { needed, .. }) => {
                    assert!(needed > n, "{n}: refused although the first sentence fits");
                    continue;
                }
            };
            assert!(s.starts_with(&cut), "{n}: not a prefix: {cut:?}");
            assert!(
                summary_token_count(&Bytes, &cut) <= n,
                "{n}: {cut:?} too long"
            );
            if cut.len() < s.len() {
                // Cut after a sentence's end: never inside one (nor inside an escape, which
                // the cut text never reaches: it is escaped after the cut).
                assert!(cut.ends_with(['.', '!', '?']), "{n}: {cut:?}");
                let escaped = serde_json::to_string(&cut).unwrap();
                let back: String = serde_json::from_str(&escaped).unwrap();
                assert_eq!(back, cut);
            }
        }
        assert_eq!(cut_summary(&Bytes, s, 1000).unwrap(), s);
        // Below the first sentence: a clear error.
        let e = cut_summary(&Bytes, s, 10).unwrap_err().to_string();
        assert!(e.contains("summary_tokens") && e.contains("10"), "{e}");
    }

    #[test]
    fn the_longest_fitting_prefix_is_kept() {
        let s = "One. Two two. Three three three. Four.";
        assert_eq!(cut_summary(&Bytes, s, 13).unwrap(), "One. Two two.");
        assert_eq!(cut_summary(&Bytes, s, 31).unwrap(), "One. Two two.");
        assert_eq!(
            cut_summary(&Bytes, s, 32).unwrap(),
            "One. Two two. Three three three."
        );
    }
}
