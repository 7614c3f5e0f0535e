//! `automaldesc eval` and `automaldesc mcnemar`: the evaluation report from files alone, for
//! answers produced here (`annotate` output) or elsewhere (the published shape: a
//! `response` string per row, JSONL or Parquet).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use automaldesc_common::eval::{self, Answers, Evaluation, Reference};
use automaldesc_common::types::{Label, Language};
use clap::Args;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Answers: JSONL (`annotate` output with `samples`, or rows with `sha256` and
    /// `response`) or Parquet (columns `sha256`, `response`). Several rows of one script are
    /// several samples.
    #[arg(long)]
    pub answers: PathBuf,
    /// References: a labelled split (directory or URL with `labels/`) or a JSONL / Parquet
    /// file with `sha256`, `label` (0/1), `language`, `summary`.
    #[arg(long)]
    pub references: String,
    /// Score only the reference scripts that have answers (for answers to a sample of the
    /// references); without it a script with no answer counts as wrong.
    #[arg(long)]
    pub answered_only: bool,
    /// Also write the evaluation as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct McNemarArgs {
    /// The first annotator's answers (same formats as `eval --answers`).
    #[arg(long)]
    pub a: PathBuf,
    /// The second annotator's answers.
    #[arg(long)]
    pub b: PathBuf,
    /// References (same formats as `eval --references`).
    #[arg(long)]
    pub references: String,
    /// Compare only on reference scripts that A or B answered.
    #[arg(long)]
    pub answered_only: bool,
    /// Also write the comparison as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut refs = read_references(&args.references)?;
    let answers = read_answers(&args.answers)?;
    if args.answered_only {
        let before = refs.len();
        refs.retain(|r| answers.contains_key(&r.sha256));
        eprintln!(
            "scoring the {} of {before} reference scripts that have answers",
            refs.len()
        );
    }
    let ev = eval::evaluate(&answers, &refs).with_context(|| {
        format!(
            "scoring {} against {}",
            args.answers.display(),
            args.references
        )
    })?;
    print!("{}", markdown(&ev));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&ev)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub fn run_mcnemar(args: McNemarArgs) -> anyhow::Result<()> {
    let mut refs = read_references(&args.references)?;
    let a = read_answers(&args.a)?;
    let b = read_answers(&args.b)?;
    if args.answered_only {
        let before = refs.len();
        refs.retain(|r| a.contains_key(&r.sha256) || b.contains_key(&r.sha256));
        eprintln!(
            "comparing on the {} of {before} reference scripts that have answers",
            refs.len()
        );
    }
    let cmp = eval::compare(&a, &b, &refs)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "McNemar, A = {}, B = {}, {} scripts\n",
        args.a.display(),
        args.b.display(),
        cmp.scripts
    );
    let _ = writeln!(s, "| test | b | c | statistic | p-value | method |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (name, t) in [
        (
            "correctness (b: only A right, c: only B right)",
            &cmp.correctness,
        ),
        (
            "predicted class, as published (b: A malicious / B benign, c: reverse)",
            &cmp.predicted_class,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.4} | {:.4e} | {} |",
            t.b, t.c, t.statistic, t.p_value, t.method
        );
    }
    let _ = writeln!(
        s,
        "\nscripts without a decision on either side (left out of the class test): {}",
        cmp.undecided
    );
    print!("{s}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&cmp)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The evaluation as Markdown tables.
pub fn markdown(ev: &Evaluation) -> String {
    let pct = |x: f64| format!("{:.1}", 100.0 * x);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} scripts, {} samples, {} unparseable ({}%), {} scripts without an answer\n",
        ev.scripts,
        ev.overall.samples,
        ev.overall.unparseable,
        pct(ev.unparseable_fraction()),
        ev.missing_scripts
    );
    let _ = writeln!(
        s,
        "| language | samples | label acc % | language acc % | unparseable |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (lang, sc) in ev
        .per_language
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("all", &ev.overall)])
    {
        let _ = writeln!(
            s,
            "| {lang} | {} | {} | {} | {} |",
            sc.samples,
            pct(sc.label.rate()),
            pct(sc.language.rate()),
            sc.unparseable
        );
    }
    let c = &ev.confusion;
    let _ = writeln!(
        s,
        "\n| truth \\ predicted | benign | malicious | no answer |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| benign | {} | {} | {} |",
        c.benign[0], c.benign[1], c.benign[2]
    );
    let _ = writeln!(
        s,
        "| malicious | {} | {} | {} |",
        c.malicious[0], c.malicious[1], c.malicious[2]
    );
    let m = &ev.malicious;
    let _ = writeln!(
        s,
        "\nmalicious: precision {:.3}, recall {:.3}, F1 {:.3}",
        m.precision, m.recall, m.f1
    );
    let t = &ev.text;
    let _ = writeln!(
        s,
        "summaries ({} pairs): BLEU {:.2}, chrF {:.2}, ROUGE-L {:.2}",
        t.pairs, t.bleu, t.chrf, t.rouge_l
    );
    s
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
            for batch in read_parquet(path)? {
                let sha = string_column(&batch, "sha256", path)?;
                let resp = string_column(&batch, "response", path)?;
                for i in 0..batch.num_rows() {
                    anyhow::ensure!(
                        !sha[i].is_empty(),
                        "{}: row with an empty sha256",
                        path.display()
                    );
                    answers
                        .entry(sha[i].clone())
                        .or_default()
                        .push(resp[i].clone());
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

/// Reads references from a labelled split or a JSONL / Parquet file.
pub fn read_references(spec: &str) -> anyhow::Result<Vec<Reference>> {
    let path = Path::new(spec);
    let rows: Vec<(String, String, String, String)> = match extension(path).as_str() {
        "jsonl" | "json" => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
            let mut rows = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{spec} line {}", i + 1))?;
                let field = |k: &str| -> anyhow::Result<String> {
                    match &v[k] {
                        serde_json::Value::String(s) => Ok(s.clone()),
                        serde_json::Value::Number(n) => Ok(n.to_string()),
                        _ => bail!("{spec} line {}: no `{k}`", i + 1),
                    }
                };
                rows.push((
                    field("sha256")?,
                    field("label")?,
                    field("language")?,
                    field("summary")?,
                ));
            }
            rows
        }
        "parquet" => {
            let mut rows = Vec::new();
            for batch in read_parquet(path)? {
                let mut cols = ["sha256", "label", "language", "summary"]
                    .iter()
                    .map(|c| string_column(&batch, c, path).map(Vec::into_iter))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                for sha in cols[0].by_ref().collect::<Vec<_>>() {
                    let mut next = |k: usize| cols[k].next().unwrap_or_default();
                    rows.push((sha, next(1), next(2), next(3)));
                }
            }
            rows
        }
        _ => {
            let (_, labels) = crate::labelled_split::read(spec, None).with_context(|| {
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
    let mut seen = HashSet::new();
    rows.into_iter()
        .map(|(sha256, label, language, summary)| {
            anyhow::ensure!(
                seen.insert(sha256.clone()),
                "{spec}: script {sha256} appears twice"
            );
            let label = match label.trim() {
                "0" | "benign" | "clean" => Label::Benign,
                "1" | "malicious" => Label::Malicious,
                other => bail!("{spec}: script {sha256} has label {other:?}, expected 0 or 1"),
            };
            let language: Language = language
                .parse()
                .with_context(|| format!("{spec}: script {sha256}"))?;
            Ok(Reference {
                sha256,
                language,
                label,
                summary,
            })
        })
        .collect()
}

fn read_parquet(path: &Path) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?
        .build()?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// A column as strings: text columns as they are (null = ""), integer columns printed.
fn string_column(
    batch: &arrow::record_batch::RecordBatch,
    name: &str,
    path: &Path,
) -> anyhow::Result<Vec<String>> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("{}: no column `{name}`", path.display()))?;
    let text =
        |i: usize, s: &dyn Fn(usize) -> String| if col.is_null(i) { String::new() } else { s(i) };
    let out = match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            (0..a.len())
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            (0..a.len())
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            (0..a.len())
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let a = arrow::compute::cast(col, &DataType::Int64)?;
            let a = a.as_primitive::<arrow::datatypes::Int64Type>().clone();
            (0..a.len())
                .map(|i| text(i, &|i| a.value(i).to_string()))
                .collect()
        }
        other => bail!(
            "{}: column `{name}` is {other}, expected text",
            path.display()
        ),
    };
    Ok(out)
}
