//! `automaldesc export` on a finished loop run, checked from every side: the rows against
//! what the aggregate stage committed and its funnel; the files read back by pyarrow,
//! DuckDB and Hugging Face `datasets` (`tests/peer/read_export.py`); the checksum list;
//! the dataset card; and `corpus import-labels` reading the export back to the same rows.
//! pyarrow, DuckDB and `datasets` are optional here; with
//! `AUTOMALDESC_REQUIRE_EXPORT_READERS=1` (CI) a missing one is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use automaldesc_common::parquet_io::read_dataset;
use automaldesc_common::schema::{ArrowRow, LabelledRow, ReleaseRecord};
use automaldesc_common::store::open_store;
use automaldesc_loop::report::FunnelSummary;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::procs::bin;

/// A released row as the comparisons see it: sha256, label, language, summary.
pub type Answer = (String, u8, String, String);

/// What one iteration of the run holds, as its aggregate stage committed it.
pub struct Expected<'a> {
    pub iteration: u32,
    /// The accepted pseudo-labels (provenance `iter-k:...`), by sha256.
    pub accepted: &'a BTreeMap<String, LabelledRow>,
    pub rejected: usize,
    pub funnel: &'a FunnelSummary,
    /// The label-probability threshold of the filter.
    pub confidence: f32,
    pub model_sha256: &'a str,
    pub config_hash: &'a str,
}

/// Runs `automaldesc export` with `args`.
pub fn export(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("export")
        .args(args)
        .output()
        .unwrap()
}

/// The stderr of a command that must have failed.
pub fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure; stderr: {stderr}"
    );
    stderr
}

fn answer(sha256: &str, label: u8, language: &str, summary: &str) -> Answer {
    (sha256.into(), label, language.into(), summary.into())
}

/// The data files of one split, in name order.
fn split_files(dir: &Path, stem: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{stem}-")) && name.ends_with(ext)
        })
        .collect();
    files.sort();
    files
}

/// The release rows of one split, read here (Parquet or JSONL).
fn read_split(dir: &Path, stem: &str, ext: &str) -> Vec<ReleaseRecord> {
    let mut rows = Vec::new();
    for f in split_files(dir, stem, ext) {
        let bytes = std::fs::read(&f).unwrap();
        if ext == "parquet" {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                rows.extend(ReleaseRecord::from_batch(&b.unwrap()).unwrap());
            }
        } else {
            for line in String::from_utf8(bytes).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                rows.push(ReleaseRecord {
                    sha256: v["sha256"].as_str().unwrap().into(),
                    label: automaldesc_common::Label::from_u8(v["label"].as_u64().unwrap() as u8)
                        .unwrap(),
                    language: v["language"].as_str().unwrap().parse().unwrap(),
                    summary: v["summary"].as_str().unwrap().into(),
                    provenance: v["provenance"].as_str().unwrap().into(),
                    label_prob: v["label_prob"].as_f64().map(|p| p as f32),
                    iteration: v["iteration"].as_u64().unwrap() as u32,
                });
            }
        }
    }
    rows
}

fn answers(rows: &[ReleaseRecord]) -> Vec<Answer> {
    let mut out: Vec<Answer> = rows
        .iter()
        .map(|r| answer(&r.sha256, r.label.as_u8(), r.language.as_str(), &r.summary))
        .collect();
    out.sort();
    out
}

/// What `tests/peer/read_export.py` saw; `None` when a reader is missing and not required.
fn python_view(dir: &Path, ext: &str) -> Option<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/read_export.py");
    let required = std::env::var("AUTOMALDESC_REQUIRE_EXPORT_READERS").is_ok_and(|v| v == "1");
    let out = match Command::new("python3")
        .arg(&script)
        .arg(dir)
        .arg(ext)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            assert!(
                !required,
                "AUTOMALDESC_REQUIRE_EXPORT_READERS=1 but python3 fails: {e}"
            );
            println!("SKIPPED the Python readers: python3 is not available ({e})");
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "read_export.py failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing: Vec<&str> = v["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    if !missing.is_empty() {
        assert!(
            !required,
            "AUTOMALDESC_REQUIRE_EXPORT_READERS=1 but these readers are missing: {missing:?}"
        );
        println!("SKIPPED some readers of the export (not installed): {missing:?}");
    }
    Some(v)
}

