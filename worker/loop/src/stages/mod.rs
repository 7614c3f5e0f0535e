//! The executors of the self-training loop's stages, and what they share: reading a task's
//! rows, writing datasets and files under the attempt's prefix, fetching the files of an
//! earlier stage named by a ref, and a model kept loaded between tasks.
//!
//! | kind | input | output |
//! |---|---|---|
//! | `train` | a labelled split (`labels/` + `scripts/`), one task | `adapter/`, `lineage.json` |
//! | `generate` | scripts (`CorpusRow`) | `AnswersRow` per script |
//! | `judge-train` | the seed split, one task | `judge.json` (which judge votes), `adapter/` |
//! | `judge` | `AnswersRow` | the same rows with the judge's verdicts |
//! | `filter` | judged `AnswersRow` | `DecisionRow` per script |
//! | `aggregate` | every `DecisionRow`, one task | the next training set, rejected set, funnel, manifest |
//! | `report` | the test split, one task | `report.md`, `report.json`, charts |

pub mod aggregate;
pub mod catalog;
pub mod defaults;
pub mod filter;
pub mod generate;
pub mod judge;
pub mod judge_train;
pub mod report;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use automaldesc_common::fault::TaskError;
use automaldesc_common::manifest::ManifestFile;
use automaldesc_common::parquet_io::{read_row_groups, DatasetWriter, WriterOptions};
use automaldesc_common::schema::ArrowRow;
use automaldesc_common::store::{block_on, child, open_object, open_store};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::Deserialize;

use automaldesc_common::executor::TaskInput;
use automaldesc_runtime::runtime::Annotator;

/// Errors of a stage executor carry their kind to the coordinator (see
/// `automaldesc_common::fault`): storage faults are transient, malformed data is invalid
/// input.
pub type StageResult<T> = Result<T, TaskError>;

fn err(context: &str) -> impl Fn(automaldesc_common::Error) -> TaskError + '_ {
    move |e| TaskError::from(e).context(context)
}

fn err_io(path: &Path) -> impl Fn(std::io::Error) -> TaskError + '_ {
    move |e| TaskError::from(automaldesc_common::Error::io(path, e))
}

/// The committed files of an earlier stage, as the coordinator resolves a ref.
#[derive(Clone, Debug, Deserialize)]
pub struct StageRef {
    /// Object-store URL the file paths are relative to.
    pub root: String,
    pub stage: u32,
    pub files: Vec<String>,
}

impl StageRef {
    /// The files whose path ends with `suffix`.
    pub fn ending_with(&self, suffix: &str) -> Vec<&str> {
        self.files
            .iter()
            .filter(|f| f.ends_with(suffix))
            .map(String::as_str)
            .collect()
    }

    /// The file ending with `suffix`; an error if none or several do.
    pub fn one(&self, suffix: &str) -> StageResult<&str> {
        match self.ending_with(suffix).as_slice() {
            [one] => Ok(one),
            found => Err(TaskError::invalid(format!(
                "stage {} committed {} files ending with {suffix} (expected one)",
                self.stage,
                found.len()
            ))),
        }
    }

    /// The one committed JSON file whose name ends with `name`, parsed.
    pub fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> StageResult<T> {
        let bytes = self.read(self.one(name)?)?;
        serde_json::from_slice(&bytes).map_err(|e| TaskError::invalid(format!("{name}: {e}")))
    }

    pub fn read(&self, path: &str) -> StageResult<Vec<u8>> {
        let (store, _) = open_store(&self.root).map_err(err("opening a ref's store"))?;
        let p = ObjectPath::from(path);
        block_on(async move {
            let got = store.get(&p).await?;
            got.bytes().await
        })?
        .map(|b| b.to_vec())
        .map_err(|e| TaskError::from(automaldesc_common::Error::from(e)).context(path))
    }

    /// Rows of every Parquet file whose path contains `part`.
    pub fn rows<R: ArrowRow>(&self, part: &str) -> StageResult<Vec<R>> {
        let (store, _) = open_store(&self.root).map_err(err("opening a ref's store"))?;
        let files: Vec<&String> = self
            .files
            .iter()
            .filter(|f| f.ends_with(".parquet") && f.contains(part))
            .collect();
        block_on(async move {
            let mut rows = Vec::new();
            for f in files {
                let p = ObjectPath::from(f.as_str());
                rows.extend(read_all_row_groups::<R>(store.clone(), &p).await?);
            }
            Ok::<_, automaldesc_common::Error>(rows)
        })?
        .map_err(err("reading a ref's rows"))
    }

