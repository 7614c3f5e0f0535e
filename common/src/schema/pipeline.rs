//! Rows passed between the stages of an iteration. The generator writes one [`AnswersRow`]
//! per script with all of its samples, so a script's samples never straddle two row groups
//! (and so two tasks) of the next stage; the judge writes the same rows with its verdicts
//! filled in; the filter writes one [`DecisionRow`] per script.

use super::columns::arrow_row;
use super::FinishReason;
use crate::error::{Error, Result};
use crate::types::{Label, Language};

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

arrow_row! {
    AnswersRow {
        sha256: String,
        content: Vec<u8>,
        temperatures: Vec<f32>,
        responses: Vec<String>,
        label_probs: Vec<f32>,
        finishes: Vec<FinishReason>,
        generated_tokens: u64,
        saved_tokens: u64,
        model_id: String,
        judge_labels: Vec<JudgeVerdict>,
        judge_probs: Vec<f32>,
    }
    approx_bytes(r) => {
        r.content.len()
            + r.responses.iter().map(|x| x.len() + 24).sum::<usize>()
            + r.model_id.len()
            + 96
    },
    check(row, _i) => row.check(),
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

arrow_row! {
    DecisionRow {
        sha256: String,
        content: Vec<u8>,
        accepted: bool,
        stage: String,
        reason: String,
        language: Option<Language>,
        label: Option<Label>,
        summary: Option<String>,
        temperature: f32,
        label_prob: f32,
        generated_tokens: u64,
        saved_tokens: u64,
    }
    approx_bytes(r) => {
        r.content.len() + r.summary.as_ref().map_or(0, String::len) + r.reason.len() + 96
    },
    check(row, i) => row.check(i),
}

impl DecisionRow {
    /// An accepted row carries the answer it keeps; `i` is its index in the batch.
    fn check(&self, i: usize) -> Result<()> {
        let complete = self.language.is_some() && self.label.is_some() && self.summary.is_some();
        if self.accepted && !complete {
            return Err(Error::invalid(format!(
                "decision row {i}: accepted script {} lacks language, label or summary",
                self.sha256
            )));
        }
        Ok(())
    }
}
