//! One training run from a model file: the frozen model on the autodiff device, the answer
//! schema's choice candidates, and the same model on the fused inference path, which
//! computes the frozen-prefix caches when the adapter starts above block 0 and the passes
//! at every epoch's end.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::prefix::PrefixCache;
use super::{ChoiceIds, Example, TrainConfig, TrainError};
use crate::runtime::{Annotator, RuntimeError};
use crate::state_store::StateStore;

/// The frozen base model for training and what it needs besides the examples.
pub struct Trainer {
    /// On the CPU autodiff device, frozen (`no_grad`).
    pub annotator: Annotator,
    pub choices: ChoiceIds,
    path: std::path::PathBuf,
    /// The same model on the inference path (flex, packed), loaded on first use: it computes
    /// the frozen prefixes and runs the passes at every epoch's end (`TrainData::fused`).
    fused: std::sync::OnceLock<Annotator>,
    /// Where frozen-prefix states outlive this run, for the next run over the same examples.
    pub prefix_store: Option<StateStore>,
}

impl Trainer {
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let device = Device::flex().autodiff();
        let mut annotator = Annotator::load(path, &device)?;
        annotator.model.freeze_for_training();
        annotator.model = annotator.model.no_grad();
        let choices = super::data::choice_ids(&annotator);
        Ok(Self {
            annotator,
            choices,
            path: path.to_path_buf(),
            fused: std::sync::OnceLock::new(),
            prefix_store: None,
        })
    }

    /// The base model on the fused inference path (loaded once, kept for the run).
    pub fn fused_model(&self) -> Result<&crate::model::Llama, TrainError> {
        if let Some(a) = self.fused.get() {
            return Ok(&a.model);
        }
        let infer = Annotator::load(&self.path, &Device::flex())
            .map_err(|e| TrainError::Config(format!("loading the inference model: {e}")))?;
        Ok(&self.fused.get_or_init(|| infer).model)
    }

    /// The frozen-prefix cache of each set when `config`'s lowest adapted block is above 0
    /// (`None` otherwise). States beyond `prefix_cache_bytes` in all spill to `spill_dir`.
    pub fn prefix_caches(
        &self,
        config: &TrainConfig,
        sets: &[&[Example]],
        spill_dir: Option<&Path>,
    ) -> Result<Option<Vec<PrefixCache>>, TrainError> {
        let adapted = config
            .lora
            .layers
            .resolve(self.annotator.model.config.num_layers)?;
        let start = adapted[0];
        if start == 0 {
            return Ok(None);
        }
        if config.prefix_cache_bytes == 0 && spill_dir.is_none() {
            return Err(TrainError::Config(
                "`prefix_cache_bytes` is 0 and no spill directory is set: the frozen prefix has nowhere to go".into(),
            ));
        }
        let infer = self.fused_model()?;
        let mut left = config.prefix_cache_bytes;
        let mut out = Vec::with_capacity(sets.len());
        for set in sets {
            let cache = PrefixCache::build(
                infer,
                set,
                start,
                left,
                spill_dir,
                self.prefix_store.as_ref(),
            )?;
            left = left.saturating_sub(cache.memory_bytes);
            out.push(cache);
        }
        Ok(Some(out))
    }
}
