//! Writing a released dataset to a local directory: each split as Parquet files of a target
//! size or as JSONL files, every file's sha256 recorded, and the checksum list in the format
//! `sha256sum -c` checks. The directory is built under a temporary name beside its
//! destination and renamed into place at the end ([`Staging`]), so a failed export leaves
//! nothing half-written where the dataset should be.

use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;

use automaldesc_common::error::{Error, Result};
use automaldesc_common::parquet_io::{DatasetWriter, WriterOptions, WrittenFile};
use automaldesc_common::schema::{rejected_json_line, ArrowRow, RejectedRow, ReleaseRecord};
use automaldesc_common::store::open_store;
use automaldesc_common::types::sha256_hex;

/// The name of the checksum list in a released dataset.
pub const CHECKSUMS: &str = "SHA256SUMS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseFormat {
    Parquet,
    Jsonl,
}

impl ReleaseFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ReleaseFormat::Parquet => "parquet",
            ReleaseFormat::Jsonl => "jsonl",
        }
    }
}

/// Rows a release holds: Parquet through [`ArrowRow`], JSONL one object per line.
pub trait ReleaseRow: ArrowRow {
    fn json_line(&self) -> Result<String>;
}

impl ReleaseRow for ReleaseRecord {
    fn json_line(&self) -> Result<String> {
        ReleaseRecord::json_line(self)
    }
}

impl ReleaseRow for RejectedRow {
    fn json_line(&self) -> Result<String> {
        rejected_json_line(self)
    }
}

/// Writes `rows` as `<dir>/<stem>-00000.<ext>`, `-00001`... under `root`, starting a new
/// file once one reaches `target_bytes`. An empty split is one file without rows, so that
/// every split a dataset card names has a file. Paths come back relative to `root`.
pub async fn write_split<R: ReleaseRow>(
    root: &Path,
    dir: &str,
    stem: &str,
    rows: &[R],
    format: ReleaseFormat,
    target_bytes: u64,
) -> Result<Vec<WrittenFile>> {
    let folder = root.join(dir);
    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    let empty = rows.is_empty();
    let mut files = match format {
        ReleaseFormat::Parquet if !empty => {
            let url = folder
                .to_str()
                .ok_or_else(|| Error::invalid(format!("{} is not utf-8", folder.display())))?;
            let (store, prefix) = open_store(url)?;
            let opts = WriterOptions {
                target_file_bytes: target_bytes.max(1),
                file_stem: stem.to_string(),
                ..WriterOptions::default()
            };
            let mut w = DatasetWriter::<R>::new(store, prefix, opts);
            w.write_all(rows.iter().cloned()).await?;
            w.finish().await?
        }
        ReleaseFormat::Parquet => vec![write_file(
            &folder,
            &format!("{stem}-00000.parquet"),
            empty_parquet::<R>()?,
        )?],
        ReleaseFormat::Jsonl => write_jsonl(&folder, stem, rows, target_bytes)?,
    };
    for f in &mut files {
        f.path = format!("{dir}/{}", f.path);
    }
    Ok(files)
}

/// A Parquet file with `R`'s columns and no rows.
fn empty_parquet<R: ArrowRow>() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, R::schema(), None)?;
    w.write(&R::to_batch(&[])?)?;
    w.close()?;
    Ok(buf)
}

fn write_jsonl<R: ReleaseRow>(
    folder: &Path,
    stem: &str,
    rows: &[R],
    target_bytes: u64,
) -> Result<Vec<WrittenFile>> {
    let mut files = Vec::new();
    let mut text = String::new();
    let mut lines = 0u64;
    let flush = |text: &mut String, lines: &mut u64, files: &mut Vec<WrittenFile>| {
        let name = format!("{stem}-{:05}.jsonl", files.len());
        let mut f = write_file(folder, &name, std::mem::take(text).into_bytes())?;
        f.rows = std::mem::take(lines);
        files.push(f);
        Ok::<_, Error>(())
    };
    for r in rows {
        text.push_str(&r.json_line()?);
        text.push('\n');
        lines += 1;
        if text.len() as u64 >= target_bytes.max(1) {
            flush(&mut text, &mut lines, &mut files)?;
        }
    }
    if lines > 0 || files.is_empty() {
        flush(&mut text, &mut lines, &mut files)?;
    }
    Ok(files)
}

/// Writes `bytes` to `folder/name`; the record's path is `name`.
pub fn write_file(folder: &Path, name: &str, bytes: Vec<u8>) -> Result<WrittenFile> {
    let path = folder.join(name);
    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    Ok(WrittenFile {
        path: name.to_string(),
        rows: 0,
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    })
}