/// Checks what the Python readers saw against the expected rows and counts.
fn check_python(v: &Value, e: &Expected, ext: &str, train: &[ReleaseRecord], seed_rows: u64) {
    let sums = &v["checksums"];
    assert_eq!(sums["bad"], Value::Array(vec![]), "{sums}");
    assert_eq!(
        sums["listed"], sums["present"],
        "every file but the list is listed"
    );
    let want = [
        ("train", train.len() as u64),
        ("seed", seed_rows),
        ("rejected", e.rejected as u64),
    ];
    if let Some(pa) = v.get("pyarrow") {
        for (split, rows) in want {
            assert_eq!(pa[split]["rows"], rows, "pyarrow {split}: {}", pa[split]);
        }
        let t = &pa["train"];
        let shas: Vec<&str> = e.accepted.keys().map(String::as_str).collect();
        assert_eq!(t["sha256"], serde_json::json!(shas), "pyarrow train sha256");
        if !train.is_empty() {
            assert!(
                t["label_prob_min"].as_f64().unwrap() >= f64::from(e.confidence) - 1e-6,
                "{t}"
            );
            assert_eq!(t["label_prob_nulls"], 0);
            assert_eq!(t["iterations"], serde_json::json!([e.iteration]));
        }
        let s = &pa["seed"];
        assert_eq!(s["label_prob_nulls"], seed_rows);
        assert_eq!(s["iterations"], serde_json::json!([0]));
        let columns = [
            "sha256",
            "label",
            "language",
            "summary",
            "provenance",
            "label_prob",
            "iteration",
        ];
        let names: Vec<&String> = s["schema"].as_object().unwrap().keys().collect();
        assert_eq!(names.len(), columns.len(), "{}", s["schema"]);
        for c in columns {
            assert!(s["schema"].get(c).is_some(), "column {c}: {}", s["schema"]);
        }
        if ext == "parquet" {
            let types = serde_json::json!({
                "sha256": "string", "label": "uint8", "language": "string", "summary": "string",
                "provenance": "string", "label_prob": "float", "iteration": "uint32"
            });
            assert_eq!(s["schema"], types);
            assert_eq!(
                pa["rejected"]["schema"],
                serde_json::json!({"sha256": "string", "stage": "string", "reason": "string", "detail": "string"})
            );
        }
    }
    if let Some(db) = v.get("duckdb") {
        for (split, rows) in want {
            assert_eq!(db[split], rows, "duckdb {split}: {db}");
        }
    }
    if let Some(ds) = v.get("datasets") {
        for (split, rows) in want {
            // An empty split is not in the card's configs, so `datasets` does not see it.
            let seen = if rows == 0 { Value::Null } else { rows.into() };
            assert_eq!(
                ds.get(split).cloned().unwrap_or(Value::Null),
                seen,
                "datasets {split}: {ds}"
            );
        }
        if want[..2].iter().any(|(_, rows)| *rows > 0) {
            // The card's `dataset_info` types the columns, JSONL as well as Parquet.
            assert_eq!(ds["features"]["label"], "Value('uint8')", "{ds}");
            assert_eq!(ds["features"]["label_prob"], "Value('float32')", "{ds}");
        }
    }
}

