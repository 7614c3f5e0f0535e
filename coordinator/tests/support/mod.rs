//! A small synthetic corpus on local disk, written with small row groups so that planning
//! has something to split, and its layout as the planner sees it.

#![allow(dead_code)]

pub mod browser;
pub mod etcd;
pub mod export_check;
pub mod procs;
pub mod tiny_model;

use std::sync::Arc;

use automaldesc_common::parquet_io::{
    dataset_layout, read_dataset, read_file, write_dataset, WriterOptions,
};
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::{child, open_store};
use automaldesc_common::synth::SynthConfig;
use automaldesc_common::synth_dataset::write_synth_corpus;
use automaldesc_coordinator::planner::InputFile;
use object_store::path::Path;
use object_store::ObjectStore;

pub struct Corpus {
    /// The URL the corpus was written to.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub unlabelled: Path,
    pub files: Vec<InputFile>,
    pub total_bytes: u64,
}

impl Corpus {
    /// The unlabelled split's location, as a run spec names its input.
    pub fn unlabelled_url(&self) -> String {
        format!("{}/unlabelled", self.url)
    }

    /// Adds one more file to the unlabelled split: a single script holding `marker`.
    /// Returns its sha256.
    pub async fn poison(&self, marker: &[u8]) -> String {
        self.poison_named("poison", marker).await
    }

    /// [`Corpus::poison`] with the file named `<stem>-00000.parquet`.
    pub async fn poison_named(&self, stem: &str, marker: &[u8]) -> String {
        let mut content = b"echo 'harmless looking' # ".to_vec();
        content.extend_from_slice(marker);
        let row = CorpusRow::new(content, "test:poison", None);
        let sha = row.sha256.clone();
        let opts = WriterOptions {
            file_stem: stem.into(),
            ..WriterOptions::default()
        };
        write_dataset(self.store.clone(), &self.unlabelled, vec![row], opts)
            .await
            .unwrap();
        sha
    }

    /// Scripts of the unlabelled split, counted by sha256.
    pub async fn sha_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let rows: Vec<CorpusRow> = read_dataset(self.store.clone(), &self.unlabelled)
            .await
            .unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for r in rows {
            *counts.entry(r.sha256).or_default() += 1;
        }
        counts
    }
}

pub async fn small_corpus(dir: &std::path::Path, seed: u64, scale: f64) -> Corpus {
    let url = dir.to_str().unwrap().to_string();
    let opts = WriterOptions {
        target_file_bytes: 200 << 10,
        row_group_bytes: 32 << 10,
        row_group_rows: 40,
        ..WriterOptions::default()
    };
    let cfg = SynthConfig {
        seed,
        scale,
        ..SynthConfig::default()
    };
    write_synth_corpus(&cfg, &url, &opts).await.unwrap();
    let (store, prefix) = open_store(&url).unwrap();
    let unlabelled = child(&prefix, "unlabelled");
    let layout = dataset_layout(store.clone(), &unlabelled).await.unwrap();
    let files: Vec<InputFile> = layout.iter().map(InputFile::from).collect();
    let total_bytes = files
        .iter()
        .flat_map(|f| &f.row_groups)
        .map(|g| g.bytes)
        .sum();
    Corpus {
        url,
        store,
        unlabelled,
        files,
        total_bytes,
    }
}

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
