//! The loop config: its keys, their defaults and checks, and where each iteration's stages
//! sit in the run spec.

use crate::stages::defaults;
use anyhow::Context;
use automaldesc_runtime::train::lora::{LayerSet, LoraConfig};
use automaldesc_runtime::train::TrainConfig;
use serde::{Deserialize, Serialize};

mod check;

/// The self-training run's settings. Every field but the locations has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// The run's id (its state and outputs are keyed by it).
    pub name: String,
    /// Unlabelled scripts ([`CorpusRow`] Parquet).
    ///
    /// [`CorpusRow`]: automaldesc_common::schema::CorpusRow
    pub corpus: String,
    /// The expert-labelled seed split (`labels/` + `scripts/`).
    pub seed: String,
    /// The held-out test split (`labels/` + `scripts/`).
    pub test: String,
    /// Where stages write (`<output>/runs/<name>/...`) and the reports are gathered
    /// (`<output>/reports/`).
    pub output: String,
    /// The base model, a GGUF file or a Hugging Face directory, at this path on every
    /// worker. Default: the `AUTOMALDESC_MODEL` environment variable, else
    /// `models/SmolLM2-135M-Instruct.Q4_1.gguf`.
    #[serde(default = "default_model")]
    pub model: String,
    /// The judge model (default: the base model, with the judge prompt).
    #[serde(default)]
    pub judge_model: Option<String>,
    /// Iterations (annotators V1..Vn).
    #[serde(default = "default_iterations")]
    pub iterations: u32,
    /// Sampling temperatures: one sample per temperature per script.
    #[serde(default = "default_temperatures")]
    pub temperatures: Vec<f32>,
    /// Temperatures of the test-set evaluation (default: `temperatures`); accuracies are
    /// weighted by samples, as published.
    #[serde(default)]
    pub eval_temperatures: Option<Vec<f32>>,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Seed of the sampling and of training.
    #[serde(default)]
    pub random_seed: u64,
    /// New tokens per answer (published: 512).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Prompt tokens per script; longer scripts keep their head and tail.
    #[serde(default = "default_prompt_tokens")]
    pub prompt_tokens: usize,
    /// The label-probability threshold of the filter (published: 0.90).
    #[serde(default = "default_confidence")]
    pub confidence: f32,
    /// Self-paced schedule: the threshold of iteration k is entry k-1 (the last entry for
    /// later iterations); empty means `confidence` every iteration. For example
    /// `[0.95, 0.90]`: strict while the annotator is weak, looser once it has learnt.
    #[serde(default)]
    pub confidence_schedule: Vec<f32>,
    /// Stop a sample right after its label when the filter will reject the script anyway.
    #[serde(default = "default_true")]
    pub early_stop: bool,
    /// Sequences decoded together per worker.
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// Test scripts (the shortest) the judge uses to compare consecutive annotators'
    /// summaries, in both orders.
    #[serde(default = "default_preference_scripts")]
    pub preference_scripts: usize,
    /// Adapter settings per iteration (the last entry for later iterations). Published:
    /// V1 rank 8 / alpha 16 / dropout 0.05, 15 epochs; V2 rank 16 / alpha 32 / dropout
    /// 0.1, 20 epochs; both lr 1e-4, weight decay 0.001, 5% warmup.
    #[serde(default = "default_adapters")]
    pub adapter: Vec<AdapterConfig>,
    /// Input bytes a generate/judge/filter task aims at.
    #[serde(default = "default_task_bytes")]
    pub task_bytes: u64,
    /// Target bytes of a training-set shard.
    #[serde(default = "default_shard_bytes")]
    pub shard_bytes: u64,
    /// Workers of a local run (`automaldesc loop`); a cluster has its own.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// Reference summaries (seed and pseudo-labels alike) are cut at their last whole
    /// sentence within this many tokens before training, so every target ends.
    #[serde(default)]
    pub summary_tokens: Option<usize>,
    /// The summary never repeats an n-gram of this size (0: off).
    #[serde(default = "default_no_repeat_ngram")]
    pub no_repeat_ngram: usize,
    /// Penalty on tokens already in the summary (1: off).
    #[serde(default = "default_repetition_penalty")]
    pub repetition_penalty: f32,
    /// The balanced accuracy on the seed summaries the judge needs before check 5 may use
    /// it; below it a judge adapter is trained, and without one that passes, check 5 is
    /// skipped for the run.
    #[serde(default = "default_judge_min_accuracy")]
    pub judge_min_accuracy: f64,
    /// The base model's report also scores the base judge on every test reference summary:
    /// a diagnostic beside the judge-train stage's own check on the seed, one judge pass
    /// over the test set.
    #[serde(default = "default_true")]
    pub judge_check_test: bool,
    /// Training of the judge adapter (one target token: the label).
    #[serde(default = "default_judge_adapter")]
    pub judge_adapter: AdapterConfig,
    /// Evaluate label-only: the greedy language and label of every test script, decoding
    /// stopped right after the label, so the whole test set is scored at little cost (and
    /// McNemar can speak); whole summaries only for `eval_summary_scripts` of them.
    #[serde(default = "default_true")]
    pub label_only_eval: bool,
    /// Test scripts (stratified by language and label) whose whole summaries are generated
    /// for the summary metrics and the judge's preference, in a label-only evaluation.
    #[serde(default = "default_eval_summary_scripts")]
    pub eval_summary_scripts: usize,
    /// The compact system prompt for the annotator and the judge (a few dozen tokens
    /// instead of ~160, leaving the prompt budget to the script).
    #[serde(default)]
    pub compact_prompt: bool,
    /// Every annotator runs the base model's blocks below the lowest adapted block
    /// unchanged, so each worker keeps a prompt's prefill states there (on local disk, see
    /// ARCHITECTURE.md) and the later evaluations and generations over the same prompts
    /// read them back instead of running those blocks again. Results are identical.
    #[serde(default = "default_true")]
    pub reuse_prefill: bool,
}

