//! Turns a directory tree of script files into a corpus dataset. Every file is accounted for:
//! imported, or skipped with a reason (duplicate, too large, binary, unreadable) in a report
//! written next to the data, so nothing disappears silently between the disk and the corpus.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::{self, DetectedBy};
use automaldesc_common::error::{Error, Result};
use automaldesc_common::manifest::Manifest;
use automaldesc_common::parquet_io::{DatasetWriter, WriterOptions, WrittenFile};
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::{child, open_store, put_bytes};

/// Name of the JSONL report of skipped files, inside the output prefix.
pub const SKIPPED_REPORT: &str = "_skipped.jsonl";
/// Name of the manifest, inside the output prefix.
pub const MANIFEST: &str = "_manifest.json";

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Files larger than this are skipped (default 1 MiB).
    pub max_bytes: u64,
    pub writer: WriterOptions,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            max_bytes: 1 << 20,
            writer: WriterOptions::default(),
        }
    }
}

/// Why a file was not imported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Duplicate,
    TooLarge,
    Binary,
    Unreadable,
    /// Symlinks, sockets, devices: not regular files.
    NotRegularFile,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Duplicate => "duplicate",
            SkipReason::TooLarge => "too_large",
            SkipReason::Binary => "binary",
            SkipReason::Unreadable => "unreadable",
            SkipReason::NotRegularFile => "not_regular_file",
        }
    }
}

/// One line of the skipped report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Path relative to the import root.
    pub path: String,
    pub reason: SkipReason,
    pub detail: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub scanned: u64,
    pub imported: u64,
    pub imported_bytes: u64,
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// Imported files per language hint; `unknown` for files kept without one.
    pub per_language: BTreeMap<String, u64>,
    /// Imported files by the evidence that decided their language.
    pub detected_by: BTreeMap<String, u64>,
    pub skipped: Vec<SkippedFile>,
    pub files: Vec<WrittenFile>,
}

impl ImportReport {
    pub fn skipped_count(&self, reason: SkipReason) -> u64 {
        self.skipped_by_reason
            .get(reason.as_str())
            .copied()
            .unwrap_or(0)
    }

    fn skip(&mut self, path: String, reason: SkipReason, detail: String) {
        *self
            .skipped_by_reason
            .entry(reason.as_str().to_string())
            .or_default() += 1;
        self.skipped.push(SkippedFile {
            path,
            reason,
            detail,
        });
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<16} {:>8}", "scanned", self.scanned)?;
        writeln!(
            f,
            "{:<16} {:>8}  ({} bytes in {} files)",
            "imported",
            self.imported,
            self.imported_bytes,
            self.files.len()
        )?;
        for r in [
            SkipReason::Duplicate,
            SkipReason::TooLarge,
            SkipReason::Binary,
            SkipReason::Unreadable,
            SkipReason::NotRegularFile,
        ] {
            writeln!(f, "{:<16} {:>8}", r.as_str(), self.skipped_count(r))?;
        }
        writeln!(f, "per language:")?;
        for (lang, n) in &self.per_language {
            writeln!(f, "  {lang:<14} {n:>8}")?;
        }
        write!(f, "detected by:")?;
        for (by, n) in &self.detected_by {
            write!(f, " {by}={n}")?;
        }
        Ok(())
    }
}

/// Every entry under `root`, depth first in name order, as (absolute, relative) paths;
/// directories that cannot be listed are reported as unreadable.
fn walk(root: &Path, report: &mut ImportReport) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rel_dir = rel(root, &dir);
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                report.skip(
                    rel_dir,
                    SkipReason::Unreadable,
                    format!("cannot list directory: {e}"),
                );
                continue;
            }
        };
        entries.sort();
        // Reverse so that popping visits subdirectories in name order.
        for p in entries.into_iter().rev() {
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                _ => out.push((p.clone(), rel(root, &p))),
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Reads one file, or says why it is not imported.
fn read_candidate(
    path: &Path,
    max_bytes: u64,
) -> std::result::Result<Vec<u8>, (SkipReason, String)> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| (SkipReason::Unreadable, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        let kind = if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "not a regular file"
        };
        return Err((SkipReason::NotRegularFile, kind.to_string()));
    }
    if meta.len() > max_bytes {
        return Err((
            SkipReason::TooLarge,
            format!(
                "{} bytes exceeds the size cap of {max_bytes} bytes",
                meta.len()
            ),
        ));
    }
    let content =
        std::fs::read(path).map_err(|e| (SkipReason::Unreadable, format!("cannot read: {e}")))?;
    // The file may have grown between stat and read.
    if content.len() as u64 > max_bytes {
        return Err((
            SkipReason::TooLarge,
            format!(
                "{} bytes exceeds the size cap of {max_bytes} bytes",
                content.len()
            ),
        ));
    }
    if let Some(why) = detect::binary_reason(&content) {
        return Err((SkipReason::Binary, why));
    }
    Ok(content)
}

