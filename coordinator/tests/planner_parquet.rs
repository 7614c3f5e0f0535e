//! The planner on real Parquet: a synthetic corpus written with small row groups, its layout
//! read from the file footers, planned, and every task's row groups read back: together they
//! hold every row of the corpus exactly once.

use std::collections::BTreeMap;

use automaldesc_common::parquet_io::{
    dataset_layout, read_dataset, read_row_groups, WriterOptions,
};
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::{child, open_store};
use automaldesc_common::synth::SynthConfig;
use automaldesc_common::synth_dataset::write_synth_corpus;
use automaldesc_coordinator::planner::{plan, InputFile, PlanOptions};
use object_store::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_cover_every_script_of_a_real_corpus_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    let opts = WriterOptions {
        target_file_bytes: 200 << 10,
        row_group_bytes: 32 << 10,
        row_group_rows: 40,
        ..WriterOptions::default()
    };
    let cfg = SynthConfig {
        seed: 3,
        scale: 0.004,
        ..SynthConfig::default()
    };
    write_synth_corpus(&cfg, &out, &opts).await.unwrap();

    let (store, prefix) = open_store(&out).unwrap();
    let unlabelled = child(&prefix, "unlabelled");
    let layout = dataset_layout(store.clone(), &unlabelled).await.unwrap();
    let groups: usize = layout.iter().map(|f| f.num_row_groups()).sum();
    assert!(
        layout.len() > 1 && groups > 10,
        "{} files, {groups} row groups",
        layout.len()
    );
    let files: Vec<InputFile> = layout.iter().map(InputFile::from).collect();
    let total: u64 = files
        .iter()
        .flat_map(|f| &f.row_groups)
        .map(|g| g.bytes)
        .sum();
    let tasks = plan(
        &files,
        PlanOptions {
            target_bytes: total / 12,
        },
    );
    assert!(tasks.len() >= 12, "{} tasks", tasks.len());

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        let mut rows = 0;
        for r in &t.ranges {
            let got: Vec<CorpusRow> =
                read_row_groups(store.clone(), &Path::from(r.file.as_str()), r.start..r.end)
                    .await
                    .unwrap();
            rows += got.len() as u64;
            for row in got {
                *seen.entry(row.sha256).or_default() += 1;
            }
        }
        assert_eq!(rows, t.rows);
    }
    // The same multiset of scripts as reading the whole dataset (a script may occur twice in
    // the corpus; it must then come back twice).
    let all: Vec<CorpusRow> = read_dataset(store.clone(), &unlabelled).await.unwrap();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for r in all {
        *expected.entry(r.sha256).or_default() += 1;
    }
    assert_eq!(seen, expected);
}
