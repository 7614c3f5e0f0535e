//! The two input datasets: the corpus of raw scripts (identity, bytes, where they came from)
//! and labelled examples (seed, test and accepted pseudo-labels) that refer to it by sha256.

use super::columns::arrow_row;
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

arrow_row! {
    CorpusRow {
        sha256: String,
        content: Vec<u8>,
        size_bytes: u64,
        source: String,
        language_hint: Option<Language>,
        noisy_label: Option<Label>,
    }
    approx_bytes(r) => r.content.len() + r.source.len() + 64 + 16
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

arrow_row! {
    LabelledRow {
        sha256: String,
        language: Language,
        label: Label,
        summary: String,
        behaviours: Vec<String>,
        provenance: String,
    }
    approx_bytes(r) => {
        64 + 16
            + r.summary.len()
            + r.provenance.len()
            + r.behaviours.iter().map(|b| b.len() + 8).sum::<usize>()
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
