//! The planner on real Parquet: a synthetic corpus written with small row groups, its layout
//! read from the file footers, planned, and every task's row groups read back: together they
//! hold every row of the corpus exactly once.

use std::collections::BTreeMap;

use automaldesc_common::parquet_io::read_row_groups;
use automaldesc_common::schema::CorpusRow;
use automaldesc_coordinator::planner::{plan, PlanOptions};
use object_store::path::Path;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_cover_every_script_of_a_real_corpus_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(dir.path(), 3, 0.004).await;
    let groups: usize = corpus.files.iter().map(|f| f.row_groups.len()).sum();
    assert!(
        corpus.files.len() > 1 && groups > 10,
        "{} files, {groups} row groups",
        corpus.files.len()
    );
    let tasks = plan(
        &corpus.files,
        PlanOptions {
            target_bytes: corpus.total_bytes / 12,
        },
    );
    assert!(tasks.len() >= 12, "{} tasks", tasks.len());

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        let mut rows = 0;
        for r in &t.ranges {
            let got: Vec<CorpusRow> = read_row_groups(
                corpus.store.clone(),
                &Path::from(r.file.as_str()),
                r.start..r.end,
            )
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
    assert_eq!(seen, corpus.sha_counts().await);
}
