//! Imports labelled sets in the published release format (Parquet or JSONL with `sha256`,
//! `label`, `language`, `summary` and optional `path`/`behaviours`) and joins each row to
//! its script bytes, either by path under a root directory or by sha256 in a corpus. Rows
//! that cannot be joined are reported with a reason rather than dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use arrow::array::{Array, ListArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use automaldesc_common::error::{Error, Result};
use automaldesc_common::parquet_io::{
    list_parquet, read_file, write_dataset, WriterOptions, WrittenFile,
};
use automaldesc_common::schema::{CorpusRow, LabelledRow};
use automaldesc_common::store::{child, get_bytes, open_object, open_store, put_bytes};
use automaldesc_common::types::{sha256_hex, Label, Language};

/// Name of the JSONL report of rows that could not be joined, inside the output prefix.
pub const REJECTED_REPORT: &str = "_rejected.jsonl";

/// One row of a release file, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseRow {
    /// Where the row is in its file, for messages ("row 3" / "line 4").
    pub position: String,
    pub sha256: String,
    pub label: Label,
    pub language: Language,
    pub summary: String,
    pub path: Option<String>,
    pub behaviours: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct LabelImportOptions {
    /// Directory that the rows' `path` values are relative to.
    pub root: Option<PathBuf>,
    /// Corpus dataset URL to find scripts by sha256 in.
    pub corpus_url: Option<String>,
    /// Provenance written on every row ("seed", "test"...).
    pub provenance: String,
    pub writer: WriterOptions,
}

/// A row that was not imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRejection {
    pub position: String,
    pub sha256: String,
    pub path: Option<String>,
    pub reason: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LabelImportReport {
    pub rows: u64,
    pub joined_by_path: u64,
    pub joined_by_sha256: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub rejected: Vec<LabelRejection>,
    pub per_language_label: BTreeMap<String, [u64; 2]>,
    pub labelled_files: Vec<WrittenFile>,
    pub corpus_files: Vec<WrittenFile>,
}

impl LabelImportReport {
    fn reject(&mut self, row: &ReleaseRow, reason: &str, detail: String) {
        *self
            .rejected_by_reason
            .entry(reason.to_string())
            .or_default() += 1;
        self.rejected.push(LabelRejection {
            position: row.position.clone(),
            sha256: row.sha256.clone(),
            path: row.path.clone(),
            reason: reason.to_string(),
            detail,
        });
    }
}

fn parse_label_text(v: &str, position: &str) -> Result<Label> {
    let t = v.trim().to_ascii_lowercase();
    match t.as_str() {
        "0" | "0.0" | "benign" => Ok(Label::Benign),
        "1" | "1.0" | "malicious" => Ok(Label::Malicious),
        _ => Err(Error::invalid(format!(
            "{position}: label {v:?}, expected 0 or 1 (or benign / malicious)"
        ))),
    }
}

fn parse_language_text(v: &str, position: &str) -> Result<Language> {
    v.parse()
        .map_err(|e| Error::invalid(format!("{position}: {e}")))
}

fn release_row(
    position: String,
    sha256: Option<&str>,
    label: Option<&str>,
    language: Option<&str>,
    summary: Option<&str>,
    path: Option<&str>,
    behaviours: Vec<String>,
) -> Result<ReleaseRow> {
    fn need<'a>(v: Option<&'a str>, name: &str, position: &str) -> Result<&'a str> {
        v.ok_or_else(|| Error::invalid(format!("{position}: `{name}` is missing or null")))
    }
    let sha = need(sha256, "sha256", &position)?
        .trim()
        .to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!(
            "{position}: sha256 {sha:?} is not 64 hex digits"
        )));
    }
    Ok(ReleaseRow {
        label: parse_label_text(need(label, "label", &position)?, &position)?,
        language: parse_language_text(need(language, "language", &position)?, &position)?,
        summary: need(summary, "summary", &position)?.to_string(),
        path: path.map(str::to_string),
        behaviours,
        sha256: sha,
        position,
    })
}

