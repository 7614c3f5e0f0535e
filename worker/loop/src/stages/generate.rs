//! `generate`: every script of the task answered at each temperature by the annotator (the
//! base model, or with the adapter of the ref `adapter`), one [`AnswersRow`] per script.
//! Early stop cuts a sample right after its label when the filter is bound to reject the
//! script anyway (labels disagree, or a label probability is under the threshold).

use automaldesc_common::fault::TaskError;
use automaldesc_common::parquet_io::WriterOptions;
use automaldesc_common::schema::{check_identity, AnswersRow, CorpusRow, FinishReason};
use serde::{Deserialize, Serialize};

use super::{
    adapter_of, config, model, model_path, read_task, refs, write_rows, ModelKey, StageResult,
};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};
use automaldesc_runtime::annotate::{annotate, AnnotateOptions};
use automaldesc_runtime::generate::{EarlyStop, PrefillReuse};
use automaldesc_runtime::runtime::Annotator;
use automaldesc_runtime::train::lora::LayerSet;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// The base model on the worker (GGUF file or Hugging Face directory).
    pub model: String,
    pub temperatures: Vec<f32>,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    #[serde(default)]
    pub seed: u64,
    pub max_new_tokens: usize,
    pub prompt_budget: usize,
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// Stop samples after their label when the filter will reject the script anyway.
    #[serde(default = "default_true")]
    pub early_stop: bool,
    /// The filter's label-probability threshold (what early stop anticipates).
    pub min_label_prob: f32,
    /// Scripts per engine call (bounds memory; results do not depend on it).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
    /// The summary never repeats an n-gram of this size (0: off).
    #[serde(default)]
    pub no_repeat_ngram: usize,
    /// Penalty on tokens already in the summary (1: off).
    #[serde(default = "default_penalty")]
    pub repetition_penalty: f32,
    /// A label-only evaluation: every script stops right after its label, except these
    /// (by sha256), which get whole answers.
    #[serde(default)]
    pub label_only_except: Option<Vec<String>>,
    /// The system messages of the annotator and the judge (training and inference must
    /// agree).
    #[serde(default)]
    pub prompt: automaldesc_runtime::prompt::PromptStyle,
    /// The layer sets of the adapters that annotate these scripts again (the loop's
    /// `[[adapter]]` `layers`). The blocks below the lowest of them are the base model's in
    /// every annotator, so each prompt's prefill states there go to the worker's prefill
    /// store and are read back from it when an earlier stage left them. Empty: no reuse.
    #[serde(default)]
    pub reuse_prefill_for: Vec<LayerSet>,
}

fn default_penalty() -> f32 {
    super::defaults::REPETITION_PENALTY
}

fn default_top_p() -> f32 {
    super::defaults::TOP_P
}
fn default_slots() -> usize {
    super::defaults::SLOTS
}
fn default_true() -> bool {
    true
}
fn default_chunk() -> usize {
    super::defaults::CHUNK
}

pub struct GenerateExecutor;

impl Executor for GenerateExecutor {
    fn kind(&self) -> &str {
        "generate"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: GenerateConfig = config("generate", &task.config_json)?;
        if cfg.temperatures.is_empty() {
            return Err("generate: no temperatures".into());
        }
        let refs = refs(&task.config_json)?;
        let key = ModelKey {
            model: model_path(&cfg.model)?,
            adapter: adapter_of(&refs, "adapter")?,
            prompt: cfg.prompt,
        };
        let annotator = model(&key, &task.telemetry)?;
        let input: Vec<CorpusRow> = read_task(task, "")?;
        let rows_in = input.len() as u64;
        // A script whose content does not hash to its sha256 is quarantined alone.
        let checked = check_identity(input);
        let rows = checked.rows;
        let opts = AnnotateOptions {
            temperatures: cfg.temperatures.clone(),
            top_p: cfg.top_p,
            seed: cfg.seed,
            max_new_tokens: cfg.max_new_tokens,
            prompt_budget: cfg.prompt_budget,
            early_stop: if cfg.early_stop {
                EarlyStop {
                    require_agreement: true,
                    min_label_prob: Some(cfg.min_label_prob),
                }
            } else {
                EarlyStop::default()
            },
            slots: cfg.slots,
            no_repeat_ngram: cfg.no_repeat_ngram,
            repetition_penalty: cfg.repetition_penalty,
            label_only_except: cfg
                .label_only_except
                .as_ref()
                .map(|v| v.iter().cloned().collect()),
            reuse: prefill_reuse(&cfg.reuse_prefill_for, &key.model, &annotator)?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(cfg.chunk.max(1)) {
            if task.cancelled() {
                return Err("cancelled".into());
            }
            let scripts: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .map(|r| (r.sha256.clone(), r.content.clone()))
                .collect();
            let (results, _, _) = annotate(&annotator, &scripts, &opts);
            let tokens = results
                .iter()
                .flat_map(|a| &a.samples)
                .map(|s| s.generated_tokens as u64)
                .sum();
            task.telemetry.add_work(chunk.len() as u64, tokens);
            task.telemetry
                .task_progress((out.len() + chunk.len()) as u64, rows_in);
            for (row, a) in chunk.iter().zip(results) {
                let saved: usize = a
                    .samples
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.finish_reason,
                            FinishReason::EarlyStopDisagree | FinishReason::EarlyStopLowConfidence
                        )
                    })
                    .map(|s| cfg.max_new_tokens.saturating_sub(s.generated_tokens))
                    .sum();
                out.push(AnswersRow {
                    sha256: row.sha256.clone(),
                    content: row.content.clone(),
                    temperatures: a.samples.iter().map(|s| s.temperature).collect(),
                    responses: a.samples.iter().map(|s| s.response.clone()).collect(),
                    label_probs: a.samples.iter().map(|s| s.label_prob).collect(),
                    finishes: a.samples.iter().map(|s| s.finish_reason).collect(),
                    generated_tokens: a.samples.iter().map(|s| s.generated_tokens as u64).sum(),
                    saved_tokens: saved as u64,
                    model_id: a.model_id.clone(),
                    judge_labels: Vec::new(),
                    judge_probs: Vec::new(),
                });
            }
        }
        if let Some(r) = &opts.reuse {
            r.store.evict();
        }
        let files = write_rows(task, "", out, WriterOptions::default())?;
        Ok(TaskOutput {
            rows_in,
            files,
            quarantined: checked.mismatched,
            duplicates: checked.duplicates,
        })
    }
}

/// The prefill reuse of a generate stage: below the lowest block of `layer_sets`, unless
/// the annotator's adapter changes a block below it.
fn prefill_reuse(
    layer_sets: &[LayerSet],
    model: &std::path::Path,
    annotator: &Annotator,
) -> StageResult<Option<PrefillReuse>> {
    if layer_sets.is_empty() {
        return Ok(None);
    }
    let n = annotator.model.config.num_layers;
    let mut block = n;
    for set in layer_sets {
        let layers = set
            .resolve(n)
            .map_err(|e| TaskError::invalid(format!("generate: `reuse_prefill_for`: {e}")))?;
        block = block.min(layers[0]);
    }
    let store = super::prefill_store(&super::model_sha256(model)?)?;
    let reuse = PrefillReuse::for_model(store, block, annotator.first_adapted_block);
    if reuse.is_none() && block > 0 {
        tracing::info!(
            block,
            first_adapted = ?annotator.first_adapted_block,
            "the annotator's adapter changes a block below the reuse block: prefill not reused"
        );
    }
    Ok(reuse)
}
