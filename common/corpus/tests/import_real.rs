//! Imports real scripts found on any Debian machine (shell scripts under /usr/bin, /usr/sbin,
//! /etc and, to reach the sample size, /usr/share and /usr/lib; Python's standard library)
//! with extensions stripped from part of them, plus duplicates, a binary and an oversized
//! file, and checks every refusal and the accuracy of language detection.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use automaldesc_common::parquet_io::read_dataset;
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::open_store;
use automaldesc_common::{sha256_hex, Language};
use automaldesc_corpus::import::{
    import_dir, ImportOptions, SkipReason, SkippedFile, SKIPPED_REPORT,
};

const SAMPLE: usize = 300;

fn walk_sorted(dir: &Path, out: &mut Vec<PathBuf>, limit: usize, keep: &dyn Fn(&Path) -> bool) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if out.len() >= limit {
            return;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            walk_sorted(&p, out, limit, keep);
        } else if m.is_file() && m.len() > 100 && m.len() < 512 * 1024 && keep(&p) {
            out.push(p);
        }
    }
}

fn is_shell_script(p: &Path) -> bool {
    let Ok(bytes) = std::fs::read(p) else {
        return false;
    };
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first = String::from_utf8_lossy(first);
    let shells = [
        "#!/bin/sh",
        "#! /bin/sh",
        "#!/bin/bash",
        "#!/usr/bin/bash",
        "#!/bin/dash",
        "#!/usr/bin/env bash",
        "#!/usr/bin/env sh",
    ];
    let shebang_ok = shells
        .iter()
        .any(|s| first.trim_end() == *s || first.starts_with(&format!("{s} ")));
    // At least a few lines of body, so the file is a script rather than a one-line stub.
    shebang_ok && !bytes.contains(&0) && bytes.iter().filter(|&&b| b == b'\n').count() >= 4
}

fn python_stdlib() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_dir().then_some(p)
}

fn is_plain_python(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "py")
        && std::fs::read(p).is_ok_and(|b| b.len() > 500 && !b.starts_with(b"#!") && !b.contains(&0))
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().replace('.', "_")
}

