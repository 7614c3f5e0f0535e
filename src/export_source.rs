//! Where `automaldesc export` reads a run: its spec and record, and the files its stages
//! committed, from the state store (`--state-dir`, `--etcd`) or through a coordinator; and
//! one iteration's committed data, every file checked against the sha256 its commit record
//! (and, for the training set, the manifest) recorded. Nothing is found by listing a
//! directory.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use automaldesc_common::ids::RunId;
use automaldesc_common::manifest::Manifest;
use automaldesc_common::schema::{ArrowRow, LabelledRow, RejectedRow, ReleaseRecord};
use automaldesc_common::sha256_hex;
use automaldesc_common::store::{get_bytes, open_object};
use automaldesc_loop::report::{FunnelSummary, IterationReport};
use automaldesc_proto::v1;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::control_cmd::{control, Control};
use crate::export_cmd::{ExportArgs, ExportStages, RunFacts};
use automaldesc_common::run_spec::RunSpec;
use automaldesc_coordinator::run_manager::{read_run, RunPhase};
use automaldesc_coordinator::stage_manager::{read_commits, OutputRecord};
use automaldesc_coordinator::state::{EmbeddedStore, EtcdStore, StateError, StateStore};

/// Where a run's state is read.
pub enum Source {
    /// The state store itself, and where it is (for messages).
    Store {
        store: Arc<dyn StateStore>,
        place: String,
    },
    /// The coordinator that serves the run.
    Coordinator(Control),
}

impl Source {
    pub async fn open(args: &ExportArgs) -> anyhow::Result<Self> {
        if let Some(dir) = &args.state_dir {
            if !dir.join("state.log").is_file() {
                bail!("no run state in {} (no state.log there)", dir.display());
            }
            let store = match EmbeddedStore::open(dir) {
                Ok(s) => s,
                Err(StateError::Unavailable(m)) => bail!(
                    "{m}: its runs may still be going; export through that coordinator with \
                     --coordinator, or once it has stopped"
                ),
                Err(e) => return Err(e.into()),
            };
            return Ok(Source::Store {
                store: Arc::new(store),
                place: format!("the state in {}", dir.display()),
            });
        }
        if !args.etcd.is_empty() {
            let store = EtcdStore::connect(&args.etcd, &args.etcd_namespace).await?;
            return Ok(Source::Store {
                store: Arc::new(store),
                place: format!("etcd {} under {}", args.etcd.join(","), args.etcd_namespace),
            });
        }
        Ok(Source::Coordinator(control(&args.client).await?))
    }

    /// The run's spec and how it stands.
    pub async fn facts(&self, run: &str) -> anyhow::Result<RunFacts> {
        match self {
            Source::Store { store, place } => {
                let id = RunId(run.to_string());
                let Some((spec, record)) = read_run(store.as_ref(), &id).await? else {
                    bail!(
                        "no run {run} in {place}{}",
                        known_runs(store.as_ref()).await?
                    );
                };
                Ok(RunFacts {
                    spec,
                    phase: record.phase,
                    error: record.error,
                    stage: record.stage,
                })
            }
            Source::Coordinator(client) => {
                let files = run_files(client, run, Vec::new()).await?;
                let status = files.status.unwrap_or_default();
                let spec = RunSpec::from_toml(&files.spec_toml)?;
                let phase = match v1::RunState::try_from(status.state) {
                    Ok(v1::RunState::Succeeded) => RunPhase::Succeeded,
                    Ok(v1::RunState::SucceededWithQuarantine) => RunPhase::SucceededWithQuarantine,
                    Ok(v1::RunState::Failed) => RunPhase::Failed,
                    Ok(v1::RunState::Cancelled) => RunPhase::Cancelled,
                    _ => RunPhase::Running,
                };
                Ok(RunFacts {
                    spec,
                    phase,
                    error: status.error,
                    stage: status.stages.iter().map(|s| s.index).max().unwrap_or(0),
                })
            }
        }
    }

