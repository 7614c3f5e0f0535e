//! Supervised fine-tuning of the annotator with LoRA adapters.
//!
//! - An [`Example`] is a prompt and the answer tokens after it; the loss is the mean
//!   negative log-likelihood of the answer tokens only.
//! - Micro-batches are built by length: examples sorted by length are cut into batches of at
//!   most `batch_tokens` padded tokens, and the order of the batches is shuffled per epoch
//!   from the seed. `grad_accum` micro-batches make one optimizer step; their gradients
//!   are weighted so the step's loss is the mean over all its answer tokens.
//! - AdamW ([`optim`]) with linear warmup and decay. After every epoch the validation loss
//!   is measured; the best epoch's adapter is kept, and training stops after `patience`
//!   epochs without improvement.
//! - With a checkpoint directory, the whole state (adapter, optimizer moments, position in
//!   the epoch, history, best adapter) is written after every step as one file, replaced
//!   atomically (written, synced, renamed). Training
//!   started again on it continues exactly where it stopped: the data order is a function of
//!   the seed and the epoch, and the dropout masks of the seed and the step.

pub mod data;
pub mod forward;
pub mod lora;
pub mod optim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::model::Llama;
use crate::safetensors::{read_metadata, write_f32, SafeTensors};
use forward::{target_log_probs, Batch, Dropout};
use lora::{AdapterError, LoraConfig, LoraWeights};
use optim::{learning_rate, AdamW};

/// One supervised example: the loss covers `target` only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

impl Example {
    fn len(&self) -> usize {
        self.prompt.len() + self.target.len()
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
    /// Epochs without a better validation loss before stopping.
    pub patience: u32,
    pub seed: u64,
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
        }
    }
}

/// Losses of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
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
    best: Option<(u32, f64)>,
    epochs_without_improvement: u32,
    finished: bool,
}

/// What training produced.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The adapter of the best epoch (by validation loss).
    pub adapter: LoraWeights,
    pub best_epoch: u32,
    pub history: Vec<EpochLoss>,
    pub steps: u64,
    /// True when the run ended before its last epoch because validation stopped improving.
    pub stopped_early: bool,
}

impl Trained {
    /// The per-epoch losses with epochs numbered from 1, as everything a person reads shows
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
        }
    }
    automaldesc_common::sha256_hex(&bytes)
}

