//! Outputs of the annotation stages, defined ahead of the stages themselves so that workers,
//! the coordinator and the reports agree on one layout: one row per script × sample for the
//! generator, and one row per script × sample for the judge.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BooleanArray, Float32Array, UInt32Array, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::error::{Error, Result};
use crate::types::{Label, Language};

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model emitted its end token.
    Stop,
    /// The token budget ran out.
    Length,
    /// Sampling was cut short because samples already disagreed.
    EarlyStopDisagree,
    /// Sampling was cut short because confidence was too low to accept.
    EarlyStopLowConfidence,
    /// The script did not fit the context and was not run.
    TruncatedPrompt,
    /// The worker failed on this row.
    Error,
    /// A label-only evaluation: decoding stopped right after the label, by design.
    LabelOnly,
}

impl FinishReason {
    pub const ALL: [FinishReason; 7] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::EarlyStopDisagree,
        FinishReason::EarlyStopLowConfidence,
        FinishReason::TruncatedPrompt,
        FinishReason::Error,
        FinishReason::LabelOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::EarlyStopDisagree => "early_stop_disagree",
            FinishReason::EarlyStopLowConfidence => "early_stop_low_confidence",
            FinishReason::TruncatedPrompt => "truncated_prompt",
            FinishReason::Error => "error",
            FinishReason::LabelOnly => "label_only",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FinishReason {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        FinishReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("unknown finish reason {s:?}")))
    }
}

/// One sampled answer for one script.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRow {
    pub sha256: String,
    pub sample_index: u32,
    pub temperature: f32,
    pub seed: u64,
    /// The raw generated text.
    pub response: String,
    /// Fields parsed from the response; null when the response did not parse.
    pub language: Option<Language>,
    pub label: Option<Label>,
    pub summary: Option<String>,
    /// Probability of "malicious" at the label token.
    pub label_prob: f32,
    /// Probabilities of the five languages at the language token, in `Language::ALL` order.
    pub language_probs: Vec<f32>,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub finish_reason: FinishReason,
    pub prompt_truncated: bool,
    pub model_id: String,
    /// Null when the base model ran without an adapter.
    pub adapter_id: Option<String>,
    /// Which attempt of the work unit produced the row (for deduplicating retries).
    pub attempt_id: String,
}