    /// Every file stage `stage` of the run committed, task by task.
    pub async fn committed(&self, run: &str, stage: u32) -> anyhow::Result<Vec<OutputRecord>> {
        match self {
            Source::Store { store, .. } => {
                Ok(read_commits(store.as_ref(), &RunId(run.into()), stage)
                    .await?
                    .into_iter()
                    .flat_map(|(_, c)| c.outputs)
                    .collect())
            }
            Source::Coordinator(client) => {
                let files = run_files(client, run, vec![stage]).await?;
                Ok(files
                    .stages
                    .into_iter()
                    .filter(|s| s.stage == stage)
                    .flat_map(|s| s.files)
                    .map(|f| OutputRecord {
                        path: f.path,
                        rows: f.rows,
                        bytes: f.size_bytes,
                        sha256: f.sha256,
                    })
                    .collect())
            }
        }
    }
}

async fn run_files(client: &Control, run: &str, stages: Vec<u32>) -> anyhow::Result<v1::RunFiles> {
    let mut client = client.clone();
    let req = v1::RunFilesRequest {
        run_id: run.to_string(),
        stages,
    };
    match client.get_run_files(req).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => bail!("the coordinator: {}", s.message()),
    }
}

/// ": its runs are a, b" (or that it holds none), for the unknown-run message.
async fn known_runs(store: &dyn StateStore) -> anyhow::Result<String> {
    let runs: Vec<String> = store
        .list("runs/")
        .await?
        .into_iter()
        .filter_map(|(k, _)| {
            let parts: Vec<&str> = k.split('/').collect();
            (parts.len() == 3 && parts[2] == "record").then(|| parts[1].to_string())
        })
        .collect();
    Ok(if runs.is_empty() {
        ", which holds no run".into()
    } else {
        format!(" (its runs: {})", runs.join(", "))
    })
}

/// What one iteration committed, ready to be written.
pub struct IterationData {
    pub manifest: Manifest,
    pub funnel: FunnelSummary,
    /// The report of the iteration's annotator (its evaluation on the test set).
    pub report: IterationReport,
    /// The accepted pseudo-labels, by sha256.
    pub accepted: Vec<ReleaseRecord>,
    /// The expert labels of the training set, by sha256.
    pub seed: Vec<ReleaseRecord>,
    /// The rejected scripts (read only when asked for), by sha256.
    pub rejected: Vec<RejectedRow>,
}

