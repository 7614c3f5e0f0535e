//! `automaldesc loop`: the self-training loop as one run on the distributed runtime.
//!
//! A loop config (TOML, unknown keys rejected) expands into a run spec whose stages are, for
//! the base model and then for each iteration k:
//!
//! | stage | kind | input | refs |
//! |---|---|---|---|
//! | evaluate base | generate | test scripts | |
//! | report base | report | test labels, one task | answers |
//! | train Vk | train | seed (k = 1) or the training set of iteration k-1, one task | |
//! | generate | generate | unlabelled corpus | adapter |
//! | judge | judge | the generated answers | |
//! | filter | filter | the judged answers | |
//! | aggregate | aggregate | every decision, one task | adapter |
//! | evaluate Vk | generate | test scripts | adapter |
//! | report Vk | report | test labels, one task | answers, previous, funnel, history |
//!
//! Each stage is a set of tasks that workers lease; a stage resumes after a crash at its
//! last committed task. `automaldesc loop CONFIG` runs it on this machine (embedded state,
//! in-process workers) and gathers the reports; `--print-spec` writes the run spec for
//! `automaldesc submit` to a cluster's coordinator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use automaldesc_common::ids::RunId;
use automaldesc_common::parquet_io::nonempty_dataset_layout;
use automaldesc_common::store::{block_on, open_store};
use automaldesc_worker::prompt::PromptStyle;
use automaldesc_worker::stages::aggregate::AggregateConfig;
use automaldesc_worker::stages::defaults;
use automaldesc_worker::stages::filter::FilterConfig;
use automaldesc_worker::stages::generate::GenerateConfig;
use automaldesc_worker::stages::judge::JudgeConfig;
use automaldesc_worker::stages::judge_train::JudgeTrainConfig;
use automaldesc_worker::stages::report::ReportConfig;
use automaldesc_worker::stages::train::TrainStageConfig;
use automaldesc_worker::train::lora::{LayerSet, LoraConfig};
use automaldesc_worker::train::TrainConfig;
use clap::Args;
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use crate::cluster_cmd::{run_local, LeaseArgs, LOOP_EXECUTORS};
use crate::run_manager::RunStatus;
use crate::run_spec::{RunSpec, StageConfig};
use crate::stage_manager::read_commits;
use crate::state::EmbeddedStore;

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
    crate::annotate_cmd::default_model_path()
        .display()
        .to_string()
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

/// The smallest `summary_tokens`: about one short sentence.
const MIN_SUMMARY_TOKENS: usize = 16;

/// Stages of the base model's evaluation.
pub const BASE_EVALUATE: u32 = 0;
pub const BASE_REPORT: u32 = 1;
/// The run's judge, measured (and trained when it falls short) on the seed summaries.
pub const JUDGE_TRAIN: u32 = 2;
/// The first stage of iteration 1.
const FIRST_ITERATION: u32 = 3;