/// The checksum list of `files` as `sha256sum` writes it (`<hex>  <path>`), sorted by path.
pub fn checksum_list(files: &[WrittenFile]) -> String {
    let mut sorted: Vec<&WrittenFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    sorted
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect()
}

/// A directory built under a temporary name beside its destination. [`Staging::commit`]
/// renames it into place; dropped before that, it is removed.
pub struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    /// Starts a directory for `out`, which must not exist or be an empty directory.
    pub fn begin(out: &Path) -> Result<Self> {
        check_empty(out)?;
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(format!("{} names no directory", out.display())))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            tmp,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    /// Where the files go until the commit.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the directory to its destination (replacing an empty directory there).
    pub fn commit(mut self) -> Result<PathBuf> {
        check_empty(&self.out)?;
        std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.committed = true;
        Ok(self.out.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
                tracing::warn!(path = %self.tmp.display(), error = %e, "cannot remove the unfinished export");
            }
        }
    }
}

/// `out` does not exist, or is an empty directory.
fn check_empty(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::invalid(format!(
            "output {} exists and is not a directory",
            out.display()
        )));
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    if entries.next().is_some() {
        return Err(Error::invalid(format!(
            "output directory {} is not empty; give a new or an empty directory",
            out.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automaldesc_common::types::{Label, Language};

    fn rows(n: usize) -> Vec<ReleaseRecord> {
        (0..n)
            .map(|i| ReleaseRecord {
                sha256: format!("{i:064x}"),
                label: if i % 2 == 0 {
                    Label::Benign
                } else {
                    Label::Malicious
                },
                language: Language::ALL[i % 5],
                // Hex digests: text that compresses no better than real summaries.
                summary: (0..8)
                    .map(|j| sha256_hex(format!("{i}-{j}").as_bytes()))
                    .collect::<Vec<_>>()
                    .join(" "),
                provenance: "iter-1:run=r".into(),
                label_prob: Some(0.9),
                iteration: 1,
            })
            .collect()
    }

    #[tokio::test]
    async fn splits_roll_at_the_target_size_and_the_checksums_match_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ReleaseFormat::Parquet, ReleaseFormat::Jsonl] {
            let files = write_split(dir.path(), "data", "train", &rows(60), format, 4096)
                .await
                .unwrap();
            assert!(files.len() > 1, "{format:?}: {} files", files.len());
            assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 60, "{format:?}");
            for f in &files {
                assert!(f.path.starts_with("data/train-0000"), "{}", f.path);
                assert!(f.path.ends_with(format.extension()), "{}", f.path);
                let bytes = std::fs::read(dir.path().join(&f.path)).unwrap();
                assert_eq!(
                    (bytes.len() as u64, sha256_hex(&bytes)),
                    (f.bytes, f.sha256.clone())
                );
            }
            let sums = checksum_list(&files);
            assert_eq!(sums.lines().count(), files.len());
            assert!(
                sums.starts_with(&format!("{}  data/train-00000.", files[0].sha256)),
                "{sums}"
            );
        }
    }

    #[tokio::test]
    async fn an_empty_split_is_one_file_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let parquet = write_split::<ReleaseRecord>(
            dir.path(),
            "d",
            "seed",
            &[],
            ReleaseFormat::Parquet,
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!((parquet.len(), parquet[0].rows), (1, 0));
        let bytes = std::fs::read(dir.path().join(&parquet[0].path)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .unwrap();
        assert_eq!(reader.schema().fields().len(), 7);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
        let jsonl = write_split::<ReleaseRecord>(
            dir.path(),
            "j",
            "seed",
            &[],
            ReleaseFormat::Jsonl,
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!((jsonl.len(), jsonl[0].rows, jsonl[0].bytes), (1, 0, 0));
    }

    #[test]
    fn staging_renames_into_an_empty_directory_and_refuses_a_full_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export");
        std::fs::create_dir(&out).unwrap();
        let s = Staging::begin(&out).unwrap();
        std::fs::write(s.path().join("a.txt"), "a").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a");
        let err = Staging::begin(&out).err().unwrap().to_string();
        assert!(err.contains("is not empty"), "{err}");
        // Dropped without a commit: nothing is left, not even the temporary directory.
        let other = dir.path().join("other");
        let s = Staging::begin(&other).unwrap();
        std::fs::write(s.path().join("b.txt"), "b").unwrap();
        drop(s);
        assert!(!other.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("export")]);
    }
}
