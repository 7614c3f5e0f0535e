//! Parquet datasets on object storage: a writer that rolls files at a target size with
//! row groups sized for parallel reads, and readers for whole datasets, single files and
//! row-group ranges, so a planner can shard work without rewriting files.

use std::ops::Range;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_writer::{AsyncFileWriter, ParquetObjectWriter};
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::ManifestFile;
use crate::schema::ArrowRow;
use crate::store::child;

/// How a dataset is cut into files and row groups.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// A new file starts once the current one reaches this many bytes on storage.
    pub target_file_bytes: u64,
    /// Rows are buffered into a row group until their in-memory size reaches this. Row
    /// groups are the units the coordinator plans tasks from, so they stay small.
    pub row_group_bytes: u64,
    /// ...or until this many rows are buffered, whichever comes first.
    pub row_group_rows: usize,
    /// Files are named `<file_stem>-00000.parquet`, `<file_stem>-00001.parquet`...
    pub file_stem: String,
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            target_file_bytes: 128 << 20,
            row_group_bytes: 1 << 20,
            row_group_rows: 100_000,
            file_stem: "part".to_string(),
            zstd_level: 3,
        }
    }
}

/// A file written by [`DatasetWriter`].
pub type WrittenFile = ManifestFile;

/// Passes bytes to the object writer while hashing and counting them.
struct HashingWriter {
    inner: ParquetObjectWriter,
    hasher: Sha256,
    bytes: u64,
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hasher.update(&bs);
        self.bytes += bs.len() as u64;
        self.inner.write(bs)
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.inner.complete().boxed()
    }
}

struct OpenFile {
    name: String,
    writer: AsyncArrowWriter<HashingWriter>,
    rows: u64,
}

/// Writes rows of one kind as a Parquet dataset of `part-NNNNN.parquet` files under a prefix.
pub struct DatasetWriter<R: ArrowRow> {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    opts: WriterOptions,
    buf: Vec<R>,
    buf_bytes: u64,
    current: Option<OpenFile>,
    files: Vec<WrittenFile>,
    /// Raw (in-memory) and stored bytes so far, to predict compression.
    raw_total: u64,
    stored_total: u64,
}

impl<R: ArrowRow> DatasetWriter<R> {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, opts: WriterOptions) -> Self {
        DatasetWriter {
            store,
            prefix,
            opts,
            buf: Vec::new(),
            buf_bytes: 0,
            current: None,
            files: Vec::new(),
            raw_total: 0,
            stored_total: 0,
        }
    }

    /// Stored bytes per raw byte seen so far (1.0 before anything is written).
    fn ratio(&self) -> f64 {
        if self.raw_total == 0 {
            1.0
        } else {
            (self.stored_total as f64 / self.raw_total as f64).max(0.01)
        }
    }

    /// Raw bytes the next row group may hold: its own limit, and no more than what is left
    /// of the current file's target once compression is accounted for.
    fn row_group_limit(&self) -> u64 {
        let written = self
            .current
            .as_ref()
            .map_or(0, |f| f.writer.bytes_written() as u64);
        let left = self.opts.target_file_bytes.saturating_sub(written);
        let left_raw = (left as f64 / self.ratio()) as u64;
        self.opts.row_group_bytes.min(left_raw).max(1)
    }

    pub async fn write(&mut self, row: R) -> Result<()> {
        self.buf_bytes += row.approx_bytes() as u64;
        self.buf.push(row);
        if self.buf_bytes >= self.row_group_limit() || self.buf.len() >= self.opts.row_group_rows {
            self.flush_row_group().await?;
        }
        Ok(())
    }

    pub async fn write_all(&mut self, rows: impl IntoIterator<Item = R>) -> Result<()> {
        for r in rows {
            self.write(r).await?;
        }
        Ok(())
    }

    async fn open_file(&mut self) -> Result<OpenFile> {
        let name = format!("{}-{:05}.parquet", self.opts.file_stem, self.files.len());
        let path = child(&self.prefix, &name);
        let level = ZstdLevel::try_new(self.opts.zstd_level)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_size(self.opts.row_group_rows.max(1))
            .build();
        let sink = HashingWriter {
            inner: ParquetObjectWriter::new(self.store.clone(), path),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = AsyncArrowWriter::try_new(sink, R::schema(), Some(props))?;
        Ok(OpenFile {
            name,
            writer,
            rows: 0,
        })
    }

    async fn flush_row_group(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut file = match self.current.take() {
            Some(f) => f,
            None => self.open_file().await?,
        };
        let before = file.writer.bytes_written() as u64;
        let batch = R::to_batch(&self.buf)?;
        file.writer.write(&batch).await?;
        file.writer.flush().await?;
        file.rows += self.buf.len() as u64;
        self.raw_total += self.buf_bytes;
        self.stored_total += file.writer.bytes_written() as u64 - before;
        self.buf.clear();
        self.buf_bytes = 0;
        // Close once within 3% of the target, so no file ends with a run of tiny row groups.
        let written = file.writer.bytes_written() as u64;
        if written * 100 >= self.opts.target_file_bytes * 97 {
            self.close_file(file).await
        } else {
            self.current = Some(file);
            Ok(())
        }
    }

    async fn close_file(&mut self, mut file: OpenFile) -> Result<()> {
        file.writer.finish().await?;
        let sink = file.writer.into_inner();
        self.files.push(ManifestFile {
            path: file.name,
            rows: file.rows,
            bytes: sink.bytes,
            sha256: hex::encode(sink.hasher.finalize()),
        });
        Ok(())
    }

    /// Flushes buffered rows, closes the last file and returns every file written, in order.
    pub async fn finish(mut self) -> Result<Vec<WrittenFile>> {
        self.flush_row_group().await?;
        if let Some(f) = self.current.take() {
            self.close_file(f).await?;
        }
        Ok(self.files)
    }
}