    /// Copies the files under `dir_part` (e.g. `adapter/`) into a local directory keyed by
    /// their names and content, and returns it. The files are read every time (an adapter
    /// is a few megabytes) and written once per content: a run started again at the same
    /// output path commits new files under the same names, and must never be handed the
    /// copy of the earlier run's.
    pub fn fetch_dir(&self, dir_part: &str) -> StageResult<PathBuf> {
        let files: Vec<&String> = self.files.iter().filter(|f| f.contains(dir_part)).collect();
        if files.is_empty() {
            return Err(format!("stage {} committed no file under {dir_part}", self.stage).into());
        }
        let mut named = Vec::with_capacity(files.len());
        for f in files {
            let name = f.rsplit('/').next().unwrap_or(f).to_string();
            named.push((name, self.read(f)?));
        }
        named.sort();
        let key = automaldesc_common::sha256_hex(
            named
                .iter()
                .map(|(name, bytes)| format!("{name}={}", automaldesc_common::sha256_hex(bytes)))
                .collect::<Vec<_>>()
                .join("\n")
                .as_bytes(),
        );
        let dir = std::env::temp_dir()
            .join("automaldesc-refs")
            .join(&key[..32]);
        if dir.exists() {
            return Ok(dir);
        }
        // Written into a directory of this process, then renamed into place: a worker next
        // to this one never sees a half-written copy.
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(err_io(&tmp))?;
        for (name, bytes) in named {
            let path = tmp.join(&name);
            std::fs::write(&path, bytes).map_err(err_io(&path))?;
        }
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process put its copy in place first: the same content.
            let _ = std::fs::remove_dir_all(&tmp);
            if !dir.exists() {
                return Err(format!("could not place {}", dir.display()).into());
            }
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod fetch_tests {
    use super::StageRef;

    #[test]
    fn a_ref_rewritten_under_the_same_names_is_fetched_afresh() {
        let root =
            std::env::temp_dir().join(format!("automaldesc-fetch-test-{}", std::process::id()));
        let stage = root.join("runs/r/stage-003/task-00000/attempt-1/adapter");
        std::fs::create_dir_all(&stage).unwrap();
        // Committed paths are keys inside the store (here the file system's root).
        let key = |name: &str| {
            let path = stage.join(name).display().to_string();
            path.trim_start_matches('/').to_string()
        };
        let r = StageRef {
            root: root.display().to_string(),
            stage: 3,
            files: vec![key("a.json"), key("w.bin")],
        };
        let fetch = |a: &str, w: &[u8]| {
            std::fs::write(stage.join("a.json"), a).unwrap();
            std::fs::write(stage.join("w.bin"), w).unwrap();
            let dir = r.fetch_dir("adapter/").unwrap();
            (dir.clone(), std::fs::read(dir.join("w.bin")).unwrap())
        };
        let (first, w1) = fetch("{}", &[1, 2, 3]);
        let (second, w2) = fetch("{}", &[4, 5, 6]);
        let (again, w3) = fetch("{}", &[4, 5, 6]);
        assert_eq!(w1, [1, 2, 3]);
        assert_eq!(w2, [4, 5, 6], "the earlier copy was handed out");
        assert_ne!(first, second);
        assert_eq!((again, w3), (second, vec![4, 5, 6]));
        let _ = std::fs::remove_dir_all(&root);
    }
}

async fn read_all_row_groups<R: ArrowRow>(
    store: Arc<dyn ObjectStore>,
    path: &ObjectPath,
) -> automaldesc_common::Result<Vec<R>> {
    let layout = automaldesc_common::parquet_io::file_layout(store.clone(), path).await?;
    read_row_groups(store, path, 0..layout.num_row_groups()).await
}

/// The refs the coordinator resolved into a stage's config.
pub fn refs(config_json: &str) -> StageResult<BTreeMap<String, StageRef>> {
    #[derive(Deserialize)]
    struct WithRefs {
        #[serde(default)]
        refs: BTreeMap<String, StageRef>,
    }
    let w: WithRefs = serde_json::from_str(config_json)
        .map_err(|e| TaskError::invalid(format!("stage refs: {e}")))?;
    Ok(w.refs)
}

/// A stage's config, with the `refs` the coordinator added taken out.
pub fn config<T: for<'de> Deserialize<'de>>(kind: &str, config_json: &str) -> StageResult<T> {
    let mut v: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|e| TaskError::invalid(format!("{kind} stage config: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("refs");
    }
    serde_json::from_value(v).map_err(|e| TaskError::invalid(format!("{kind} stage config: {e}")))
}

/// The task's rows from the files whose path contains `part` (all files when empty).
pub fn read_task<R: ArrowRow>(task: &TaskInput, part: &str) -> StageResult<Vec<R>> {
    let (input, _) = open_object(&task.input_root).map_err(err("opening the task's input"))?;
    block_on(async move {
        let mut rows = Vec::new();
        for (file, start, end) in task.ranges.iter().filter(|r| r.0.contains(part)) {
            let got = read_row_groups(
                input.clone(),
                &ObjectPath::from(file.as_str()),
                *start..*end,
            )
            .await?;
            rows.extend(got);
        }
        Ok::<_, automaldesc_common::Error>(rows)
    })?
    .map_err(err("reading the task's input"))
}

/// Writes `rows` as a dataset under `<output prefix>/<sub>`; paths come back relative to
/// the output prefix.
pub fn write_rows<R: ArrowRow>(
    task: &TaskInput,
    sub: &str,
    rows: Vec<R>,
    opts: WriterOptions,
) -> StageResult<Vec<ManifestFile>> {
    let (out, prefix) = open_store(&task.output_prefix).map_err(err("opening the output"))?;
    let dir = if sub.is_empty() {
        prefix
    } else {
        child(&prefix, sub)
    };
    let files = block_on(async move {
        let mut w = DatasetWriter::<R>::new(out, dir, opts);
        w.write_all(rows).await?;
        w.finish().await
    })?
    .map_err(err("writing the output"))?;
    Ok(files
        .into_iter()
        .map(|f| ManifestFile {
            path: if sub.is_empty() {
                f.path
            } else {
                format!("{sub}/{}", f.path)
            },
            ..f
        })
        .collect())
}

/// Writes one file at `<output prefix>/<name>`.
/// Uploads every file of a locally saved adapter directory (the PEFT pair, the heads, the
/// calibration) as `adapter/<name>`, in name order, so an adapter is never committed
/// without a part the runtime loads.
pub fn write_adapter_dir(
    task: &TaskInput,
    local: &std::path::Path,
) -> StageResult<Vec<ManifestFile>> {
    let listing = std::fs::read_dir(local).map_err(|e| format!("{}: {e}", local.display()))?;
    let mut names: Vec<String> = listing
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| {
            let path = local.join(name);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            write_file(task, &format!("adapter/{name}"), bytes)
        })
        .collect()
}

pub fn write_file(task: &TaskInput, name: &str, bytes: Vec<u8>) -> StageResult<ManifestFile> {
    let (out, prefix) = open_store(&task.output_prefix).map_err(err("opening the output"))?;
    let sha256 = automaldesc_common::sha256_hex(&bytes);
    let len = bytes.len() as u64;
    let path = child(&prefix, name);
    block_on(async move { out.put(&path, PutPayload::from(bytes)).await })?
        .map_err(|e| TaskError::from(automaldesc_common::Error::from(e)).context(name))?;
    Ok(ManifestFile {
        path: name.to_string(),
        rows: 0,
        bytes: len,
        sha256,
    })
}

/// Where a stage finds its model: a GGUF file or a Hugging Face directory on the worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModelKey {
    pub model: PathBuf,
    /// A LoRA adapter (PEFT layout) merged into it.
    pub adapter: Option<PathBuf>,
    /// The system messages it is prompted with.
    pub prompt: automaldesc_runtime::prompt::PromptStyle,
}

/// Models a worker process keeps loaded at most.
const MODELS_KEPT: usize = 2;

/// Loaded models, most recently used last.
static LOADED: Mutex<Vec<(ModelKey, Arc<Annotator>)>> = Mutex::new(Vec::new());

/// The model of `key`, kept loaded between tasks and shared by every executor of the
/// process (a worker running generate with an adapter and the judge on the base model holds
/// both); the least recently used goes when a third is asked for.
/// The model of `key`, loaded (and counted in `telemetry`) unless it is kept loaded.
pub fn model(
    key: &ModelKey,
    telemetry: &automaldesc_common::telemetry::Telemetry,
) -> StageResult<Arc<Annotator>> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = loaded.iter().position(|(k, _)| k == key) {
        let hit = loaded.remove(i);
        let model = hit.1.clone();
        loaded.push(hit);
        return Ok(model);
    }
    while loaded.len() >= MODELS_KEPT {
        loaded.remove(0);
    }
    // Inference runs on the worker's device (CUDA in a CUDA build); training stays on the
    // CPU backend (see the train stage).
    let device = automaldesc_runtime::device::select()?;
    let started = std::time::Instant::now();
    let mut annotator = Annotator::load(&key.model, &device)
        .map_err(|e| TaskError::internal(format!("loading {}: {e}", key.model.display())))?;
    if let Some(a) = &key.adapter {
        annotator = annotator
            .with_adapter(a)
            .map_err(|e| TaskError::internal(format!("adapter {}: {e}", a.display())))?;
    }
    annotator.prompt_style = key.prompt;
    telemetry.add_model_load(started.elapsed());
    let annotator = Arc::new(annotator);
    loaded.push((key.clone(), annotator.clone()));
    Ok(annotator)
}

