//! Micro-batches: which examples train together, and the padded batch of their tokens with
//! every scored row's target and weight.
//!
//! Examples are ordered by length within each class and the two classes are interleaved by
//! their quantile, so consecutive examples have similar lengths (little padding) and every
//! micro-batch of a few examples holds both classes in about their overall proportion; a
//! batch of one class only would push the label's bias back and forth from step to step.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::forward::{Batch, ChoiceRow};
use super::prefix::PrefixCache;
use super::{ChoiceIds, Example, TokenRole, TrainError};

/// Per-role loss weights of one training run.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub language: f32,
    /// The label's weight per class (benign, malicious): `label_weight` scaled by the inverse
    /// class frequency when balancing.
    pub label: [f32; 2],
}

impl Weights {
    /// Weights that make every role count like a summary token (the plain token mean).
    pub fn uniform() -> Self {
        Self {
            language: 1.0,
            label: [1.0; 2],
        }
    }

    /// `label_weight` per class, times `n / (2 n_c)` when `balance` (so each class carries
    /// half of the label's total weight).
    pub fn new(language: f32, label_weight: f32, balance: bool, examples: &[Example]) -> Self {
        let mut counts = [0usize; 2];
        for e in examples {
            if let Some(l) = e.label() {
                counts[usize::from(l.min(1))] += 1;
            }
        }
        let n = (counts[0] + counts[1]) as f32;
        let per = |c: usize| {
            if balance && counts[c] > 0 {
                label_weight * n / (2.0 * counts[c] as f32)
            } else {
                label_weight
            }
        };
        Self {
            language,
            label: [per(0), per(1)],
        }
    }
}

/// Micro-batches of one epoch (indices into `examples`): at most `budget` padded tokens each
/// (a longer example alone), classes interleaved, in an order shuffled from `seed` and
/// `epoch` (`None`: in order).
pub fn micro_batches(
    examples: &[Example],
    budget: usize,
    shuffle: Option<(u64, u32)>,
) -> Vec<Vec<usize>> {
    let mut by_class: [Vec<usize>; 3] = Default::default();
    for (i, e) in examples.iter().enumerate() {
        by_class[e.label().map_or(2, |l| usize::from(l.min(1)))].push(i);
    }
    let mut keyed: Vec<(f64, usize, usize)> = Vec::with_capacity(examples.len());
    for class in &mut by_class {
        class.sort_by_key(|&i| (examples[i].len(), i));
        let n = class.len() as f64;
        for (rank, &i) in class.iter().enumerate() {
            keyed.push(((rank as f64 + 0.5) / n, examples[i].len(), i));
        }
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for (_, len, i) in keyed {
        if !cur.is_empty() && (cur.len() + 1) * longest.max(len) > budget {
            out.push(std::mem::take(&mut cur));
            longest = 0;
        }
        cur.push(i);
        longest = longest.max(len);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    if let Some((seed, epoch)) = shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (u64::from(epoch) << 32));
        out.shuffle(&mut rng);
    }
    out
}

/// The padded batch of the listed examples: each sequence is prompt ++ target, and the row
/// of every token before a target token is scored against it, by role: free tokens over
/// the vocabulary (weight 1), the language and label over their candidates (`choices`),
/// forced tokens not at all. Without `choices` every target token is scored over the
/// vocabulary with weight 1. With `prefix`, the batch carries the cached residual stream.
pub fn make_batch(
    examples: &[Example],
    idx: &[usize],
    choices: Option<&ChoiceIds>,
    weights: &Weights,
    prefix: Option<&PrefixCache>,
) -> Result<Batch, TrainError> {
    let t = idx
        .iter()
        .map(|&i| examples[i].len() - 1)
        .max()
        .unwrap_or(1)
        .max(1);
    let b = idx.len();
    let mut tokens = vec![0u32; b * t];
    let mut batch = Batch {
        tokens: Vec::new(),
        b,
        t,
        lens: Vec::with_capacity(b),
        rows: Vec::new(),
        targets: Vec::new(),
        weights: Vec::new(),
        choices: Vec::new(),
        prefix: None,
    };
    for (s, &i) in idx.iter().enumerate() {
        let e = &examples[i];
        let seq: Vec<u32> = e.prompt.iter().chain(&e.target).copied().collect();
        let n = seq.len() - 1;
        tokens[s * t..s * t + n].copy_from_slice(&seq[..n]);
        batch.lens.push(n);
        for (k, p) in (e.prompt.len() - 1..n).enumerate() {
            let row = s * t + p;
            let role = choices
                .and(e.roles.get(k).copied())
                .unwrap_or(TokenRole::Free);
            let choice = |candidates: &[u32], target: u8, weight: f32| ChoiceRow {
                row,
                candidates: candidates.to_vec(),
                target: usize::from(target),
                weight,
                seq: s,
                is_label: matches!(role, TokenRole::Label(_)),
            };
            match (role, choices) {
                (TokenRole::Forced, _) => {}
                (TokenRole::Language(l), Some(c)) => {
                    batch.choices.push(choice(&c.language, l, weights.language))
                }
                (TokenRole::Label(l), Some(c)) => {
                    let w = weights.label[usize::from(l.min(1))];
                    batch.choices.push(choice(&c.label, l, w))
                }
                _ => {
                    batch.rows.push(row);
                    batch.targets.push(seq[p + 1]);
                    batch.weights.push(1.0);
                }
            }
        }
    }
    batch.tokens = tokens;
    if let Some(p) = prefix {
        batch.prefix = Some((p.start, p.batch_states(idx, t)?));
    }
    Ok(batch)
}
