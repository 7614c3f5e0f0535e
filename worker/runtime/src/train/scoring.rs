//! Scoring examples with no dropout and no gradients: the tally of a batch (free-token NLL,
//! label probabilities, language hits), and a whole split's scores under an adapter.

use super::batch::{make_batch, micro_batches, Weights};
use super::forward;
use super::lora::LoraWeights;
use super::metrics::{self, SplitMetrics, Tally};
use super::prefix::PrefixCache;
use super::scorer::Scorer;
use super::{to_vec, ChoiceIds, Example, TrainError};
use crate::model::Llama;

/// Adds one scored batch to a tally: free-token NLL, label probabilities, language hits.
pub(super) fn tally_batch(
    tally: &mut Tally,
    batch: &forward::Batch,
    scored: &forward::Scored,
    choices: Option<&ChoiceIds>,
) {
    tally.scripts += batch.b;
    if let Some(v) = &scored.vocab {
        let vals = to_vec(v.clone());
        tally.token_nll -= vals.iter().map(|&x| f64::from(x)).sum::<f64>();
        tally.tokens += vals.len();
    }
    let Some(c) = choices else { return };
    for (row, logp) in batch.choices.iter().zip(&scored.choices) {
        let lp = to_vec(logp.clone());
        if row.candidates == c.label && lp.len() == 2 {
            tally.labels.push(metrics::Scored {
                p: f64::from(lp[1]).exp(),
                label: row.target as u8,
            });
        } else if row.candidates == c.language {
            let best = (0..lp.len()).max_by(|&a, &b| lp[a].total_cmp(&lp[b]));
            tally.languages += 1;
            tally.languages_right += usize::from(best == Some(row.target));
        }
    }
}

/// Scores `examples` under the model with `adapter` (no dropout, no gradients).
pub fn evaluate(
    model: &Llama,
    examples: &[Example],
    adapter: Option<&LoraWeights>,
    budget: usize,
    choices: Option<&ChoiceIds>,
    prefix: Option<&PrefixCache>,
) -> Result<SplitMetrics, TrainError> {
    let scorer = Scorer::Branches(model);
    Ok(scores_with(&scorer, examples, adapter, budget, choices, prefix)?.metrics())
}

/// Every example's scores under `adapter` on `scorer` (which carries the adapter's blocks
/// when merged), no dropout, no gradients.
pub(super) fn scores_with(
    scorer: &Scorer,
    examples: &[Example],
    adapter: Option<&LoraWeights>,
    budget: usize,
    choices: Option<&ChoiceIds>,
    prefix: Option<&PrefixCache>,
) -> Result<Tally, TrainError> {
    let tensors = adapter.map(|a| scorer.tensors(a));
    let mut tally = Tally::default();
    let weights = Weights::uniform();
    for mb in micro_batches(examples, budget, None) {
        let batch = make_batch(examples, &mb, choices, &weights, prefix)?;
        let scored = scorer.score(&batch, tensors.as_ref());
        tally_batch(&mut tally, &batch, &scored, choices);
    }
    Ok(tally)
}

/// Mean negative log-likelihood of the targets of `examples` under the model with
/// `adapter` (no dropout, no gradients), every target token over the vocabulary.
pub fn mean_loss(
    model: &Llama,
    examples: &[Example],
    adapter: Option<&LoraWeights>,
    budget: usize,
) -> f64 {
    evaluate(model, examples, adapter, budget, None, None)
        .map(|m| m.token_loss)
        .unwrap_or(f64::NAN)
}
