//! `automaldesc export RUN`: the dataset a finished self-training run produced, in the
//! release format (`sha256`, `label`, `language`, `summary`, plus `provenance`,
//! `label_prob` and `iteration`), as Parquet files of a target size or JSONL, with an
//! optional `seed` split, the rejected scripts with their reasons, a dataset card
//! (`README.md`, Hugging Face convention) and a checksum list.
//!
//! Only committed files are read: the run's spec and record, and the commit records of the
//! iteration's filter, aggregate and report stages, from the state store (`--state-dir`,
//! `--etcd`) or through a coordinator (`--coordinator`, as `status` reaches it); every data
//! file read is one a commit record names, checked against the sha256 it recorded. The
//! output directory is built under a temporary name beside its destination and renamed
//! into place at the end ([`Staging`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use automaldesc_common::parquet_io::WrittenFile;
use automaldesc_loop::dataset_card::{CardSplit, DatasetCard};
use automaldesc_loop::release::{
    checksum_list, write_file, write_split, ReleaseFormat, Staging, CHECKSUMS,
};
use clap::Args;

use crate::cluster_cmd::ClientArgs;
use crate::export_source::{read_iteration, IterationData, Source};
use automaldesc_common::run_spec::{RunSpec, StageInput};
use automaldesc_coordinator::run_manager::RunPhase;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run's id.
    pub run_id: String,
    /// The directory to write; it must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// The iteration whose accepted pseudo-labels to export (default: the run's last).
    #[arg(long)]
    pub iteration: Option<u32>,
    /// Data files as `parquet` or `jsonl`.
    #[arg(long, value_enum, default_value = "parquet")]
    pub format: Format,
    /// A data file is closed once it reaches this many bytes.
    #[arg(long, default_value_t = 256 << 20)]
    pub file_bytes: u64,
    /// Also write the seed (the expert labels the first annotator learnt from) as the
    /// `seed` split.
    #[arg(long)]
    pub with_seed: bool,
    /// Also write the scripts the filter rejected, with the funnel stage and the reason
    /// (the `rejected` config).
    #[arg(long)]
    pub with_rejected: bool,
    /// The license the dataset card declares (a Hugging Face license id).
    #[arg(long, default_value = "unknown")]
    pub license: String,
    /// Read the run from this embedded state directory (of `loop`, `local` or a single
    /// coordinator, which must have stopped).
    #[arg(long, conflicts_with = "etcd")]
    pub state_dir: Option<PathBuf>,
    /// Read the run from a cluster's state in etcd (comma-separated endpoints).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix of the cluster's state in etcd.
    #[arg(long, default_value = "/automaldesc/")]
    pub etcd_namespace: String,
    /// Without --state-dir or --etcd, the run is asked of the coordinator.
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Parquet,
    Jsonl,
}

/// What the exporter knows of a run: its spec, how it stands, and where it is.
#[derive(Clone, Debug)]
pub struct RunFacts {
    pub spec: RunSpec,
    pub phase: RunPhase,
    pub error: String,
    /// The stage open now, or the last one once the run ended.
    pub stage: u32,
}

/// The stages of one iteration that an export reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportStages {
    pub iteration: u32,
    pub filter: u32,
    pub aggregate: u32,
    pub report: u32,
}

/// The iteration a stage of `kind` belongs to (its config's `iteration`).
fn stage_of(spec: &RunSpec, kind: &str, k: u32) -> Option<u32> {
    spec.stages
        .iter()
        .position(|s| s.kind == kind && s.config["iteration"].as_u64() == Some(u64::from(k)))
        .map(|i| i as u32)
}

/// The iterations of a run: those with an aggregate stage, in order.
pub fn iterations(spec: &RunSpec) -> Vec<u32> {
    spec.stages
        .iter()
        .filter(|s| s.kind == "aggregate")
        .filter_map(|s| s.config["iteration"].as_u64())
        .map(|k| k as u32)
        .collect()
}

