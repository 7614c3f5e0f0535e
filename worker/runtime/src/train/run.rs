//! The training loop: checks the data, resumes a checkpoint of the same config and data,
//! runs the optimizer steps with dropout, scores every epoch's end, keeps the best epoch and
//! stops after `patience` epochs without improvement.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::batch::{make_batch, micro_batches, Weights};
use super::checkpoint::{self, load_checkpoint, save_checkpoint, State, TallyState};
use super::forward::{score, Dropout};
use super::heads;
use super::lora::LoraWeights;
use super::metrics::{calibrated_threshold, SplitMetrics};
use super::optim::{learning_rate, AdamW};
use super::prefix::PrefixCache;
use super::scorer::Scorer;
use super::scoring::{scores_with, tally_batch};
use super::{
    data_hash, to_vec, ChoiceIds, EpochLoss, Example, Progress, TrainConfig, TrainError, Trained,
};
use crate::model::Llama;

/// What a run trains on.
pub struct TrainData<'a> {
    pub train: &'a [Example],
    pub val: &'a [Example],
    /// The schema's choice candidates: with them the language and label rows are scored
    /// over their candidates and weighted; without, every target token is a free token.
    pub choices: Option<&'a ChoiceIds>,
    /// Frozen-prefix states of `train` and `val` (see [`prefix`]), starting at the
    /// adapter's lowest block.
    pub prefix: Option<(&'a PrefixCache, &'a PrefixCache)>,
    /// An inference copy of the base model (flex, packed): the passes at every epoch's end
    /// (heads, validation) then run on the fused kernels with the adapter merged
    /// ([`scorer`]) instead of through the training model.
    pub fused: Option<&'a Llama>,
}