/// One iteration's adapter and its training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub epochs: u32,
    #[serde(default = "default_lr")]
    pub learning_rate: f32,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f32,
    #[serde(default = "default_warmup")]
    pub warmup: f32,
    /// Padded tokens per micro-batch.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    #[serde(default = "default_grad_accum")]
    pub grad_accum: u32,
    /// Epochs without a better validation loss before stopping.
    #[serde(default = "default_patience")]
    pub patience: u32,
    /// Answer tokens per training example (longer summaries are cut).
    #[serde(default = "default_max_new_tokens")]
    pub answer_tokens: usize,
    /// Fraction of the training set held out (stratified by label and language) for
    /// validation.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// The blocks that carry adapters: "all", "top:K" or a list of indices.
    #[serde(default)]
    pub layers: LayerSet,
    /// Loss weight of the label choice (a summary token weighs 1).
    #[serde(default = "default_label_weight")]
    pub label_weight: f32,
    /// Loss weight of the language choice.
    #[serde(default = "default_language_weight")]
    pub language_weight: f32,
    /// Scale the label weight per class by inverse class frequency.
    #[serde(default = "default_true")]
    pub balance_classes: bool,
    /// Train a label head (a linear readout of the final hidden state on the label's
    /// logit) with the adapters.
    #[serde(default)]
    pub label_head: bool,
    /// Refit a language head (one readout per language) with the adapters.
    #[serde(default)]
    pub language_head: bool,
}

impl AdapterConfig {
    /// The trainer's config of this adapter, seeded with `seed`.
    pub fn train_config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            lora: LoraConfig {
                rank: self.rank,
                alpha: self.alpha,
                dropout: self.dropout,
                targets: LoraConfig::v1().targets,
                layers: self.layers.clone(),
                label_head: self.label_head,
                language_head: self.language_head,
            },
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            warmup: self.warmup,
            epochs: self.epochs,
            batch_tokens: self.batch_tokens,
            grad_accum: self.grad_accum,
            patience: self.patience,
            seed,
            label_weight: self.label_weight,
            language_weight: self.language_weight,
            balance_classes: self.balance_classes,
            ..TrainConfig::v1()
        }
    }
}

