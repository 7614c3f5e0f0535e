//! `judge`: the judge model reads each summary that survived filter checks 1-4, and only the
//! summary, and says whether the script it describes is malicious. Its verdict is the more
//! likely of the tokens "1" and "0" after the judge prompt, read off one prefill (no
//! sampling, so the same summary always gets the same verdict).

use crate::filter::{before_judge, FilterSample};
use automaldesc_common::parquet_io::WriterOptions;
use automaldesc_common::schema::{AnswersRow, JudgeVerdict};
use automaldesc_common::Label;
use serde::{Deserialize, Serialize};

use super::judge_train::JudgeChoice;
use super::{adapter_of, config, model, model_path, read_task, refs, write_rows, ModelKey};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};
use automaldesc_runtime::generate::sampler::choice_probs;
use automaldesc_runtime::model::KvCache;
use automaldesc_runtime::prompt::{self, Role};
use automaldesc_runtime::runtime::Annotator;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The judge model on the worker (by default the annotator's base model).
    pub model: String,
    /// The filter's label-probability threshold: only scripts that pass checks 1-4 are
    /// judged.
    pub min_label_prob: f32,
    /// Summary tokens the judge reads (a longer summary is cut).
    #[serde(default = "default_summary_tokens")]
    pub summary_tokens: usize,
    /// The system messages of the annotator and the judge (training and inference must
    /// agree).
    #[serde(default)]
    pub prompt: automaldesc_runtime::prompt::PromptStyle,
}

fn default_summary_tokens() -> usize {
    super::defaults::JUDGE_SUMMARY_TOKENS
}

/// The filter's view of one sample.
pub fn filter_samples(row: &AnswersRow) -> Vec<FilterSample> {
    (0..row.responses.len())
        .map(|i| FilterSample {
            temperature: row.temperatures[i],
            response: row.responses[i].clone(),
            label_prob: row.label_probs[i],
            finish: row.finishes[i],
        })
        .collect()
}

/// The judge's label for one summary, with its probability against the other label.
pub fn judge_summary(judge: &Annotator, summary: &str, summary_tokens: usize) -> (Label, f32) {
    let p1 = judge_probability(judge, summary, summary_tokens);
    if p1 > 0.5 {
        (Label::Malicious, p1)
    } else {
        (Label::Benign, 1.0 - p1)
    }
}

/// The judge's probability that the script a summary describes is malicious.
pub fn judge_probability(judge: &Annotator, summary: &str, summary_tokens: usize) -> f32 {
    let user = prompt::judge_user_message(&first_tokens(judge, summary, summary_tokens));
    let p = choice_probs_after(judge, judge.prompt_style.judge_system(), &user, &["0", "1"]);
    p[1]
}

/// `text` cut to its first `n` tokens.
pub fn first_tokens(model: &Annotator, text: &str, n: usize) -> String {
    let tokens = model.tokenizer.encode(text).unwrap_or_default();
    if tokens.len() > n {
        model.tokenizer.decode(&tokens[..n])
    } else {
        text.to_string()
    }
}

/// The model's probabilities of `options` (each one token) as the first token of its
/// reply to `system` and `user`, normalised over the options. One prefill, no sampling.
pub fn choice_probs_after(
    model: &Annotator,
    system: &str,
    user: &str,
    options: &[&str],
) -> Vec<f32> {
    let ids = model.encode_chat(&[(Role::System, system), (Role::User, user)]);
    let choices: Vec<u32> = options
        .iter()
        .map(|o| {
            model
                .tokenizer
                .encode(o)
                .ok()
                .and_then(|t| t.last().copied())
                .unwrap_or(0)
        })
        .collect();
    let m = &model.model;
    let mut cache = KvCache::new(&m.config, 1, ids.len(), &m.device());
    let h = m.forward(&ids, ids.len(), &mut cache);
    let last = h.narrow(0, ids.len() - 1, 1);
    // A judge adapter's label head (and its calibration, when it has one) shifts the "1" of
    // a 0/1 verdict, as in training and in the annotator's own label choice.
    let shift = if options == ["0", "1"] {
        model.schema.label_head_shift(&last)[0] + model.schema.label_bias
    } else {
        0.0
    };
    let mut logits: Vec<f32> = m
        .logits(last)
        .into_data()
        .try_to_vec::<f32>()
        .expect("logits are f32");
    if let Some(&one) = choices.get(1) {
        logits[one as usize] += shift;
    }
    choice_probs(&logits, &choices)
}

pub struct JudgeExecutor;

impl Executor for JudgeExecutor {
    fn kind(&self) -> &str {
        "judge"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: JudgeConfig = config("judge", &task.config_json)?;
        let refs = refs(&task.config_json)?;
        // The run's judge, as `judge_train` chose it on the seed summaries (the base model
        // when the run has no such stage).
        let choice: Option<JudgeChoice> = refs
            .get("judge")
            .map(|r| r.json("judge.json"))
            .transpose()?;
        let adapter = match &choice {
            Some(c) if c.judge == "adapter" => adapter_of(&refs, "judge")?,
            _ => None,
        };
        let check5 = choice.as_ref().is_none_or(|c| c.check5);
        let judge = model(
            &ModelKey {
                model: model_path(&cfg.model)?,
                adapter,
                prompt: cfg.prompt,
            },
            &task.telemetry,
        )?;
        let mut rows: Vec<AnswersRow> = read_task(task, "")?;
        let rows_in = rows.len() as u64;
        for (i, row) in rows.iter_mut().enumerate() {
            if task.cancelled() {
                return Err("cancelled".into());
            }
            task.telemetry.task_progress(i as u64, rows_in);
            let n = row.responses.len();
            row.judge_labels = vec![JudgeVerdict::NotAsked; n];
            row.judge_probs = vec![f32::NAN; n];
            let Ok(survivor) = before_judge(&filter_samples(row), cfg.min_label_prob) else {
                continue;
            };
            for (i, _, summary) in &survivor.summaries {
                if !check5 {
                    row.judge_labels[*i] = JudgeVerdict::Skipped;
                    continue;
                }
                let (label, p) = judge_summary(&judge, summary, cfg.summary_tokens);
                row.judge_labels[*i] = JudgeVerdict::Voted(label);
                row.judge_probs[*i] = p;
            }
            task.telemetry.add_work(1, 0);
        }
        let files = write_rows(task, "", rows, WriterOptions::default())?;
        Ok(TaskOutput {
            rows_in,
            files,
            quarantined: Vec::new(),
            duplicates: 0,
        })
    }
}