/// Trains an adapter on `train`, choosing the best epoch on `val`, every target token free
/// (see [`train_with`]).
pub fn train(
    model: &Llama,
    train: &[Example],
    val: &[Example],
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Option<Trained>, TrainError> {
    let data = TrainData {
        train,
        val,
        choices: None,
        prefix: None,
        fused: None,
    };
    train_with(model, &data, config, checkpoint, progress, &mut |_, _| {})
}

/// Refuses data that cannot train: empty sets, empty targets, one class only, a prefix
/// cache that does not match.
pub(super) fn check_data(data: &TrainData, adapter: &LoraWeights) -> Result<(), TrainError> {
    if data.train.is_empty() {
        return Err(TrainError::NoData);
    }
    if let Some(i) = data
        .train
        .iter()
        .chain(data.val)
        .position(|e| e.target.is_empty() || e.prompt.is_empty())
    {
        return Err(TrainError::EmptyTarget(i));
    }
    if data.choices.is_some() {
        let labels: Vec<u8> = data.train.iter().filter_map(Example::label).collect();
        if !labels.is_empty() && labels.iter().all(|&l| l == labels[0]) {
            return Err(TrainError::OneClass(if labels[0] == 1 {
                "malicious"
            } else {
                "benign"
            }));
        }
    }
    if let Some((tr, va)) = data.prefix {
        let start = adapter.first_adapted_layer();
        if tr.start != start || va.start != start {
            return Err(TrainError::Config(format!(
                "the frozen prefix ends at block {} but the lowest adapted block is {start}",
                tr.start
            )));
        }
        if tr.len() != data.train.len() || va.len() != data.val.len() {
            return Err(TrainError::Config(
                "the frozen prefix covers other examples".into(),
            ));
        }
    }
    Ok(())
}

/// Trains an adapter on `data.train`, choosing the best epoch on `data.val`. The model must
/// be on an autodiff device and frozen (`Module::no_grad`). `progress` is called after every
/// optimizer step; returning `false` stops training there (as a crash would, but with the
/// checkpoint written). `epoch_done` sees every epoch's scores and adapter. With
/// `checkpoint`, an existing checkpoint of the same config and data is resumed.
pub fn train_with(
    model: &Llama,
    data: &TrainData,
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    progress: &mut dyn FnMut(&Progress) -> bool,
    epoch_done: &mut dyn FnMut(&EpochLoss, &LoraWeights),
) -> Result<Option<Trained>, TrainError> {
    config.validate()?;
    let (train, val) = (data.train, data.val);
    let device = model.device();
    let mut adapter = LoraWeights::init(&config.lora, &model.config, config.seed)?;
    check_data(data, &adapter)?;
    let (prefix_train, prefix_val) = match data.prefix {
        Some((t, v)) => (Some(t), Some(v)),
        None => (None, None),
    };
    let weights = Weights::new(
        config.language_weight,
        config.label_weight,
        config.balance_classes,
        train,
    );
    let mut best = adapter.clone();
    let hash = data_hash(train, val);
    let fresh = State {
        config: config.clone(),
        data_hash: hash.clone(),
        epoch: 0,
        group: 0,
        adam: AdamW::new(adapter.num_params(), config.weight_decay),
        history: Vec::new(),
        epoch_loss_sum: 0.0,
        epoch_steps: 0,
        tally: TallyState::default(),
        best: None,
        best_threshold: None,
        epochs_without_improvement: 0,
        finished: false,
    };
    let mut state = match checkpoint {
        Some(dir) => match load_checkpoint(dir, config, &mut adapter, &mut best)? {
            Some(s) if s.config != *config || s.data_hash != hash => {
                return Err(checkpoint::ckpt_err(
                    dir,
                    "it belongs to another config or data set",
                ))
            }
            Some(s) => {
                tracing::info!(dir = %dir.display(), epoch = s.epoch, step = s.adam.step, "resuming training");
                s
            }
            None => fresh,
        },
        None => fresh,
    };
    let accum = config.grad_accum.max(1) as usize;
    let per_epoch = micro_batches(train, config.batch_tokens, None)
        .len()
        .div_ceil(accum) as u64;
    let total_steps = per_epoch * u64::from(config.epochs);
    let started = Instant::now();
    let (mut tokens, start_step) = (0u64, state.adam.step);
    while !state.finished && state.epoch < config.epochs {
        let order = micro_batches(train, config.batch_tokens, Some((config.seed, state.epoch)));
        let groups: Vec<&[Vec<usize>]> = order.chunks(accum).collect();
        let mut tally = state.tally.to_tally();
        while state.group < groups.len() {
            let group = groups[state.group];
            let batches = group
                .iter()
                .map(|mb| make_batch(train, mb, data.choices, &weights, prefix_train))
                .collect::<Result<Vec<_>, _>>()?;
            let step_weight: f64 = batches
                .iter()
                .map(|b| {
                    b.weights.iter().map(|&w| f64::from(w)).sum::<f64>()
                        + b.choices.iter().map(|c| f64::from(c.weight)).sum::<f64>()
                })
                .sum();
            let step_tokens: usize = batches.iter().map(|b| b.rows.len() + b.choices.len()).sum();
            // Upload the adapter once per step; its gradients accumulate over the group.
            let tensors = adapter.tensors(&device, true);
            let mut grads = vec![0.0f32; adapter.num_params()];
            let mut loss = 0.0f64;
            for (k, batch) in batches.iter().enumerate() {
                let dropout = Dropout {
                    p: config.lora.dropout,
                    seed: config.seed ^ (state.adam.step << 16) ^ k as u64,
                };
                let scored = score(model, batch, Some(&tensors), Some(dropout));
                tally_batch(&mut tally, batch, &scored, data.choices);
                let Some(nll) = scored.weighted_nll(batch) else {
                    continue;
                };
                let l = nll.div_scalar(step_weight.max(1e-12));
                loss += to_vec(l.clone())
                    .first()
                    .copied()
                    .map_or(f64::NAN, f64::from);
                let g = l.backward();
                for (acc, x) in grads.iter_mut().zip(tensors.grads(&g)) {
                    *acc += x;
                }
            }
            let lr = learning_rate(
                config.learning_rate,
                state.adam.step,
                total_steps,
                config.warmup,
            );
            let mut flat = adapter.flatten();
            state.adam.update(&mut flat, &grads, lr);
            adapter.set_flat(&flat);
            state.group += 1;
            state.epoch_loss_sum += loss;
            state.epoch_steps += 1;
            state.tally = TallyState::from_tally(&tally);
            tokens += step_tokens as u64;
            let last_of_epoch = state.group == groups.len();
            if let Some(dir) = checkpoint {
                if !last_of_epoch && state.adam.step % config.checkpoint_every == 0 {
                    save_checkpoint(dir, &state, &adapter, &best)?;
                }
            }
            let elapsed = started.elapsed().as_secs_f64();
            let done = state.adam.step - start_step;
            let report = Progress {
                step: state.adam.step,
                total_steps,
                epoch: state.epoch,
                tokens,
                loss,
                learning_rate: lr,
                tokens_per_s: tokens as f64 / elapsed.max(1e-9),
                eta_s: elapsed / done.max(1) as f64
                    * total_steps.saturating_sub(state.adam.step) as f64,
            };
            if !progress(&report) {
                if let Some(dir) = checkpoint {
                    save_checkpoint(dir, &state, &adapter, &best)?;
                }
                return Ok(None);
            }
        }
        let scorer = Scorer::new(model, data.fused, &adapter)?;
        if config.lora.label_head || config.lora.language_head {
            heads::refit(&scorer, data, config, prefix_val, &mut adapter)?;
        }
        end_epoch(
            &scorer, data, config, prefix_val, &mut state, &adapter, &mut best,
        )?;
        if let Some(e) = state.history.last() {
            epoch_done(e, &adapter);
        }
        if let Some(dir) = checkpoint {
            save_checkpoint(dir, &state, &adapter, &best)?;
        }
    }
    let (best_epoch, _, _) = state.best.unwrap_or((0, f64::NAN, f64::NAN));
    Ok(Some(Trained {
        adapter: best,
        best_epoch,
        stopped_early: state.epoch < config.epochs,
        history: state.history,
        steps: state.adam.step,
        label_threshold: state.best_threshold.unwrap_or(0.5),
    }))
}

/// The best-epoch key of a split's scores: (label NLL, token loss), NaN read as 0 (a split
/// without labels compares on its token loss alone).
pub(super) fn selection_key(m: &SplitMetrics) -> (f64, f64) {
    let nll = if m.label_nll.is_nan() {
        0.0
    } else {
        m.label_nll
    };
    let tok = if m.token_loss.is_nan() {
        0.0
    } else {
        m.token_loss
    };
    (nll, tok)
}

/// Whether an epoch scoring `m` beats the best so far (its key): a lower label NLL, or the
/// same and a lower token loss.
pub(super) fn is_better(m: &SplitMetrics, best: Option<(f64, f64)>) -> bool {
    let (nll, tok) = selection_key(m);
    match best {
        None => true,
        Some((b_nll, b_tok)) => nll < b_nll - 1e-9 || ((nll - b_nll).abs() <= 1e-9 && tok < b_tok),
    }
}

/// Scores the epoch on validation, records it, and keeps the adapter if it is the best so
/// far: lowest validation label NLL, the token loss breaking ties (the token loss alone
/// when there are no labels; the training split's scores when there is no validation).
fn end_epoch(
    scorer: &Scorer,
    data: &TrainData,
    config: &TrainConfig,
    prefix_val: Option<&PrefixCache>,
    state: &mut State,
    adapter: &LoraWeights,
    best: &mut LoraWeights,
) -> Result<(), TrainError> {
    let train_metrics = state.tally.to_tally().metrics();
    let (val_metrics, val_scores) = if data.val.is_empty() {
        (train_metrics.clone(), state.tally.to_tally().labels)
    } else {
        let t = scores_with(
            scorer,
            data.val,
            Some(adapter),
            config.batch_tokens,
            data.choices,
            prefix_val,
        )?;
        (t.metrics(), t.labels)
    };
    let train_loss = state.epoch_loss_sum / state.epoch_steps.max(1) as f64;
    state.history.push(EpochLoss {
        epoch: state.epoch,
        train_loss,
        val_loss: val_metrics.token_loss,
        train: train_metrics,
        val: val_metrics.clone(),
    });
    tracing::info!(
        epoch = state.epoch + 1,
        val_token_loss = val_metrics.token_loss,
        val_label_nll = val_metrics.label_nll,
        val_auc = val_metrics.auc,
        val_balanced_accuracy = val_metrics.balanced_accuracy,
        "epoch done"
    );
    let (nll, tok) = selection_key(&val_metrics);
    if is_better(&val_metrics, state.best.map(|(_, n, t)| (n, t))) {
        state.best = Some((state.epoch, nll, tok));
        state.best_threshold = Some(calibrated_threshold(&val_scores));
        *best = adapter.clone();
        state.epochs_without_improvement = 0;
    } else {
        state.epochs_without_improvement += 1;
        if state.epochs_without_improvement >= config.patience.max(1) {
            state.finished = true;
        }
    }
    state.epoch += 1;
    state.group = 0;
    state.epoch_loss_sum = 0.0;
    state.epoch_steps = 0;
    state.tally = TallyState::default();
    Ok(())
}

/// Where a run keeps its checkpoint by default.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}