impl LoopConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let c: LoopConfig = toml::from_str(text).context("loop config")?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let id_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !id_ok {
            bail!(
                "`name` {:?} must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.'",
                self.name
            );
        }
        for (k, v) in [
            ("corpus", &self.corpus),
            ("seed", &self.seed),
            ("test", &self.test),
            ("output", &self.output),
            ("model", &self.model),
        ] {
            if v.trim().is_empty() {
                bail!("`{k}` must not be empty");
            }
        }
        if self.iterations == 0 {
            bail!("`iterations` must be at least 1");
        }
        let lists = std::iter::once(&self.temperatures).chain(&self.eval_temperatures);
        for temps in lists {
            if temps.is_empty() || temps.iter().any(|t| t.is_nan() || *t < 0.0) {
                bail!("temperatures must be non-empty lists of non-negative numbers");
            }
        }
        let thresholds = std::iter::once(&self.confidence).chain(&self.confidence_schedule);
        for t in thresholds {
            if !(0.0..=1.0).contains(t) {
                bail!("confidence thresholds must lie in [0, 1], got {t}");
            }
        }
        if self.adapter.is_empty() {
            bail!("`adapter` needs at least one entry");
        }
        for (i, a) in self
            .adapter
            .iter()
            .chain(std::iter::once(&self.judge_adapter))
            .enumerate()
        {
            let name = if i == self.adapter.len() {
                "judge_adapter".to_string()
            } else {
                format!("adapter {i}")
            };
            if a.rank == 0 || a.epochs == 0 || !(0.0..1.0).contains(&a.dropout) {
                bail!("{name}: rank and epochs must be positive and dropout in [0, 1)");
            }
            if !(a.label_weight > 0.0 && a.label_weight.is_finite()) {
                bail!(
                    "{name}: `label_weight` must be a positive number, got {}",
                    a.label_weight
                );
            }
            if !(a.language_weight >= 0.0 && a.language_weight.is_finite()) {
                bail!(
                    "{name}: `language_weight` must be zero or positive, got {}",
                    a.language_weight
                );
            }
        }
        if let Some(n) = self.summary_tokens {
            if n < MIN_SUMMARY_TOKENS {
                bail!(
                    "`summary_tokens` = {n} is below the length of one sentence (at least {MIN_SUMMARY_TOKENS})"
                );
            }
            if let Some(a) = self.adapter.iter().find(|a| a.answer_tokens < n + 24) {
                bail!(
                    "`answer_tokens` = {} cannot hold a summary of `summary_tokens` = {n} and the answer around it (at least {})",
                    a.answer_tokens,
                    n + 24
                );
            }
        }
        if !(0.0..=1.0).contains(&self.judge_min_accuracy) {
            bail!(
                "`judge_min_accuracy` must lie in [0, 1], got {}",
                self.judge_min_accuracy
            );
        }
        if self.max_new_tokens == 0 || self.prompt_tokens == 0 || self.slots == 0 {
            bail!("`max_new_tokens`, `prompt_tokens` and `slots` must be positive");
        }
        Ok(())
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

    fn adapter_of(&self, k: u32) -> &AdapterConfig {
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

    fn prompt_style(&self) -> PromptStyle {
        if self.compact_prompt {
            PromptStyle::Compact
        } else {
            PromptStyle::Full
        }
    }

    fn judge(&self) -> &str {
        self.judge_model.as_deref().unwrap_or(&self.model)
    }

    fn generate_config(&self, early_stop: bool, min_label_prob: f32) -> GenerateConfig {
        GenerateConfig {
            model: self.model.clone(),
            temperatures: self.temperatures.clone(),
            top_p: self.top_p,
            seed: self.random_seed,
            max_new_tokens: self.max_new_tokens,
            prompt_budget: self.prompt_tokens,
            slots: self.slots,
            early_stop,
            min_label_prob,
            chunk: defaults::CHUNK,
            no_repeat_ngram: self.no_repeat_ngram,
            repetition_penalty: self.repetition_penalty,
            label_only_except: None,
            prompt: self.prompt_style(),
            reuse_prefill_for: self.reuse_prefill_for(),
        }
    }

    /// The layer sets of every annotator to come: a generate stage keeps and reuses the
    /// prefill below the lowest of them (none without `reuse_prefill`).
    fn reuse_prefill_for(&self) -> Vec<LayerSet> {
        if !self.reuse_prefill {
            return Vec::new();
        }
        self.adapter.iter().map(|a| a.layers.clone()).collect()
    }

    /// The evaluation's generate config: no early stop, the evaluation temperatures; in a
    /// label-only evaluation, greedy and stopped after the label but for `summary_scripts`.
    fn evaluate_config(&self, summary_scripts: &[String]) -> GenerateConfig {
        let mut c = self.generate_config(false, self.confidence);
        if let Some(t) = &self.eval_temperatures {
            c.temperatures = t.clone();
        }
        if self.label_only_eval {
            c.temperatures = vec![0.0];
            c.label_only_except = Some(summary_scripts.to_vec());
        }
        c
    }

    /// A report stage's config: iteration `k`, annotator `name` against `previous`.
    fn report_config(&self, k: u32, name: &str, previous: Option<String>) -> ReportConfig {
        ReportConfig {
            run: self.name.clone(),
            iteration: k,
            annotator: name.to_string(),
            previous_annotator: previous,
            judge_model: self.judge().to_string(),
            preference_scripts: self.preference_scripts,
            preference_bytes: defaults::PREFERENCE_BYTES,
            judge_check: false,
            prompt: self.prompt_style(),
            model: Some(self.model.clone()),
            summary_tokens: self.summary_tokens,
        }
    }

    /// The test scripts that get whole summaries in a label-only evaluation: up to
    /// `eval_summary_scripts`, taken in turn from each (language, label) stratum in an order
    /// fixed by their hashes.
    pub fn summary_scripts(&self) -> anyhow::Result<Vec<String>> {
        if !self.label_only_eval || self.eval_summary_scripts == 0 {
            return Ok(Vec::new());
        }
        let labels = crate::labelled_split::read_labels(&self.test, None)?;
        let mut strata: BTreeMap<(String, u8), Vec<String>> = BTreeMap::new();
        for l in labels {
            strata
                .entry((l.language.to_string(), l.label.as_u8()))
                .or_default()
                .push(l.sha256);
        }
        for v in strata.values_mut() {
            v.sort_by_key(|s| automaldesc_common::sha256_hex(s.as_bytes()));
        }
        let mut out = Vec::new();
        let mut round = 0;
        while out.len() < self.eval_summary_scripts {
            let before = out.len();
            for v in strata.values() {
                if let Some(s) = v.get(round) {
                    if out.len() < self.eval_summary_scripts {
                        out.push(s.clone());
                    }
                }
            }
            if out.len() == before {
                break;
            }
            round += 1;
        }
        out.sort();
        Ok(out)
    }

    /// The run spec of the whole loop; `summary_scripts` from [`LoopConfig::summary_scripts`].
    pub fn run_spec(&self, base_model_sha256: &str, summary_scripts: &[String]) -> RunSpec {
        let test = self.test.trim_end_matches('/');
        let stage = |kind: &str,
                     input: Option<String>,
                     single: bool,
                     refs: &[(&str, u32)],
                     config: serde_json::Value| StageConfig {
            input,
            single_task: single,
            refs: refs.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            ..StageConfig::new(kind, without_nulls(config))
        };
        let mut stages = vec![
            stage(
                "generate",
                Some(format!("{test}/scripts")),
                false,
                &[],
                to_json(&self.evaluate_config(summary_scripts)),
            ),
            stage(
                "report",
                Some(format!("{test}/labels")),
                true,
                &[("answers", BASE_EVALUATE)],
                to_json(&ReportConfig {
                    judge_check: self.judge_check_test,
                    ..self.report_config(0, "base", None)
                }),
            ),
            stage(
                "judge-train",
                Some(format!("{}/labels", self.seed.trim_end_matches('/'))),
                true,
                &[],
                to_json(&JudgeTrainConfig {
                    model: self.judge().to_string(),
                    min_accuracy: self.judge_min_accuracy,
                    train: self.judge_adapter.train_config(self.random_seed),
                    summary_tokens: defaults::JUDGE_SUMMARY_TOKENS,
                    val_fraction: self.judge_adapter.val_fraction,
                    reference_tokens: self.summary_tokens,
                    prompt: self.prompt_style(),
                }),
            ),
        ];
        for k in 1..=self.iterations {
            let s = Self::stages_of(k);
            let a = self.adapter_of(k);
            let threshold = self.threshold(k);
            let train = a.train_config(self.random_seed.wrapping_add(u64::from(k)));
            let train_input = if k == 1 {
                self.seed.clone()
            } else {
                format!("stage:{}", Self::stages_of(k - 1).aggregate)
            };
            let (prev_answers, prev_report, prev_name) = if k == 1 {
                (BASE_EVALUATE, BASE_REPORT, "base".to_string())
            } else {
                let p = Self::stages_of(k - 1);
                (p.evaluate, p.report, format!("V{}", k - 1))
            };
            stages.extend([
                stage(
                    "train",
                    Some(train_input),
                    true,
                    &[],
                    to_json(&TrainStageConfig {
                        model: self.model.clone(),
                        train,
                        prompt_tokens: self.prompt_tokens,
                        answer_tokens: a.answer_tokens,
                        summary_tokens: self.summary_tokens,
                        val_fraction: a.val_fraction,
                        prompt: self.prompt_style(),
                    }),
                ),
                stage(
                    "generate",
                    Some(self.corpus.clone()),
                    false,
                    &[("adapter", s.train)],
                    to_json(&self.generate_config(self.early_stop, threshold)),
                ),
                stage(
                    "judge",
                    None,
                    false,
                    &[("judge", JUDGE_TRAIN)],
                    to_json(&JudgeConfig {
                        model: self.judge().to_string(),
                        min_label_prob: threshold,
                        summary_tokens: defaults::JUDGE_SUMMARY_TOKENS,
                        prompt: self.prompt_style(),
                    }),
                ),
                stage(
                    "filter",
                    None,
                    false,
                    &[],
                    to_json(&FilterConfig {
                        min_label_prob: threshold,
                    }),
                ),
                stage(
                    "aggregate",
                    None,
                    true,
                    &[("adapter", s.train), ("judge", JUDGE_TRAIN)],
                    to_json(&AggregateConfig {
                        run: self.name.clone(),
                        iteration: k,
                        seed: self.seed.clone(),
                        corpus: self.corpus.clone(),
                        shard_bytes: self.shard_bytes,
                        config_hash: self.hash(),
                        base_model_sha256: base_model_sha256.to_string(),
                    }),
                ),
                stage(
                    "generate",
                    Some(format!("{test}/scripts")),
                    false,
                    &[("adapter", s.train)],
                    to_json(&self.evaluate_config(summary_scripts)),
                ),
                stage(
                    "report",
                    Some(format!("{test}/labels")),
                    true,
                    &[
                        ("answers", s.evaluate),
                        ("previous", prev_answers),
                        ("funnel", s.aggregate),
                        ("history", prev_report),
                        ("adapter", s.train),
                    ],
                    to_json(&self.report_config(k, &format!("V{k}"), Some(prev_name))),
                ),
            ]);
        }
        for (i, s) in stages.iter_mut().enumerate() {
            s.name = Some(Self::stage_name(i as u32));
        }
        RunSpec {
            input: self.corpus.clone(),
            output: self.output.clone(),
            task_bytes: self.task_bytes,
            stages,
            limits: Default::default(),
        }
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

/// `config` without its null members: a run spec is TOML, which has no null.
/// A stage's typed config as the run spec carries it.
fn to_json(config: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(config).expect("a stage config encodes as JSON")
}

fn without_nulls(config: serde_json::Value) -> serde_json::Value {
    match config {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, without_nulls(v)))
            .collect(),
        other => other,
    }
}

