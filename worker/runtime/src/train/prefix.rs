//! The frozen prefix of a LoRA run: when the lowest adapted block is `start`, the blocks
//! below it are frozen and see the same tokens every epoch, so their output (the residual
//! stream entering block `start`) is computed once per example on the fused inference path
//! and reused by every epoch; the autodiff graph starts at block `start`.
//!
//! States are kept in memory up to a byte budget and spilled beyond it to one file in a
//! local directory, read back per micro-batch.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{Example, TrainError};
use crate::model::Llama;
use crate::state_store::StateStore;

enum Slot {
    Memory(Vec<f32>),
    /// Offset in the spill file, in bytes.
    Spilled(u64),
}

/// The cached residual stream of every example of one set.
pub struct PrefixCache {
    /// The first block the training forward runs.
    pub start: usize,
    hidden: usize,
    slots: Vec<(Slot, usize)>,
    spill: Option<std::sync::Mutex<std::fs::File>>,
    /// Bytes held in memory, and in the spill file.
    pub memory_bytes: usize,
    pub spilled_bytes: u64,
    /// Examples whose states came from the [`StateStore`] instead of the model.
    pub reused: usize,
}

impl PrefixCache {
    /// Runs blocks `0..start` of `model` (an inference model: fused kernels on the CPU) over
    /// each example's sequence (prompt and target but the last token), or reads the states
    /// from `store` where an earlier run left them. Beyond `budget_bytes` states go to a
    /// file in `spill_dir` (an error when there is none).
    pub fn build(
        model: &Llama,
        examples: &[Example],
        start: usize,
        budget_bytes: usize,
        spill_dir: Option<&Path>,
        store: Option<&StateStore>,
    ) -> Result<Self, TrainError> {
        let hidden = model.config.hidden_size;
        let mut cache = Self {
            start,
            hidden,
            slots: Vec::with_capacity(examples.len()),
            spill: None,
            memory_bytes: 0,
            spilled_bytes: 0,
            reused: 0,
        };
        for e in examples {
            let seq: Vec<u32> = e.prompt.iter().chain(&e.target).copied().collect();
            let n = seq.len() - 1;
            let stored = store.and_then(|s| s.get(start, &seq[..n], n * hidden));
            let v = match stored {
                Some(v) => {
                    cache.reused += 1;
                    v
                }
                None => {
                    let v = model
                        .residual_stream(&seq[..n], start)
                        .into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| TrainError::Config(format!("prefix states: {e:?}")))?;
                    if let Some(s) = store {
                        s.put(start, &seq[..n], &v);
                    }
                    v
                }
            };
            cache.push(v, n, budget_bytes, spill_dir)?;
        }
        if let Some(s) = store {
            s.evict();
        }
        Ok(cache)
    }

    fn push(
        &mut self,
        v: Vec<f32>,
        rows: usize,
        budget: usize,
        spill_dir: Option<&Path>,
    ) -> Result<(), TrainError> {
        let bytes = v.len() * 4;
        if self.memory_bytes + bytes <= budget {
            self.memory_bytes += bytes;
            self.slots.push((Slot::Memory(v), rows));
            return Ok(());
        }
        let dir = spill_dir.ok_or_else(|| {
            TrainError::Config(format!(
                "the frozen prefix needs more than `prefix_cache_bytes` ({budget}) and no spill directory is set"
            ))
        })?;
        let spill_err = |e: std::io::Error| TrainError::Checkpoint {
            path: dir.display().to_string(),
            reason: format!("prefix spill file: {e}"),
        };
        if self.spill.is_none() {
            std::fs::create_dir_all(dir).map_err(spill_err)?;
            let file = tempfile::tempfile_in(dir).map_err(spill_err)?;
            self.spill = Some(std::sync::Mutex::new(file));
        }
        let file = match &self.spill {
            Some(f) => f,
            None => return Err(TrainError::Config("no spill file".into())),
        };
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        let bytes_le: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        f.seek(SeekFrom::Start(self.spilled_bytes))
            .map_err(spill_err)?;
        f.write_all(&bytes_le).map_err(spill_err)?;
        self.slots.push((Slot::Spilled(self.spilled_bytes), rows));
        self.spilled_bytes += bytes_le.len() as u64;
        Ok(())
    }

    /// Example `i`'s states, `[rows, hidden]` row-major.
    pub fn states(&self, i: usize) -> Result<Vec<f32>, TrainError> {
        let (slot, rows) = &self.slots[i];
        match (slot, &self.spill) {
            (Slot::Memory(v), _) => Ok(v.clone()),
            (Slot::Spilled(at), Some(file)) => {
                let mut buf = vec![0u8; rows * self.hidden * 4];
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.seek(SeekFrom::Start(*at))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(|e| TrainError::Checkpoint {
                        path: "frozen-prefix spill file".into(),
                        reason: e.to_string(),
                    })?;
                Ok(buf
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
            (Slot::Spilled(_), None) => Err(TrainError::Config(
                "a spilled prefix state without a spill file".into(),
            )),
        }
    }

    /// The states of the listed examples as one `[idx.len() * t, hidden]` block, each
    /// sequence padded with zero rows to `t`.
    pub fn batch_states(&self, idx: &[usize], t: usize) -> Result<Vec<f32>, TrainError> {
        let h = self.hidden;
        let mut out = vec![0f32; idx.len() * t * h];
        for (s, &i) in idx.iter().enumerate() {
            let v = self.states(i)?;
            let rows = (v.len() / h).min(t);
            out[s * t * h..(s * t + rows) * h].copy_from_slice(&v[..rows * h]);
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
