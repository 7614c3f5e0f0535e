//! The public release format of a labelled dataset, as `automaldesc export` writes it: one
//! row per script with the published columns `sha256`, `label` (0 benign, 1 malicious),
//! `language` and `summary`, and where the label came from (`provenance`, `label_prob`,
//! `iteration`). No script text: users join the rows to the scripts they hold by sha256.
//! `corpus import-labels` reads these columns back (`automaldesc_corpus::import_labels`).

use serde::Serialize;

use super::columns::arrow_row;
use super::RejectedRow;
use crate::error::Result;
use crate::types::{Label, Language};

/// One labelled script of a released dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseRecord {
    pub sha256: String,
    pub label: Label,
    pub language: Language,
    pub summary: String,
    /// "seed" (or whatever the imported expert labels carry), or
    /// `iter-k:run=...:model=...:adapter=...` for a pseudo-label of iteration k.
    pub provenance: String,
    /// The annotator's probability of its label (none for an expert label).
    pub label_prob: Option<f32>,
    /// The iteration whose annotator wrote the label (0 for an expert label).
    pub iteration: u32,
}

/// A [`ReleaseRecord`] as one JSON object, keys in column order.
#[derive(Serialize)]
struct ReleaseJson<'a> {
    sha256: &'a str,
    label: u8,
    language: &'a str,
    summary: &'a str,
    provenance: &'a str,
    label_prob: Option<f32>,
    iteration: u32,
}

impl ReleaseRecord {
    /// The row as one line of JSONL (without the newline).
    pub fn json_line(&self) -> Result<String> {
        Ok(serde_json::to_string(&ReleaseJson {
            sha256: &self.sha256,
            label: self.label.as_u8(),
            language: self.language.as_str(),
            summary: &self.summary,
            provenance: &self.provenance,
            label_prob: self.label_prob,
            iteration: self.iteration,
        })?)
    }
}

arrow_row! {
    ReleaseRecord {
        sha256: String,
        label: Label,
        language: Language,
        summary: String,
        provenance: String,
        label_prob: Option<f32>,
        iteration: u32,
    }
    approx_bytes(r) => r.sha256.len() + r.summary.len() + r.provenance.len() + 24
}

/// A rejected script as one JSON object (the columns of [`RejectedRow`]).
pub fn rejected_json_line(r: &RejectedRow) -> Result<String> {
    #[derive(Serialize)]
    struct Line<'a> {
        sha256: &'a str,
        stage: &'a str,
        reason: &'a str,
        detail: &'a str,
    }
    Ok(serde_json::to_string(&Line {
        sha256: &r.sha256,
        stage: &r.stage,
        reason: &r.reason,
        detail: &r.detail,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ArrowRow;

    fn record(prob: Option<f32>, iteration: u32) -> ReleaseRecord {
        ReleaseRecord {
            sha256: "ab".repeat(32),
            label: Label::Malicious,
            language: Language::Powershell,
            summary: "Downloads a \"payload\"\nand runs it.".into(),
            provenance: if iteration == 0 {
                "seed".into()
            } else {
                "iter-2:run=r".into()
            },
            label_prob: prob,
            iteration,
        }
    }

    #[test]
    fn rows_survive_arrow_with_and_without_a_label_probability() {
        let rows = vec![record(Some(0.93), 2), record(None, 0)];
        let b = ReleaseRecord::to_batch(&rows).unwrap();
        assert_eq!(b.schema().field(5).name(), "label_prob");
        assert_eq!(b.column(5).null_count(), 1);
        assert_eq!(ReleaseRecord::from_batch(&b).unwrap(), rows);
    }

    #[test]
    fn a_json_line_has_the_columns_in_order_and_null_for_an_expert_label() {
        let line = record(None, 0).json_line().unwrap();
        assert!(
            line.starts_with(&format!(
                r#"{{"sha256":"{}","label":1,"language":"powershell","#,
                "ab".repeat(32)
            )),
            "{line}"
        );
        assert!(
            line.ends_with(r#""provenance":"seed","label_prob":null,"iteration":0}"#),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
        let v: serde_json::Value =
            serde_json::from_str(&record(Some(0.5), 2).json_line().unwrap()).unwrap();
        assert_eq!(v["label_prob"], 0.5);
        assert_eq!(v["summary"], "Downloads a \"payload\"\nand runs it.");
    }
}
