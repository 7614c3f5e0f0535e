//! `judge-train`: makes sure the coherence judge (filter check 5) earns its vote before the
//! run uses it. Once per run, over the seed split's reference summaries (never the test
//! split's), it measures the base judge; when the base judge's balanced accuracy is under
//! `min_accuracy`, it trains a judge adapter on the seed summaries (one target token, the
//! label, class-balanced: an independent judge, as in the published method) and measures it
//! on a stratified hold-out. The judge that passes is written to `judge.json` (with its
//! adapter under `adapter/`); when none passes, `judge.json` says check 5 is skipped for
//! the run. The judge stages and the funnel read it, and the report shows it.

use std::time::Instant;

use automaldesc_common::fault::TaskError;
use automaldesc_common::schema::LabelledRow;
use serde::{Deserialize, Serialize};

use super::judge::{first_tokens, judge_probability};
use super::{config, model, model_path, read_task, write_file, ModelKey};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};
use automaldesc_runtime::prompt::{self, Role};
use automaldesc_runtime::runtime::Annotator;
use automaldesc_runtime::train::data::cut_summary;
use automaldesc_runtime::train::fit::Trainer;
use automaldesc_runtime::train::label_eval::{merged, score_labels};
use automaldesc_runtime::train::{
    stratified_hold_out, train_with, ChoiceIds, Example, TokenRole, TrainConfig, TrainData,
};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeTrainConfig {
    /// The judge's base model.
    pub model: String,
    /// The balanced accuracy on the seed summaries a judge needs to vote.
    #[serde(default = "default_min_accuracy")]
    pub min_accuracy: f64,
    /// Training of the judge adapter, when the base judge falls short.
    pub train: TrainConfig,
    /// Summary tokens the judge reads.
    #[serde(default = "default_summary_tokens")]
    pub summary_tokens: usize,
    /// Share of the seed held out to measure the trained judge.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// The seed's reference summaries are cut at their last whole sentence within this many
    /// tokens, as the annotator's training cuts them, so the judge is measured (and
    /// trained) on summaries like those it will judge.
    #[serde(default)]
    pub reference_tokens: Option<usize>,
    /// The system messages of the annotator and the judge (training and inference must
    /// agree).
    #[serde(default)]
    pub prompt: automaldesc_runtime::prompt::PromptStyle,
}

fn default_min_accuracy() -> f64 {
    super::defaults::JUDGE_MIN_ACCURACY
}
fn default_summary_tokens() -> usize {
    super::defaults::JUDGE_SUMMARY_TOKENS
}
fn default_val_fraction() -> f64 {
    0.3
}

pub use crate::report::{JudgeChoice, JudgeScore};

/// The judge's prompt for one summary, as tokens ending where its answer starts.
pub fn judge_prompt(judge: &Annotator, summary: &str, summary_tokens: usize) -> Vec<u32> {
    let user = prompt::judge_user_message(&first_tokens(judge, summary, summary_tokens));
    judge.encode_chat(&[
        (Role::System, judge.prompt_style.judge_system()),
        (Role::User, &user),
    ])
}

/// The digits "0" and "1" of the judge's tokenizer.
pub fn judge_digits(judge: &Annotator) -> Vec<u32> {
    ["0", "1"]
        .iter()
        .map(|d| {
            judge
                .tokenizer
                .encode(d)
                .ok()
                .and_then(|t| t.last().copied())
                .unwrap_or(0)
        })
        .collect()
}

pub struct JudgeTrainExecutor;

impl Executor for JudgeTrainExecutor {
    fn kind(&self) -> &str {
        "judge-train"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: JudgeTrainConfig = config("judge-train", &task.config_json)?;
        cfg.train
            .validate()
            .map_err(|e| TaskError::invalid(format!("judge-train stage config: {e}")))?;
        let started = Instant::now();
        let mut labels: Vec<LabelledRow> = read_task(task, "/labels/")?;
        if labels.is_empty() {
            return Err(TaskError::invalid(
                "judge-train: the input holds no labels (expected the seed split)",
            ));
        }
        let path = model_path(&cfg.model)?;
        let base = model(
            &ModelKey {
                model: path.clone(),
                adapter: None,
                prompt: cfg.prompt,
            },
            &task.telemetry,
        )?;
        if let Some(n) = cfg.reference_tokens {
            for l in &mut labels {
                l.summary = cut_summary(&base.tokenizer, &l.summary, n)
                    .map_err(|e| format!("judge-train: {e}"))?;
            }
        }
        let base_scores: Vec<(f64, u8)> = labels
            .iter()
            .map(|l| {
                let p = judge_probability(&base, &l.summary, cfg.summary_tokens);
                (f64::from(p), l.label.as_u8())
            })
            .collect();
        let base_score = JudgeScore::of(&base_scores);
        tracing::info!(
            balanced_accuracy = base_score.balanced_accuracy,
            "base judge on the seed summaries"
        );
        let mut choice = JudgeChoice {
            judge: "base".into(),
            check5: true,
            min_accuracy: cfg.min_accuracy,
            base: base_score.clone(),
            trained: None,
            seconds: 0.0,
        };
        let mut files = Vec::new();
        if !base_score.passes(cfg.min_accuracy) {
            let (trained, adapter_files) = train_judge(task, &cfg, &path, &labels)?;
            choice.judge = if trained.passes(cfg.min_accuracy) {
                "adapter"
            } else {
                "none"
            }
            .into();
            choice.check5 = choice.judge == "adapter";
            choice.trained = Some(trained);
            if choice.check5 {
                files.extend(adapter_files);
            }
        }
        choice.seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_vec_pretty(&choice).map_err(|e| e.to_string())?;
        files.push(write_file(task, "judge.json", json)?);
        Ok(TaskOutput {
            rows_in: labels.len() as u64,
            files,
            quarantined: Vec::new(),
            duplicates: 0,
        })
    }
}