/// The card names the funnel, the lineage and the counts of the rows.
fn check_card(dir: &Path, e: &Expected, train: &[ReleaseRecord]) {
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlicense: "), "{card}");
    assert!(
        card.contains("configs:\n- config_name: default\n  data_files:\n  - split: train\n"),
        "{card}"
    );
    assert!(card.contains("- config_name: rejected\n"), "{card}");
    let f = e.funnel;
    assert!(
        card.contains(&format!("| unlabelled scripts | | {} |", f.unlabelled)),
        "{card}"
    );
    assert!(
        card.contains(&format!("Accepted {} of {}", f.accepted, f.unlabelled)),
        "{card}"
    );
    assert!(
        card.contains(&format!("| base model | `sha256:{}` |", e.model_sha256)),
        "{card}"
    );
    assert!(
        card.contains(&format!("| config hash | `sha256:{}` |", e.config_hash)),
        "{card}"
    );
    assert!(card.contains("| adapter (LoRA) | `sha256:"), "{card}");
    assert!(
        card.contains(&format!(
            "## Evaluation of the annotator\n\nV{} (model",
            e.iteration
        )),
        "{card}"
    );
    let malicious = train.iter().filter(|r| r.label.as_u8() == 1).count();
    let benign = train.len() - malicious;
    assert!(
        card.contains(&format!(
            "| all | {benign} | {malicious} | {} |",
            train.len()
        )),
        "{card}"
    );
}

/// `corpus import-labels` reads every file of a split back: the same rows.
async fn check_import(dir: &Path, stem: &str, ext: &str, corpus: &str, work: &Path) -> Vec<Answer> {
    let mut back = Vec::new();
    for (i, f) in split_files(dir, stem, ext).iter().enumerate() {
        let out = work.join(format!(
            "imported-{}-{stem}-{i}",
            dir.parent().unwrap().file_name().unwrap().to_string_lossy()
        ));
        let run = Command::new(bin())
            .args(["corpus", "import-labels"])
            .arg(f)
            .args(["--corpus", corpus, "--out"])
            .arg(&out)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(report["rejected"], Value::Array(vec![]), "{report}");
        let (store, prefix) = open_store(out.to_str().unwrap()).unwrap();
        let rows: Vec<LabelledRow> = read_dataset(store, &prefix).await.unwrap();
        back.extend(
            rows.iter()
                .map(|l| answer(&l.sha256, l.label.as_u8(), l.language.as_str(), &l.summary)),
        );
    }
    back.sort();
    back
}

/// Exports iteration `e.iteration` from `source` (`--state-dir DIR` or `--coordinator
/// URL`) into `out` as `format` (parquet or jsonl), with the seed and the rejected set.
pub fn run_export(source: &[&str], out: &Path, format: &str, iteration: u32) {
    let k = iteration.to_string();
    let mut args = vec![
        "e2e",
        "--out",
        out.to_str().unwrap(),
        "--iteration",
        &k,
        "--format",
        format,
    ];
    args.extend([
        "--with-seed",
        "--with-rejected",
        "--file-bytes",
        "2048",
        "--license",
        "cc-by-4.0",
    ]);
    args.extend(source);
    let run = export(&args);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(&format!("exported run e2e iteration {k} to")),
        "{stdout}"
    );
}

