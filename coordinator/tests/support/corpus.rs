//! A small synthetic corpus on local disk, written with small row groups so that planning
//! has something to split, and its layout as the planner sees it.

use std::sync::Arc;

use automaldesc_common::parquet_io::{dataset_layout, read_dataset, write_dataset, WriterOptions};
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::{child, open_store};
use automaldesc_coordinator::planner::InputFile;
use automaldesc_corpus::synth::SynthConfig;
use automaldesc_corpus::synth_dataset::write_synth_corpus;
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
