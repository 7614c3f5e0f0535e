//! The training checkpoint: one safetensors file holding the vectors (adapter, optimizer
//! moments, best adapter), with the rest of the state as JSON in its metadata, so that
//! replacing it (write, sync, rename) is one atomic step.

use std::collections::BTreeMap;
use std::path::Path;

use super::lora::LoraWeights;
use serde::{Deserialize, Serialize};

use super::metrics::{self, Tally};
use super::optim::AdamW;
use super::{EpochLoss, TrainConfig, TrainError};
use crate::safetensors::{read_metadata, write_f32, SafeTensors};

const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

pub(super) fn ckpt_err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

pub(super) fn save_checkpoint(
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

/// Loads the checkpoint in `dir`, if any. A checkpoint of another layer set than
/// `config`'s is refused with both sets named, before its vectors are read.
pub(super) fn load_checkpoint(
    dir: &Path,
    config: &super::TrainConfig,
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
    if state.config.lora.layers != config.lora.layers {
        return Err(ckpt_err(
            dir,
            format!(
                "its adapter covers layers {:?}, this run {:?}: refusing to mix them",
                state.config.lora.layers, config.lora.layers
            ),
        ));
    }
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

/// The durable training state, besides its vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) config: TrainConfig,
    /// Hash of the training and validation examples: a checkpoint resumes only the same data.
    pub(super) data_hash: String,
    pub(super) epoch: u32,
    /// Optimizer steps done in the current epoch.
    pub(super) group: usize,
    pub(super) adam: AdamW,
    pub(super) history: Vec<EpochLoss>,
    /// Sum of the step losses of the current epoch, and their count.
    pub(super) epoch_loss_sum: f64,
    pub(super) epoch_steps: u64,
    /// The current epoch's training scores so far.
    #[serde(default)]
    pub(super) tally: TallyState,
    /// The best epoch and its selection key (label NLL, token loss).
    pub(super) best: Option<(u32, f64, f64)>,
    #[serde(default)]
    pub(super) best_threshold: Option<f64>,
    pub(super) epochs_without_improvement: u32,
    pub(super) finished: bool,
}

/// [`Tally`] in a form the checkpoint keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct TallyState {
    pub(super) scripts: usize,
    pub(super) token_nll: f64,
    pub(super) tokens: usize,
    pub(super) labels: Vec<(f64, u8)>,
    pub(super) languages_right: usize,
    pub(super) languages: usize,
}

impl TallyState {
    pub(super) fn from_tally(t: &Tally) -> Self {
        Self {
            scripts: t.scripts,
            token_nll: t.token_nll,
            tokens: t.tokens,
            labels: t.labels.iter().map(|s| (s.p, s.label)).collect(),
            languages_right: t.languages_right,
            languages: t.languages,
        }
    }

    pub(super) fn to_tally(&self) -> Tally {
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
