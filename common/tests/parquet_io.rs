//! The dataset writer rolls files near the target size, readers return exactly the rows of a
//! row-group range, and the files are plain Parquet that pyarrow reads unchanged.

use automaldesc_common::parquet_io::*;
use automaldesc_common::schema::{CorpusRow, LabelledRow};
use automaldesc_common::store::open_store;
use automaldesc_common::{Label, Language};
use rand::{Rng, SeedableRng};

/// Scripts of pseudo-random text (so zstd cannot shrink them to nothing), 2-6 KiB each.
fn scripts(n: usize) -> Vec<CorpusRow> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let len = rng.random_range(2048..6144);
            let body: Vec<u8> = (0..len).map(|_| rng.random_range(b' '..=b'~')).collect();
            let lang = Language::ALL[i % 5];
            CorpusRow::new(body, format!("synth:{i}"), Some(lang))
        })
        .collect()
}

#[tokio::test]
async fn small_target_rolls_several_files_near_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let (store, prefix) = open_store(dir.path().to_str().unwrap()).unwrap();
    let rows = scripts(600); // about 2.4 MB of content
    let target = 256 * 1024;
    let opts = WriterOptions {
        target_file_bytes: target,
        row_group_bytes: 32 * 1024,
        ..Default::default()
    };
    let files = write_dataset(store.clone(), &prefix, rows.clone(), opts)
        .await
        .unwrap();
    assert!(
        files.len() >= 5,
        "expected several files, got {}",
        files.len()
    );
    let n = files.len();
    for (i, f) in files.iter().enumerate() {
        assert_eq!(f.path, format!("part-{i:05}.parquet"));
        let on_disk = std::fs::read(dir.path().join(&f.path)).unwrap();
        assert_eq!(on_disk.len() as u64, f.bytes);
        assert_eq!(automaldesc_common::sha256_hex(&on_disk), f.sha256);
        if i + 1 < n {
            let ratio = f.bytes as f64 / target as f64;
            assert!(
                (0.9..1.25).contains(&ratio),
                "file {i} is {} bytes for target {target}",
                f.bytes
            );
        }
    }
    assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 600);

    let layout = dataset_layout(store.clone(), &prefix).await.unwrap();
    assert_eq!(layout.len(), n);
    for (i, (l, f)) in layout.iter().zip(&files).enumerate() {
        println!(
            "{}: {} bytes, row groups {:?}",
            f.path, f.bytes, l.row_group_rows
        );
        assert_eq!(l.num_rows(), f.rows);
        if i + 1 < n {
            assert!(
                l.num_row_groups() >= 4,
                "row groups should be several times smaller than files"
            );
        }
    }
    let back: Vec<CorpusRow> = read_dataset(store, &prefix).await.unwrap();
    assert_eq!(back, rows);
}

#[tokio::test]
async fn row_group_range_returns_exactly_those_rows() {
    let (store, prefix) = open_store("memory://pio-range/ds").unwrap();
    let rows = scripts(100);
    let opts = WriterOptions {
        row_group_rows: 10,
        ..Default::default()
    };
    let files = write_dataset(store.clone(), &prefix, rows.clone(), opts)
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    let layout = dataset_layout(store.clone(), &prefix).await.unwrap();
    assert_eq!(layout[0].row_group_rows, vec![10; 10]);
    let path = &layout[0].path;
    let got: Vec<CorpusRow> = read_row_groups(store.clone(), path, 3..5).await.unwrap();
    assert_eq!(got, rows[30..50].to_vec());
    let empty: Vec<CorpusRow> = read_row_groups(store.clone(), path, 4..4).await.unwrap();
    assert!(empty.is_empty());
    let err = read_row_groups::<CorpusRow>(store.clone(), path, 8..11)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range") && err.contains("10"), "{err}");
    // Shards reassemble the file.
    let mut all = Vec::new();
    for s in (0..10).step_by(3) {
        all.extend(
            read_row_groups::<CorpusRow>(store.clone(), path, s..(s + 3).min(10))
                .await
                .unwrap(),
        );
    }
    assert_eq!(all, rows);
}