/// Micro-batches of one epoch (indices into `examples`): by length, at most `budget`
/// padded tokens each, in an order shuffled from `seed` and `epoch` (`None`: in order).
pub fn micro_batches(
    examples: &[Example],
    budget: usize,
    shuffle: Option<(u64, u32)>,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.sort_by_key(|&i| (examples[i].len(), i));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in idx {
        let len = examples[i].len();
        if !cur.is_empty() && (cur.len() + 1) * len > budget {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(i);
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
/// of every token before a target token is scored against it.
pub fn make_batch(examples: &[Example], idx: &[usize]) -> Batch {
    let t = idx
        .iter()
        .map(|&i| examples[i].len() - 1)
        .max()
        .unwrap_or(1)
        .max(1);
    let b = idx.len();
    let mut tokens = vec![0u32; b * t];
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (s, &i) in idx.iter().enumerate() {
        let e = &examples[i];
        let seq: Vec<u32> = e.prompt.iter().chain(&e.target).copied().collect();
        let n = seq.len() - 1;
        tokens[s * t..s * t + n].copy_from_slice(&seq[..n]);
        for p in e.prompt.len() - 1..n {
            rows.push(s * t + p);
            targets.push(seq[p + 1]);
        }
    }
    Batch {
        tokens,
        b,
        t,
        rows,
        targets,
    }
}

/// Mean negative log-likelihood of the targets of `examples` under the model with
/// `adapter` (no dropout, no gradients).
pub fn mean_loss(
    model: &Llama,
    examples: &[Example],
    adapter: Option<&LoraWeights>,
    budget: usize,
) -> f64 {
    let device = model.device();
    let tensors = adapter.map(|a| a.tensors(&device, false));
    let (mut sum, mut n) = (0.0f64, 0usize);
    for mb in micro_batches(examples, budget, None) {
        let batch = make_batch(examples, &mb);
        let logp = target_log_probs(model, &batch, tensors.as_ref(), None);
        let v = logp
            .sum()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        sum -= f64::from(v.first().copied().unwrap_or(f32::NAN));
        n += batch.rows.len();
    }
    sum / n.max(1) as f64
}

/// The checkpoint: one safetensors file holding the vectors, with the rest of the state as
/// JSON in its metadata, so that replacing it (write, then rename) is one atomic step.
const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

fn ckpt_err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn save_checkpoint(
    dir: &Path,
    state: &State,
    adapter: &LoraWeights,
    best: &LoraWeights,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| ckpt_err(dir, e))?;
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let (a, b) = (adapter.flatten(), best.flatten());
    let n = a.len();
    let json = serde_json::to_string(state).map_err(|e| ckpt_err(&tmp, e))?;
    write_f32(
        &tmp,
        &[
            ("adapter".into(), vec![n], &a),
            ("adam_m".into(), vec![n], &state.adam.m),
            ("adam_v".into(), vec![n], &state.adam.v),
            ("best".into(), vec![n], &b),
        ],
        &BTreeMap::from([("state".to_string(), json)]),
    )
    .map_err(|e| ckpt_err(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| ckpt_err(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE)).map_err(|e| ckpt_err(dir, e))?;
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    adapter: &mut LoraWeights,
    best: &mut LoraWeights,
) -> Result<Option<State>, TrainError> {
    let path = dir.join(CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let meta = read_metadata(&path).map_err(|e| ckpt_err(&path, e))?;
    let json = meta
        .get("state")
        .ok_or_else(|| ckpt_err(&path, "no training state in its metadata"))?;
    let mut state: State = serde_json::from_str(json).map_err(|e| ckpt_err(&path, e))?;
    let st = SafeTensors::open(&path).map_err(|e| ckpt_err(&path, e))?;
    let n = adapter.num_params();
    let read = |name: &str| -> Result<Vec<f32>, TrainError> {
        let v = st
            .to_f32(name)
            .ok_or_else(|| ckpt_err(&path, format!("no {name}")))?;
        if v.len() != n {
            return Err(ckpt_err(
                &path,
                format!("{name} has {} values, the adapter {n}", v.len()),
            ));
        }
        Ok(v)
    };
    adapter.set_flat(&read("adapter")?);
    best.set_flat(&read("best")?);
    state.adam.m = read("adam_m")?;
    state.adam.v = read("adam_v")?;
    Ok(Some(state))
}

/// Trains an adapter on `train`, choosing the best epoch on `val`. The model must be on
/// an autodiff device and frozen (`Module::no_grad`). `progress` is called after every
/// optimizer step; returning `false` stops training there (as a crash would, but with the
/// checkpoint written). With `checkpoint`, an existing checkpoint of the same config and
/// data is resumed.
pub fn train(
    model: &Llama,
    train: &[Example],
    val: &[Example],
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Option<Trained>, TrainError> {
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    if let Some(i) = train
        .iter()
        .chain(val)
        .position(|e| e.target.is_empty() || e.prompt.is_empty())
    {
        return Err(TrainError::EmptyTarget(i));
    }
    let device = model.device();
    let mut adapter = LoraWeights::init(&config.lora, &model.config, config.seed);
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
        best: None,
        epochs_without_improvement: 0,
        finished: false,
    };
    let mut state = match checkpoint {
        Some(dir) => match load_checkpoint(dir, &mut adapter, &mut best)? {
            Some(s) if s.config != *config || s.data_hash != hash => {
                return Err(ckpt_err(dir, "it belongs to another config or data set"))
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
        while state.group < groups.len() {
            let group = groups[state.group];
            let batches: Vec<Batch> = group.iter().map(|mb| make_batch(train, mb)).collect();
            let step_tokens: usize = batches.iter().map(|b| b.rows.len()).sum();
            let mut grads = vec![0.0f32; adapter.num_params()];
            let mut loss = 0.0f64;
            for (k, batch) in batches.iter().enumerate() {
                let tensors = adapter.tensors(&device, true);
                let dropout = Dropout {
                    p: config.lora.dropout,
                    seed: config.seed ^ (state.adam.step << 16) ^ k as u64,
                };
                let logp = target_log_probs(model, batch, Some(&tensors), Some(dropout));
                let l = logp.sum().neg().div_scalar(step_tokens as f64);
                let value = l
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                loss += f64::from(value.first().copied().unwrap_or(f32::NAN));
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
            tokens += step_tokens as u64;
            if let Some(dir) = checkpoint {
                save_checkpoint(dir, &state, &adapter, &best)?;
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
                return Ok(None);
            }
        }
        let val_loss = if val.is_empty() {
            state.epoch_loss_sum / state.epoch_steps.max(1) as f64
        } else {
            mean_loss(model, val, Some(&adapter), config.batch_tokens)
        };
        state.history.push(EpochLoss {
            epoch: state.epoch,
            train_loss: state.epoch_loss_sum / state.epoch_steps.max(1) as f64,
            val_loss,
        });
        tracing::info!(epoch = state.epoch, val_loss, "epoch done");
        if state.best.is_none_or(|(_, b)| val_loss < b) {
            state.best = Some((state.epoch, val_loss));
            best = adapter.clone();
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
        if let Some(dir) = checkpoint {
            save_checkpoint(dir, &state, &adapter, &best)?;
        }
    }
    let (best_epoch, _) = state.best.unwrap_or((0, f64::NAN));
    Ok(Some(Trained {
        adapter: best,
        best_epoch,
        stopped_early: state.epoch < config.epochs,
        history: state.history,
        steps: state.adam.step,
    }))
}

/// Where a run keeps its checkpoint by default.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

#[cfg(test)]
mod tests;