/// Finds iteration `k`'s aggregate stage, the filter stage it reads and its report stage,
/// by their kinds and configs.
pub fn locate(run: &str, spec: &RunSpec, k: u32) -> anyhow::Result<ExportStages> {
    let all = iterations(spec);
    let (Some(&first), Some(&last)) = (all.first(), all.last()) else {
        bail!("run {run} is not a self-training run: its spec has no aggregate stage");
    };
    let Some(aggregate) = stage_of(spec, "aggregate", k) else {
        bail!("run {run} has no iteration {k}: its iterations are {first} to {last}");
    };
    let filter = match spec.stages[aggregate as usize].input() {
        StageInput::Previous if aggregate > 0 => aggregate - 1,
        StageInput::Stage(n) => n,
        other => bail!("iteration {k}'s aggregate stage reads {other:?}, not a filter stage"),
    };
    if spec.stages.get(filter as usize).map(|s| s.kind.as_str()) != Some("filter") {
        bail!(
            "iteration {k}'s aggregate stage reads stage {}, which is not a filter stage",
            filter + 1
        );
    }
    let Some(report) = stage_of(spec, "report", k) else {
        bail!("run {run} has no report stage for iteration {k}");
    };
    Ok(ExportStages {
        iteration: k,
        filter,
        aggregate,
        report,
    })
}

/// Refuses a run that has not finished, and an iteration a failed or cancelled run did not
/// complete (its report stage is the last of its stages).
pub fn check_finished(run: &str, facts: &RunFacts, stages: &ExportStages) -> anyhow::Result<()> {
    let total = facts.spec.stages.len();
    let k = stages.iteration;
    match facts.phase {
        RunPhase::Succeeded | RunPhase::SucceededWithQuarantine => Ok(()),
        RunPhase::Running => bail!(
            "run {run} is still running (stage {} of {total}); export it once it has finished",
            facts.stage + 1
        ),
        phase if facts.stage > stages.report => {
            tracing::info!(
                run,
                ?phase,
                iteration = k,
                "the run did not succeed, but this iteration is complete"
            );
            Ok(())
        }
        phase => bail!(
            "run {run} {} at stage {} of {total}{} before iteration {k} was complete{}",
            phase_word(phase),
            facts.stage + 1,
            if facts.error.is_empty() {
                String::new()
            } else {
                format!(" ({})", facts.error)
            },
            match complete_before(facts) {
                Some(c) => format!("; iteration {c} is complete (--iteration {c})"),
                None => String::new(),
            }
        ),
    }
}

fn phase_word(p: RunPhase) -> &'static str {
    match p {
        RunPhase::Running => "is running",
        RunPhase::Succeeded => "succeeded",
        RunPhase::SucceededWithQuarantine => "succeeded with quarantined scripts",
        RunPhase::Failed => "failed",
        RunPhase::Cancelled => "was cancelled",
    }
}

/// The last iteration whose stages all finished before the run stopped.
fn complete_before(facts: &RunFacts) -> Option<u32> {
    iterations(&facts.spec)
        .into_iter()
        .filter(|&k| stage_of(&facts.spec, "report", k).is_some_and(|r| r < facts.stage))
        .max()
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(export(&args))?;
    println!("{summary}");
    Ok(())
}

