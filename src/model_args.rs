//! The arguments every command that loads the model, or samples from it, shares through
//! `#[command(flatten)]`, each with one default (the sampling ones from
//! `automaldesc_loop::stages::defaults`, which the loop and the stage configs use too).

use std::path::PathBuf;

use automaldesc_loop::stages::defaults;
use clap::Args;

/// `--model`.
#[derive(Args, Clone, Debug)]
pub struct ModelArg {
    /// GGUF model file or Hugging Face model directory (config.json, safetensors,
    /// tokenizer.json) [default: $AUTOMALDESC_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long = "model")]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    /// `--model`, else the default model.
    pub fn path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(defaults::model_path)
    }
}

/// How answers are sampled.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperatures, one sample each.
    #[arg(long, value_delimiter = ',', default_values_t = defaults::TEMPERATURES)]
    pub temperatures: Vec<f32>,
    #[arg(long, default_value_t = defaults::TOP_P)]
    pub top_p: f32,
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Prompt tokens per script; longer scripts keep their head and tail.
    #[arg(long, default_value_t = defaults::PROMPT_TOKENS)]
    pub prompt_budget: usize,
    /// Sequences decoded together.
    #[arg(long, default_value_t = defaults::SLOTS)]
    pub slots: usize,
    /// The filter's threshold on the label probability (what early stop anticipates).
    #[arg(long, default_value_t = defaults::MIN_LABEL_PROB)]
    pub min_label_prob: f32,
}