/// Parses a JSONL release file; invalid values are errors naming the line.
pub fn parse_release_jsonl(data: &[u8]) -> Result<Vec<ReleaseRow>> {
    let text = std::str::from_utf8(data)
        .map_err(|e| Error::invalid(format!("label file is not utf-8: {e}")))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pos = format!("line {}", i + 1);
        let v: Value =
            serde_json::from_str(line).map_err(|e| Error::invalid(format!("{pos}: {e}")))?;
        let text_of = |k: &str| -> Option<String> {
            match v.get(k)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(u8::from(*b).to_string()),
                _ => None,
            }
        };
        let behaviours = match v.get("behaviours") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let (s, l, g, m, p) = (
            text_of("sha256"),
            text_of("label"),
            text_of("language"),
            text_of("summary"),
            text_of("path"),
        );
        rows.push(release_row(
            pos,
            s.as_deref(),
            l.as_deref(),
            g.as_deref(),
            m.as_deref(),
            p.as_deref(),
            behaviours,
        )?);
    }
    Ok(rows)
}

/// A column read as text (integers printed), `None` when it is absent and not required.
pub fn utf8_column(b: &RecordBatch, name: &str, required: bool) -> Result<Option<StringArray>> {
    let Ok(idx) = b.schema().index_of(name) else {
        return if required {
            Err(Error::invalid(format!("the file has no `{name}` column")))
        } else {
            Ok(None)
        };
    };
    let casted = cast(b.column(idx), &DataType::Utf8).map_err(|e| {
        Error::invalid(format!(
            "column `{name}` of type {} cannot be read as text: {e}",
            b.column(idx).data_type()
        ))
    })?;
    Ok(casted.as_any().downcast_ref::<StringArray>().cloned())
}

/// The text of row `i`, `None` for a null or an absent column.
pub fn text_at(a: &Option<StringArray>, i: usize) -> Option<&str> {
    a.as_ref().and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
}

/// Parses a Parquet release file; invalid values are errors naming the row (0-based).
pub fn parse_release_parquet(data: bytes::Bytes) -> Result<Vec<ReleaseRow>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)?.build()?;
    let mut rows = Vec::new();
    let mut offset = 0usize;
    for batch in reader {
        let b = batch?;
        let sha = utf8_column(&b, "sha256", true)?;
        let label = utf8_column(&b, "label", true)?;
        let lang = utf8_column(&b, "language", true)?;
        let summary = utf8_column(&b, "summary", true)?;
        let path = utf8_column(&b, "path", false)?;
        let behaviours = b
            .schema()
            .index_of("behaviours")
            .ok()
            .and_then(|i| b.column(i).as_any().downcast_ref::<ListArray>().cloned());
        for i in 0..b.num_rows() {
            let beh = behaviours
                .as_ref()
                .filter(|l| !l.is_null(i))
                .and_then(|l| {
                    l.value(i)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(|s| s.iter().flatten().map(str::to_string).collect())
                })
                .unwrap_or_default();
            rows.push(release_row(
                format!("row {}", offset + i),
                text_at(&sha, i),
                text_at(&label, i),
                text_at(&lang, i),
                text_at(&summary, i),
                text_at(&path, i),
                beh,
            )?);
        }
        offset += b.num_rows();
    }
    Ok(rows)
}

/// A labels file's path that is absolute or leaves the scripts' root.
#[derive(Debug, thiserror::Error)]
#[error("path {0:?} is absolute or leaves the root")]
struct OutsideRoot(String);

/// A relative path that stays under its root, or why not.
fn safe_join(root: &Path, rel: &str) -> std::result::Result<PathBuf, OutsideRoot> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(OutsideRoot(rel.to_string()));
    }
    Ok(root.join(p))
}

/// Corpus rows whose sha256 is in `wanted`, from every file of the corpus.
async fn corpus_rows_for(
    url: &str,
    wanted: &HashSet<String>,
) -> Result<HashMap<String, CorpusRow>> {
    let (store, prefix) = open_object(url)?;
    let mut found = HashMap::new();
    for meta in list_parquet(store.as_ref(), &prefix).await? {
        for row in read_file::<CorpusRow>(store.clone(), &meta.location).await? {
            if wanted.contains(&row.sha256) {
                found.entry(row.sha256.clone()).or_insert(row);
            }
        }
    }
    Ok(found)
}