fn detected_by_name(by: Option<DetectedBy>) -> &'static str {
    match by {
        Some(DetectedBy::Extension) => "extension",
        Some(DetectedBy::Shebang) => "shebang",
        Some(DetectedBy::Content) => "content",
        None => "undetermined",
    }
}

/// Imports every file under `root` into a corpus dataset at `out_url`, with `_skipped.jsonl`
/// and `_manifest.json` beside the Parquet files. `source` is the path relative to `root`.
pub async fn import_dir(root: &Path, out_url: &str, opts: &ImportOptions) -> Result<ImportReport> {
    if !root.is_dir() {
        return Err(Error::NotFound(format!(
            "import directory {}",
            root.display()
        )));
    }
    let (store, prefix) = open_store(out_url)?;
    let mut report = ImportReport::default();
    let mut writer: DatasetWriter<CorpusRow> =
        DatasetWriter::new(store.clone(), prefix.clone(), opts.writer.clone());
    let mut first_seen: HashMap<String, String> = HashMap::new();

    for (abs, rel_path) in walk(root, &mut report) {
        report.scanned += 1;
        let content = match read_candidate(&abs, opts.max_bytes) {
            Ok(c) => c,
            Err((reason, detail)) => {
                report.skip(rel_path, reason, detail);
                continue;
            }
        };
        let sha = automaldesc_common::types::sha256_hex(&content);
        if let Some(first) = first_seen.get(&sha) {
            let detail = format!("same sha256 {sha} as {first}");
            report.skip(rel_path, SkipReason::Duplicate, detail);
            continue;
        }
        first_seen.insert(sha, rel_path.clone());
        let (lang, by) = detect::detect(Path::new(&rel_path), &content);
        let lang_name = lang.map_or("unknown", |l| l.as_str());
        *report
            .per_language
            .entry(lang_name.to_string())
            .or_default() += 1;
        *report
            .detected_by
            .entry(detected_by_name(by).to_string())
            .or_default() += 1;
        report.imported += 1;
        report.imported_bytes += content.len() as u64;
        writer
            .write(CorpusRow::new(content, rel_path, lang))
            .await?;
    }
    report.files = writer.finish().await?;

    let mut lines = String::new();
    for s in &report.skipped {
        lines.push_str(&serde_json::to_string(s)?);
        lines.push('\n');
    }
    put_bytes(
        store.as_ref(),
        &child(&prefix, SKIPPED_REPORT),
        lines.into_bytes(),
    )
    .await?;

    let mut counts: BTreeMap<String, u64> = report
        .skipped_by_reason
        .iter()
        .map(|(k, v)| (format!("skipped_{k}"), *v))
        .collect();
    counts.insert("scanned".into(), report.scanned);
    counts.insert("imported".into(), report.imported);
    let manifest = Manifest {
        run_id: "import".into(),
        iteration: 0,
        stage: "corpus-import".into(),
        files: report.files.clone(),
        config_hash: automaldesc_common::types::sha256_hex(
            format!("max_bytes={}", opts.max_bytes).as_bytes(),
        ),
        model_id: None,
        adapter_id: None,
        counts,
    };
    put_bytes(
        store.as_ref(),
        &child(&prefix, MANIFEST),
        manifest.to_json()?.into_bytes(),
    )
    .await?;
    Ok(report)
}
