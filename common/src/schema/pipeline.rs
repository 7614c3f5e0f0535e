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
    /// Why each sample stopped (a dictionary column of [`FinishReason::as_str`] names).
    pub finishes: Vec<FinishReason>,
    /// Decode tokens produced for this script (all samples).
    pub generated_tokens: u64,
    /// `max_new_tokens - generated` over samples stopped early: the decode tokens early
    /// stop saved, at most.
    pub saved_tokens: u64,
    pub model_id: String,
    /// The judge's verdict per sample (a dictionary column of [`JudgeVerdict::as_str`]
    /// names). Empty
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
    /// Every verdict, in the order of its stored code (see [`super::coded`]).
    pub const ALL: [JudgeVerdict; 4] = [
        JudgeVerdict::NotAsked,
        JudgeVerdict::Skipped,
        JudgeVerdict::Voted(Label::Benign),
        JudgeVerdict::Voted(Label::Malicious),
    ];

    /// The stored name: "not_asked", "skipped", "benign" or "malicious".
    pub fn as_str(self) -> &'static str {
        match self {
            JudgeVerdict::NotAsked => "not_asked",
            JudgeVerdict::Skipped => "skipped",
            JudgeVerdict::Voted(Label::Benign) => "benign",
            JudgeVerdict::Voted(Label::Malicious) => "malicious",
        }
    }

    /// The stored code: its position in [`JudgeVerdict::ALL`].
    pub fn code(self) -> i8 {
        match self {
            JudgeVerdict::NotAsked => 0,
            JudgeVerdict::Skipped => 1,
            JudgeVerdict::Voted(Label::Benign) => 2,
            JudgeVerdict::Voted(Label::Malicious) => 3,
        }
    }
}

/// Why the filter rejected a script: the published funnel's checks, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FunnelReason {
    Empty,
    Malformed,
    Truncated,
    LabelDisagreement,
    LowConfidence,
    JudgeDisagreement,
    UnknownLanguage,
}

impl FunnelReason {
    /// Every reason, in funnel order, which is also the order of its stored code.
    pub const ALL: [FunnelReason; 7] = [
        FunnelReason::Empty,
        FunnelReason::Malformed,
        FunnelReason::Truncated,
        FunnelReason::LabelDisagreement,
        FunnelReason::LowConfidence,
        FunnelReason::JudgeDisagreement,
        FunnelReason::UnknownLanguage,
    ];

    /// The stored name, also the `reason` of the released rejected set.
    pub fn as_str(self) -> &'static str {
        match self {
            FunnelReason::Empty => "empty",
            FunnelReason::Malformed => "malformed",
            FunnelReason::Truncated => "truncated",
            FunnelReason::LabelDisagreement => "label-disagreement",
            FunnelReason::LowConfidence => "low-confidence",
            FunnelReason::JudgeDisagreement => "judge-disagreement",
            FunnelReason::UnknownLanguage => "unknown-language",
        }
    }

    /// The funnel stage (1-based, in the published order) that applies this reason.
    pub fn stage(self) -> &'static str {
        match self {
            FunnelReason::Empty => "1-empty",
            FunnelReason::Malformed | FunnelReason::Truncated => "2-well-formed",
            FunnelReason::LabelDisagreement => "3-label-agreement",
            FunnelReason::LowConfidence => "4-confidence",
            FunnelReason::JudgeDisagreement => "5-judge",
            FunnelReason::UnknownLanguage => "6-language",
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

/// The filter's decision for one script: accepted with the answer it keeps, or rejected by
/// a funnel check for a reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionRow {
    pub sha256: String,
    pub content: Vec<u8>,
    pub accepted: bool,
    /// The check that rejected it (stage: [`FunnelReason::stage`]); `None` exactly when
    /// accepted.
    pub reason: Option<FunnelReason>,
    /// Why, in words a person can audit (empty when accepted).
    pub detail: String,
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
        reason: Option<FunnelReason>,
        detail: String,
        language: Option<Language>,
        label: Option<Label>,
        summary: Option<String>,
        temperature: f32,
        label_prob: f32,
        generated_tokens: u64,
        saved_tokens: u64,
    }
    approx_bytes(r) => {
        r.content.len() + r.summary.as_ref().map_or(0, String::len) + r.detail.len() + 96
    },
    check(row, i) => row.check(i),
}

impl DecisionRow {
    /// An accepted row carries the answer it keeps and no reason, a rejected one its
    /// reason; `i` is its index in the batch.
    fn check(&self, i: usize) -> Result<()> {
        let complete = self.language.is_some() && self.label.is_some() && self.summary.is_some();
        if self.accepted && !complete {
            return Err(Error::invalid(format!(
                "decision row {i}: accepted script {} lacks language, label or summary",
                self.sha256
            )));
        }
        if self.accepted == self.reason.is_some() {
            return Err(Error::invalid(format!(
                "decision row {i}: script {} is {} but has {} rejection reason",
                self.sha256,
                if self.accepted {
                    "accepted"
                } else {
                    "rejected"
                },
                if self.accepted { "a" } else { "no" },
            )));
        }
        Ok(())
    }
}
