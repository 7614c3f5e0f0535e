//! Support of the system tests: the `automaldesc` binary's processes (`procs`), a headless
//! browser, a tiny random model with the real tokenizer, the exported dataset's checks, and
//! what a run committed or quarantined, read back from its state. The small corpus and the
//! etcd launcher are the coordinator's test support, shared from
//! `coordinator/tests/support/`.

#![allow(dead_code)]

pub mod browser;
#[path = "../../coordinator/tests/support/corpus.rs"]
mod corpus;
#[path = "../../coordinator/tests/support/etcd.rs"]
pub mod etcd;
pub mod export_check;
pub mod procs;
pub mod tiny_model;

// Each test binary uses its own part of the support.
#[allow(unused_imports)]
pub use corpus::{small_corpus, Corpus};

use automaldesc_common::parquet_io::read_file;
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::open_store;
use object_store::path::Path;

/// What stage `stage` of `run` committed: its output rows counted by sha256, and the
/// scripts its executors quarantined.
pub async fn committed_rows(
    store: &dyn automaldesc_coordinator::state::StateStore,
    run: &automaldesc_common::ids::RunId,
    stage: u32,
    output_url: &str,
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let (out, _) = open_store(output_url).unwrap();
    let mut rows = std::collections::BTreeMap::new();
    let mut quarantined = Vec::new();
    for (_, record) in automaldesc_coordinator::stage_manager::read_commits(store, run, stage)
        .await
        .unwrap()
    {
        let mut n = 0;
        for f in &record.outputs {
            let got: Vec<CorpusRow> = read_file(out.clone(), &Path::from(f.path.as_str()))
                .await
                .unwrap();
            assert_eq!(got.len() as u64, f.rows);
            n += got.len() as u64;
            for r in got {
                *rows.entry(r.sha256).or_default() += 1;
            }
        }
        assert_eq!(n + record.quarantined.len() as u64, record.rows_in);
        quarantined.extend(record.quarantined.into_iter().map(|(sha, _)| sha));
    }
    (rows, quarantined)
}

/// The sha256 of every input script of task `task` of stage `stage`, from its recorded plan.
pub async fn task_scripts(
    store: &dyn automaldesc_coordinator::state::StateStore,
    run: &str,
    stage: u32,
    task: u32,
) -> Vec<String> {
    let key = format!("runs/{run}/stages/{stage:03}/plan");
    let plan: automaldesc_coordinator::run_manager::StagePlan =
        serde_json::from_slice(&store.get(&key).await.unwrap().unwrap().value).unwrap();
    let (input, _) = automaldesc_common::store::open_object(&plan.input_root).unwrap();
    let mut out = Vec::new();
    for r in &plan.tasks[task as usize].ranges {
        let rows: Vec<CorpusRow> = automaldesc_common::parquet_io::read_row_groups(
            input.clone(),
            &Path::from(r.file.as_str()),
            r.start..r.end,
        )
        .await
        .unwrap();
        out.extend(rows.into_iter().map(|r| r.sha256));
    }
    out
}

/// Quarantined tasks of a stage: (task, error).
pub async fn quarantined_tasks(
    store: &dyn automaldesc_coordinator::state::StateStore,
    run: &str,
    stage: u32,
) -> Vec<(u32, String)> {
    store
        .list(&format!("runs/{run}/stages/{stage:03}/quarantined/"))
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let task = k.rsplit('/').next().unwrap().parse().unwrap();
            (task, String::from_utf8_lossy(&v.value).into_owned())
        })
        .collect()
}

/// A one-stage echo run spec over `input`.
pub fn echo_spec(input: &str, output: &str, task_bytes: u64, config: &str) -> String {
    format!(
        "input = {input:?}\noutput = {output:?}\ntask_bytes = {task_bytes}\n\n[[stage]]\nkind = \"echo\"\nconfig = {config}\n"
    )
}
