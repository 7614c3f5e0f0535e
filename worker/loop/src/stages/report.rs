//! `report`: one task over the test split's labels. It scores the answers of the ref
//! `answers` (the evaluate stage of this iteration) against them, runs McNemar's tests
//! against the ref `previous` (the annotator before), asks the judge which of the two
//! annotators' summaries is better on the shortest test scripts (both orders), reads the
//! funnel of the ref `funnel`, and the history of the ref `history` (the previous report).
//! Writes `report.json`, `report.md`, `funnel.svg` and `languages.svg`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::eval::{self, parse_response, Answers, Reference};
use crate::report::{FunnelSummary, HistoryPoint, IterationReport, JudgeCheck, Preference};
use crate::report_sections::{LabelScores, PromptSummary, TrainingSummary};
use automaldesc_common::schema::{AnswersRow, LabelledRow};
use automaldesc_common::Label;
use serde::{Deserialize, Serialize};

use super::judge::{choice_probs_after, first_tokens, judge_summary};
use super::{config, model, model_path, read_task, refs, write_file, ModelKey, StageRef};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};
use automaldesc_common::telemetry::Telemetry;
use automaldesc_runtime::prompt;
use automaldesc_runtime::runtime::Annotator;
use automaldesc_runtime::train::data::cut_summary;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    pub run: String,
    pub iteration: u32,
    /// This annotator's name ("base", "V1"...), and the previous one's.
    pub annotator: String,
    #[serde(default)]
    pub previous_annotator: Option<String>,
    /// The judge model, for the preference between summaries.
    pub judge_model: String,
    /// Test scripts (the shortest) on which the judge compares the two annotators.
    #[serde(default = "default_preference_scripts")]
    pub preference_scripts: usize,
    /// Script bytes shown to the preference judge (longer scripts are cut).
    #[serde(default = "default_preference_bytes")]
    pub preference_bytes: usize,
    /// Also score the judge on the test references' summaries.
    #[serde(default)]
    pub judge_check: bool,
    /// The system messages of the annotator and the judge (training and inference must
    /// agree).
    #[serde(default)]
    pub prompt: automaldesc_runtime::prompt::PromptStyle,
    /// The annotator's base model (for the prompt's token count).
    #[serde(default)]
    pub model: Option<String>,
    /// Reference summaries are cut to this many tokens (at whole sentences) for the summary
    /// metrics, as training cut them.
    #[serde(default)]
    pub summary_tokens: Option<usize>,
}

/// Summary tokens the preference judge reads of each summary.
const SUMMARY_TOKENS: usize = 384;

fn default_preference_scripts() -> usize {
    super::defaults::PREFERENCE_SCRIPTS
}
fn default_preference_bytes() -> usize {
    super::defaults::PREFERENCE_BYTES
}

/// An evaluate stage's output: the answers, the scripts by sha256, and the model's id.
struct Evaluated {
    answers: Answers,
    content: HashMap<String, Vec<u8>>,
    model_id: String,
    /// (script, P(malicious)) of every sample with a label.
    p_malicious: Vec<(String, f64)>,
}

fn evaluated(r: &StageRef) -> super::StageResult<Evaluated> {
    let rows: Vec<AnswersRow> = r.rows("")?;
    Ok(Evaluated {
        p_malicious: rows
            .iter()
            .flat_map(|a| {
                a.responses
                    .iter()
                    .zip(&a.label_probs)
                    .filter_map(|(resp, &p)| {
                        let label = eval::parse_response(resp)
                            .or_else(|| eval::parse_label_only(resp))?
                            .label;
                        let p = f64::from(p);
                        Some((
                            a.sha256.clone(),
                            if label == Label::Malicious {
                                p
                            } else {
                                1.0 - p
                            },
                        ))
                    })
            })
            .collect(),
        model_id: rows.first().map(|a| a.model_id.clone()).unwrap_or_default(),
        content: rows
            .iter()
            .map(|a| (a.sha256.clone(), a.content.clone()))
            .collect(),
        answers: rows.into_iter().map(|a| (a.sha256, a.responses)).collect(),
    })
}

