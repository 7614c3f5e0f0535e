//! Per-language benign/malicious counts of a corpus or labelled dataset, laid out like the
//! paper's dataset table, so an imported or generated corpus can be checked at a glance.

use std::fmt;

use arrow::array::{Array, StringArray, UInt8Array};
use serde::Serialize;

use automaldesc_common::error::{Error, Result};
use automaldesc_common::parquet_io::{dataset_schema, list_parquet, read_batches};
use automaldesc_common::store::open_object;
use automaldesc_common::types::{Label, Language};

/// Which kind of dataset the table was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Counted by `language_hint` and `noisy_label`.
    Corpus,
    /// Counted by `language` and `label`.
    Labelled,
}

/// One line of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsRow {
    pub language: String,
    pub benign: u64,
    pub malicious: u64,
    pub unlabelled: u64,
    pub total: u64,
}

/// Rows for the five languages, `unknown` when any row has no language, and `total`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatsTable {
    pub kind: DatasetKind,
    pub rows: Vec<StatsRow>,
}

impl StatsTable {
    /// Counts (language, label) pairs.
    pub fn from_pairs(
        kind: DatasetKind,
        pairs: impl IntoIterator<Item = (Option<Language>, Option<Label>)>,
    ) -> Self {
        let mut cells = [[0u64; 3]; 6];
        for (lang, label) in pairs {
            let r = lang.map_or(5, |l| l.index());
            let c = label.map_or(2, |l| l.as_u8() as usize);
            cells[r][c] += 1;
        }
        let mut rows = Vec::new();
        let mut total = StatsRow {
            language: "total".into(),
            ..Default::default()
        };
        for (r, c) in cells.iter().enumerate() {
            let name = if r < 5 {
                Language::ALL[r].as_str()
            } else {
                "unknown"
            };
            let row = StatsRow {
                language: name.to_string(),
                benign: c[0],
                malicious: c[1],
                unlabelled: c[2],
                total: c.iter().sum(),
            };
            if r == 5 && row.total == 0 {
                continue;
            }
            total.benign += row.benign;
            total.malicious += row.malicious;
            total.unlabelled += row.unlabelled;
            total.total += row.total;
            rows.push(row);
        }
        rows.push(total);
        StatsTable { kind, rows }
    }

    pub fn row(&self, language: &str) -> Option<&StatsRow> {
        self.rows.iter().find(|r| r.language == language)
    }
}

impl fmt::Display for StatsTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<12}{:>12}{:>12}{:>12}{:>12}",
            "language", "benign", "malicious", "unlabelled", "total"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<12}{:>12}{:>12}{:>12}{:>12}",
                r.language, r.benign, r.malicious, r.unlabelled, r.total
            )?;
        }
        Ok(())
    }
}

fn str_column<'a>(b: &'a arrow::record_batch::RecordBatch, name: &str) -> Result<&'a StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::invalid(format!("column `{name}` is missing or not utf8")))
}

fn u8_column<'a>(b: &'a arrow::record_batch::RecordBatch, name: &str) -> Result<&'a UInt8Array> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<UInt8Array>())
        .ok_or_else(|| Error::invalid(format!("column `{name}` is missing or not uint8")))
}

/// Computes the table for the dataset at `url`, reading only the two columns it needs.
pub async fn dataset_stats(url: &str) -> Result<StatsTable> {
    let (store, prefix) = open_object(url)?;
    let schema = dataset_schema(store.clone(), &prefix)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no parquet files under {url}")))?;
    let has = |c: &str| schema.index_of(c).is_ok();
    let (kind, lang_col, label_col) = if has("language_hint") && has("noisy_label") {
        (DatasetKind::Corpus, "language_hint", "noisy_label")
    } else if has("language") && has("label") {
        (DatasetKind::Labelled, "language", "label")
    } else {
        return Err(Error::invalid(format!(
            "{url} is neither a corpus (language_hint, noisy_label) nor a labelled set (language, label)"
        )));
    };
    let mut pairs = Vec::new();
    for meta in list_parquet(store.as_ref(), &prefix).await? {
        let cols = [lang_col, label_col];
        for b in read_batches(store.clone(), &meta.location, None, Some(&cols[..])).await? {
            let langs = str_column(&b, lang_col)?;
            let labels = u8_column(&b, label_col)?;
            for i in 0..b.num_rows() {
                let lang = if langs.is_null(i) {
                    None
                } else {
                    Some(langs.value(i).parse::<Language>().map_err(|e| {
                        Error::invalid(format!(
                            "{}: column `{lang_col}` row {i}: {e}",
                            meta.location
                        ))
                    })?)
                };
                let label = if labels.is_null(i) {
                    None
                } else {
                    Some(Label::from_u8(labels.value(i)).ok_or_else(|| {
                        Error::invalid(format!(
                            "{}: column `{label_col}` row {i}: label {} is not 0 or 1",
                            meta.location,
                            labels.value(i)
                        ))
                    })?)
                };
                pairs.push((lang, label));
            }
        }
    }
    Ok(StatsTable::from_pairs(kind, pairs))
}
