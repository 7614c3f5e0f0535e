//! The `automaldesc corpus` commands end to end: import a small tree, import labels joined by
//! path, and print the stats table as text and JSON.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_automaldesc"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The first number after `key` on the line that starts with it.
fn count(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} in\n{text}"));
    line[key.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn import_import_labels_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let a = b"#!/bin/bash\necho hi\n";
    std::fs::write(tree.join("a"), a).unwrap();
    std::fs::write(tree.join("b.py"), b"import os\nprint(os.getcwd())\n").unwrap();
    std::fs::write(tree.join("c.bat"), b"@echo off\r\necho hi\r\n").unwrap();
    std::fs::write(tree.join("dup.sh"), a).unwrap();
    std::fs::write(tree.join("bin.sh"), b"\x00\x01\x02binary").unwrap();
    let corpus = dir.path().join("corpus");

    let text = run(&[
        "corpus",
        "import",
        tree.to_str().unwrap(),
        "--out",
        corpus.to_str().unwrap(),
    ]);
    assert_eq!(count(&text, "imported"), 3, "{text}");
    assert_eq!(count(&text, "duplicate"), 1, "{text}");
    assert_eq!(count(&text, "binary"), 1, "{text}");

    let stats = run(&["corpus", "stats", corpus.to_str().unwrap()]);
    let bash: Vec<&str> = stats
        .lines()
        .find(|l| l.starts_with("bash"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(bash, ["bash", "0", "0", "1", "1"], "{stats}");
    let json: serde_json::Value = serde_json::from_str(&run(&[
        "corpus",
        "stats",
        corpus.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["kind"], "corpus");
    assert_eq!(json["rows"].as_array().unwrap().last().unwrap()["total"], 3);

    let sha = automaldesc_common::sha256_hex(a);
    let labels = dir.path().join("seed.jsonl");
    std::fs::write(&labels, format!("{{\"sha256\":\"{sha}\",\"label\":1,\"language\":\"bash\",\"summary\":\"says hi\",\"path\":\"a\"}}\n")).unwrap();
    let out = dir.path().join("seed");
    let text = run(&[
        "corpus",
        "import-labels",
        labels.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--root",
        tree.to_str().unwrap(),
    ]);
    assert_eq!(count(&text, "joined by path"), 1, "{text}");
    let stats = run(&["corpus", "stats", out.to_str().unwrap()]);
    let bash: Vec<&str> = stats
        .lines()
        .find(|l| l.starts_with("bash"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(bash, ["bash", "0", "1", "0", "1"], "{stats}");
}
