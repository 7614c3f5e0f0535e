//! `filter`: the published funnel over judged answers, one [`DecisionRow`] per script: the
//! kept answer of an accepted script, or the stage and reason that rejected it. The rules
//! and the choice of summary are those of [`crate::filter`].

use crate::filter::{after_judge, before_judge, Rejection};
use automaldesc_common::fault::TaskError;
use automaldesc_common::parquet_io::WriterOptions;
use automaldesc_common::schema::{AnswersRow, DecisionRow, JudgeVerdict};
use serde::{Deserialize, Serialize};

use super::judge::filter_samples;
use super::{config, read_task, write_rows};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub min_label_prob: f32,
}

/// The decision for one judged script.
/// A row that reached the filter without its judge verdicts is invalid input: the stage
/// was fed the wrong stage's output.
pub fn decide(row: &AnswersRow, min_label_prob: f32) -> Result<DecisionRow, TaskError> {
    let samples = filter_samples(row);
    let rejected = |r: Rejection| DecisionRow {
        sha256: row.sha256.clone(),
        content: row.content.clone(),
        accepted: false,
        reason: Some(r.reason),
        detail: r.detail,
        language: None,
        label: None,
        summary: None,
        temperature: f32::NAN,
        label_prob: f32::NAN,
        generated_tokens: row.generated_tokens,
        saved_tokens: row.saved_tokens,
    };
    let survivor = match before_judge(&samples, min_label_prob) {
        Ok(s) => s,
        Err(r) => return Ok(rejected(r)),
    };
    if row.judge_labels.len() != samples.len() {
        return Err(TaskError::invalid(format!(
            "script {} reached the filter unjudged (run the judge stage first)",
            row.sha256
        )));
    }
    let mut verdicts = Vec::with_capacity(survivor.summaries.len());
    for (i, _, _) in &survivor.summaries {
        let v = match row.judge_labels[*i] {
            JudgeVerdict::Voted(label) => label,
            // Check 5 is skipped for the run: the judge does not vote.
            JudgeVerdict::Skipped => survivor.label,
            JudgeVerdict::NotAsked => {
                return Err(TaskError::invalid(format!(
                    "script {} sample {i}: the judge was not asked where a verdict was expected",
                    row.sha256
                )))
            }
        };
        verdicts.push(v);
    }
    Ok(match after_judge(&survivor, &verdicts, &samples) {
        Ok(a) => DecisionRow {
            sha256: row.sha256.clone(),
            content: row.content.clone(),
            accepted: true,
            reason: None,
            detail: String::new(),
            language: Some(a.language),
            label: Some(a.label),
            summary: Some(a.summary),
            temperature: samples[a.sample].temperature,
            label_prob: samples[a.sample].label_prob,
            generated_tokens: row.generated_tokens,
            saved_tokens: row.saved_tokens,
        },
        // Past check 3 the samples agreed on a label: the rejection keeps it, so the funnel
        // can count rejections by class.
        Err(r) => DecisionRow {
            label: Some(survivor.label),
            ..rejected(r)
        },
    })
}

pub struct FilterExecutor;

impl Executor for FilterExecutor {
    fn kind(&self) -> &str {
        "filter"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: FilterConfig = config("filter", &task.config_json)?;
        let rows: Vec<AnswersRow> = read_task(task, "")?;
        let rows_in = rows.len() as u64;
        let decisions = rows
            .iter()
            .map(|r| decide(r, cfg.min_label_prob))
            .collect::<Result<Vec<_>, _>>()?;
        task.telemetry.add_work(rows_in, 0);
        let files = write_rows(task, "", decisions, WriterOptions::default())?;
        Ok(TaskOutput {
            rows_in,
            files,
            quarantined: Vec::new(),
            duplicates: 0,
        })
    }
}