/// Imports the release file at `input_url` into a labelled dataset at `out_url`, writing the
/// joined scripts as a corpus dataset at `corpus_out_url` when given.
pub async fn import_labels(
    input_url: &str,
    out_url: &str,
    corpus_out_url: Option<&str>,
    opts: &LabelImportOptions,
) -> Result<LabelImportReport> {
    if opts.root.is_none() && opts.corpus_url.is_none() {
        return Err(Error::invalid(
            "give a root directory or a corpus to join labels to scripts",
        ));
    }
    let (in_store, in_path) = open_object(input_url)?;
    let data = get_bytes(in_store.as_ref(), &in_path).await?;
    let rows = if input_url.ends_with(".jsonl") || input_url.ends_with(".json") {
        parse_release_jsonl(&data)?
    } else if input_url.ends_with(".parquet") {
        parse_release_parquet(data)?
    } else {
        return Err(Error::invalid(format!(
            "label file {input_url:?} must end in .parquet or .jsonl"
        )));
    };

    let mut report = LabelImportReport {
        rows: rows.len() as u64,
        ..Default::default()
    };
    let needs_corpus: HashSet<String> = rows
        .iter()
        .filter(|r| r.path.is_none() || opts.root.is_none())
        .map(|r| r.sha256.clone())
        .collect();
    let corpus = match &opts.corpus_url {
        Some(url) if !needs_corpus.is_empty() => corpus_rows_for(url, &needs_corpus).await?,
        _ => HashMap::new(),
    };

    let mut seen: HashMap<String, String> = HashMap::new();
    let mut labelled = Vec::new();
    let mut scripts = Vec::new();
    for row in &rows {
        if let Some(first) = seen.get(&row.sha256) {
            report.reject(
                row,
                "duplicate",
                format!("sha256 already labelled at {first}"),
            );
            continue;
        }
        let script = match (&opts.root, &row.path) {
            (Some(root), Some(rel)) => match safe_join(root, rel) {
                Err(why) => {
                    report.reject(row, "bad_path", why.to_string());
                    continue;
                }
                Ok(full) => match std::fs::read(&full) {
                    Err(e) => {
                        report.reject(row, "file_not_found", format!("{}: {e}", full.display()));
                        continue;
                    }
                    Ok(bytes) => {
                        let actual = sha256_hex(&bytes);
                        if actual != row.sha256 {
                            report.reject(
                                row,
                                "sha256_mismatch",
                                format!(
                                    "file {rel} has sha256 {actual}, the row says {}",
                                    row.sha256
                                ),
                            );
                            continue;
                        }
                        report.joined_by_path += 1;
                        CorpusRow::new(bytes, rel.clone(), Some(row.language))
                    }
                },
            },
            _ => match corpus.get(&row.sha256) {
                Some(c) => {
                    report.joined_by_sha256 += 1;
                    c.clone()
                }
                None => {
                    let detail = if opts.corpus_url.is_some() {
                        "sha256 not found in the corpus".to_string()
                    } else {
                        "row has no path and no corpus was given".to_string()
                    };
                    report.reject(row, "not_in_corpus", detail);
                    continue;
                }
            },
        };
        seen.insert(row.sha256.clone(), row.position.clone());
        report
            .per_language_label
            .entry(row.language.as_str().to_string())
            .or_default()[row.label.as_u8() as usize] += 1;
        labelled.push(LabelledRow {
            sha256: row.sha256.clone(),
            language: row.language,
            label: row.label,
            summary: row.summary.clone(),
            behaviours: row.behaviours.clone(),
            provenance: opts.provenance.clone(),
        });
        scripts.push(script);
    }

    let (out_store, out_prefix) = open_store(out_url)?;
    report.labelled_files = write_dataset(
        out_store.clone(),
        &out_prefix,
        labelled,
        opts.writer.clone(),
    )
    .await?;
    let mut lines = String::new();
    for r in &report.rejected {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    put_bytes(
        out_store.as_ref(),
        &child(&out_prefix, REJECTED_REPORT),
        lines.into_bytes(),
    )
    .await?;
    if let Some(url) = corpus_out_url {
        let (cs, cp) = open_store(url)?;
        report.corpus_files = write_dataset(cs, &cp, scripts, opts.writer.clone()).await?;
    }
    Ok(report)
}
