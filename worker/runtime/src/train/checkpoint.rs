//! The training checkpoint: one safetensors file holding the vectors (adapter, optimizer
//! moments, best adapter), with the rest of the state as JSON in its metadata, so that
//! replacing it (write, sync, rename) is one atomic step.

use std::collections::BTreeMap;
use std::path::Path;

use super::lora::LoraWeights;
use super::{State, TrainError};
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