/// The model path of a stage config: as given, checked to exist on this worker.
pub fn model_path(model: &str) -> StageResult<PathBuf> {
    let p = PathBuf::from(model);
    if Path::new(&p).exists() {
        Ok(p)
    } else {
        Err(TaskError::internal(format!(
            "model {model} not found on this worker (run deploy/fetch_model.sh or set `model`)"
        )))
    }
}

/// The adapter directory of the ref named `name`, fetched locally; `None` without the ref.
pub fn adapter_of(refs: &BTreeMap<String, StageRef>, name: &str) -> StageResult<Option<PathBuf>> {
    refs.get(name).map(|r| r.fetch_dir("adapter/")).transpose()
}

/// Bytes of frozen-prefix states a worker keeps on local disk between training stages.
const PREFIX_STORE_BYTES: u64 = 4 << 30;

/// The worker-local store of frozen-prefix states that training stages share (see
/// `state_store`): V2's training reads the seed examples' states V1's computed.
/// Entries are keyed by the model's `train::file_sha256`, so another model never reads
/// them.
pub(crate) fn prefix_store(model_sha256: &str) -> automaldesc_runtime::state_store::StateStore {
    automaldesc_runtime::state_store::StateStore::new(
        &std::env::temp_dir().join("automaldesc-prefix"),
        model_sha256,
        PREFIX_STORE_BYTES,
    )
}

