//! Supervised fine-tuning of the annotator with LoRA adapters.
//!
//! - An [`Example`] is a prompt and the answer tokens after it, each answer token with its
//!   role in the answer schema ([`TokenRole`]). The loss is a weighted mean of negative
//!   log-likelihoods: summary tokens over the vocabulary with weight 1, the language and
//!   the label over their few candidates (as constrained decoding chooses them) with
//!   `language_weight` and `label_weight` (the latter scaled per class by inverse class
//!   frequency), and tokens decoding forces anyway not at all.
//! - Micro-batches ([`batch`]) interleave the classes and group similar lengths; `grad_accum`
//!   micro-batches make one optimizer step, normalised by the step's total weight.
//! - AdamW ([`optim`]) with linear warmup and decay. After every epoch the train and
//!   validation splits are scored ([`metrics`]: token loss, label NLL, accuracy, balanced
//!   accuracy, AUC, language accuracy); the best epoch is the one with the lowest validation
//!   label NLL (token loss when there are no labels, and to break ties), its adapter is kept
//!   with the label threshold that balances the validation classes best, and training stops
//!   after `patience` epochs without improvement.
//! - LoRA on a subset of blocks ([`lora::LayerSet`]): the blocks below the lowest adapted one
//!   run once per example on the inference path ([`prefix`]), not in every epoch.
//! - With a checkpoint directory, the whole state (adapter, optimizer moments, position in
//!   the epoch, history, best adapter) is written every `checkpoint_every` steps and at
//!   every epoch's end as one file, replaced atomically (written, synced, renamed). Training
//!   started again on it continues exactly where it stopped: the data order is a function of
//!   the seed and the epoch, and the dropout masks of the seed and the step.

pub mod batch;
mod checkpoint;
pub mod data;
pub mod fit;
pub mod forward;
pub mod head_fit;
mod heads;
pub mod label_eval;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod prefix;
pub mod scorer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::Llama;
pub use batch::{make_batch, micro_batches, Weights};
use checkpoint::{load_checkpoint, save_checkpoint};
use forward::{score, Dropout};
use lora::{AdapterError, LoraConfig, LoraWeights};
use metrics::{calibrated_threshold, SplitMetrics, Tally};
use optim::{learning_rate, AdamW};
use prefix::PrefixCache;
use scorer::Scorer;

/// What an answer token is to the constrained decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenRole {
    /// Chosen from the whole vocabulary (summary text and its closing quote).
    Free,
    /// Forced by the schema (key names, punctuation, the end of the turn): never trained.
    Forced,
    /// The first token of the language name: a choice among five (`Language::ALL` index).
    Language(u8),
    /// The label digit: a choice between two (1 = malicious).
    Label(u8),
}

/// The candidate tokens of the two choices of the answer schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChoiceIds {
    /// First tokens of the five language names, in `Language::ALL` order.
    pub language: Vec<u32>,
    /// The digits 0 and 1.
    pub label: Vec<u32>,
}

/// One supervised example: the loss covers `target` only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
    /// The role of each target token; empty means every token is free.
    #[serde(default)]
    pub roles: Vec<TokenRole>,
}