/// Reads iteration `stages.iteration` of the run from the files its stages committed, and
/// checks that they agree with each other: the training set with its manifest and funnel,
/// every pseudo-label with an accepted decision of the filter, the rejected set with the
/// funnel.
pub async fn read_iteration(
    source: &Source,
    run: &str,
    spec: &RunSpec,
    stages: &ExportStages,
    with_rejected: bool,
) -> anyhow::Result<IterationData> {
    let k = stages.iteration;
    let (store, _) = open_object(&spec.output)
        .with_context(|| format!("opening the run's output {}", spec.output))?;
    let store: &dyn ObjectStore = store.as_ref();
    let aggregate = source.committed(run, stages.aggregate).await?;
    let (manifest, funnel) = read_lineage(store, &aggregate, run, stages).await?;
    let labels = read_training_set(store, &aggregate, &manifest).await?;
    let (pseudo, seed) = split_training_set(labels, k, &funnel)?;
    let filter = source.committed(run, stages.filter).await?;
    let probs = accepted_label_probs(store, &filter).await?;
    let mut accepted = pseudo
        .into_iter()
        .map(|l| match probs.get(&l.sha256) {
            Some(&p) => Ok(release(l, Some(p), k)),
            None => bail!(
                "pseudo-label {} has no accepted decision in the filter's output",
                l.sha256
            ),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut seed: Vec<ReleaseRecord> = seed.into_iter().map(|l| release(l, None, 0)).collect();
    accepted.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    seed.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let rejected = if with_rejected {
        read_rejected(store, &aggregate, &funnel).await?
    } else {
        Vec::new()
    };
    let report = read_report(store, &source.committed(run, stages.report).await?, stages).await?;
    Ok(IterationData {
        manifest,
        funnel,
        report,
        accepted,
        seed,
        rejected,
    })
}

/// The aggregate stage's manifest and funnel, checked to be this run's iteration and to
/// add up.
async fn read_lineage(
    store: &dyn ObjectStore,
    aggregate: &[OutputRecord],
    run: &str,
    stages: &ExportStages,
) -> anyhow::Result<(Manifest, FunnelSummary)> {
    let k = stages.iteration;
    let manifest: Manifest =
        serde_json::from_slice(&fetch(store, one(aggregate, "manifest.json")?).await?)
            .context("manifest.json")?;
    if manifest.run_id != run || manifest.iteration != k {
        bail!(
            "the manifest of stage {} is run {} iteration {}, not run {run} iteration {k}",
            stages.aggregate + 1,
            manifest.run_id,
            manifest.iteration
        );
    }
    let funnel: FunnelSummary =
        serde_json::from_slice(&fetch(store, one(aggregate, "funnel.json")?).await?)
            .context("funnel.json")?;
    if !funnel.adds_up() {
        bail!("the funnel of iteration {k} does not add up: {funnel:?}");
    }
    Ok((manifest, funnel))
}

/// The training set's shards the manifest lists, each as its commit record and the
/// manifest describe it.
async fn read_training_set(
    store: &dyn ObjectStore,
    aggregate: &[OutputRecord],
    manifest: &Manifest,
) -> anyhow::Result<Vec<LabelledRow>> {
    let mut labels: Vec<LabelledRow> = Vec::new();
    for f in manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("train/labels/"))
    {
        let rec = one(aggregate, &f.path)?;
        if rec.sha256 != f.sha256 {
            bail!(
                "{}: the commit record says sha256 {}, the manifest {}",
                f.path,
                rec.sha256,
                f.sha256
            );
        }
        let rows: Vec<LabelledRow> =
            parquet_rows(fetch(store, rec).await?).with_context(|| f.path.clone())?;
        if rows.len() as u64 != f.rows {
            bail!(
                "{}: {} rows, the manifest says {}",
                f.path,
                rows.len(),
                f.rows
            );
        }
        labels.extend(rows);
    }
    Ok(labels)
}

/// The training set as (pseudo-labels of iteration `k`, seed rows), as many of each as
/// the funnel says.
fn split_training_set(
    labels: Vec<LabelledRow>,
    k: u32,
    funnel: &FunnelSummary,
) -> anyhow::Result<(Vec<LabelledRow>, Vec<LabelledRow>)> {
    let mine = format!("iter-{k}:");
    let (pseudo, seed): (Vec<LabelledRow>, Vec<LabelledRow>) = labels
        .into_iter()
        .partition(|l| l.provenance.starts_with(&mine));
    let want = funnel.accepted.saturating_sub(funnel.accepted_in_seed);
    if pseudo.len() as u64 != want || seed.len() as u64 != funnel.seed {
        bail!(
            "the training set of iteration {k} holds {} pseudo-labels and {} seed rows, but its \
             funnel says {want} and {}",
            pseudo.len(),
            seed.len(),
            funnel.seed
        );
    }
    Ok((pseudo, seed))
}

/// The iteration's report (the annotator's evaluation), checked to be of this iteration.
async fn read_report(
    store: &dyn ObjectStore,
    reports: &[OutputRecord],
    stages: &ExportStages,
) -> anyhow::Result<IterationReport> {
    let report: IterationReport =
        serde_json::from_slice(&fetch(store, one(reports, "report.json")?).await?)
            .context("report.json")?;
    if report.iteration != stages.iteration {
        bail!(
            "the report of stage {} is of iteration {}, not {}",
            stages.report + 1,
            report.iteration,
            stages.iteration
        );
    }
    Ok(report)
}

fn release(l: LabelledRow, label_prob: Option<f32>, iteration: u32) -> ReleaseRecord {
    ReleaseRecord {
        sha256: l.sha256,
        label: l.label,
        language: l.language,
        summary: l.summary,
        provenance: l.provenance,
        label_prob,
        iteration,
    }
}

/// The rejected set the aggregate stage committed; as many scripts as the funnel rejected.
async fn read_rejected(
    store: &dyn ObjectStore,
    aggregate: &[OutputRecord],
    funnel: &FunnelSummary,
) -> anyhow::Result<Vec<RejectedRow>> {
    let mut rows: Vec<RejectedRow> = Vec::new();
    for rec in aggregate
        .iter()
        .filter(|o| o.path.contains("/rejected/") && o.path.ends_with(".parquet"))
    {
        rows.extend(
            parquet_rows::<RejectedRow>(fetch(store, rec).await?)
                .with_context(|| rec.path.clone())?,
        );
    }
    let want = funnel.unlabelled.saturating_sub(funnel.accepted);
    if rows.len() as u64 != want {
        bail!(
            "the rejected set holds {} scripts, but the funnel rejected {want}",
            rows.len()
        );
    }
    rows.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Ok(rows)
}

/// The label probability of every accepted decision in the filter's committed files.
async fn accepted_label_probs(
    store: &dyn ObjectStore,
    filter: &[OutputRecord],
) -> anyhow::Result<HashMap<String, f32>> {
    use arrow::array::{Array, BooleanArray, Float32Array, StringArray};
    use parquet::arrow::ProjectionMask;
    let mut out = HashMap::new();
    for rec in filter.iter().filter(|o| o.path.ends_with(".parquet")) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(fetch(store, rec).await?)?;
        let schema = builder.schema().clone();
        let cols = ["sha256", "accepted", "label_prob"].map(|c| schema.index_of(c));
        let [Ok(sha), Ok(acc), Ok(prob)] = cols else {
            bail!(
                "{}: not the filter's decisions (no sha256, accepted or label_prob column)",
                rec.path
            );
        };
        let mask = ProjectionMask::roots(builder.parquet_schema(), [sha, acc, prob]);
        for b in builder.with_projection(mask).build()? {
            let b = b?;
            let (Some(sha), Some(acc), Some(prob)) = (
                b.column_by_name("sha256")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
                b.column_by_name("accepted")
                    .and_then(|c| c.as_any().downcast_ref::<BooleanArray>()),
                b.column_by_name("label_prob")
                    .and_then(|c| c.as_any().downcast_ref::<Float32Array>()),
            ) else {
                bail!("{}: the decisions' columns have unexpected types", rec.path);
            };
            for i in 0..b.num_rows() {
                if acc.is_valid(i) && acc.value(i) && prob.is_valid(i) {
                    out.insert(sha.value(i).to_string(), prob.value(i));
                }
            }
        }
    }
    Ok(out)
}