fn default_model() -> String {
    defaults::model_path().display().to_string()
}
fn default_iterations() -> u32 {
    2
}
fn default_temperatures() -> Vec<f32> {
    defaults::TEMPERATURES.to_vec()
}
fn default_top_p() -> f32 {
    defaults::TOP_P
}
fn default_max_new_tokens() -> usize {
    defaults::MAX_NEW_TOKENS
}
fn default_prompt_tokens() -> usize {
    defaults::PROMPT_TOKENS
}
fn default_confidence() -> f32 {
    defaults::MIN_LABEL_PROB
}
fn default_true() -> bool {
    true
}
fn default_slots() -> usize {
    defaults::SLOTS
}
fn default_preference_scripts() -> usize {
    defaults::PREFERENCE_SCRIPTS
}
fn default_task_bytes() -> u64 {
    4 << 20
}
fn default_shard_bytes() -> u64 {
    128 << 20
}
fn default_workers() -> u32 {
    1
}
fn default_lr() -> f32 {
    1e-4
}
fn default_weight_decay() -> f32 {
    0.001
}
fn default_warmup() -> f32 {
    0.05
}
fn default_batch_tokens() -> usize {
    4096
}
fn default_grad_accum() -> u32 {
    1
}
fn default_patience() -> u32 {
    3
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_label_weight() -> f32 {
    10.0
}
fn default_language_weight() -> f32 {
    1.0
}
fn default_no_repeat_ngram() -> usize {
    4
}
fn default_repetition_penalty() -> f32 {
    defaults::REPETITION_PENALTY
}
fn default_eval_summary_scripts() -> usize {
    32
}
fn default_judge_min_accuracy() -> f64 {
    defaults::JUDGE_MIN_ACCURACY
}
fn default_judge_adapter() -> AdapterConfig {
    AdapterConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        epochs: 2,
        learning_rate: 5e-4,
        batch_tokens: 4096,
        answer_tokens: 1,
        val_fraction: 0.3,
        layers: LayerSet::top(4),
        label_weight: 1.0,
        label_head: true,
        ..default_adapters()[0].clone()
    }
}
fn default_adapters() -> Vec<AdapterConfig> {
    let published = |l: LoraConfig, epochs| AdapterConfig {
        rank: l.rank,
        alpha: l.alpha,
        dropout: l.dropout,
        epochs,
        learning_rate: default_lr(),
        weight_decay: default_weight_decay(),
        warmup: default_warmup(),
        batch_tokens: default_batch_tokens(),
        grad_accum: default_grad_accum(),
        patience: default_patience(),
        answer_tokens: default_max_new_tokens(),
        val_fraction: default_val_fraction(),
        layers: LayerSet::all(),
        label_weight: default_label_weight(),
        language_weight: default_language_weight(),
        balance_classes: true,
        label_head: false,
        language_head: false,
    };
    vec![
        published(LoraConfig::v1(), 15),
        published(LoraConfig::v2(), 20),
    ]
}

/// Indices of an iteration's stages in the run spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IterationStages {
    pub train: u32,
    pub generate: u32,
    pub judge: u32,
    pub filter: u32,
    pub aggregate: u32,
    pub evaluate: u32,
    pub report: u32,
}

/// Stages of the base model's evaluation.
pub const BASE_EVALUATE: u32 = 0;
pub const BASE_REPORT: u32 = 1;
/// The run's judge, measured (and trained when it falls short) on the seed summaries.
pub const JUDGE_TRAIN: u32 = 2;
/// The first stage of iteration 1.
pub const FIRST_ITERATION: u32 = 3;

impl LoopConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let c: LoopConfig = toml::from_str(text).context("loop config")?;
        c.validate()?;
        Ok(c)
    }

    /// The label-probability threshold of iteration `k` (1-based).
    pub fn threshold(&self, k: u32) -> f32 {
        let s = &self.confidence_schedule;
        if s.is_empty() {
            self.confidence
        } else {
            s[(k as usize - 1).min(s.len() - 1)]
        }
    }

    pub(super) fn adapter_of(&self, k: u32) -> &AdapterConfig {
        &self.adapter[(k as usize - 1).min(self.adapter.len() - 1)]
    }

    pub fn stages_of(k: u32) -> IterationStages {
        let first = FIRST_ITERATION + 7 * (k - 1);
        IterationStages {
            train: first,
            generate: first + 1,
            judge: first + 2,
            filter: first + 3,
            aggregate: first + 4,
            evaluate: first + 5,
            report: first + 6,
        }
    }

    /// sha256 of the config as canonical JSON: the lineage's config hash.
    pub fn hash(&self) -> String {
        let v = serde_json::to_value(self).expect("the loop config encodes as JSON");
        automaldesc_common::sha256_hex(v.to_string().as_bytes())
    }

    /// A person's name for stage `i` of the run spec.
    pub fn stage_name(i: u32) -> String {
        match i {
            BASE_EVALUATE => "evaluate base model".into(),
            BASE_REPORT => "report base model".into(),
            JUDGE_TRAIN => "check the judge on the seed".into(),
            _ => {
                let k = (i - FIRST_ITERATION) / 7 + 1;
                let what = [
                    "train",
                    "generate",
                    "judge",
                    "filter",
                    "aggregate",
                    "evaluate",
                    "report",
                ][((i - FIRST_ITERATION) % 7) as usize];
                format!("iteration {k} {what}")
            }
        }
    }
}