/// The training summary of the ref `adapter`'s lineage.
fn training_summary(r: &StageRef) -> super::StageResult<TrainingSummary> {
    let l: serde_json::Value = r.json("lineage.json")?;
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(TrainingSummary {
        examples: u(&l["training_set"]["examples"]),
        validation: u(&l["training_set"]["validation"]),
        best_epoch: u(&l["best_epoch"]) as u32,
        label_threshold: l["label_threshold"].as_f64().unwrap_or(0.5),
        targets_cut: u(&l["targets_cut"]),
        summary_tokens: l["summary_tokens"].as_u64().map(|n| n as usize),
        seconds: l["seconds"].as_f64().unwrap_or(0.0),
        epochs: l["epochs"]
            .as_array()
            .map(|es| {
                es.iter()
                    .map(|e| {
                        let mut v = e["val"].clone();
                        v["epoch"] = e["epoch"].clone();
                        v
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The first well-formed summary of a script's answers.
fn summary_of(answers: &Answers, sha: &str) -> Option<String> {
    answers
        .get(sha)?
        .iter()
        .find_map(|r| parse_response(r).map(|p| p.summary))
}

pub struct ReportExecutor;

impl ReportExecutor {
    /// The prompt's size, what the summary metrics compare against, and the references cut
    /// as training cut them (when `summary_tokens` is set).
    fn reference_view(
        &self,
        cfg: &ReportConfig,
        references: &[Reference],
        telemetry: &Telemetry,
    ) -> super::StageResult<(Option<PromptSummary>, String, Option<Vec<Reference>>)> {
        let Some(model_name) = &cfg.model else {
            return Ok((None, "the full reference summaries".into(), None));
        };
        let annotator = model(
            &ModelKey {
                model: model_path(model_name)?,
                adapter: None,
                prompt: cfg.prompt,
            },
            telemetry,
        )?;
        let prompt = PromptSummary {
            style: format!("{:?}", cfg.prompt).to_lowercase(),
            system_prompt_tokens: annotator.system_prompt_tokens(),
        };
        let Some(n) = cfg.summary_tokens else {
            return Ok((Some(prompt), "the full reference summaries".into(), None));
        };
        let cut = references
            .iter()
            .map(|r| {
                let summary = cut_summary(&annotator.tokenizer, &r.summary, n)
                    .unwrap_or_else(|_| r.summary.clone());
                Reference {
                    summary,
                    ..r.clone()
                }
            })
            .collect();
        Ok((
            Some(prompt),
            format!("the reference summaries cut at their last whole sentence within {n} tokens, as training cut them"),
            Some(cut),
        ))
    }

    fn preference(
        &self,
        cfg: &ReportConfig,
        newer: &Answers,
        older: &Answers,
        content: &HashMap<String, Vec<u8>>,
        telemetry: &Telemetry,
    ) -> super::StageResult<Preference> {
        let judge = judge_model(cfg, telemetry)?;
        let mut both: Vec<(&String, &Vec<u8>, String, String)> = content
            .iter()
            .filter_map(|(sha, bytes)| {
                Some((sha, bytes, summary_of(newer, sha)?, summary_of(older, sha)?))
            })
            .collect();
        both.sort_by(|a, b| a.1.len().cmp(&b.1.len()).then(a.0.cmp(b.0)));
        both.truncate(cfg.preference_scripts);
        let mut p = Preference::default();
        for (_, bytes, new, old) in &both {
            let text = String::from_utf8_lossy(bytes);
            let script: String = text.chars().take(cfg.preference_bytes).collect();
            // Both summaries cut alike, so length alone does not decide.
            let (new, old) = (
                first_tokens(&judge, new, SUMMARY_TOKENS),
                first_tokens(&judge, old, SUMMARY_TOKENS),
            );
            let ask = |a: &str, b: &str| {
                let user = prompt::preference_user_message(&script, a, b);
                let probs =
                    choice_probs_after(&judge, prompt::PREFERENCE_SYSTEM, &user, &["A", "B"]);
                probs[0] >= probs[1]
            };
            let new_first = ask(&new, &old);
            let old_first = ask(&old, &new);
            p.scripts += 1;
            match (new_first, !old_first) {
                (true, true) => p.newer_wins += 1,
                (false, false) => p.older_wins += 1,
                _ => p.orders_disagree += 1,
            }
        }
        let decided = p.newer_wins + p.older_wins;
        p.win_rate = (decided > 0).then(|| p.newer_wins as f64 / decided as f64);
        Ok(p)
    }
}

/// Summary tokens the judge reads, as in the judge stage.
const JUDGE_SUMMARY_TOKENS: usize = 512;

/// The report's judge: the judge model with the judge prompt, no adapter.
fn judge_model(cfg: &ReportConfig, telemetry: &Telemetry) -> super::StageResult<Arc<Annotator>> {
    model(
        &ModelKey {
            model: model_path(&cfg.judge_model)?,
            adapter: None,
            prompt: cfg.prompt,
        },
        telemetry,
    )
}

fn judge_check(
    cfg: &ReportConfig,
    references: &[Reference],
    telemetry: &Telemetry,
) -> super::StageResult<JudgeCheck> {
    let judge = judge_model(cfg, telemetry)?;
    let mut check = JudgeCheck {
        model_id: judge.model_id.clone(),
        ..JudgeCheck::default()
    };
    for r in references {
        // The summaries as the judge meets them in the loop: cut like training cuts them.
        let summary = match cfg.summary_tokens {
            Some(n) => {
                cut_summary(&judge.tokenizer, &r.summary, n).unwrap_or_else(|_| r.summary.clone())
            }
            None => r.summary.clone(),
        };
        let (verdict, _) = judge_summary(&judge, &summary, JUDGE_SUMMARY_TOKENS);
        let side = match r.label {
            Label::Benign => &mut check.benign,
            Label::Malicious => &mut check.malicious,
        };
        side.total += 1;
        side.correct += u64::from(verdict == r.label);
    }
    Ok(check)
}

impl Executor for ReportExecutor {
    fn kind(&self) -> &str {
        "report"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: ReportConfig = config("report", &task.config_json)?;
        let refs = refs(&task.config_json)?;
        let labels: Vec<LabelledRow> = read_task(task, "")?;
        let references: Vec<Reference> = labels
            .iter()
            .map(|l| Reference {
                sha256: l.sha256.clone(),
                language: l.language,
                label: l.label,
                summary: l.summary.clone(),
            })
            .collect();
        let current = refs.get("answers").ok_or("report: no `answers` ref")?;
        let Evaluated {
            answers: now,
            content,
            model_id,
            p_malicious,
        } = evaluated(current)?;
        let truth: HashMap<&str, Label> = references
            .iter()
            .map(|r| (r.sha256.as_str(), r.label))
            .collect();
        let scored: Vec<(f64, u8)> = p_malicious
            .iter()
            .filter_map(|(sha, p)| Some((*p, truth.get(sha.as_str())?.as_u8())))
            .collect();
        let label_scores = LabelScores::of(&scored);
        let (prompt_summary, summary_reference, references_for_text) =
            self.reference_view(&cfg, &references, &task.telemetry)?;
        let mut evaluation = eval::evaluate(&now, &references).map_err(|e| e.to_string())?;
        if references_for_text.is_some() {
            let cut = references_for_text.as_deref().unwrap_or(&references);
            evaluation.text = eval::evaluate(&now, cut).map_err(|e| e.to_string())?.text;
        }
        let training = refs.get("adapter").map(training_summary).transpose()?;
        let (previous, preference) = match refs.get("previous") {
            Some(r) => {
                let before = evaluated(r)?.answers;

                let cmp = eval::compare(&before, &now, &references).map_err(|e| e.to_string())?;
                let name = cfg
                    .previous_annotator
                    .clone()
                    .unwrap_or_else(|| "previous".into());
                let pref = if cfg.preference_scripts > 0 {
                    Some(self.preference(&cfg, &now, &before, &content, &task.telemetry)?)
                } else {
                    None
                };
                (Some((name, cmp)), pref)
            }
            None => (None, None),
        };
        let funnel: Option<FunnelSummary> = refs
            .get("funnel")
            .map(|r| r.json("funnel.json"))
            .transpose()?;
        let mut history = match refs.get("history") {
            Some(r) => r.json::<IterationReport>("report.json")?.history,
            None => Vec::new(),
        };
        history.push(HistoryPoint::of(&cfg.annotator, &evaluation));
        let judge_check = if cfg.judge_check {
            Some(judge_check(&cfg, &references, &task.telemetry)?)
        } else {
            None
        };
        let report = IterationReport {
            run: cfg.run.clone(),
            iteration: cfg.iteration,
            annotator: cfg.annotator.clone(),
            model_id,
            evaluation,
            previous,
            funnel,
            preference,
            judge_check,
            history,
            label_scores: Some(label_scores),
            training,
            prompt: prompt_summary,
            summary_reference: Some(summary_reference),
        };
        let mut files = Vec::new();
        let funnel_svg = report.funnel_svg();
        if let Some(svg) = &funnel_svg {
            files.push(write_file(task, "funnel.svg", svg.clone().into_bytes())?);
        }
        files.push(write_file(
            task,
            "languages.svg",
            report.languages_svg().into_bytes(),
        )?);
        let md = report.markdown(funnel_svg.as_ref().map(|_| "funnel.svg"), "languages.svg");
        files.push(write_file(task, "report.md", md.into_bytes())?);
        let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        files.push(write_file(task, "report.json", json)?);
        Ok(TaskOutput {
            rows_in: labels.len() as u64,
            files,
            quarantined: Vec::new(),
            duplicates: 0,
        })
    }
}
