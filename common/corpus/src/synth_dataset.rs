//! Writes a synthetic corpus (`synth::generate`) as datasets in object storage:
//! `unlabelled/` (corpus rows with noisy labels), `seed/` and `test/` (each `scripts/` plus
//! `labels/`), `truth/` (the ground truth of the unlabelled split, for measuring pseudo-label
//! quality; never trained on) and `synth.json` (config, counts and files).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::synth::{generate, SynthConfig};
use automaldesc_common::error::Result;
use automaldesc_common::manifest::ManifestFile;
use automaldesc_common::parquet_io::{DatasetWriter, WriterOptions};
use automaldesc_common::schema::{CorpusRow, LabelledRow};
use automaldesc_common::store::{child, open_store, put_bytes};
use automaldesc_common::types::Split;

#[derive(Debug, Serialize)]
pub struct SynthReport {
    pub seed: u64,
    pub scale: f64,
    pub noisy_label_error: f64,
    pub scripts: u64,
    pub bytes: u64,
    /// Per split, per family: count.
    pub families: BTreeMap<String, BTreeMap<String, u64>>,
    pub files: BTreeMap<String, Vec<ManifestFile>>,
}

pub async fn write_synth_corpus(
    cfg: &SynthConfig,
    out: &str,
    opts: &WriterOptions,
) -> Result<SynthReport> {
    let (store, prefix) = open_store(out)?;
    let writer = |name: &str| child(&prefix, name);
    let mut unlabelled =
        DatasetWriter::<CorpusRow>::new(store.clone(), writer("unlabelled"), opts.clone());
    let mut truth = DatasetWriter::<LabelledRow>::new(store.clone(), writer("truth"), opts.clone());
    let mut seed_scripts =
        DatasetWriter::<CorpusRow>::new(store.clone(), writer("seed/scripts"), opts.clone());
    let mut seed_labels =
        DatasetWriter::<LabelledRow>::new(store.clone(), writer("seed/labels"), opts.clone());
    let mut test_scripts =
        DatasetWriter::<CorpusRow>::new(store.clone(), writer("test/scripts"), opts.clone());
    let mut test_labels =
        DatasetWriter::<LabelledRow>::new(store.clone(), writer("test/labels"), opts.clone());
    let mut report = SynthReport {
        seed: cfg.seed,
        scale: cfg.scale,
        noisy_label_error: cfg.noisy_label_error,
        scripts: 0,
        bytes: 0,
        families: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    for s in generate(cfg) {
        report.scripts += 1;
        report.bytes += s.content.len() as u64;
        *report
            .families
            .entry(s.split.as_str().to_string())
            .or_default()
            .entry(s.family.to_string())
            .or_default() += 1;
        let mut row = CorpusRow::new(s.content, format!("synth:{}", s.family), Some(s.language));
        let labelled = LabelledRow {
            sha256: row.sha256.clone(),
            language: s.language,
            label: s.label,
            summary: s.summary.unwrap_or_default(),
            behaviours: s.behaviours,
            provenance: match s.split {
                Split::Unlabelled => "synth-truth".to_string(),
                other => other.as_str().to_string(),
            },
        };
        match s.split {
            Split::Unlabelled => {
                row.noisy_label = s.noisy_label;
                unlabelled.write(row).await?;
                truth.write(labelled).await?;
            }
            Split::Seed => {
                seed_scripts.write(row).await?;
                seed_labels.write(labelled).await?;
            }
            Split::Test => {
                test_scripts.write(row).await?;
                test_labels.write(labelled).await?;
            }
        }
    }
    let done = [
        ("unlabelled", unlabelled.finish().await?),
        ("seed/scripts", seed_scripts.finish().await?),
        ("test/scripts", test_scripts.finish().await?),
    ];
    let labels = [
        ("truth", truth.finish().await?),
        ("seed/labels", seed_labels.finish().await?),
        ("test/labels", test_labels.finish().await?),
    ];
    for (name, files) in done.into_iter().chain(labels) {
        report.files.insert(name.to_string(), files);
    }
    let json = serde_json::to_vec_pretty(&report).map_err(|e| {
        automaldesc_common::error::Error::Internal(format!("cannot encode synth report: {e}"))
    })?;
    put_bytes(store.as_ref(), &child(&prefix, "synth.json"), json).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::plan;
    use automaldesc_common::parquet_io::read_dataset;
    use automaldesc_common::schema::{CorpusRow, LabelledRow};
    use automaldesc_common::types::Split;

    #[tokio::test]
    async fn every_generated_script_lands_in_exactly_one_split_dataset() {
        let cfg = SynthConfig {
            seed: 3,
            scale: 0.01,
            noisy_label_error: 0.1,
            unlabelled_scale: None,
            seed_scale: None,
        };
        let out = "memory://synth-test/corpus";
        let report = write_synth_corpus(&cfg, out, &WriterOptions::default())
            .await
            .unwrap();
        let (store, prefix) = open_store(out).unwrap();
        let count = |split: Split| {
            plan(&cfg)
                .iter()
                .filter(|c| c.split == split)
                .map(|c| c.count)
                .sum::<u64>()
        };
        let unl: Vec<CorpusRow> = read_dataset(store.clone(), &child(&prefix, "unlabelled"))
            .await
            .unwrap();
        let truth: Vec<LabelledRow> = read_dataset(store.clone(), &child(&prefix, "truth"))
            .await
            .unwrap();
        let seed: Vec<LabelledRow> = read_dataset(store.clone(), &child(&prefix, "seed/labels"))
            .await
            .unwrap();
        let seed_scripts: Vec<CorpusRow> =
            read_dataset(store.clone(), &child(&prefix, "seed/scripts"))
                .await
                .unwrap();
        let test: Vec<LabelledRow> = read_dataset(store.clone(), &child(&prefix, "test/labels"))
            .await
            .unwrap();
        assert_eq!(unl.len() as u64, count(Split::Unlabelled));
        assert_eq!(truth.len(), unl.len());
        assert_eq!(seed.len() as u64, count(Split::Seed));
        assert_eq!(seed_scripts.len(), seed.len());
        assert_eq!(test.len() as u64, count(Split::Test));
        assert_eq!(report.scripts, (unl.len() + seed.len() + test.len()) as u64);
        // Labels join their scripts by sha256, and seed/test summaries are present.
        for (l, s) in seed.iter().zip(&seed_scripts) {
            assert_eq!(l.sha256, s.sha256);
            assert_eq!(s.sha256, automaldesc_common::types::sha256_hex(&s.content));
            assert!(l.summary.split_whitespace().count() > 100, "{}", l.summary);
        }
        assert!(unl.iter().all(|r| r.noisy_label.is_some()));
        let flipped = unl
            .iter()
            .zip(&truth)
            .filter(|(u, t)| u.noisy_label != Some(t.label))
            .count();
        assert!(
            flipped > 0 && flipped < unl.len() / 4,
            "{flipped} of {}",
            unl.len()
        );
    }
}
