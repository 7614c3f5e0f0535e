//! A training run's settings, their defaults, and the checks that refuse settings that
//! cannot train.

use serde::{Deserialize, Serialize};

use super::lora::LoraConfig;
use super::TrainError;

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
