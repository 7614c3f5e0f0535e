//! Rows passed between the stages of an iteration. The generator writes one [`AnswersRow`]
//! per script with all of its samples, so a script's samples never straddle two row groups
//! (and so two tasks) of the next stage; the judge writes the same rows with its verdicts
//! filled in; the filter writes one [`DecisionRow`] per script.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BinaryArray, BooleanArray, Float32Array, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::error::{Error, Result};
use crate::types::Label;

/// A script and every answer sampled for it (and, once judged, the judge's verdicts).
#[derive(Clone, Debug, PartialEq)]
pub struct AnswersRow {
    pub sha256: String,
    pub content: Vec<u8>,
    /// One entry per sample, in sample order.
    pub temperatures: Vec<f32>,
    /// The JSON answer text as generated.
    pub responses: Vec<String>,
    /// Probability of the chosen label against the other one.
    pub label_probs: Vec<f32>,
    /// Why each sample stopped (stored under [`FinishReason::as_str`]).
    pub finishes: Vec<FinishReason>,
    /// Decode tokens produced for this script (all samples).
    pub generated_tokens: u64,
    /// `max_new_tokens - generated` over samples stopped early: the decode tokens early
    /// stop saved, at most.
    pub saved_tokens: u64,
    pub model_id: String,
    /// The judge's verdict per sample (stored under [`JudgeVerdict::as_str`]). Empty
    /// before judging.
    pub judge_labels: Vec<JudgeVerdict>,
    /// The judge's probability of its label per sample (NaN where not asked).
    pub judge_probs: Vec<f32>,
}

/// The judge's verdict on one sample's summary, as the judge stage leaves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JudgeVerdict {
    /// Not asked: the script was rejected before judging, or the sample has no summary.
    NotAsked,
    /// The run skips check 5 (no judge earned its vote), so the judge was not asked.
    Skipped,
    Voted(Label),
}

impl JudgeVerdict {
    /// The stored form: "", "skipped", "0" (benign) or "1" (malicious).
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeVerdict::NotAsked => "",
            JudgeVerdict::Skipped => "skipped",
            JudgeVerdict::Voted(Label::Benign) => "0",
            JudgeVerdict::Voted(Label::Malicious) => "1",
        }
    }
}

impl std::str::FromStr for JudgeVerdict {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" => Ok(JudgeVerdict::NotAsked),
            "skipped" => Ok(JudgeVerdict::Skipped),
            "0" => Ok(JudgeVerdict::Voted(Label::Benign)),
            "1" => Ok(JudgeVerdict::Voted(Label::Malicious)),
            _ => Err(Error::invalid(format!("unknown judge verdict {s:?}"))),
        }
    }
}

impl AnswersRow {
    /// Every per-sample list holds one entry per sample (the judge lists: none, or one each).
    pub fn check(&self) -> Result<()> {
        let n = self.responses.len();
        let lens = [
            self.temperatures.len(),
            self.label_probs.len(),
            self.finishes.len(),
        ];
        let judged = [self.judge_labels.len(), self.judge_probs.len()];
        if lens.iter().any(|&l| l != n) || judged.iter().any(|&l| l != 0 && l != n) {
            return Err(Error::invalid(format!(
                "answers of {}: per-sample lists of different lengths",
                self.sha256
            )));
        }
        Ok(())
    }
}

impl ArrowRow for AnswersRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("content", DataType::Binary, false),
                Field::new("temperatures", list_of(DataType::Float32), false),
                Field::new("responses", list_of(DataType::Utf8), false),
                Field::new("label_probs", list_of(DataType::Float32), false),
                Field::new("finishes", list_of(DataType::Utf8), false),
                Field::new("generated_tokens", DataType::UInt64, false),
                Field::new("saved_tokens", DataType::UInt64, false),
                Field::new("model_id", DataType::Utf8, false),
                Field::new("judge_labels", list_of(DataType::Utf8), false),
                Field::new("judge_probs", list_of(DataType::Float32), false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.sha256.as_str())),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.content.as_slice()),
            )),
            floats_list(rows.iter().map(|r| r.temperatures.as_slice())),
            strings_list(rows.iter().map(|r| r.responses.as_slice())),
            floats_list(rows.iter().map(|r| r.label_probs.as_slice())),
            strings_list(rows.iter().map(|r| r.finishes.iter().map(|f| f.as_str()))),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.generated_tokens),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.saved_tokens),
            )),
            strs(rows.iter().map(|r| r.model_id.as_str())),
            strings_list(
                rows.iter()
                    .map(|r| r.judge_labels.iter().map(|v| v.as_str())),
            ),
            floats_list(rows.iter().map(|r| r.judge_probs.as_slice())),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let content = bin_col(b, "content")?;
        let temps = list_col(b, "temperatures", DataType::Float32)?;
        let responses = list_col(b, "responses", DataType::Utf8)?;
        let probs = list_col(b, "label_probs", DataType::Float32)?;
        let finishes = list_col(b, "finishes", DataType::Utf8)?;
        let generated = u64_col(b, "generated_tokens")?;
        let saved = u64_col(b, "saved_tokens")?;
        let model = str_col(b, "model_id")?;
        let judge_labels = list_col(b, "judge_labels", DataType::Utf8)?;
        let judge_probs = list_col(b, "judge_probs", DataType::Float32)?;
        (0..b.num_rows())
            .map(|i| {
                required(sha, "sha256", i)?;
                required(content, "content", i)?;
                required(generated, "generated_tokens", i)?;
                required(saved, "saved_tokens", i)?;
                required(model, "model_id", i)?;
                let row = AnswersRow {
                    sha256: sha.value(i).to_string(),
                    content: content.value(i).to_vec(),
                    temperatures: floats_at(temps, "temperatures", i)?,
                    responses: strings_at(responses, "responses", i)?,
                    label_probs: floats_at(probs, "label_probs", i)?,
                    finishes: parsed_at(finishes, "finishes", i)?,
                    generated_tokens: generated.value(i),
                    saved_tokens: saved.value(i),
                    model_id: model.value(i).to_string(),
                    judge_labels: parsed_at(judge_labels, "judge_labels", i)?,
                    judge_probs: floats_at(judge_probs, "judge_probs", i)?,
                };
                row.check()?;
                Ok(row)
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        self.content.len()
            + self.responses.iter().map(|r| r.len() + 24).sum::<usize>()
            + self.model_id.len()
            + 96
    }
}