impl Example {
    /// An example whose target tokens are all free (plain language modelling).
    pub fn plain(prompt: Vec<u32>, target: Vec<u32>) -> Self {
        Self {
            prompt,
            target,
            roles: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.prompt.len() + self.target.len()
    }

    /// The reference label, when the target holds one.
    pub fn label(&self) -> Option<u8> {
        self.roles.iter().find_map(|r| match r {
            TokenRole::Label(l) => Some(*l),
            _ => None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub learning_rate: f32,
    pub weight_decay: f32,
    /// Fraction of the steps spent warming up.
    pub warmup: f32,
    pub epochs: u32,
    /// Padded tokens per micro-batch (sequences × longest length).
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: u32,
    /// Epochs without a better validation score before stopping.
    pub patience: u32,
    pub seed: u64,
    /// Loss weight of the label choice (a summary token weighs 1).
    #[serde(default = "one")]
    pub label_weight: f32,
    /// Loss weight of the language choice.
    #[serde(default = "one")]
    pub language_weight: f32,
    /// Scale the label weight per class by inverse class frequency.
    #[serde(default = "yes")]
    pub balance_classes: bool,
    /// Optimizer steps between checkpoints (the end of every epoch is always one).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Bytes of frozen-prefix states kept in memory before spilling to the checkpoint
    /// directory.
    #[serde(default = "default_prefix_cache_bytes")]
    pub prefix_cache_bytes: usize,
}

fn one() -> f32 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_checkpoint_every() -> u64 {
    25
}
fn default_prefix_cache_bytes() -> usize {
    4 << 30
}

impl TrainConfig {
    /// The published V1 settings: rank 8 / alpha 16 / dropout 0.05, learning rate 1e-4,
    /// weight decay 0.001, 5% warmup.
    pub fn v1() -> Self {
        Self {
            lora: LoraConfig::v1(),
            learning_rate: 1e-4,
            weight_decay: 0.001,
            warmup: 0.05,
            epochs: 3,
            batch_tokens: 4096,
            grad_accum: 1,
            patience: 1,
            seed: 0,
            label_weight: 1.0,
            language_weight: 1.0,
            balance_classes: true,
            checkpoint_every: default_checkpoint_every(),
            prefix_cache_bytes: default_prefix_cache_bytes(),
        }
    }

    /// Refuses settings that cannot train, naming the key.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |k: &str, why: &str| Err(TrainError::Config(format!("`{k}` {why}")));
        if !(self.label_weight > 0.0 && self.label_weight.is_finite()) {
            return bad(
                "label_weight",
                &format!("must be a positive number, got {}", self.label_weight),
            );
        }
        if !(self.language_weight >= 0.0 && self.language_weight.is_finite()) {
            return bad(
                "language_weight",
                &format!("must be zero or positive, got {}", self.language_weight),
            );
        }
        if self.lora.rank == 0 {
            return bad("rank", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 {
            return bad("learning_rate", "must be positive");
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "must be at least 1 step");
        }
        Ok(())
    }
}

/// Scores of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    pub epoch: u32,
    /// Weighted training loss (the objective), mean over the epoch's steps.
    pub train_loss: f64,
    /// Validation token loss (the summary tokens' mean NLL).
    pub val_loss: f64,
    /// The training split as seen by the epoch's steps (with dropout).
    #[serde(default)]
    pub train: SplitMetrics,
    #[serde(default)]
    pub val: SplitMetrics,
}

/// Reported after every optimizer step.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u32,
    /// Answer tokens trained on so far (this process).
    pub tokens: u64,
    pub loss: f64,
    pub learning_rate: f32,
    pub tokens_per_s: f64,
    pub eta_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training examples")]
    NoData,
    #[error("example {0} has no target tokens")]
    EmptyTarget(usize),
    #[error("the training set holds one class only ({0}): the label cannot be learnt")]
    OneClass(&'static str),
    #[error("training config: {0}")]
    Config(String),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
}

/// The durable training state, besides its vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct State {
    config: TrainConfig,
    /// Hash of the training and validation examples: a checkpoint resumes only the same data.
    data_hash: String,
    epoch: u32,
    /// Optimizer steps done in the current epoch.
    group: usize,
    adam: AdamW,
    history: Vec<EpochLoss>,
    /// Sum of the step losses of the current epoch, and their count.
    epoch_loss_sum: f64,
    epoch_steps: u64,
    /// The current epoch's training scores so far.
    #[serde(default)]
    tally: TallyState,
    /// The best epoch and its selection key (label NLL, token loss).
    best: Option<(u32, f64, f64)>,
    #[serde(default)]
    best_threshold: Option<f64>,
    epochs_without_improvement: u32,
    finished: bool,
}

/// [`Tally`] in a form the checkpoint keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct TallyState {
    scripts: usize,
    token_nll: f64,
    tokens: usize,
    labels: Vec<(f64, u8)>,
    languages_right: usize,
    languages: usize,
}

impl TallyState {
    fn from_tally(t: &Tally) -> Self {
        Self {
            scripts: t.scripts,
            token_nll: t.token_nll,
            tokens: t.tokens,
            labels: t.labels.iter().map(|s| (s.p, s.label)).collect(),
            languages_right: t.languages_right,
            languages: t.languages,
        }
    }