/// Writes `rows` as a dataset under `prefix` in one call.
pub async fn write_dataset<R: ArrowRow>(
    store: Arc<dyn ObjectStore>,
    prefix: &Path,
    rows: impl IntoIterator<Item = R>,
    opts: WriterOptions,
) -> Result<Vec<WrittenFile>> {
    let mut w = DatasetWriter::new(store, prefix.clone(), opts);
    w.write_all(rows).await?;
    w.finish().await
}

/// The Parquet files of a dataset, sorted by path. Names starting with `_` or `.` (reports,
/// manifests, temporary files) are not data and are left out.
pub async fn list_parquet(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<ObjectMeta>> {
    let mut metas: Vec<ObjectMeta> = store
        .list(Some(prefix))
        .try_filter(|m| {
            let name = m.location.filename().unwrap_or("");
            futures::future::ready(
                name.ends_with(".parquet") && !name.starts_with('_') && !name.starts_with('.'),
            )
        })
        .try_collect()
        .await?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(metas)
}

/// One file's layout: how many rows each row group holds, and its uncompressed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    pub path: Path,
    pub size_bytes: u64,
    pub row_group_rows: Vec<u64>,
    /// Uncompressed size of each row group (all columns), from the footer.
    pub row_group_bytes: Vec<u64>,
}

impl FileLayout {
    pub fn num_row_groups(&self) -> usize {
        self.row_group_rows.len()
    }
    pub fn num_rows(&self) -> u64 {
        self.row_group_rows.iter().sum()
    }
}

async fn builder(
    store: Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>> {
    let meta = match store.head(path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::NotFound(format!("parquet file {path}")))
        }
        Err(e) => return Err(e.into()),
    };
    let reader = ParquetObjectReader::new(store, path.clone()).with_file_size(meta.size);
    Ok(ParquetRecordBatchStreamBuilder::new(reader).await?)
}

/// Row-group counts and row counts of one file, read from its footer.
pub async fn file_layout(store: Arc<dyn ObjectStore>, path: &Path) -> Result<FileLayout> {
    let size_bytes = match store.head(path).await {
        Ok(m) => m.size,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::NotFound(format!("parquet file {path}")))
        }
        Err(e) => return Err(e.into()),
    };
    let b = builder(store, path).await?;
    let groups = b.metadata().row_groups();
    Ok(FileLayout {
        path: path.clone(),
        size_bytes,
        row_group_rows: groups.iter().map(|g| g.num_rows() as u64).collect(),
        row_group_bytes: groups
            .iter()
            .map(|g| g.total_byte_size().max(0) as u64)
            .collect(),
    })
}