#[derive(Args, Debug)]
pub struct LoopArgs {
    /// The loop config (TOML; see ARCHITECTURE.md for every key and its default).
    pub config: PathBuf,
    /// Directory of the embedded state; a run interrupted here resumes when started again.
    #[arg(long, default_value = "data/loop/state")]
    pub state_dir: PathBuf,
    /// Workers in this process (default: the config's `workers`).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Print the run spec (TOML) for `automaldesc submit` instead of running it here.
    #[arg(long)]
    pub print_spec: bool,
    /// Serve the dashboard, its JSON API and `/metrics` on this address while the loop runs
    /// (no token: keep it on a loopback address such as 127.0.0.1:8080).
    #[arg(long)]
    pub http_listen: Option<String>,
    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Checks that a dataset location holds Parquet files, for a clear error before the run.
fn check_dataset(what: &str, url: &str) -> anyhow::Result<()> {
    block_on(nonempty_dataset_layout(url))?.with_context(|| format!("{what} {url}"))?;
    Ok(())
}

pub fn run(args: LoopArgs) -> anyhow::Result<()> {
    let path = &args.config;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = LoopConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
    let model = PathBuf::from(&cfg.model);
    if !model.exists() {
        bail!(
            "model {} not found: run deploy/fetch_model.sh or set `model`",
            model.display()
        );
    }
    if let Some(judge) = &cfg.judge_model {
        if !PathBuf::from(judge).exists() {
            bail!("`judge_model` {judge} not found");
        }
    }
    let model_sha256 = automaldesc_worker::stages::train::file_sha256(&model)?;
    let spec = cfg.run_spec(&model_sha256, &cfg.summary_scripts()?);
    spec.validate()?;
    if args.print_spec {
        print!("{}", toml::to_string(&spec)?);
        return Ok(());
    }
    check_dataset("corpus", &cfg.corpus)?;
    for split in [&cfg.seed, &cfg.test] {
        for part in ["labels", "scripts"] {
            check_dataset("split", &format!("{}/{part}", split.trim_end_matches('/')))?;
        }
    }
    if !crate::cluster_cmd::logs_are_json() {
        eprintln!("run {}: {} stages", cfg.name, spec.stages.len());
        for i in 0..spec.stages.len() as u32 {
            eprintln!("  stage {}: {}", i + 1, LoopConfig::stage_name(i));
        }
    }
    let started = std::time::Instant::now();
    let names: Vec<String> = LOOP_EXECUTORS.iter().map(|s| s.to_string()).collect();
    let workers = crate::cluster_cmd::LocalWorkers {
        count: args.workers.unwrap_or(cfg.workers),
        executors: names,
        label: |i, _| LoopConfig::stage_name(i),
        http_listen: args.http_listen.clone(),
    };
    let status = run_local(
        spec,
        Some(cfg.name.clone()),
        &args.state_dir,
        args.lease.policy()?,
        workers,
    )?;
    crate::cluster_cmd::ensure_succeeded(&status)?;
    let gathered = gather_reports(&cfg, &args.state_dir, &status)?;
    tracing::info!(
        run = %cfg.name,
        minutes = started.elapsed().as_secs_f64() / 60.0,
        reports = %gathered,
        "run finished"
    );
    Ok(())
}

/// Copies every report stage's files to `<output>/reports/<annotator>/` and writes
/// `<output>/reports/stages.md` (each stage's tasks, scripts and wall time). Prints the
/// last report.
pub fn gather_reports(
    cfg: &LoopConfig,
    state_dir: &std::path::Path,
    status: &RunStatus,
) -> anyhow::Result<String> {
    let store = EmbeddedStore::open(state_dir)?;
    let run = RunId(cfg.name.clone());
    let (out, out_prefix) = open_store(&cfg.output)?;
    let reports_url = format!("{}/reports", cfg.output.trim_end_matches('/'));
    let mut last_md = String::new();
    let mut reports: Vec<(u32, String)> = vec![(BASE_REPORT, "base".into())];
    reports
        .extend((1..=cfg.iterations).map(|k| (LoopConfig::stages_of(k).report, format!("V{k}"))));
    block_on(async {
        for (stage, name) in &reports {
            for (_, commit) in read_commits(&store, &run, *stage).await? {
                for o in commit.outputs {
                    let src = ObjectPath::from(o.path.as_str());
                    let bytes = out.get(&src).await?.bytes().await?;
                    let file = src.filename().unwrap_or("file").to_string();
                    if file == "report.md" {
                        last_md = String::from_utf8_lossy(&bytes).into_owned();
                    }
                    let dst = automaldesc_common::store::child(
                        &out_prefix,
                        &format!("reports/{name}/{file}"),
                    );
                    out.put(&dst, PutPayload::from(bytes)).await?;
                }
            }
        }
        let md = stages_markdown(status);
        let dst = automaldesc_common::store::child(&out_prefix, "reports/stages.md");
        out.put(&dst, PutPayload::from(md.clone().into_bytes()))
            .await?;
        if !crate::cluster_cmd::logs_are_json() {
            eprintln!("{md}");
        }
        Ok::<_, anyhow::Error>(())
    })??;
    println!("{last_md}");
    Ok(reports_url)
}

/// Every stage's tasks, scripts in and out, and wall time, as a Markdown table.
pub fn stages_markdown(status: &RunStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Run {}: stages\n", status.id);
    let _ = writeln!(
        s,
        "| # | stage | kind | tasks | scripts in | rows out | quarantined | retries | wall s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
    for (i, st) in status.stages.iter().enumerate() {
        let started = crate::http::stage_started_ms(status, i);
        let wall =
            (st.finished_ms > 0).then(|| st.finished_ms.saturating_sub(started) as f64 / 1e3);
        if let Some(w) = wall {
            *by_kind.entry(st.kind.clone()).or_default() += w;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            st.index + 1,
            LoopConfig::stage_name(st.index),
            st.kind,
            st.counts.total,
            st.totals.scripts_done,
            st.totals.rows_out,
            st.totals.scripts_quarantined + st.totals.scripts_in_quarantined_tasks,
            st.totals.attempts_failed + st.totals.leases_expired,
            wall.map_or("-".to_string(), |w| format!("{w:.1}"))
        );
    }
    let _ = writeln!(
        s,
        "\nwall seconds by kind: {}",
        by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_spec::StageInput;

    const MINIMAL: &str = r#"
        name = "r1"
        corpus = "s3://b/unlabelled"
        seed = "s3://b/seed"
        test = "s3://b/test/"
        output = "s3://b/out"
        model = "m.gguf"
    "#;

    #[test]
    fn defaults_are_the_published_settings() {
        let c = LoopConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(c.temperatures, [0.4, 0.6, 0.8]);
        assert_eq!(
            (c.max_new_tokens, c.confidence, c.iterations),
            (512, 0.90, 2)
        );
        let (v1, v2) = (&c.adapter[0], &c.adapter[1]);
        assert_eq!(
            (v1.rank, v1.alpha, v1.dropout, v1.epochs),
            (8, 16.0, 0.05, 15)
        );
        assert_eq!(
            (v2.rank, v2.alpha, v2.dropout, v2.epochs),
            (16, 32.0, 0.1, 20)
        );
        assert_eq!(
            (v1.learning_rate, v1.weight_decay, v1.warmup),
            (1e-4, 0.001, 0.05)
        );
        assert_eq!(c.judge(), "m.gguf");
        assert_eq!(c.threshold(1), 0.90);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let typo = LoopConfig::from_toml(&format!("{MINIMAL}\ntemperature = [0.5]\n"));
        assert!(format!("{:#}", typo.unwrap_err()).contains("temperature"));
        let bad = LoopConfig::from_toml(&format!("{MINIMAL}\nconfidence = 1.5\n"));
        assert!(format!("{:#}", bad.unwrap_err()).contains("[0, 1]"));
        let none = LoopConfig::from_toml(&format!("{MINIMAL}\niterations = 0\n"));
        assert!(format!("{:#}", none.unwrap_err()).contains("at least 1"));
        let name = LoopConfig::from_toml(&MINIMAL.replace("r1", "R 1"));
        assert!(format!("{:#}", name.unwrap_err()).contains("`name`"));
        let adapter = LoopConfig::from_toml(&format!(
            "{MINIMAL}\n[[adapter]]\nrank = 0\nalpha = 1.0\ndropout = 0.0\nepochs = 1\n"
        ));
        assert!(format!("{:#}", adapter.unwrap_err()).contains("rank"));
    }

    #[test]
    fn a_schedule_sets_each_iterations_threshold_and_the_last_entry_holds() {
        let c = LoopConfig::from_toml(&format!(
            "{MINIMAL}\niterations = 3\nconfidence_schedule = [0.95, 0.9]\n"
        ))
        .unwrap();
        assert_eq!(
            [c.threshold(1), c.threshold(2), c.threshold(3)],
            [0.95, 0.9, 0.9]
        );
        let spec = c.run_spec("abc", &[]);
        for k in 1..=3 {
            let s = LoopConfig::stages_of(k);
            let want = c.threshold(k);
            for i in [s.generate, s.judge, s.filter] {
                let got = spec.stages[i as usize].config["min_label_prob"]
                    .as_f64()
                    .unwrap();
                assert_eq!(got as f32, want, "iteration {k} stage {i}");
            }
        }
    }

    #[test]
    fn every_stage_config_is_its_executors_typed_config_with_the_shared_defaults() {
        use crate::run_spec::StageCatalog;
        let c = LoopConfig::from_toml(MINIMAL).unwrap();
        let spec = c.run_spec("abc", &["s1".into()]);
        for (i, stage) in spec.stages.iter().enumerate() {
            crate::cluster_cmd::WorkerCatalog
                .check_stage(&stage.kind, &stage.config)
                .unwrap_or_else(|e| panic!("stage {i} ({}): {e}", stage.kind));
        }
        // Defaults left out of the loop config are the commands' and the executors'.
        let generate: GenerateConfig =
            serde_json::from_value(spec.stages[FIRST_ITERATION as usize + 1].config.clone())
                .unwrap();
        assert_eq!(generate.top_p, defaults::TOP_P);
        assert_eq!(generate.slots, defaults::SLOTS);
        assert_eq!(generate.max_new_tokens, defaults::MAX_NEW_TOKENS);
        assert_eq!(generate.prompt_budget, defaults::PROMPT_TOKENS);
        assert_eq!(generate.temperatures, defaults::TEMPERATURES);
        assert_eq!(generate.min_label_prob, defaults::MIN_LABEL_PROB);
        let evaluate: GenerateConfig =
            serde_json::from_value(spec.stages[BASE_EVALUATE as usize].config.clone()).unwrap();
        assert_eq!(evaluate.label_only_except, Some(vec!["s1".to_string()]));
        let train: TrainStageConfig =
            serde_json::from_value(spec.stages[FIRST_ITERATION as usize].config.clone()).unwrap();
        assert_eq!(train.prompt_tokens, defaults::PROMPT_TOKENS);
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            annotate: crate::annotate_cmd::AnnotateArgs,
        }
        let cli = Cli::parse_from(["automaldesc", "script.sh"]);
        assert_eq!(cli.annotate.top_p, generate.top_p);
        assert_eq!(cli.annotate.slots, generate.slots);
        assert_eq!(cli.annotate.max_new_tokens, generate.max_new_tokens);
        assert_eq!(cli.annotate.prompt_budget, generate.prompt_budget);
        assert_eq!(cli.annotate.temperatures, generate.temperatures);
        assert_eq!(cli.annotate.min_label_prob, generate.min_label_prob);
    }

    #[test]
    fn the_run_spec_wires_every_iteration_to_the_one_before() {
        let c = LoopConfig::from_toml(&format!("{MINIMAL}\niterations = 3\n")).unwrap();
        let spec = c.run_spec("abc", &[]);
        spec.validate().unwrap();
        assert_eq!(spec.stages.len(), 3 + 3 * 7);
        assert_eq!(spec.stages[BASE_EVALUATE as usize].kind, "generate");
        let judge_train = &spec.stages[JUDGE_TRAIN as usize];
        assert_eq!(judge_train.kind, "judge-train");
        assert!(judge_train.single_task);
        assert_eq!(
            judge_train.input(),
            StageInput::Url("s3://b/seed/labels".into())
        );
        assert_eq!(
            spec.stages[BASE_REPORT as usize].refs["answers"],
            BASE_EVALUATE
        );
        for k in 1..=3u32 {
            let s = LoopConfig::stages_of(k);
            let kinds: Vec<&str> = [
                s.train,
                s.generate,
                s.judge,
                s.filter,
                s.aggregate,
                s.evaluate,
                s.report,
            ]
            .iter()
            .map(|&i| spec.stages[i as usize].kind.as_str())
            .collect();
            assert_eq!(
                kinds,
                [
                    "train",
                    "generate",
                    "judge",
                    "filter",
                    "aggregate",
                    "generate",
                    "report"
                ]
            );
            let train = &spec.stages[s.train as usize];
            assert!(train.single_task);
            let expected_input = if k == 1 {
                StageInput::Url("s3://b/seed".into())
            } else {
                StageInput::Stage(LoopConfig::stages_of(k - 1).aggregate)
            };
            assert_eq!(train.input(), expected_input);
            assert_eq!(
                train.config["train"]["lora"]["rank"],
                if k == 1 { 8 } else { 16 }
            );
            assert_eq!(
                spec.stages[s.generate as usize].input(),
                StageInput::Url("s3://b/unlabelled".into())
            );
            assert_eq!(spec.stages[s.generate as usize].refs["adapter"], s.train);
            assert_eq!(spec.stages[s.judge as usize].refs["judge"], JUDGE_TRAIN);
            assert_eq!(spec.stages[s.evaluate as usize].config["early_stop"], false);
            assert_eq!(
                spec.stages[s.evaluate as usize].input(),
                StageInput::Url("s3://b/test/scripts".into())
            );
            let report = &spec.stages[s.report as usize];
            let (prev_answers, prev_report) = if k == 1 {
                (BASE_EVALUATE, BASE_REPORT)
            } else {
                let p = LoopConfig::stages_of(k - 1);
                (p.evaluate, p.report)
            };
            assert_eq!(report.refs["previous"], prev_answers);
            assert_eq!(report.refs["history"], prev_report);
            assert_eq!(report.refs["funnel"], s.aggregate);
            assert_eq!(
                LoopConfig::stage_name(s.judge),
                format!("iteration {k} judge")
            );
            let agg = &spec.stages[s.aggregate as usize].config;
            assert_eq!(agg["config_hash"], c.hash());
            assert_eq!(agg["base_model_sha256"], "abc");
        }
        // The spec survives TOML (what `--print-spec` writes and `submit` reads).
        let text = toml::to_string(&spec).unwrap();
        assert_eq!(RunSpec::from_toml(&text).unwrap(), spec);
    }
}
