//! Label-only scoring on the inference path: each example's prompt and answer up to its
//! label digit in one prefill, the language read at the answer's first position and
//! P(malicious) at the label's, both over their candidates only, as constrained decoding
//! chooses them. The language is teacher-forced (the reference's), so the label is scored
//! exactly where training scores it.

use burn::tensor::{Int, Tensor, TensorData};

use super::lora::{AdapterError, LoraWeights};
use super::metrics::{Scored, Tally};
use super::prefix::PrefixCache;
use super::{ChoiceIds, Example, TokenRole, TrainError};
use crate::generate::sampler::choice_probs;
use crate::model::{KvCache, Llama};

/// The base model with `adapter` merged, packed for the fused kernels where `base` is.
/// `base` must be an inference model (not autodiff). Only the blocks the adapter touches
/// are unpacked, merged and packed again; the others are shared with `base`.
pub fn merged(base: &Llama, adapter: &LoraWeights) -> Result<Llama, AdapterError> {
    let mut m = base.clone();
    let native = crate::kernels::native_device(&m.device());
    let adapted: Vec<usize> = (0..m.blocks.len())
        .filter(|&i| adapter.layers.get(i).is_some_and(|p| !p.is_empty()))
        .collect();
    for &i in &adapted {
        for w in m.blocks[i].weights_mut() {
            *w = w.to_plain();
        }
    }
    adapter.merge_into(&mut m)?;
    if native {
        for &i in &adapted {
            for w in m.blocks[i].weights_mut() {
                *w = w.to_packed();
            }
        }
    }
    Ok(m)
}

/// Scores the label (and the language) of every example that has one. With `prefix` (the
/// cached residual stream of each example), only the blocks above it run.
pub fn score_labels(
    model: &Llama,
    adapter: Option<&LoraWeights>,
    examples: &[Example],
    choices: &ChoiceIds,
    prefix: Option<&PrefixCache>,
) -> Result<Tally, TrainError> {
    let mut tally = Tally::default();
    let device = model.device();
    for (i, e) in examples.iter().enumerate() {
        let Some(k) = e
            .roles
            .iter()
            .position(|r| matches!(r, TokenRole::Label(_)))
        else {
            continue;
        };
        let label = e.label().unwrap_or(0);
        let mut tokens = e.prompt.clone();
        tokens.extend(&e.target[..k]);
        let n = tokens.len();
        let hidden = match prefix {
            // The cached states cover prompt and target but its last token: exactly these
            // tokens when the example ends with its label.
            Some(p) if k + 1 == e.target.len() => {
                let states = p.states(i)?;
                let x = Tensor::<2>::from_data(
                    TensorData::new(states, [n, model.config.hidden_size]),
                    &device,
                );
                model.forward_from(x, p.start)
            }
            _ => {
                let mut cache = KvCache::new(&model.config, 1, n, &device);
                model.forward(&tokens, n, &mut cache)
            }
        };
        let rows = [e.prompt.len() - 1, n - 1].map(|r| r as i64);
        let picked = hidden.select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [2]), &device),
        );
        let shift = match adapter.and_then(|a| a.label_head.as_deref()) {
            Some(w) => {
                let t = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [w.len()]), &device);
                let d = crate::train::forward::label_head_logit(picked.clone().narrow(0, 1, 1), t);
                d.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default()
                    .first()
                    .copied()
                    .unwrap_or(0.0)
            }
            None => 0.0,
        };
        let logits: Vec<f32> = model
            .logits(picked.clone())
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        let vocab = model.config.vocab_size;
        if logits.len() != 2 * vocab {
            continue;
        }
        let (first, last) = logits.split_at(vocab);
        tally.scripts += 1;
        if let Some(TokenRole::Language(want)) = e.roles.first() {
            let mut five: Vec<f32> = choices
                .language
                .iter()
                .map(|&t| first[t as usize])
                .collect();
            if let Some(h) = adapter.and_then(|a| a.language_head.as_deref()) {
                let t =
                    Tensor::<2>::from_data(TensorData::new(h.to_vec(), [5, h.len() / 5]), &device);
                let d =
                    crate::train::forward::language_head_logits(picked.clone().narrow(0, 0, 1), t);
                let d: Vec<f32> = d
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                for (f, s) in five.iter_mut().zip(d) {
                    *f += s;
                }
            }
            let p = choice_probs(&five, &[0, 1, 2, 3, 4]);
            let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]));
            tally.languages += 1;
            tally.languages_right += usize::from(best == Some(usize::from(*want)));
        }
        let mut pair = [
            last[choices.label[0] as usize],
            last[choices.label[1] as usize],
        ];
        pair[1] += shift;
        let p = choice_probs(&pair, &[0, 1]);
        tally.labels.push(Scored {
            p: f64::from(p[1]),
            label,
        });
    }
    Ok(tally)
}