impl ArrowRow for GenerationRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("sample_index", DataType::UInt32, false),
                Field::new("temperature", DataType::Float32, false),
                Field::new("seed", DataType::UInt64, false),
                Field::new("response", DataType::Utf8, false),
                Field::new("language", DataType::Utf8, true),
                Field::new("label", DataType::UInt8, true),
                Field::new("summary", DataType::Utf8, true),
                Field::new("label_prob", DataType::Float32, false),
                Field::new("language_probs", list_of(DataType::Float32), false),
                Field::new("prompt_tokens", DataType::UInt32, false),
                Field::new("generated_tokens", DataType::UInt32, false),
                Field::new("finish_reason", DataType::Utf8, false),
                Field::new("prompt_truncated", DataType::Boolean, false),
                Field::new("model_id", DataType::Utf8, false),
                Field::new("adapter_id", DataType::Utf8, true),
                Field::new("attempt_id", DataType::Utf8, false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.sha256.as_str())),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.sample_index),
            )),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.temperature),
            )),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seed))),
            strs(rows.iter().map(|r| r.response.as_str())),
            opt_strs(rows.iter().map(|r| r.language.map(|l| l.as_str()))),
            Arc::new(
                rows.iter()
                    .map(|r| r.label.map(|l| l.as_u8()))
                    .collect::<UInt8Array>(),
            ),
            opt_strs(rows.iter().map(|r| r.summary.as_deref())),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.label_prob),
            )),
            floats_list(rows.iter().map(|r| r.language_probs.as_slice())),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.prompt_tokens),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.generated_tokens),
            )),
            strs(rows.iter().map(|r| r.finish_reason.as_str())),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.prompt_truncated))
                    .collect::<BooleanArray>(),
            ),
            strs(rows.iter().map(|r| r.model_id.as_str())),
            opt_strs(rows.iter().map(|r| r.adapter_id.as_deref())),
            strs(rows.iter().map(|r| r.attempt_id.as_str())),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let sample = u32_col(b, "sample_index")?;
        let temp = f32_col(b, "temperature")?;
        let seed = u64_col(b, "seed")?;
        let response = str_col(b, "response")?;
        let language = str_col(b, "language")?;
        let label = u8_col(b, "label")?;
        let summary = str_col(b, "summary")?;
        let label_prob = f32_col(b, "label_prob")?;
        let lang_probs = list_col(b, "language_probs", DataType::Float32)?;
        let prompt_tokens = u32_col(b, "prompt_tokens")?;
        let gen_tokens = u32_col(b, "generated_tokens")?;
        let finish = str_col(b, "finish_reason")?;
        let truncated = bool_col(b, "prompt_truncated")?;
        let model = str_col(b, "model_id")?;
        let adapter = str_col(b, "adapter_id")?;
        let attempt = str_col(b, "attempt_id")?;
        (0..b.num_rows())
            .map(|i| {
                for (a, n) in [
                    (sha as &dyn Array, "sha256"),
                    (sample as &dyn Array, "sample_index"),
                    (temp as &dyn Array, "temperature"),
                    (seed as &dyn Array, "seed"),
                    (response as &dyn Array, "response"),
                    (label_prob as &dyn Array, "label_prob"),
                    (prompt_tokens as &dyn Array, "prompt_tokens"),
                    (gen_tokens as &dyn Array, "generated_tokens"),
                    (finish as &dyn Array, "finish_reason"),
                    (truncated as &dyn Array, "prompt_truncated"),
                    (model as &dyn Array, "model_id"),
                    (attempt as &dyn Array, "attempt_id"),
                ] {
                    required(a, n, i)?;
                }
                Ok(GenerationRow {
                    sha256: sha.value(i).to_string(),
                    sample_index: sample.value(i),
                    temperature: temp.value(i),
                    seed: seed.value(i),
                    response: response.value(i).to_string(),
                    language: opt_language(language, "language", i)?,
                    label: opt_label(label, "label", i)?,
                    summary: opt_str(summary, i),
                    label_prob: label_prob.value(i),
                    language_probs: floats_at(lang_probs, "language_probs", i)?,
                    prompt_tokens: prompt_tokens.value(i),
                    generated_tokens: gen_tokens.value(i),
                    finish_reason: finish.value(i).parse().map_err(|e| {
                        Error::invalid(format!("column `finish_reason` row {i}: {e}"))
                    })?,
                    prompt_truncated: truncated.value(i),
                    model_id: model.value(i).to_string(),
                    adapter_id: opt_str(adapter, i),
                    attempt_id: attempt.value(i).to_string(),
                })
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        128 + self.response.len()
            + self.summary.as_ref().map_or(0, |s| s.len())
            + self.language_probs.len() * 4
            + self.model_id.len()
            + self.attempt_id.len()
    }
}

/// The judge's verdict on one sampled answer.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgementRow {
    pub sha256: String,
    pub sample_index: u32,
    /// Null when the judge's answer did not parse.
    pub judge_label: Option<Label>,
    pub judge_prob: f32,
    pub judge_model_id: String,
}

impl ArrowRow for JudgementRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("sample_index", DataType::UInt32, false),
                Field::new("judge_label", DataType::UInt8, true),
                Field::new("judge_prob", DataType::Float32, false),
                Field::new("judge_model_id", DataType::Utf8, false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.sha256.as_str())),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.sample_index),
            )),
            Arc::new(
                rows.iter()
                    .map(|r| r.judge_label.map(|l| l.as_u8()))
                    .collect::<UInt8Array>(),
            ),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.judge_prob),
            )),
            strs(rows.iter().map(|r| r.judge_model_id.as_str())),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let sample = u32_col(b, "sample_index")?;
        let label = u8_col(b, "judge_label")?;
        let prob = f32_col(b, "judge_prob")?;
        let model = str_col(b, "judge_model_id")?;
        (0..b.num_rows())
            .map(|i| {
                required(sha, "sha256", i)?;
                required(sample, "sample_index", i)?;
                required(prob, "judge_prob", i)?;
                required(model, "judge_model_id", i)?;
                Ok(JudgementRow {
                    sha256: sha.value(i).to_string(),
                    sample_index: sample.value(i),
                    judge_label: opt_label(label, "judge_label", i)?,
                    judge_prob: prob.value(i),
                    judge_model_id: model.value(i).to_string(),
                })
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        96 + self.judge_model_id.len()
    }
}