/// [`file_layout`] of every file of a dataset.
/// The layouts of the dataset at `url`; an error when it holds no Parquet file.
pub async fn nonempty_dataset_layout(url: &str) -> Result<Vec<FileLayout>> {
    let (store, prefix) = crate::store::open_object(url)?;
    let layouts = dataset_layout(store, &prefix).await?;
    if layouts.is_empty() {
        return Err(Error::invalid("it holds no Parquet files"));
    }
    Ok(layouts)
}

pub async fn dataset_layout(store: Arc<dyn ObjectStore>, prefix: &Path) -> Result<Vec<FileLayout>> {
    let mut out = Vec::new();
    for meta in list_parquet(store.as_ref(), prefix).await? {
        out.push(file_layout(store.clone(), &meta.location).await?);
    }
    Ok(out)
}

/// Reads batches of one file: optionally only a range of its row groups and only some
/// top-level columns (by name).
pub async fn read_batches(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    row_groups: Option<Range<usize>>,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>> {
    let mut b = builder(store, path).await?;
    if let Some(range) = row_groups {
        let n = b.metadata().num_row_groups();
        if range.start > range.end || range.end > n {
            return Err(Error::invalid(format!(
                "row groups {}..{} out of range for {path}, which has {n}",
                range.start, range.end
            )));
        }
        b = b.with_row_groups(range.collect());
    }
    if let Some(cols) = columns {
        let schema = b.schema().clone();
        let idx = cols
            .iter()
            .map(|c| {
                schema
                    .index_of(c)
                    .map_err(|_| Error::invalid(format!("column `{c}` is missing from {path}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mask = ProjectionMask::roots(b.parquet_schema(), idx);
        b = b.with_projection(mask);
    }
    Ok(b.build()?.try_collect().await?)
}

fn rows_of<R: ArrowRow>(batches: &[RecordBatch]) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(R::from_batch(b)?);
    }
    Ok(out)
}

/// All rows of one file.
pub async fn read_file<R: ArrowRow>(store: Arc<dyn ObjectStore>, path: &Path) -> Result<Vec<R>> {
    rows_of(&read_batches(store, path, None, None).await?)
}

/// The rows of row groups `groups` (half-open) of one file, in order.
pub async fn read_row_groups<R: ArrowRow>(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    groups: Range<usize>,
) -> Result<Vec<R>> {
    rows_of(&read_batches(store, path, Some(groups), None).await?)
}

/// All rows of every file under `prefix`, files in path order.
pub async fn read_dataset<R: ArrowRow>(
    store: Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for meta in list_parquet(store.as_ref(), prefix).await? {
        out.extend(read_file::<R>(store.clone(), &meta.location).await?);
    }
    Ok(out)
}

/// The Arrow schema of one Parquet file, from its footer.
pub async fn file_schema(
    store: Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<arrow::datatypes::SchemaRef> {
    Ok(builder(store, path).await?.schema().clone())
}

/// Checks that every file of the dataset at `url` holds the columns of `expected` with
/// their types (other columns may be there too); the error names the file and the column.
pub async fn check_dataset_schema(url: &str, expected: &arrow::datatypes::Schema) -> Result<()> {
    let (store, prefix) = crate::store::open_object(url)?;
    for meta in list_parquet(store.as_ref(), &prefix).await? {
        let found = file_schema(store.clone(), &meta.location).await?;
        for field in expected.fields() {
            match found.field_with_name(field.name()) {
                Err(_) => {
                    return Err(Error::invalid(format!(
                        "{}: column `{}` is missing (expected {})",
                        meta.location,
                        field.name(),
                        field.data_type()
                    )))
                }
                Ok(f) if f.data_type() != field.data_type() => {
                    return Err(Error::invalid(format!(
                        "{}: column `{}` is {}, expected {}",
                        meta.location,
                        field.name(),
                        f.data_type(),
                        field.data_type()
                    )))
                }
                Ok(_) => {}
            }
        }
    }
    Ok(())
}

/// The Arrow schema of the first file under `prefix`, to tell what kind of dataset it is.
pub async fn dataset_schema(
    store: Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Option<arrow::datatypes::SchemaRef>> {
    match list_parquet(store.as_ref(), prefix).await?.first() {
        None => Ok(None),
        Some(m) => Ok(Some(builder(store, &m.location).await?.schema().clone())),
    }
}
