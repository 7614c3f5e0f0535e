//! `automaldesc eval` and `automaldesc mcnemar`: the evaluation report from files alone, for
//! answers produced here (`annotate` output) or elsewhere (the published shape: a
//! `response` string per row, JSONL or Parquet).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use automaldesc_corpus::import_labels::{
    parse_release_jsonl, parse_release_parquet, text_at, utf8_column,
};
use automaldesc_loop::eval::{self, Answers, Reference};
use clap::Args;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Answers: JSONL (`annotate` output with `samples`, or rows with `sha256` and
    /// `response`) or Parquet (columns `sha256`, `response`). Several rows of one script are
    /// several samples.
    #[arg(long)]
    pub answers: PathBuf,
    #[command(flatten)]
    pub against: Against,
}

#[derive(Args, Debug)]
pub struct McNemarArgs {
    /// The first annotator's answers (same formats as `eval --answers`).
    #[arg(long)]
    pub a: PathBuf,
    /// The second annotator's answers.
    #[arg(long)]
    pub b: PathBuf,
    #[command(flatten)]
    pub against: Against,
}

/// What answers are scored against, and where the result goes.
#[derive(Args, Debug)]
pub struct Against {
    /// References: a labelled split (directory or URL with `labels/`) or a JSONL / Parquet
    /// file in the release format (`sha256`, `label` 0/1, `language`, `summary`).
    #[arg(long)]
    pub references: String,
    /// Score only the reference scripts that have answers (in any of the answer files), for
    /// answers to a sample of the references; without it a script with no answer counts as
    /// wrong.
    #[arg(long)]
    pub answered_only: bool,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Against {
    /// The references, narrowed to the answered scripts with --answered-only.
    fn references(&self, answers: &[&Answers]) -> anyhow::Result<Vec<Reference>> {
        let mut refs = read_references(&self.references)?;
        if self.answered_only {
            let before = refs.len();
            refs.retain(|r| answers.iter().any(|a| a.contains_key(&r.sha256)));
            eprintln!(
                "scoring the {} of {before} reference scripts that have answers",
                refs.len()
            );
        }
        Ok(refs)
    }

    fn write_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_vec_pretty(value)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let answers = read_answers(&args.answers)?;
    let refs = args.against.references(&[&answers])?;
    let ev = eval::evaluate(&answers, &refs).with_context(|| {
        format!(
            "scoring {} against {}",
            args.answers.display(),
            args.against.references
        )
    })?;
    print!("{}", eval::markdown(&ev));
    args.against.write_json(&ev)
}

pub fn run_mcnemar(args: McNemarArgs) -> anyhow::Result<()> {
    let a = read_answers(&args.a)?;
    let b = read_answers(&args.b)?;
    let refs = args.against.references(&[&a, &b])?;
    let cmp = eval::compare(&a, &b, &refs)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "McNemar, A = {}, B = {}, {} scripts\n",
        args.a.display(),
        args.b.display(),
        cmp.scripts
    );
    s.push_str(&eval::comparison_markdown(&cmp));
    print!("{s}");
    args.against.write_json(&cmp)
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads answers; a script's rows (or its `samples`) are its samples.
pub fn read_answers(path: &Path) -> anyhow::Result<Answers> {
    let mut answers = Answers::new();
    match extension(path).as_str() {
        "jsonl" | "json" => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let at = || format!("{} line {}", path.display(), i + 1);
                let v: serde_json::Value = serde_json::from_str(line).with_context(at)?;
                let sha = v["sha256"]
                    .as_str()
                    .with_context(|| format!("{}: no `sha256` string", at()))?;
                let entry = answers.entry(sha.to_string()).or_default();
                if let Some(samples) = v["samples"].as_array() {
                    for (j, s) in samples.iter().enumerate() {
                        let r = s["response"].as_str().with_context(|| {
                            format!("{}: sample {j} has no `response` string", at())
                        })?;
                        entry.push(r.to_string());
                    }
                } else if v["response"].is_null() {
                    // A row whose response is null is an empty answer, kept as unparseable.
                    entry.push(String::new());
                } else {
                    let r = v["response"]
                        .as_str()
                        .with_context(|| format!("{}: `response` is not a string", at()))?;
                    entry.push(r.to_string());
                }
            }
        }
        "parquet" => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("{} is not a Parquet file", path.display()))?
                .build()?;
            for batch in reader {
                let batch = batch.with_context(|| format!("reading {}", path.display()))?;
                let column = |name| {
                    utf8_column(&batch, name, true).with_context(|| path.display().to_string())
                };
                let (sha, resp) = (column("sha256")?, column("response")?);
                for i in 0..batch.num_rows() {
                    let sha = text_at(&sha, i)
                        .filter(|s| !s.is_empty())
                        .with_context(|| format!("{}: row {i} has no sha256", path.display()))?;
                    // A null response is an empty answer, kept as unparseable.
                    let resp = text_at(&resp, i).unwrap_or_default();
                    answers
                        .entry(sha.to_string())
                        .or_default()
                        .push(resp.to_string());
                }
            }
        }
        other => bail!(
            "{}: answers must be .jsonl or .parquet, not {other:?}",
            path.display()
        ),
    }
    Ok(answers)
}

/// Reads references from a labelled split or a release-format JSONL / Parquet file.
pub fn read_references(spec: &str) -> anyhow::Result<Vec<Reference>> {
    let path = Path::new(spec);
    let rows = match extension(path).as_str() {
        "jsonl" | "json" => {
            let data = std::fs::read(path).with_context(|| format!("reading {spec}"))?;
            parse_release_jsonl(&data).with_context(|| format!("reading {spec}"))?
        }
        "parquet" => {
            let data = std::fs::read(path).with_context(|| format!("reading {spec}"))?;
            parse_release_parquet(data.into()).with_context(|| format!("reading {spec}"))?
        }
        _ => {
            let labels = automaldesc_loop::spec::read_labels(spec, None).with_context(|| {
                format!("{spec} is neither .jsonl/.parquet nor a labelled split")
            })?;
            return Ok(labels
                .into_iter()
                .map(|l| Reference {
                    sha256: l.sha256,
                    language: l.language,
                    label: l.label,
                    summary: l.summary,
                })
                .collect());
        }
    };
    Ok(rows
        .into_iter()
        .map(|r| Reference {
            sha256: r.sha256,
            language: r.language,
            label: r.label,
            summary: r.summary,
        })
        .collect())
}
