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
mod config;
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
mod run;
pub mod scorer;
mod scoring;

use serde::{Deserialize, Serialize};

pub use batch::{make_batch, micro_batches, Weights};
pub use config::TrainConfig;
use lora::{AdapterError, LoraWeights};
use metrics::SplitMetrics;
pub use run::{checkpoint_dir, train, train_with, TrainData};
pub use scoring::{evaluate, mean_loss};

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

fn to_vec(t: burn::tensor::Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_objective;
