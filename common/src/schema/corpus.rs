//! The two input datasets: the corpus of raw scripts (identity, bytes, where they came from)
//! and labelled examples (seed, test and accepted pseudo-labels) that refer to it by sha256.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BinaryArray, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::*;
use crate::error::Result;
use crate::types::{Label, Language};

/// One script of the corpus. `sha256` is the hex digest of `content`, the script's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusRow {
    pub sha256: String,
    /// Exact bytes; scripts are not always valid UTF-8.
    pub content: Vec<u8>,
    pub size_bytes: u64,
    /// Where it came from: an original path, or `synth:<family>`.
    pub source: String,
    pub language_hint: Option<Language>,
    /// A label from an outside, unreliable source (e.g. a vendor feed), if any.
    pub noisy_label: Option<Label>,
}

impl CorpusRow {
    /// A row whose sha256 and size are computed from the content.
    pub fn new(
        content: Vec<u8>,
        source: impl Into<String>,
        language_hint: Option<Language>,
    ) -> Self {
        CorpusRow {
            sha256: crate::types::sha256_hex(&content),
            size_bytes: content.len() as u64,
            content,
            source: source.into(),
            language_hint,
            noisy_label: None,
        }
    }
}

/// A task's corpus rows after [`check_identity`]: the rows to process, the scripts whose
/// content does not hash to their `sha256` (quarantined with the reason), and how many rows
/// repeat a script an earlier row of the task already had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedRows {
    pub rows: Vec<CorpusRow>,
    pub mismatched: Vec<(String, String)>,
    pub duplicates: u64,
}

/// Checks each row's `sha256` against its content, the identity every later stage relies
/// on. A mismatch is taken out with its reason; duplicates are counted, not dropped (the
/// stages keep one row per input row).
pub fn check_identity(rows: Vec<CorpusRow>) -> CheckedRows {
    let mut seen = std::collections::HashSet::new();
    let mut out = CheckedRows::default();
    for row in rows {
        let actual = crate::types::sha256_hex(&row.content);
        if actual != row.sha256 {
            out.mismatched.push((
                row.sha256,
                format!("sha256 mismatch: the content hashes to {actual}"),
            ));
            continue;
        }
        if !seen.insert(row.sha256.clone()) {
            out.duplicates += 1;
        }
        out.rows.push(row);
    }
    out
}

impl ArrowRow for CorpusRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("content", DataType::Binary, false),
                Field::new("size_bytes", DataType::UInt64, false),
                Field::new("source", DataType::Utf8, false),
                Field::new("language_hint", DataType::Utf8, true),
                Field::new("noisy_label", DataType::UInt8, true),
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
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.size_bytes),
            )),
            strs(rows.iter().map(|r| r.source.as_str())),
            opt_strs(rows.iter().map(|r| r.language_hint.map(|l| l.as_str()))),
            Arc::new(
                rows.iter()
                    .map(|r| r.noisy_label.map(|l| l.as_u8()))
                    .collect::<UInt8Array>(),
            ),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let content = bin_col(b, "content")?;
        let size = u64_col(b, "size_bytes")?;
        let source = str_col(b, "source")?;
        let lang = str_col(b, "language_hint")?;
        let noisy = u8_col(b, "noisy_label")?;
        (0..b.num_rows())
            .map(|i| {
                required(sha, "sha256", i)?;
                required(content, "content", i)?;
                required(size, "size_bytes", i)?;
                required(source, "source", i)?;
                Ok(CorpusRow {
                    sha256: sha.value(i).to_string(),
                    content: content.value(i).to_vec(),
                    size_bytes: size.value(i),
                    source: source.value(i).to_string(),
                    language_hint: opt_language(lang, "language_hint", i)?,
                    noisy_label: opt_label(noisy, "noisy_label", i)?,
                })
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        self.content.len() + self.source.len() + 64 + 16
    }
}

/// A labelled example: a verdict and technical summary for one script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledRow {
    pub sha256: String,
    pub language: Language,
    pub label: Label,
    pub summary: String,
    /// Short behaviour tags (e.g. "download-exec", "persistence"), possibly empty.
    pub behaviours: Vec<String>,
    /// Where the label came from: "seed", "test", "iter-2:model=<hash>:adapter=<id>".
    pub provenance: String,
}

impl ArrowRow for LabelledRow {
    fn schema() -> SchemaRef {
        static S: OnceLock<SchemaRef> = OnceLock::new();
        S.get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("sha256", DataType::Utf8, false),
                Field::new("language", DataType::Utf8, false),
                Field::new("label", DataType::UInt8, false),
                Field::new("summary", DataType::Utf8, false),
                Field::new("behaviours", list_of(DataType::Utf8), false),
                Field::new("provenance", DataType::Utf8, false),
            ]))
        })
        .clone()
    }

    fn to_batch(rows: &[Self]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            strs(rows.iter().map(|r| r.sha256.as_str())),
            strs(rows.iter().map(|r| r.language.as_str())),
            Arc::new(UInt8Array::from_iter_values(
                rows.iter().map(|r| r.label.as_u8()),
            )),
            strs(rows.iter().map(|r| r.summary.as_str())),
            strings_list(rows.iter().map(|r| r.behaviours.as_slice())),
            strs(rows.iter().map(|r| r.provenance.as_str())),
        ];
        batch(Self::schema(), cols)
    }

    fn from_batch(b: &RecordBatch) -> Result<Vec<Self>> {
        let sha = str_col(b, "sha256")?;
        let lang = str_col(b, "language")?;
        let label = u8_col(b, "label")?;
        let summary = str_col(b, "summary")?;
        let behaviours = list_col(b, "behaviours", DataType::Utf8)?;
        let prov = str_col(b, "provenance")?;
        (0..b.num_rows())
            .map(|i| {
                required(sha, "sha256", i)?;
                required(lang, "language", i)?;
                required(label, "label", i)?;
                required(summary, "summary", i)?;
                required(prov, "provenance", i)?;
                Ok(LabelledRow {
                    sha256: sha.value(i).to_string(),
                    language: parse_language(lang.value(i), "language", i)?,
                    label: parse_label(label.value(i), "label", i)?,
                    summary: summary.value(i).to_string(),
                    behaviours: strings_at(behaviours, "behaviours", i)?,
                    provenance: prov.value(i).to_string(),
                })
            })
            .collect()
    }

    fn approx_bytes(&self) -> usize {
        64 + 16
            + self.summary.len()
            + self.provenance.len()
            + self.behaviours.iter().map(|b| b.len() + 8).sum::<usize>()
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn a_wrong_sha256_is_taken_out_and_duplicates_are_counted() {
        let a = CorpusRow::new(b"echo a".to_vec(), "t", None);
        let b = CorpusRow::new(b"echo b".to_vec(), "t", None);
        let mut forged = CorpusRow::new(b"echo c".to_vec(), "t", None);
        forged.sha256 = a.sha256.clone();
        let checked = check_identity(vec![a.clone(), b.clone(), forged, a.clone(), a.clone()]);
        assert_eq!(checked.rows, vec![a.clone(), b, a.clone(), a.clone()]);
        assert_eq!(checked.duplicates, 2);
        assert_eq!(checked.mismatched.len(), 1);
        assert_eq!(checked.mismatched[0].0, a.sha256);
        assert!(checked.mismatched[0]
            .1
            .contains(&crate::types::sha256_hex(b"echo c")));
    }
}
