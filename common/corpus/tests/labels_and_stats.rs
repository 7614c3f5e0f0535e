//! Labelled sets join to scripts by path and by sha256, with unjoinable rows reported and bad
//! values refused by row; the stats table counts a hand-built corpus exactly.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use automaldesc_common::parquet_io::{read_dataset, write_dataset, WriterOptions};
use automaldesc_common::schema::{CorpusRow, LabelledRow};
use automaldesc_common::store::open_store;
use automaldesc_common::{sha256_hex, Label, Language};
use automaldesc_corpus::import_labels::*;
use automaldesc_corpus::stats::{dataset_stats, DatasetKind, StatsRow};
use parquet::arrow::ArrowWriter;

fn line(sha: &str, label: &str, lang: &str, path: Option<&str>) -> String {
    let mut v = serde_json::json!({"sha256": sha, "label": serde_json::from_str::<serde_json::Value>(label).unwrap(), "language": lang, "summary": format!("summary of {sha:.6}")});
    if let Some(p) = path {
        v["path"] = p.into();
    }
    v.to_string()
}

fn opts(root: Option<&std::path::Path>, corpus: Option<&str>) -> LabelImportOptions {
    LabelImportOptions {
        root: root.map(|r| r.to_path_buf()),
        corpus_url: corpus.map(str::to_string),
        provenance: "seed".into(),
        writer: WriterOptions::default(),
    }
}

#[tokio::test]
async fn joins_by_path_and_by_sha256_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("scripts");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let a = b"#!/bin/sh\nrm -rf /tmp/x\n".to_vec();
    let b = b"print('hi')\n".to_vec();
    std::fs::write(root.join("sub/a.sh"), &a).unwrap();
    std::fs::write(root.join("b.py"), &b).unwrap();
    // Corpus with d, for the sha256 join.
    let d = CorpusRow::new(
        b"Write-Host 'd'\n".to_vec(),
        "corpus/d.ps1",
        Some(Language::Powershell),
    );
    let (cs, cp) = open_store("memory://labels-test/corpus").unwrap();
    write_dataset(cs, &cp, vec![d.clone()], WriterOptions::default())
        .await
        .unwrap();

    let (sa, sb, sd) = (sha256_hex(&a), sha256_hex(&b), d.sha256.clone());
    let missing = "0".repeat(64);
    let jsonl = [
        line(&sa, "1", "sh", Some("sub/a.sh")),
        line(&"f".repeat(64), "0", "python", Some("b.py")), // wrong sha for b.py
        line(&sb, "0", "py", Some("gone.py")),              // file absent
        line(&sd, "\"malicious\"", "powershell", None),     // by sha256 in the corpus
        line(&missing, "0", "js", None),                    // not in the corpus
        line(&sa, "1", "bash", Some("sub/a.sh")),           // duplicate
        line(&sb, "0", "python", Some("../b.py")),          // escapes the root
    ]
    .join("\n");
    let input = dir.path().join("seed.jsonl");
    std::fs::write(&input, jsonl).unwrap();

    let out = dir.path().join("labelled");
    let corpus_out = "memory://labels-test/joined";
    let report = import_labels(
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        Some(corpus_out),
        &opts(Some(&root), Some("memory://labels-test/corpus")),
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 7);
    assert_eq!(report.joined_by_path, 1);
    assert_eq!(report.joined_by_sha256, 1);
    let reasons: Vec<(&str, &str)> = report
        .rejected
        .iter()
        .map(|r| (r.position.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("line 2", "sha256_mismatch"),
            ("line 3", "file_not_found"),
            ("line 5", "not_in_corpus"),
            ("line 6", "duplicate"),
            ("line 7", "bad_path")
        ]
    );
    let mismatch = &report.rejected[0].detail;
    assert!(
        mismatch.contains(&sb) && mismatch.contains(&"f".repeat(64)),
        "{mismatch}"
    );
    // The report is also on disk.
    let on_disk = std::fs::read_to_string(out.join(REJECTED_REPORT)).unwrap();
    assert_eq!(on_disk.lines().count(), 5);

    let (ls, lp) = open_store(out.to_str().unwrap()).unwrap();
    let labelled: Vec<LabelledRow> = read_dataset(ls, &lp).await.unwrap();
    assert_eq!(labelled.len(), 2);
    assert_eq!(
        (
            labelled[0].sha256.as_str(),
            labelled[0].language,
            labelled[0].label
        ),
        (sa.as_str(), Language::Bash, Label::Malicious)
    );
    assert_eq!(
        (
            labelled[1].sha256.as_str(),
            labelled[1].language,
            labelled[1].label
        ),
        (sd.as_str(), Language::Powershell, Label::Malicious)
    );
    assert!(labelled.iter().all(|r| r.provenance == "seed"));
    let (js, jp) = open_store(corpus_out).unwrap();
    let joined: Vec<CorpusRow> = read_dataset(js, &jp).await.unwrap();
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[0].content, a);
    assert_eq!(joined[0].source, "sub/a.sh");
    assert_eq!(joined[1], d);
}

