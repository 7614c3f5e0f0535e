//! `automaldesc corpus ...`: synthetic corpus generation, import and statistics.

use std::path::PathBuf;

use anyhow::Context;
use automaldesc_common::parquet_io::WriterOptions;
use automaldesc_common::store::block_on;
use automaldesc_corpus::import::{import_dir, ImportOptions};
use automaldesc_corpus::import_labels::{import_labels, LabelImportOptions};
use automaldesc_corpus::stats::dataset_stats;
use automaldesc_corpus::synth::SynthConfig;
use automaldesc_corpus::synth_dataset::write_synth_corpus;
use clap::{Args, Subcommand};

/// Output file sizing shared by the commands that write datasets.
#[derive(Args, Clone, Debug)]
pub struct SizingArgs {
    /// Target size of each Parquet file, in MiB.
    #[arg(long, default_value_t = 128)]
    pub target_file_mib: u64,
    /// Target in-memory size of each row group, in MiB. A row group is the smallest piece
    /// of a dataset a task can hold, so smaller row groups spread work more evenly.
    #[arg(long, default_value_t = 1)]
    pub row_group_mib: u64,
}

impl SizingArgs {
    fn writer(&self) -> WriterOptions {
        WriterOptions {
            target_file_bytes: self.target_file_mib.max(1) << 20,
            row_group_bytes: self.row_group_mib.max(1) << 20,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
pub enum CorpusCmd {
    /// Generate a synthetic corpus with ground truth (all five languages, seed/test/unlabelled
    /// splits in the published proportions times --scale). Same seed, same bytes.
    Synth {
        /// Output location: a local path, file://, s3://bucket/prefix or memory://name/prefix.
        #[arg(long)]
        out: String,
        /// 1.0 = the published size (161,662 scripts).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Share of unlabelled scripts whose noisy label is wrong.
        #[arg(long, default_value_t = 0.08)]
        noisy_label_error: f64,
        /// Scale of the unlabelled split alone (default: --scale).
        #[arg(long)]
        unlabelled_scale: Option<f64>,
        /// Scale of the seed split alone (default: --scale).
        #[arg(long)]
        seed_scale: Option<f64>,
        #[command(flatten)]
        sizing: SizingArgs,
    },
    /// Import a directory tree of script files as a corpus dataset.
    Import {
        /// Directory to walk.
        dir: PathBuf,
        /// Output dataset: a local path, file://, s3://bucket/prefix or memory://name/prefix.
        #[arg(long)]
        out: String,
        /// Skip files larger than this many bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_bytes: u64,
        #[command(flatten)]
        sizing: SizingArgs,
        /// Print the summary as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Import a labelled set (release format: Parquet or JSONL with sha256, label, language,
    /// summary and optional path), joined to script contents by path or by sha256.
    ImportLabels {
        /// The release file (.parquet or .jsonl), as a path or URL.
        input: String,
        /// Output labelled dataset.
        #[arg(long)]
        out: String,
        /// Directory the rows' `path` values are relative to.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Corpus dataset to find scripts in by sha256.
        #[arg(long)]
        corpus: Option<String>,
        /// Where to write the joined scripts as a corpus dataset.
        #[arg(long)]
        corpus_out: Option<String>,
        /// Provenance recorded on every row: seed, test...
        #[arg(long, default_value = "seed")]
        provenance: String,
        #[command(flatten)]
        sizing: SizingArgs,
        #[arg(long)]
        json: bool,
    },
    /// Per-language benign/malicious counts of a corpus or labelled dataset.
    Stats {
        /// Dataset URL or path.
        url: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: CorpusCmd) -> anyhow::Result<()> {
    match cmd {
        CorpusCmd::Synth {
            out,
            scale,
            seed,
            noisy_label_error,
            unlabelled_scale,
            seed_scale,
            sizing,
        } => {
            anyhow::ensure!(scale > 0.0, "--scale must be positive, got {scale}");
            anyhow::ensure!(
                unlabelled_scale.is_none_or(|s| s > 0.0) && seed_scale.is_none_or(|s| s > 0.0),
                "--unlabelled-scale and --seed-scale must be positive"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&noisy_label_error),
                "--noisy-label-error must be within 0..1, got {noisy_label_error}"
            );
            let cfg = SynthConfig {
                seed,
                scale,
                noisy_label_error,
                unlabelled_scale,
                seed_scale,
            };
            let started = std::time::Instant::now();
            let report = block_on(write_synth_corpus(&cfg, &out, &sizing.writer()))?
                .with_context(|| format!("writing the synthetic corpus to {out}"))?;
            println!(
                "wrote {} scripts ({:.1} MiB) to {out} in {:.1}s",
                report.scripts,
                report.bytes as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            for part in ["seed/labels", "test/labels", "unlabelled"] {
                let url = format!("{}/{part}", out.trim_end_matches('/'));
                let table =
                    block_on(dataset_stats(&url))?.with_context(|| format!("reading {url}"))?;
                println!("\n{part}\n{table}");
            }
        }
        CorpusCmd::Import {
            dir,
            out,
            max_bytes,
            sizing,
            json,
        } => {
            let opts = ImportOptions {
                max_bytes,
                writer: sizing.writer(),
            };
            let report = block_on(import_dir(&dir, &out, &opts))?
                .with_context(|| format!("importing {} into {out}", dir.display()))?;
            if json {
                let mut v = serde_json::to_value(&report)?;
                // The per-file list can be long; it is in _skipped.jsonl.
                if let Some(o) = v.as_object_mut() {
                    o.remove("skipped");
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{report}");
                println!("skipped files and reasons: {out}/_skipped.jsonl");
            }
        }
        CorpusCmd::ImportLabels {
            input,
            out,
            root,
            corpus,
            corpus_out,
            provenance,
            sizing,
            json,
        } => {
            let opts = LabelImportOptions {
                root,
                corpus_url: corpus,
                provenance,
                writer: sizing.writer(),
            };
            let report = block_on(import_labels(&input, &out, corpus_out.as_deref(), &opts))?
                .with_context(|| format!("importing labels from {input}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("rows              {:>8}", report.rows);
                println!("joined by path    {:>8}", report.joined_by_path);
                println!("joined by sha256  {:>8}", report.joined_by_sha256);
                for (reason, n) in &report.rejected_by_reason {
                    println!("rejected {reason:<16} {n:>8}");
                }
                for r in report.rejected.iter().take(20) {
                    println!("  {}: {} ({})", r.position, r.reason, r.detail);
                }
                if report.rejected.len() > 20 {
                    println!(
                        "  ... {} more in {out}/_rejected.jsonl",
                        report.rejected.len() - 20
                    );
                }
            }
        }
        CorpusCmd::Stats { url, json } => {
            let table = block_on(dataset_stats(&url))?.with_context(|| format!("reading {url}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                print!("{table}");
            }
        }
    }
    Ok(())
}