/// Trains a judge adapter on the seed summaries and scores it on a stratified hold-out;
/// the adapter's files are written (and returned) in any case, the caller keeps them only
/// when the judge passes.
fn train_judge(
    task: &TaskInput,
    cfg: &JudgeTrainConfig,
    path: &std::path::Path,
    labels: &[LabelledRow],
) -> super::StageResult<(JudgeScore, Vec<automaldesc_common::manifest::ManifestFile>)> {
    let mut trainer = Trainer::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    trainer.annotator.prompt_style = cfg.prompt;
    trainer.prefix_store = Some(super::prefix_store(&super::model_sha256(path)?));
    let judge = &trainer.annotator;
    let digits = judge_digits(judge);
    let choices = ChoiceIds {
        language: Vec::new(),
        label: digits,
    };
    let mut sorted: Vec<&LabelledRow> = labels.iter().collect();
    sorted.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let strata: Vec<(&str, String)> = sorted
        .iter()
        .map(|l| (l.sha256.as_str(), l.label.as_u8().to_string()))
        .collect();
    let held = stratified_hold_out(&strata, cfg.val_fraction, 0);
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (l, held) in sorted.iter().zip(held) {
        let label = l.label.as_u8();
        let e = Example {
            prompt: judge_prompt(judge, &l.summary, cfg.summary_tokens),
            target: vec![choices.label[usize::from(label)]],
            roles: vec![TokenRole::Label(label)],
        };
        if held {
            va.push(e)
        } else {
            tr.push(e)
        }
    }
    let ckpt = std::env::temp_dir()
        .join("automaldesc-judge-train")
        .join(format!("{}", std::process::id()));
    let caches = trainer
        .prefix_caches(&cfg.train, &[&tr, &va], Some(&ckpt.join("prefix")))
        .map_err(|e| format!("judge-train: {e}"))?;
    let data = TrainData {
        train: &tr,
        val: &va,
        choices: Some(&choices),
        prefix: caches.as_ref().map(|c| (&c[0], &c[1])),
        fused: Some(
            trainer
                .fused_model()
                .map_err(|e| format!("judge-train: {e}"))?,
        ),
    };
    let cancel = task.cancel.clone();
    let trained = train_with(
        &judge.model,
        &data,
        &cfg.train,
        None,
        &mut |p| {
            task.telemetry.task_progress(p.step, p.total_steps);
            !cancel.load(std::sync::atomic::Ordering::Relaxed)
        },
        &mut |e, _| {
            tracing::info!(
                epoch = e.epoch + 1,
                val_balanced_accuracy = e.val.balanced_accuracy,
                "judge epoch"
            )
        },
    )
    .map_err(|e| format!("judge-train: {e}"))?
    .ok_or_else(|| TaskError::cancelled("judge-train: cancelled"))?;
    let mut infer = Annotator::load(path, &automaldesc_runtime::device::select()?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    infer.prompt_style = cfg.prompt;
    let scored = merged(&infer.model, &trained.adapter).map_err(|e| e.to_string())?;
    let tally = score_labels(&scored, Some(&trained.adapter), &va, &choices, None)
        .map_err(|e| e.to_string())?;
    let pairs: Vec<(f64, u8)> = tally.labels.iter().map(|s| (s.p, s.label)).collect();
    let score = JudgeScore::of(&pairs);
    tracing::info!(
        balanced_accuracy = score.balanced_accuracy,
        held_out = va.len(),
        "trained judge"
    );
    let local = ckpt.join("adapter");
    trained
        .adapter
        .save_peft(&local, &judge.model_id, &Default::default())
        .map_err(|e| format!("saving the judge adapter: {e}"))?;
    // Every file of the adapter, the label head included: the held-out score above was
    // taken with it, and the judge stage must vote with the same judge.
    let files = super::write_adapter_dir(task, &local)?;
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok((score, files))
}