/// The filter's decision for one script: accepted with the answer it keeps, or rejected at
/// a funnel stage for a reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionRow {
    pub sha256: String,
    pub content: Vec<u8>,
    pub accepted: bool,
    /// The funnel stage that rejected it ("1-empty" ... "6-language"); "accepted" if kept.
    pub stage: String,
    /// Why, in words (empty when accepted).
    pub reason: String,
    /// The kept answer (accepted only).
    pub language: Option<Language>,
    pub label: Option<Label>,
    pub summary: Option<String>,
    /// Temperature and label probability of the kept sample (NaN when rejected).
    pub temperature: f32,
    pub label_prob: f32,
    /// The script's decode tokens, and those early stop saved (from its `AnswersRow`).
    pub generated_tokens: u64,
    pub saved_tokens: u64,
}

impl ArrowRow for DecisionRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("content", DataType::Binary, false),
                Field::new("accepted", DataType::Boolean, false),
                Field::new("stage", DataType::Utf8, false),
                Field::new("reason", DataType::Utf8, false),
                Field::new("language", DataType::Utf8, true),
                Field::new("label", DataType::UInt8, true),
                Field::new("summary", DataType::Utf8, true),
                Field::new("temperature", DataType::Float32, false),
                Field::new("label_prob", DataType::Float32, false),
                Field::new("generated_tokens", DataType::UInt64, false),
                Field::new("saved_tokens", DataType::UInt64, false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.sha256.as_str())),
            Arc::new(BinaryArray::from_iter_values(
                rows.iter().map(|r| r.content.as_slice()),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.accepted)),
            )),
            strs(rows.iter().map(|r| r.stage.as_str())),
            strs(rows.iter().map(|r| r.reason.as_str())),
            opt_strs(rows.iter().map(|r| r.language.map(|l| l.as_str()))),
            Arc::new(
                rows.iter()
                    .map(|r| r.label.map(|l| l.as_u8()))
                    .collect::<UInt8Array>(),
            ),
            opt_strs(rows.iter().map(|r| r.summary.as_deref())),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.temperature),
            )),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.label_prob),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.generated_tokens),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.saved_tokens),
            )),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let content = bin_col(b, "content")?;
        let accepted = bool_col(b, "accepted")?;
        let stage = str_col(b, "stage")?;
        let reason = str_col(b, "reason")?;
        let language = str_col(b, "language")?;
        let label = u8_col(b, "label")?;
        let summary = str_col(b, "summary")?;
        let temperature = f32_col(b, "temperature")?;
        let label_prob = f32_col(b, "label_prob")?;
        let generated = u64_col(b, "generated_tokens")?;
        let saved = u64_col(b, "saved_tokens")?;
        (0..b.num_rows())
            .map(|i| {
                required(sha, "sha256", i)?;
                required(content, "content", i)?;
                required(accepted, "accepted", i)?;
                required(stage, "stage", i)?;
                let row = DecisionRow {
                    sha256: sha.value(i).to_string(),
                    content: content.value(i).to_vec(),
                    accepted: accepted.value(i),
                    stage: stage.value(i).to_string(),
                    reason: reason.value(i).to_string(),
                    language: opt_language(language, "language", i)?,
                    label: opt_label(label, "label", i)?,
                    summary: opt_str(summary, i),
                    temperature: temperature.value(i),
                    label_prob: label_prob.value(i),
                    generated_tokens: generated.value(i),
                    saved_tokens: saved.value(i),
                };
                let complete =
                    row.language.is_some() && row.label.is_some() && row.summary.is_some();
                if row.accepted && !complete {
                    return Err(Error::invalid(format!(
                        "decision row {i}: accepted script {} lacks language, label or summary",
                        row.sha256
                    )));
                }
                Ok(row)
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        self.content.len() + self.summary.as_ref().map_or(0, String::len) + self.reason.len() + 96
    }
}
