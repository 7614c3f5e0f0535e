//! `automaldesc eval` and `automaldesc mcnemar` on files alone: answers in the published
//! shape (a `response` string per row, JSONL and Parquet), references as Parquet and JSONL.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;

fn automaldesc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_automaldesc"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = automaldesc(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// A release-format sha256 for test script `i`.
fn sha(i: usize) -> String {
    format!("{i:064x}")
}

fn answer(language: &str, label: u8) -> String {
    serde_json::json!({"language": language, "label": label, "summary": "Downloads and runs a payload."}).to_string()
}

#[test]
fn eval_and_mcnemar_score_published_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // References as Parquet with an integer label column, as the public release has it.
    let shas: Vec<String> = (0..4).map(sha).collect();
    let shas: Vec<&str> = shas.iter().map(String::as_str).collect();
    write_parquet(
        Path::new(&p("refs.parquet")),
        vec![
            ("sha256", strings(&shas)),
            ("path", strings(&["a.sh", "b.sh", "c.py", "d.py"])),
            ("label", Arc::new(Int64Array::from(vec![1, 0, 1, 0]))),
            ("language", strings(&["bash", "bash", "python", "python"])),
            ("summary", strings(&["Downloads and runs a payload."; 4])),
        ],
    );
    // Annotator A, JSONL: right on s0, s1, s2; s3 broken.
    let a = [
        (shas[0], answer("bash", 1)),
        (shas[1], answer("bash", 0)),
        (shas[2], answer("python", 1)),
        (shas[3], "{\"language\":".to_string()),
    ];
    let lines: Vec<String> = a
        .iter()
        .map(|(s, r)| serde_json::json!({"sha256": s, "response": r}).to_string())
        .collect();
    std::fs::write(p("a.jsonl"), lines.join("\n") + "\n").unwrap();
    // Annotator B, Parquet: wrong on s0 (and says python), right on the rest.
    let b = [
        answer("python", 0),
        answer("bash", 0),
        answer("python", 1),
        answer("python", 0),
    ];
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    write_parquet(
        Path::new(&p("b.parquet")),
        vec![("sha256", strings(&shas)), ("response", strings(&b))],
    );

    let text = ok(&[
        "eval",
        "--answers",
        &p("a.jsonl"),
        "--references",
        &p("refs.parquet"),
        "--json",
        &p("a.json"),
    ]);
    assert!(text.contains("| all | 4 | 75.0 | 75.0 | 1 |"), "{text}");
    let ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("a.json")).unwrap()).unwrap();
    assert_eq!(ev["overall"]["unparseable"], 1);
    assert_eq!(ev["per_language"]["python"]["label"]["correct"], 1);
    assert_eq!(ev["confusion"]["benign"], serde_json::json!([1, 0, 1]));
    // Identical summaries: full marks on the three text metrics.
    assert_eq!(ev["text"]["pairs"], 3);
    assert!((ev["text"]["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-9);

    let text = ok(&[
        "eval",
        "--answers",
        &p("b.parquet"),
        "--references",
        &p("refs.parquet"),
    ]);
    assert!(text.contains("| all | 4 | 75.0 | 75.0 | 0 |"), "{text}");

    ok(&[
        "mcnemar",
        "--a",
        &p("a.jsonl"),
        "--b",
        &p("b.parquet"),
        "--references",
        &p("refs.parquet"),
        "--json",
        &p("m.json"),
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("m.json")).unwrap()).unwrap();
    // Correctness: only A right on s0, only B right on s3. Class: s0 A malicious / B benign;
    // s3 has no decision from A.
    assert_eq!(
        (
            m["correctness"]["b"].as_u64(),
            m["correctness"]["c"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        (
            m["predicted_class"]["b"].as_u64(),
            m["predicted_class"]["c"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(m["undecided"], 1);
    assert_eq!(m["correctness"]["p_value"], 1.0);

    // A script answered twice is two samples; one missing from the answers counts as wrong
    // unless --answered-only narrows the references.
    std::fs::write(p("short.jsonl"), format!("{}\n{}\n", lines[0], lines[0])).unwrap();
    let text = ok(&[
        "eval",
        "--answers",
        &p("short.jsonl"),
        "--references",
        &p("refs.parquet"),
    ]);
    assert!(text.contains("| all | 5 | 40.0 |"), "{text}");
    let text = ok(&[
        "eval",
        "--answers",
        &p("short.jsonl"),
        "--references",
        &p("refs.parquet"),
        "--answered-only",
    ]);
    assert!(text.contains("| all | 2 | 100.0 | 100.0 | 0 |"), "{text}");
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let s0 = sha(0);
    let with_s0 = |text: &str| text.replace("s0", &s0);
    let refs = with_s0(r#"{"sha256":"s0","label":1,"language":"bash","summary":"x"}"#);
    std::fs::write(p("refs.jsonl"), format!("{refs}\n")).unwrap();
    let cases: [(&str, &str, &str); 4] = [
        (
            "unknown.jsonl",
            r#"{"sha256":"zz","response":"{}"}"#,
            "no reference",
        ),
        ("nosha.jsonl", r#"{"response":"{}"}"#, "line 1: no `sha256`"),
        (
            "badjson.jsonl",
            r#"{"sha256":"s0","response":"#,
            "badjson.jsonl line 1",
        ),
        (
            "number.jsonl",
            r#"{"sha256":"s0","response":7}"#,
            "`response` is not a string",
        ),
    ];
    for (name, line, want) in cases {
        std::fs::write(p(name), with_s0(line) + "\n").unwrap();
        let out = automaldesc(&[
            "eval",
            "--answers",
            &p(name),
            "--references",
            &p("refs.jsonl"),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{name}: {err}");
    }
    std::fs::write(
        p("badref.jsonl"),
        with_s0(r#"{"sha256":"s0","label":3,"language":"bash","summary":"x"}"#),
    )
    .unwrap();
    std::fs::write(p("a.jsonl"), with_s0(r#"{"sha256":"s0","response":"{}"}"#)).unwrap();
    let out = automaldesc(&[
        "eval",
        "--answers",
        &p("a.jsonl"),
        "--references",
        &p("badref.jsonl"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("label \"3\", expected 0 or 1"),
        "{err}"
    );
    std::fs::write(
        p("lang.jsonl"),
        with_s0(r#"{"sha256":"s0","label":1,"language":"cobol","summary":"x"}"#),
    )
    .unwrap();
    let out = automaldesc(&[
        "eval",
        "--answers",
        &p("a.jsonl"),
        "--references",
        &p("lang.jsonl"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown language \"cobol\""),
        "{err}"
    );
}