/// Checks an export of [`run_export`] from every side; returns its pseudo-labels.
pub async fn check_exported(
    out: &Path,
    format: &str,
    e: &Expected<'_>,
    corpus: &str,
) -> Vec<Answer> {
    let k = e.iteration;
    let ext = if format == "parquet" {
        "parquet"
    } else {
        "jsonl"
    };
    let train = read_split(&out.join("data"), "train", ext);
    let seed = read_split(&out.join("data"), "seed", ext);
    let want: Vec<Answer> = e
        .accepted
        .values()
        .map(|l| answer(&l.sha256, l.label.as_u8(), l.language.as_str(), &l.summary))
        .collect();
    assert_eq!(
        answers(&train),
        want,
        "the train split is the accepted pseudo-labels"
    );
    assert_eq!(
        train.len() as u64,
        e.funnel.accepted - e.funnel.accepted_in_seed,
        "the funnel's accepted scripts, less those already in the seed"
    );
    let prefix = format!("iter-{k}:run=e2e:");
    assert!(
        train.iter().all(|r| r.provenance.starts_with(&prefix)),
        "{train:?}"
    );
    assert_eq!(seed.len() as u64, e.funnel.seed);
    assert!(seed
        .iter()
        .all(|r| r.label_prob.is_none() && r.iteration == 0));
    let seed_shas: BTreeSet<&String> = seed.iter().map(|r| &r.sha256).collect();
    assert!(
        train.iter().all(|r| !seed_shas.contains(&r.sha256)),
        "no seed script in train"
    );

    if let Some(v) = python_view(out, ext) {
        check_python(&v, e, ext, &train, seed.len() as u64);
    }
    check_card(out, e, &train);
    let work = out.parent().unwrap();
    let corpus_unlabelled = format!("{corpus}/unlabelled");
    assert_eq!(
        check_import(&out.join("data"), "train", ext, &corpus_unlabelled, work).await,
        want
    );
    let corpus_seed = format!("{corpus}/seed/scripts");
    assert_eq!(
        check_import(&out.join("data"), "seed", ext, &corpus_seed, work).await,
        answers(&seed),
        "the seed split round-trips too"
    );
    want
}

/// Bad requests are refused with the problem named, and leave nothing behind.
pub fn check_refusals(state_dir: &Path, existing_export: &Path, work: &Path) {
    let state = state_dir.to_str().unwrap();
    let before = std::fs::read(existing_export.join("README.md")).unwrap();
    let fresh = work.join("refused");
    let fresh_s = fresh.to_str().unwrap();
    let no_state = work.join("no-state");
    let no_state_s = no_state.to_str().unwrap();
    let cases: [(&[&str], String); 4] = [
        (
            &["nope", "--state-dir", state, "--out", fresh_s],
            format!("no run nope in the state in {state} (its runs: e2e)"),
        ),
        (
            &[
                "e2e",
                "--state-dir",
                state,
                "--out",
                fresh_s,
                "--iteration",
                "3",
            ],
            "run e2e has no iteration 3: its iterations are 1 to 2".into(),
        ),
        (
            &[
                "e2e",
                "--state-dir",
                state,
                "--out",
                existing_export.to_str().unwrap(),
            ],
            format!(
                "output directory {} is not empty",
                existing_export.display()
            ),
        ),
        (
            &["e2e", "--state-dir", no_state_s, "--out", fresh_s],
            "no run state in".into(),
        ),
    ];
    for (args, message) in cases {
        let stderr = refused(&export(args));
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
        assert!(!fresh.exists(), "{args:?} wrote {}", fresh.display());
    }
    assert_eq!(
        std::fs::read(existing_export.join("README.md")).unwrap(),
        before
    );
    let partial: Vec<String> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}

/// A committed file changed after its commit is noticed: the export names it and writes
/// nothing. The file is put back afterwards.
pub async fn check_tampering(state_dir: &Path, aggregate_stage: u32, work: &Path) {
    use automaldesc_common::ids::RunId;
    use automaldesc_coordinator::stage_manager::read_commits;
    use automaldesc_coordinator::state::EmbeddedStore;
    let funnel = {
        let state = EmbeddedStore::open(state_dir).unwrap();
        let commits = read_commits(&state, &RunId("e2e".into()), aggregate_stage)
            .await
            .unwrap();
        let path = commits[0]
            .1
            .outputs
            .iter()
            .find(|o| o.path.ends_with("/funnel.json"))
            .unwrap()
            .path
            .clone();
        Path::new("/").join(path)
    };
    let original = std::fs::read(&funnel).unwrap();
    let mut changed = original.clone();
    changed.push(b'\n');
    std::fs::write(&funnel, &changed).unwrap();
    let out = work.join("export-tampered");
    let stderr = refused(&export(&[
        "e2e",
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    std::fs::write(&funnel, &original).unwrap();
    assert!(
        stderr.contains("funnel.json changed since it was committed"),
        "{stderr}"
    );
    assert!(!out.exists());
}