/// The one committed file whose path ends with `/name`.
fn one<'a>(files: &'a [OutputRecord], name: &str) -> anyhow::Result<&'a OutputRecord> {
    let suffix = format!("/{name}");
    let found: Vec<&OutputRecord> = files.iter().filter(|o| o.path.ends_with(&suffix)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => bail!(
            "the stage committed {} files named {name} (expected one)",
            found.len()
        ),
    }
}

/// A committed file's bytes, checked against the size and sha256 its commit recorded.
async fn fetch(store: &dyn ObjectStore, rec: &OutputRecord) -> anyhow::Result<bytes::Bytes> {
    let bytes = get_bytes(store, &ObjectPath::from(rec.path.as_str())).await?;
    let sha = sha256_hex(&bytes);
    if bytes.len() as u64 != rec.bytes || sha != rec.sha256 {
        bail!(
            "{} changed since it was committed: {} bytes with sha256 {sha}, the commit recorded {} bytes with {}",
            rec.path,
            bytes.len(),
            rec.bytes,
            rec.sha256
        );
    }
    Ok(bytes)
}

fn parquet_rows<R: ArrowRow>(bytes: bytes::Bytes) -> anyhow::Result<Vec<R>> {
    let mut rows = Vec::new();
    for b in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
        rows.extend(R::from_batch(&b?)?);
    }
    Ok(rows)
}