    fn to_tally(&self) -> Tally {
        Tally {
            scripts: self.scripts,
            token_nll: self.token_nll,
            tokens: self.tokens,
            labels: self
                .labels
                .iter()
                .map(|&(p, label)| metrics::Scored { p, label })
                .collect(),
            languages_right: self.languages_right,
            languages: self.languages,
        }
    }
}

/// What training produced.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The adapter of the best epoch.
    pub adapter: LoraWeights,
    pub best_epoch: u32,
    pub history: Vec<EpochLoss>,
    pub steps: u64,
    /// True when the run ended before its last epoch because validation stopped improving.
    pub stopped_early: bool,
    /// The P(malicious) threshold that balances the validation classes best at the best
    /// epoch (0.5 without labels or without both classes in validation).
    pub label_threshold: f64,
}

impl Trained {
    /// The per-epoch scores with epochs numbered from 1, as everything a person reads shows
    /// them (lineage, metadata, progress).
    pub fn epochs_from_one(&self) -> Vec<EpochLoss> {
        self.history
            .iter()
            .map(|h| EpochLoss {
                epoch: h.epoch + 1,
                ..h.clone()
            })
            .collect()
    }

    /// The metadata saved with the adapter: its base model and training set.
    pub fn adapter_metadata(
        &self,
        base_model: &str,
        base_model_sha256: &str,
        training_set_sha256: &str,
    ) -> std::collections::BTreeMap<String, String> {
        [
            ("base_model", base_model.to_string()),
            ("base_model_sha256", base_model_sha256.to_string()),
            ("training_set_sha256", training_set_sha256.to_string()),
            ("best_epoch", (self.best_epoch + 1).to_string()),
            ("label_threshold", format!("{}", self.label_threshold)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// True when the script with this sha256 is held out for validation: by hash, so the split
/// does not depend on the order of the files.
pub fn held_out(sha256: &str, fraction: f64) -> bool {
    let h = u64::from_str_radix(&sha256[..12.min(sha256.len())], 16).unwrap_or(0);
    ((h % 10_000) as f64 / 10_000.0) < fraction
}

/// A validation hold-out stratified by `strata` (label and language, say): in each stratum
/// the scripts whose hashes come first in a hash-of-hash order, `round(fraction * n)` of
/// them, and at least `min_total` over all when the set allows (30 for 300 scripts or more).
/// Returns one flag per item: true = held out.
pub fn stratified_hold_out(items: &[(&str, String)], fraction: f64, min_total: usize) -> Vec<bool> {
    use std::collections::BTreeMap;
    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, s)) in items.iter().enumerate() {
        strata.entry(s.as_str()).or_default().push(i);
    }
    let key = |i: usize| automaldesc_common::sha256_hex(items[i].0.as_bytes());
    let total = items.len();
    let want = ((fraction * total as f64).round() as usize).max(min_total.min(total / 10));
    let fraction = if total == 0 {
        0.0
    } else {
        want as f64 / total as f64
    };
    let mut out = vec![false; total];
    for members in strata.values_mut() {
        members.sort_by_key(|&i| key(i));
        let k = (fraction * members.len() as f64).round() as usize;
        // A stratum of one stays in training, where it is the only example of its kind.
        let k = k.min(members.len().saturating_sub(1));
        for &i in members.iter().take(k) {
            out[i] = true;
        }
    }
    out
}

fn data_hash(train: &[Example], val: &[Example]) -> String {
    let mut bytes = Vec::new();
    for (tag, set) in [(b'T', train), (b'V', val)] {
        for e in set {
            bytes.push(tag);
            for part in [&e.prompt, &e.target] {
                bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
                for t in part.iter() {
                    bytes.extend_from_slice(&t.to_le_bytes());
                }
            }
            if !e.roles.is_empty() {
                bytes.extend_from_slice(
                    serde_json::to_string(&e.roles)
                        .unwrap_or_default()
                        .as_bytes(),
                );
            }
        }
    }
    automaldesc_common::sha256_hex(&bytes)
}

/// Adds one scored batch to a tally: free-token NLL, label probabilities, language hits.
fn tally_batch(
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

fn to_vec(t: burn::tensor::Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
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
fn scores_with(
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
fn check_data(data: &TrainData, adapter: &LoraWeights) -> Result<(), TrainError> {
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
fn selection_key(m: &SplitMetrics) -> (f64, f64) {
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
fn is_better(m: &SplitMetrics, best: Option<(f64, f64)>) -> bool {
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_objective;