/// Exports the run as `args` say; returns a line saying what was written where.
pub async fn export(args: &ExportArgs) -> anyhow::Result<String> {
    // Nothing is read for a destination that cannot be written.
    let staging = Staging::begin(&args.out)?;
    let source = Source::open(args).await?;
    let run = args.run_id.as_str();
    let facts = source.facts(run).await?;
    let k = match args.iteration {
        Some(k) => k,
        None => match iterations(&facts.spec).last() {
            Some(&k) => k,
            None => bail!("run {run} is not a self-training run: its spec has no aggregate stage"),
        },
    };
    let stages = locate(run, &facts.spec, k)?;
    check_finished(run, &facts, &stages)?;
    let data = read_iteration(&source, run, &facts.spec, &stages, args.with_rejected)
        .await
        .with_context(|| format!("reading iteration {k} of run {run}"))?;
    let written = write(args, &staging, &facts, &data).await?;
    let out = staging.commit()?;
    Ok(format!(
        "exported run {run} iteration {k} to {}: {} accepted pseudo-labels{}{}; {} files \
         (README.md is the dataset card, {CHECKSUMS} the checksums)",
        out.display(),
        data.accepted.len(),
        if args.with_seed {
            format!(", {} seed rows", data.seed.len())
        } else {
            String::new()
        },
        if args.with_rejected {
            format!(", {} rejected scripts", data.rejected.len())
        } else {
            String::new()
        },
        written
    ))
}

/// Writes the data files, the card and the checksum list; returns how many files.
async fn write(
    args: &ExportArgs,
    staging: &Staging,
    facts: &RunFacts,
    data: &IterationData,
) -> anyhow::Result<usize> {
    let root = staging.path();
    let format = match args.format {
        Format::Parquet => ReleaseFormat::Parquet,
        Format::Jsonl => ReleaseFormat::Jsonl,
    };
    let (mut files, splits) = write_splits(args, root, format, data).await?;
    let phase = match facts.phase {
        RunPhase::Succeeded | RunPhase::SucceededWithQuarantine => {
            phase_word(facts.phase).to_string()
        }
        p => format!("{} at stage {}", phase_word(p), facts.stage + 1),
    };
    let card = DatasetCard {
        run: &args.run_id,
        run_phase: &phase,
        iteration: data.manifest.iteration,
        license: &args.license,
        format,
        splits,
        accepted: &data.accepted,
        seed: args.with_seed.then_some(data.seed.as_slice()),
        funnel: &data.funnel,
        manifest: &data.manifest,
        report: &data.report,
    };
    files.push(write_file(root, "README.md", card.markdown().into_bytes())?);
    let sums = checksum_list(&files);
    write_file(root, CHECKSUMS, sums.into_bytes())?;
    Ok(files.len() + 1)
}

/// Writes `train`, and `seed` and `rejected` when asked for, under `root`; returns the
/// files and the splits as the card lists them.
async fn write_splits(
    args: &ExportArgs,
    root: &Path,
    format: ReleaseFormat,
    data: &IterationData,
) -> anyhow::Result<(Vec<WrittenFile>, Vec<CardSplit>)> {
    let ext = format.extension();
    let bytes = args.file_bytes;
    let mut files = Vec::new();
    let mut splits = Vec::new();
    let mut add = |config: &str, split: &str, glob: String, written: Vec<WrittenFile>, what| {
        splits.push(CardSplit {
            config: config.into(),
            split: split.into(),
            glob,
            files: written.len(),
            rows: written.iter().map(|f| f.rows).sum(),
            what,
        });
        files.extend(written);
    };
    let train = write_split(root, "data", "train", &data.accepted, format, bytes).await?;
    let what = format!(
        "pseudo-labels of iteration {} the funnel accepted",
        data.manifest.iteration
    );
    add(
        "default",
        "train",
        format!("data/train-*.{ext}"),
        train,
        what,
    );
    if args.with_seed {
        let seed = write_split(root, "data", "seed", &data.seed, format, bytes).await?;
        let what = "the expert-labelled seed".to_string();
        add("default", "seed", format!("data/seed-*.{ext}"), seed, what);
    }
    if args.with_rejected {
        let rejected = write_split(root, "rejected", "rejected", &data.rejected, format, bytes);
        let what = "scripts the funnel rejected, with why".to_string();
        let glob = format!("rejected/rejected-*.{ext}");
        add("rejected", "train", glob, rejected.await?, what);
    }
    Ok((files, splits))
}

#[cfg(test)]
mod tests;