#[tokio::test]
async fn import_of_real_debian_scripts() {
    let mut shell = Vec::new();
    for root in ["/usr/bin", "/usr/sbin", "/etc", "/usr/share", "/usr/lib"] {
        walk_sorted(Path::new(root), &mut shell, SAMPLE, &is_shell_script);
    }
    let Some(stdlib) = python_stdlib() else {
        println!("SKIPPED: python3 not found");
        return;
    };
    let mut all_py = Vec::new();
    walk_sorted(&stdlib, &mut all_py, usize::MAX, &is_plain_python);
    // An even spread over the standard library rather than its first directories.
    let step = (all_py.len() / SAMPLE).max(1);
    let python: Vec<PathBuf> = all_py.iter().step_by(step).take(SAMPLE).cloned().collect();
    assert!(
        shell.len() >= 50,
        "only {} shell scripts found",
        shell.len()
    );
    assert!(
        python.len() >= 100,
        "only {} python files found",
        python.len()
    );

    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    let mut truth: HashMap<String, (Language, &'static str)> = HashMap::new();
    let mut put = |rel: String, bytes: &[u8], lang: Option<(Language, &'static str)>| {
        let full = t.join(&rel);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, bytes).unwrap();
        if let Some(l) = lang {
            truth.insert(rel, l);
        }
    };
    for (i, p) in shell.iter().enumerate() {
        let bytes = std::fs::read(p).unwrap();
        if i % 2 == 0 {
            put(
                format!("sh/ext/{i}_{}.sh", file_name(p)),
                &bytes,
                Some((Language::Bash, "extension")),
            );
        } else {
            put(
                format!("sh/noext/{i}_{}", file_name(p)),
                &bytes,
                Some((Language::Bash, "shebang")),
            );
            // The same script with its #! line removed: only content can tell.
            let body = bytes.splitn(2, |&b| b == b'\n').nth(1).unwrap_or(&[]);
            put(
                format!("sh/noshebang/{i}_{}", file_name(p)),
                body,
                Some((Language::Bash, "content-shell")),
            );
        }
    }
    for (i, p) in python.iter().enumerate() {
        let bytes = std::fs::read(p).unwrap();
        if i % 2 == 0 {
            put(
                format!("py/ext/{i}_{}", p.file_name().unwrap().to_string_lossy()),
                &bytes,
                Some((Language::Python, "extension")),
            );
        } else {
            put(
                format!("py/noext/{i}_{}", file_name(p)),
                &bytes,
                Some((Language::Python, "content-python")),
            );
        }
    }
    // Five exact duplicates under other names.
    for (i, p) in shell.iter().take(5).enumerate() {
        put(format!("zz_dups/copy{i}"), &std::fs::read(p).unwrap(), None);
    }
    // A binary with a script extension, an oversized script, and prose of no language.
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.extend((0..4000u32).map(|i| (i * 7 % 256) as u8));
    put("misc/tool.sh".into(), &elf, None);
    put(
        "misc/big.sh".into(),
        &b"echo padding line\n".repeat(70_000),
        None,
    );
    put(
        "misc/notes".into(),
        b"Shopping list: apples, pears and a loaf of bread.\nCall the plumber on Monday.\n",
        None,
    );

    // What dedup must find: every file whose bytes were already seen (walk order is irrelevant
    // to the count).
    let mut seen = HashSet::new();
    let mut expected_dups = 0;
    for (rel, _) in truth.iter() {
        if !seen.insert(sha256_hex(&std::fs::read(t.join(rel)).unwrap())) {
            expected_dups += 1;
        }
    }
    for i in 0..5 {
        if !seen.insert(sha256_hex(
            &std::fs::read(t.join(format!("zz_dups/copy{i}"))).unwrap(),
        )) {
            expected_dups += 1;
        }
    }

    let out = tempfile::tempdir().unwrap();
    let url = out.path().to_str().unwrap();
    let report = import_dir(t, url, &ImportOptions::default()).await.unwrap();
    println!("{report}");

    assert_eq!(report.skipped_count(SkipReason::Duplicate), expected_dups);
    assert!(expected_dups >= 5);
    assert_eq!(report.skipped_count(SkipReason::Binary), 1);
    assert_eq!(report.skipped_count(SkipReason::TooLarge), 1);
    assert_eq!(report.skipped_count(SkipReason::Unreadable), 0);
    let total_files = truth.len() as u64 + 5 + 3;
    assert_eq!(report.scanned, total_files);
    assert_eq!(report.imported + report.skipped.len() as u64, total_files);

    // The skipped report on disk says why.
    let text = std::fs::read_to_string(out.path().join(SKIPPED_REPORT)).unwrap();
    let skipped: Vec<SkippedFile> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bin = skipped.iter().find(|s| s.path == "misc/tool.sh").unwrap();
    assert_eq!(bin.reason, SkipReason::Binary);
    assert!(bin.detail.contains("NUL"), "{}", bin.detail);
    let big = skipped.iter().find(|s| s.path == "misc/big.sh").unwrap();
    assert_eq!(big.reason, SkipReason::TooLarge);
    assert!(
        big.detail.contains("1260000 bytes") && big.detail.contains("1048576"),
        "{}",
        big.detail
    );
    assert!(skipped
        .iter()
        .filter(|s| s.reason == SkipReason::Duplicate)
        .all(|s| s.detail.contains("same sha256")));

    // Read back and score detection per evidence group.
    let (store, prefix) = open_store(url).unwrap();
    let rows: Vec<CorpusRow> = read_dataset(store, &prefix).await.unwrap();
    assert_eq!(rows.len() as u64, report.imported);
    let by_source: HashMap<&str, &CorpusRow> =
        rows.iter().map(|r| (r.source.as_str(), r)).collect();
    assert_eq!(
        by_source["misc/notes"].language_hint, None,
        "prose is kept without a language"
    );
    let mut groups: HashMap<&str, (u32, u32)> = HashMap::new();
    let mut misses = Vec::new();
    for (rel, (lang, group)) in &truth {
        let Some(row) = by_source.get(rel.as_str()) else {
            continue;
        }; // a duplicate
        assert_eq!(row.sha256, sha256_hex(&row.content));
        let g = groups.entry(group).or_default();
        g.1 += 1;
        if row.language_hint == Some(*lang) {
            g.0 += 1;
        } else {
            misses.push(format!("{rel}: {:?}", row.language_hint));
        }
    }
    let acc = |g: &str| {
        let (ok, n) = groups.get(g).copied().unwrap_or((0, 0));
        println!(
            "detection accuracy [{g}]: {ok}/{n} = {:.1}%",
            100.0 * ok as f64 / n.max(1) as f64
        );
        (ok, n)
    };
    let (e_ok, e_n) = acc("extension");
    let (s_ok, s_n) = acc("shebang");
    let (p_ok, p_n) = acc("content-python");
    let (c_ok, c_n) = acc("content-shell");
    misses.sort();
    for m in misses.iter().take(40) {
        println!("  missed {m}");
    }
    assert_eq!(e_ok, e_n);
    assert_eq!(s_ok, s_n);
    let noext = (s_ok + p_ok) as f64 / (s_n + p_n) as f64;
    println!(
        "detection accuracy [files without extension, shebang or content]: {:.1}%",
        noext * 100.0
    );
    assert!(noext >= 0.95, "accuracy without extension {noext}");
    assert!(p_ok as f64 / p_n as f64 >= 0.95, "python by content");
    assert!(c_ok as f64 / c_n as f64 >= 0.85, "shell by content alone");
}