#[tokio::test]
async fn listing_skips_reports_and_sorts() {
    let (store, prefix) = open_store("memory://pio-list/ds").unwrap();
    let opts = WriterOptions {
        target_file_bytes: 1,
        ..Default::default()
    };
    write_dataset(store.clone(), &prefix, scripts(3), opts)
        .await
        .unwrap();
    automaldesc_common::store::put_bytes(
        store.as_ref(),
        &prefix.child("_skipped.jsonl"),
        b"{}".to_vec(),
    )
    .await
    .unwrap();
    let names: Vec<String> = list_parquet(store.as_ref(), &prefix)
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.filename().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
}

fn have_pyarrow() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import pyarrow.parquet"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn pyarrow_reads_the_files_unchanged() {
    if !have_pyarrow() {
        println!("SKIPPED: python3 with pyarrow is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, prefix) = open_store(dir.path().to_str().unwrap()).unwrap();
    let rows = vec![
        LabelledRow {
            sha256: "a".repeat(64),
            language: Language::Batch,
            label: Label::Malicious,
            summary: "adds a run key".into(),
            behaviours: vec!["persistence".into(), "registry".into()],
            provenance: "seed".into(),
        },
        LabelledRow {
            sha256: "b".repeat(64),
            language: Language::Javascript,
            label: Label::Benign,
            summary: "builds a page".into(),
            behaviours: vec![],
            provenance: "test".into(),
        },
    ];
    write_dataset(store.clone(), &prefix, rows, WriterOptions::default())
        .await
        .unwrap();
    let mut corpus = scripts(3);
    corpus[1].content = vec![0xff, 0x00, 0x80];
    let cdir = dir.path().join("corpus");
    let (cs, cp) = open_store(cdir.to_str().unwrap()).unwrap();
    write_dataset(cs, &cp, corpus, WriterOptions::default())
        .await
        .unwrap();

    let script = r#"
import sys, pyarrow.parquet as pq, pyarrow as pa
t = pq.read_table(sys.argv[1] + "/part-00000.parquet")
assert t.num_rows == 2, t.num_rows
assert str(t.schema.field("label").type) == "uint8", t.schema
assert str(t.schema.field("behaviours").type) == "list<item: string>", t.schema
r = t.to_pylist()
assert r[0]["behaviours"] == ["persistence", "registry"], r[0]
assert r[1]["language"] == "javascript" and r[1]["label"] == 0, r[1]
c = pq.read_table(sys.argv[1] + "/corpus/part-00000.parquet")
assert c.schema.field("content").type == pa.binary(), c.schema
assert c.column("content")[1].as_py() == b"\xff\x00\x80"
assert c.column("language_hint")[1].as_py() == "batch"
print("pyarrow ok", t.num_rows, c.num_rows)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pyarrow failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pyarrow ok 2 3"), "{stdout}");
}

#[tokio::test]
async fn a_dataset_without_the_corpus_columns_is_refused_naming_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let (store, prefix) = open_store(good.to_str().unwrap()).unwrap();
    write_dataset(store, &prefix, scripts(3), WriterOptions::default())
        .await
        .unwrap();
    let expected = <CorpusRow as automaldesc_common::schema::ArrowRow>::schema();
    check_dataset_schema(good.to_str().unwrap(), &expected)
        .await
        .unwrap();

    let bad = dir.path().join("bad");
    let (store, prefix) = open_store(bad.to_str().unwrap()).unwrap();
    let labels = vec![LabelledRow {
        sha256: "ab".repeat(32),
        label: Label::Benign,
        language: Language::Bash,
        summary: "prints a greeting".into(),
        behaviours: Vec::new(),
        provenance: "seed".into(),
    }];
    let opts = WriterOptions {
        file_stem: "labels".into(),
        ..WriterOptions::default()
    };
    write_dataset(store, &prefix, labels, opts).await.unwrap();
    let err = check_dataset_schema(bad.to_str().unwrap(), &expected)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("labels-00000.parquet"), "{err}");
    assert!(err.contains("column `content` is missing"), "{err}");
}
