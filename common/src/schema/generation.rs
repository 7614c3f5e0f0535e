//! Why a sample's generation stopped: written by the engine, stored per sample in
//! [`super::AnswersRow::finishes`] under the names of [`FinishReason::as_str`], and parsed
//! back once where the rows are read.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

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

/// Serialised under its stored name (as JSON output shows it).
impl serde::Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