/// Bytes of prefill states a worker keeps on local disk between generate stages (see
/// `generate::PrefillReuse`): `AUTOMALDESC_PREFILL_STORE_GIB` GiB, 24 by default. One
/// 384-token prompt of SmolLM2-135M adapted on its top four blocks takes 16 MB.
fn prefill_store_bytes() -> StageResult<u64> {
    const VAR: &str = "AUTOMALDESC_PREFILL_STORE_GIB";
    match std::env::var(VAR) {
        Err(_) => Ok(24 << 30),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|g| g.is_finite() && *g >= 0.0)
            .map(|g| (g * f64::from(1u32 << 30)) as u64)
            .ok_or_else(|| TaskError::invalid(format!("{VAR}={v:?} is not a number of GiB"))),
    }
}

/// The worker-local store of prompts' prefill states that generate stages share (see
/// `state_store`): V1's and V2's evaluations read what the base model's left. Entries are
/// keyed by the base model's content hash, apart from the training prefix's.
pub(crate) fn prefill_store(
    model_sha256: &str,
) -> StageResult<automaldesc_runtime::state_store::StateStore> {
    Ok(automaldesc_runtime::state_store::StateStore::new(
        &std::env::temp_dir().join("automaldesc-prefill"),
        &format!("{model_sha256}:prefill"),
        prefill_store_bytes()?,
    ))
}

/// The content hash of a model file or directory ([`train::file_sha256`]), computed once
/// per process for each path, size and modification time.
pub(crate) fn model_sha256(path: &Path) -> StageResult<String> {
    type Seen = Mutex<BTreeMap<(PathBuf, u64, Option<std::time::SystemTime>), String>>;
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    let meta = std::fs::metadata(path).map_err(err_io(path))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let seen = SEEN.get_or_init(Default::default);
    if let Some(h) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(h.clone());
    }
    let h = train::file_sha256(path).map_err(|e| TaskError::internal(e.to_string()))?;
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, h.clone());
    Ok(h)
}
