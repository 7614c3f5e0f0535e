//! Refitting the choice heads at every epoch's end: the label head (one readout on the
//! malicious logit) and the language head (one readout per language, one against the rest),
//! each by regularised logistic regression ([`head_fit`]) on the training set's final hidden
//! states at the choice positions under the current adapter, the model's own logits there
//! as offsets, with the L2 strength chosen on the validation set's NLL.

use burn::tensor::{Int, Tensor, TensorData};

use super::head_fit::{fit_head, LabelFeatures};
use super::lora::LoraWeights;
use super::prefix::PrefixCache;
use super::scorer::Scorer;
use super::{
    make_batch, micro_batches, to_vec, ChoiceIds, Example, TrainConfig, TrainData, TrainError,
    Weights,
};

/// One example's features at a choice position: the final hidden state and the model's
/// logits of the candidates (without any head).
struct ChoicePoint {
    hidden: Vec<f32>,
    logits: Vec<f64>,
    target: u8,
}

/// Features at the label and at the language positions of `examples`.
fn choice_features(
    scorer: &Scorer,
    examples: &[Example],
    adapter: &LoraWeights,
    budget: usize,
    choices: &ChoiceIds,
    prefix: Option<&PrefixCache>,
) -> Result<(Vec<ChoicePoint>, Vec<ChoicePoint>), TrainError> {
    let model = scorer.model();
    let device = model.device();
    let mut bare = adapter.clone();
    bare.label_head = None;
    bare.language_head = None;
    let tensors = scorer.tensors(&bare);
    let (mut labels, mut languages) = (Vec::new(), Vec::new());
    let (vocab, width) = (model.config.vocab_size, model.config.hidden_size);
    for mb in micro_batches(examples, budget, None) {
        let batch = make_batch(examples, &mb, Some(choices), &Weights::uniform(), prefix)?;
        if batch.choices.is_empty() {
            continue;
        }
        let hidden = scorer.hidden_states(&batch, Some(&tensors));
        let rows: Vec<i64> = batch.choices.iter().map(|c| c.row as i64).collect();
        let n = rows.len();
        let h = hidden.select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device),
        );
        let logits = to_vec(model.logits(h.clone()).reshape([-1]));
        let hv = to_vec(h.reshape([-1]));
        for (i, c) in batch.choices.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let point = ChoicePoint {
                hidden: hv[i * width..(i + 1) * width].to_vec(),
                logits: c
                    .candidates
                    .iter()
                    .map(|&t| f64::from(row[t as usize]))
                    .collect(),
                target: c.target as u8,
            };
            if c.is_label {
                labels.push(point);
            } else {
                languages.push(point);
            }
        }
    }
    Ok((labels, languages))
}

/// `log(sum(exp(x)))`.
fn log_sum_exp(x: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = x.clone().fold(f64::NEG_INFINITY, f64::max);
    m + x.map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn dot(h: &[f32], w: &[f32]) -> f64 {
    h.iter().zip(w).map(|(a, b)| f64::from(a * b)).sum()
}

/// The one-against-the-rest problem of candidate `c`: offset = the model's log-odds of `c`.
fn one_vs_rest(points: &[ChoicePoint], c: usize) -> Vec<LabelFeatures> {
    points
        .iter()
        .map(|p| {
            let rest = log_sum_exp(
                p.logits
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != c)
                    .map(|(_, &v)| v),
            );
            LabelFeatures {
                hidden: p.hidden.clone(),
                offset: p.logits[c] - rest,
                label: u8::from(usize::from(p.target) == c),
            }
        })
        .collect()
}

/// Mean NLL of the targets of `points` with `heads` (row `c`: weights then bias) added to
/// the candidates' logits.
fn nll(points: &[ChoicePoint], heads: &[Vec<f32>]) -> f64 {
    let width = points.first().map_or(0, |p| p.hidden.len());
    points
        .iter()
        .map(|p| {
            let z: Vec<f64> = p
                .logits
                .iter()
                .zip(heads)
                .map(|(&l, h)| l + dot(&p.hidden, &h[..width]) + f64::from(h[width]))
                .collect();
            log_sum_exp(z.iter().copied()) - z[usize::from(p.target)]
        })
        .sum::<f64>()
        / points.len().max(1) as f64
}

const LAMBDAS: [f64; 5] = [0.01, 0.1, 1.0, 10.0, 100.0];

/// The heads `[candidates][hidden + 1]` that best fit `train` (one against the rest per
/// candidate; a two-way choice fits only the second candidate against the first) with the
/// L2 strength of lowest validation NLL.
fn fit_choice(
    train: &[ChoicePoint],
    val: &[ChoicePoint],
    class_weight: [f64; 2],
    two_way: bool,
) -> Option<Vec<Vec<f32>>> {
    let k = train.first()?.logits.len();
    let width = train[0].hidden.len();
    let usable = val.len() >= 2 && {
        let first = val[0].target;
        val.iter().any(|p| p.target != first)
    };
    let lambdas: &[f64] = if usable { &LAMBDAS } else { &[1.0] };
    let mut best: Option<(f64, Vec<Vec<f32>>)> = None;
    for &lambda in lambdas {
        let heads: Vec<Vec<f32>> = if two_way {
            let feats: Vec<LabelFeatures> = train
                .iter()
                .map(|p| LabelFeatures {
                    hidden: p.hidden.clone(),
                    offset: p.logits[1] - p.logits[0],
                    label: p.target,
                })
                .collect();
            vec![vec![0.0; width + 1], fit_head(&feats, class_weight, lambda)]
        } else {
            (0..k)
                .map(|c| fit_head(&one_vs_rest(train, c), [1.0, 1.0], lambda))
                .collect()
        };
        let score = if usable { nll(val, &heads) } else { 0.0 };
        if best.as_ref().is_none_or(|(b, _)| score < *b) {
            best = Some((score, heads));
        }
    }
    best.map(|(_, h)| h)
}

/// Refits the heads `config` asks for on `data.train`, choosing their regularisation on
/// `data.val`.
pub(super) fn refit(
    scorer: &Scorer,
    data: &TrainData,
    config: &TrainConfig,
    prefix_val: Option<&PrefixCache>,
    adapter: &mut LoraWeights,
) -> Result<(), TrainError> {
    let Some(choices) = data.choices else {
        return Ok(());
    };
    let prefix_train = data.prefix.map(|(t, _)| t);
    let (train_labels, train_langs) = choice_features(
        scorer,
        data.train,
        adapter,
        config.batch_tokens,
        choices,
        prefix_train,
    )?;
    let (val_labels, val_langs) = choice_features(
        scorer,
        data.val,
        adapter,
        config.batch_tokens,
        choices,
        prefix_val,
    )?;
    if config.lora.label_head && !train_labels.is_empty() {
        let w = Weights::new(1.0, 1.0, config.balance_classes, data.train);
        let class_weight = [f64::from(w.label[0]), f64::from(w.label[1])];
        if let Some(heads) = fit_choice(&train_labels, &val_labels, class_weight, true) {
            adapter.label_head = heads.into_iter().nth(1);
        }
    }
    if config.lora.language_head && !train_langs.is_empty() {
        if let Some(heads) = fit_choice(&train_langs, &val_langs, [1.0, 1.0], false) {
            adapter.language_head = Some(heads.concat());
        }
    }
    Ok(())
}