#[tokio::test]
async fn parquet_release_with_integer_labels_joins_by_sha256() {
    let d = CorpusRow::new(b"@echo off\n".to_vec(), "x.bat", None);
    let (cs, cp) = open_store("memory://labels-pq/corpus").unwrap();
    write_dataset(cs, &cp, vec![d.clone()], WriterOptions::default())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sha256", DataType::Utf8, false),
        Field::new("label", DataType::Int64, false),
        Field::new("language", DataType::Utf8, false),
        Field::new("summary", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![d.sha256.clone()])),
        Arc::new(Int64Array::from(vec![0])),
        Arc::new(StringArray::from(vec!["bat"])),
        Arc::new(StringArray::from(vec!["turns echo off"])),
    ];
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap())
        .unwrap();
    w.close().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("test.parquet");
    std::fs::write(&input, buf).unwrap();
    let report = import_labels(
        input.to_str().unwrap(),
        "memory://labels-pq/out",
        None,
        &opts(None, Some("memory://labels-pq/corpus")),
    )
    .await
    .unwrap();
    assert_eq!((report.joined_by_sha256, report.rejected.len()), (1, 0));
    let (s, p) = open_store("memory://labels-pq/out").unwrap();
    let rows: Vec<LabelledRow> = read_dataset(s, &p).await.unwrap();
    assert_eq!(
        (rows[0].language, rows[0].label, rows[0].summary.as_str()),
        (Language::Batch, Label::Benign, "turns echo off")
    );
}

#[test]
fn unknown_language_and_bad_label_name_the_row() {
    let sha = "a".repeat(64);
    let text = format!(
        "{}\n{}\n",
        line(&sha, "0", "bash", None),
        line(&sha, "0", "ruby", None)
    );
    let err = parse_release_jsonl(text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("ruby"), "{err}");
    let text = line(&sha, "7", "bash", None);
    let err = parse_release_jsonl(text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1") && err.contains("\"7\""), "{err}");
    let err = parse_release_jsonl(br#"{"sha256":"xyz","label":0,"language":"js","summary":"s"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 hex"), "{err}");
}

#[tokio::test]
async fn stats_table_counts_a_hand_built_corpus() {
    let mk = |i: u32, lang: Option<Language>, label: Option<Label>| {
        let mut r = CorpusRow::new(format!("script {i}").into_bytes(), format!("s{i}"), lang);
        r.noisy_label = label;
        r
    };
    use Label::*;
    use Language::*;
    let rows = vec![
        mk(0, Some(Bash), Some(Benign)),
        mk(1, Some(Bash), Some(Benign)),
        mk(2, Some(Bash), Some(Malicious)),
        mk(3, Some(Bash), None),
        mk(4, Some(Python), Some(Malicious)),
        mk(5, Some(Powershell), Some(Malicious)),
        mk(6, Some(Powershell), Some(Malicious)),
        mk(7, None, None),
        mk(8, None, Some(Benign)),
    ];
    let (s, p) = open_store("memory://stats-test/corpus").unwrap();
    let opts = WriterOptions {
        target_file_bytes: 1,
        ..Default::default()
    }; // one file per row group
    write_dataset(
        s,
        &p,
        rows,
        WriterOptions {
            row_group_rows: 4,
            ..opts
        },
    )
    .await
    .unwrap();
    let t = dataset_stats("memory://stats-test/corpus").await.unwrap();
    assert_eq!(t.kind, DatasetKind::Corpus);
    let row = |l: &str, b, m, u| StatsRow {
        language: l.into(),
        benign: b,
        malicious: m,
        unlabelled: u,
        total: b + m + u,
    };
    assert_eq!(
        t.rows,
        vec![
            row("bash", 2, 1, 1),
            row("batch", 0, 0, 0),
            row("javascript", 0, 0, 0),
            row("powershell", 0, 2, 0),
            row("python", 0, 1, 0),
            row("unknown", 1, 0, 1),
            row("total", 3, 4, 2),
        ]
    );
    let text = t.to_string();
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["bash", "2", "1", "1", "4"],
        "{text}"
    );
    let json: serde_json::Value = serde_json::to_value(&t).unwrap();
    assert_eq!(json["rows"][6]["total"], 9);

    // A labelled set has no unknown row and no unlabelled counts.
    let labelled = vec![LabelledRow {
        sha256: "a".repeat(64),
        language: Javascript,
        label: Malicious,
        summary: "s".into(),
        behaviours: vec![],
        provenance: "test".into(),
    }];
    let (s, p) = open_store("memory://stats-test/labelled").unwrap();
    write_dataset(s, &p, labelled, WriterOptions::default())
        .await
        .unwrap();
    let t = dataset_stats("memory://stats-test/labelled").await.unwrap();
    assert_eq!(t.kind, DatasetKind::Labelled);
    assert_eq!(t.rows.len(), 6);
    assert_eq!(t.row("javascript").unwrap().malicious, 1);
    assert_eq!(t.row("total").unwrap().total, 1);
}
