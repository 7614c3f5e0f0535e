//! The loop config expanded into a run spec: each stage's input, refs and typed executor
//! config.

use std::collections::BTreeMap;

use crate::stages::aggregate::AggregateConfig;
use crate::stages::defaults;
use crate::stages::filter::FilterConfig;
use crate::stages::generate::GenerateConfig;
use crate::stages::judge::JudgeConfig;
use crate::stages::judge_train::JudgeTrainConfig;
use crate::stages::report::ReportConfig;
use crate::stages::train::TrainStageConfig;
use anyhow::Context;
use automaldesc_common::parquet_io::read_dataset;
use automaldesc_common::schema::LabelledRow;
use automaldesc_common::store::{block_on, open_object};
use automaldesc_runtime::prompt::PromptStyle;
use automaldesc_runtime::train::lora::LayerSet;
use serde::Serialize;

use crate::config::{LoopConfig, BASE_EVALUATE, BASE_REPORT, JUDGE_TRAIN};
use automaldesc_common::run_spec::{RunSpec, StageConfig};

impl LoopConfig {
    /// The test scripts that get whole summaries in a label-only evaluation: up to
    /// `eval_summary_scripts`, taken in turn from each (language, label) stratum in an order
    /// fixed by their hashes.
    pub fn summary_scripts(&self) -> anyhow::Result<Vec<String>> {
        if !self.label_only_eval || self.eval_summary_scripts == 0 {
            return Ok(Vec::new());
        }
        let labels = read_labels(&self.test, None)?;
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

    fn prompt_style(&self) -> PromptStyle {
        if self.compact_prompt {
            PromptStyle::Compact
        } else {
            PromptStyle::Full
        }
    }

    pub fn judge(&self) -> &str {
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
}

/// A stage's typed config as the run spec carries it.
fn to_json(config: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(config).expect("a stage config encodes as JSON")
}

/// `config` without its null members: a run spec is TOML, which has no null.
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

/// The labels of a labelled split (its `labels/` part only), the first `limit` of them.
pub fn read_labels(url: &str, limit: Option<usize>) -> anyhow::Result<Vec<LabelledRow>> {
    let u = format!("{}/labels", url.trim_end_matches('/'));
    let (store, prefix) = open_object(&u).with_context(|| format!("opening {u}"))?;
    let mut labels: Vec<LabelledRow> = block_on(read_dataset(store, &prefix))??;
    labels.truncate(limit.unwrap_or(usize::MAX));
    Ok(labels)
}
