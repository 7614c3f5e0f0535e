//! The dataset card (`README.md`) of a released dataset, in the Hugging Face convention: a
//! YAML header (license, task tags, size, and `configs` naming each split's files, which
//! `datasets.load_dataset(DIR)` follows), then what the rows are, their counts per language
//! and label, the filter funnel that kept them, their lineage (base model, adapter and
//! config hashes), the evaluation of the annotator that wrote them, and how to load them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::datatypes::DataType;

use crate::eval;
use crate::release::{ReleaseFormat, CHECKSUMS};
use crate::report::{FunnelSummary, IterationReport};
use crate::report_sections::{judge_and_classes_markdown, learning_markdown};
use automaldesc_common::manifest::Manifest;
use automaldesc_common::schema::{ArrowRow, RejectedRow, ReleaseRecord};
use automaldesc_common::types::Language;

/// One split of a released dataset, as the card lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardSplit {
    /// The `datasets` config it belongs to ("default" or "rejected").
    pub config: String,
    pub split: String,
    /// Its files, as a glob relative to the dataset's root.
    pub glob: String,
    pub files: usize,
    pub rows: u64,
    pub what: String,
}

/// Everything a card says.
pub struct DatasetCard<'a> {
    pub run: &'a str,
    /// How the run ended ("succeeded", or how far a failed run got).
    pub run_phase: &'a str,
    pub iteration: u32,
    /// A Hugging Face license identifier ("apache-2.0", "cc-by-4.0", "other", "unknown").
    pub license: &'a str,
    pub format: ReleaseFormat,
    pub splits: Vec<CardSplit>,
    pub accepted: &'a [ReleaseRecord],
    /// The expert labels, when they are part of the release.
    pub seed: Option<&'a [ReleaseRecord]>,
    pub funnel: &'a FunnelSummary,
    /// The aggregate stage's manifest: the hashes of the base model, adapter and config.
    pub manifest: &'a Manifest,
    /// The report of the iteration: the evaluation of its annotator on the test set.
    pub report: &'a IterationReport,
}

/// Scripts per language, benign and malicious.
pub fn counts(rows: &[ReleaseRecord]) -> BTreeMap<Language, [u64; 2]> {
    let mut out = BTreeMap::new();
    for r in rows {
        out.entry(r.language).or_insert([0, 0])[r.label.as_u8() as usize] += 1;
    }
    out
}

/// The columns of a config and their Hugging Face `datasets` types, from the Arrow schema
/// the files are written with.
fn features(config: &str) -> Vec<(String, &'static str)> {
    let schema = if config == "rejected" {
        RejectedRow::schema()
    } else {
        ReleaseRecord::schema()
    };
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), hf_dtype(f.data_type())))
        .collect()
}

/// The `datasets` name of an Arrow type the release uses.
fn hf_dtype(t: &DataType) -> &'static str {
    match t {
        DataType::UInt8 => "uint8",
        DataType::UInt32 => "uint32",
        DataType::Float32 => "float32",
        _ => "string",
    }
}

/// The Hugging Face size bucket of a dataset of `n` rows.
fn size_category(n: u64) -> &'static str {
    match n {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        _ => "1M<n<10M",
    }
}

impl DatasetCard<'_> {
    /// The card as Markdown with its YAML header.
    pub fn markdown(&self) -> String {
        let mut s = self.header();
        let annotator = &self.report.annotator;
        let _ = writeln!(
            s,
            "\n# Labelled scripts: run `{}`, iteration {}\n",
            self.run, self.iteration
        );
        let _ = writeln!(
            s,
            "Pseudo-labels that annotator {annotator} of the automaldesc self-training run \
             `{}` (run {}) wrote for unlabelled scripts and that the filter funnel kept: for \
             each script its sha256, whether it is malicious (`label` 1) or benign (0), its \
             language and a technical summary. No script text is included: join the rows to \
             the scripts you hold by sha256 (`automaldesc corpus import-labels FILE --corpus \
             CORPUS --out DIR` does that).",
            self.run, self.run_phase
        );
        self.files(&mut s);
        self.columns(&mut s);
        self.counts_section(&mut s);
        self.funnel_section(&mut s);
        self.lineage(&mut s);
        let _ = writeln!(
            s,
            "\n## Evaluation of the annotator\n\n{annotator} (model `{}`) on the run's test set:\n",
            self.report.model_id
        );
        s.push_str(&eval::markdown(&self.report.evaluation));
        s.push_str(&learning_markdown(
            self.report.label_scores.as_ref(),
            None,
            None,
            self.report.summary_reference.as_deref(),
        ));
        self.previous(&mut s);
        self.loading(&mut s);
        s
    }

    fn header(&self) -> String {
        let total: u64 = self
            .splits
            .iter()
            .filter(|p| p.config == "default")
            .map(|p| p.rows)
            .sum();
        let mut s = String::from("---\n");
        let _ = writeln!(s, "license: {}", self.license);
        let _ = writeln!(
            s,
            "pretty_name: \"automaldesc run {}, iteration {}\"",
            self.run, self.iteration
        );
        s.push_str("language:\n- en\n");
        s.push_str("task_categories:\n- text-classification\n- summarization\n");
        s.push_str("tags:\n- malware\n- security\n- scripts\n- pseudo-labels\n");
        let _ = writeln!(s, "size_categories:\n- {}", size_category(total));
        let configs = self.loadable_configs();
        s.push_str("dataset_info:\n");
        for config in &configs {
            let _ = writeln!(s, "- config_name: {config}\n  features:");
            for (name, dtype) in features(config) {
                let _ = writeln!(s, "  - name: {name}\n    dtype: {dtype}");
            }
        }
        s.push_str("configs:\n");
        for config in &configs {
            let _ = writeln!(s, "- config_name: {config}\n  data_files:");
            for p in self.loadable().filter(|p| p.config == *config) {
                let _ = writeln!(s, "  - split: {}\n    path: {}", p.split, p.glob);
            }
        }
        s.push_str("---\n");
        s
    }

    /// The splits the YAML header names: those with rows (`datasets` cannot load an empty
    /// split; its file is still there, with the columns and no rows).
    fn loadable(&self) -> impl Iterator<Item = &CardSplit> {
        self.splits.iter().filter(|p| p.rows > 0)
    }

    /// The configs with at least one loadable split, in order.
    fn loadable_configs(&self) -> Vec<&str> {
        let mut configs: Vec<&str> = self.loadable().map(|p| p.config.as_str()).collect();
        configs.dedup();
        configs
    }

    fn files(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n## Files\n\n| config | split | files | rows | what |\n|---|---|---|---|---|"
        );
        for p in &self.splits {
            let _ = writeln!(
                s,
                "| {} | {} | `{}` ({}) | {} | {} |",
                p.config, p.split, p.glob, p.files, p.rows, p.what
            );
        }
        let empty: Vec<&str> = self
            .splits
            .iter()
            .filter(|p| p.rows == 0)
            .map(|p| p.glob.as_str())
            .collect();
        if !empty.is_empty() {
            let _ = writeln!(
                s,
                "\nEmpty, so not in the header's configs (`datasets` cannot load an empty \
                 split): `{}`; each is one file with the columns and no rows.",
                empty.join("`, `")
            );
        }
        let _ = writeln!(
            s,
            "\n`{CHECKSUMS}` holds the sha256 of every other file (`sha256sum -c {CHECKSUMS}`)."
        );
    }

    fn columns(&self, s: &mut String) {
        s.push_str(
            "\n## Columns\n\n| column | type | meaning |\n|---|---|---|\n\
             | sha256 | string | sha256 of the script's exact bytes |\n\
             | label | uint8 | 1 malicious, 0 benign |\n\
             | language | string | bash, batch, javascript, powershell or python |\n\
             | summary | string | a technical analysis of what the script does |\n\
             | provenance | string | `seed` (or what the expert labels carry), or \
             `iter-k:run=RUN:model=BASE:adapter=ADAPTER` (sha256 prefixes) for a pseudo-label |\n\
             | label_prob | float32 | the annotator's probability of its label; null for \
             an expert label |\n\
             | iteration | uint32 | the iteration whose annotator wrote the label; 0 for an \
             expert label |\n",
        );
        if self.splits.iter().any(|p| p.config == "rejected") {
            s.push_str(
                "\nThe `rejected` config: `sha256`, `stage` (the funnel stage that rejected \
                 the script, e.g. `2-well-formed`), `reason` (e.g. `truncated`) and `detail` \
                 (what the check saw).\n",
            );
        }
    }

    fn counts_section(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Scripts per language and label\n");
        let mut tables = vec![("train (pseudo-labels)", self.accepted)];
        tables.extend(self.seed.map(|r| ("seed (expert labels)", r)));
        for (name, rows) in tables {
            let _ = writeln!(
                s,
                "{name}:\n\n| language | benign | malicious | all |\n|---|---|---|---|"
            );
            let c = counts(rows);
            let mut all = [0u64; 2];
            for (lang, n) in &c {
                all[0] += n[0];
                all[1] += n[1];
                let _ = writeln!(s, "| {lang} | {} | {} | {} |", n[0], n[1], n[0] + n[1]);
            }
            let _ = writeln!(
                s,
                "| all | {} | {} | {} |\n",
                all[0],
                all[1],
                all[0] + all[1]
            );
        }
    }

    fn funnel_section(&self, s: &mut String) {
        let f = self.funnel;
        let _ = writeln!(
            s,
            "## The filter funnel\n\nEach unlabelled script leaves at the first check it \
             fails, in the published order.\n\n| stage | rejected | remaining |\n|---|---|---|"
        );
        f.write_rows(s, "0-unprocessed (quarantined before the filter)");
        let _ = writeln!(
            s,
            "\nAccepted {} of {} ({:.1}%); {} of them are seed scripts, which keep their \
             expert label and are not in `train`.",
            f.accepted,
            f.unlabelled,
            100.0 * f.accepted as f64 / f.unlabelled.max(1) as f64,
            f.accepted_in_seed
        );
        s.push_str(&judge_and_classes_markdown(f));
    }

    /// The annotator against the one before it on the same test scripts (McNemar).
    fn previous(&self, s: &mut String) {
        if let Some((name, cmp)) = &self.report.previous {
            let _ = writeln!(
                s,
                "
### Against {name}, the annotator before it ({} scripts)
",
                cmp.scripts
            );
            s.push_str(&eval::comparison_markdown(cmp));
        }
    }

    fn lineage(&self, s: &mut String) {
        let m = self.manifest;
        let none = "none".to_string();
        let _ = writeln!(
            s,
            "\n## Lineage\n\n| | |\n|---|---|\n| run | `{}` |\n| iteration | {} |\n\
             | annotator | {} |\n| base model | `{}` |\n| adapter (LoRA) | `{}` |\n\
             | config hash | `sha256:{}` |\n| training set of the next iteration | {} rows \
             (seed {} + accepted {}) |",
            m.run_id,
            m.iteration,
            self.report.annotator,
            m.model_id.as_ref().unwrap_or(&none),
            m.adapter_id.as_ref().unwrap_or(&none),
            m.config_hash,
            self.funnel.training_set,
            self.funnel.seed,
            self.funnel
                .accepted
                .saturating_sub(self.funnel.accepted_in_seed)
        );
    }

    fn loading(&self, s: &mut String) {
        let ext = self.format.extension();
        let pandas = match self.format {
            ReleaseFormat::Parquet => "pd.read_parquet(f)",
            ReleaseFormat::Jsonl => "pd.read_json(f, lines=True)",
        };
        let _ = writeln!(
            s,
            "\n## Loading\n\nWith pandas:\n\n```python\nimport glob\nimport pandas as pd\n\n\
             train = pd.concat({pandas} for f in sorted(glob.glob(\"data/train-*.{ext}\")))\n\
             ```\n\nWith Hugging Face `datasets` (the configs above name the files):\n\n\
             ```python\nfrom datasets import load_dataset\n\n\
             ds = load_dataset(\"path/to/this/directory\")  # ds[\"train\"]{}{}\n```",
            if self.loadable().any(|p| p.split == "seed") {
                ", ds[\"seed\"]"
            } else {
                ""
            },
            if self.loadable().any(|p| p.config == "rejected") {
                "\nrejected = load_dataset(\"path/to/this/directory\", \"rejected\")"
            } else {
                ""
            }
        );
        if self.format == ReleaseFormat::Parquet {
            let _ = writeln!(
                s,
                "\nWith DuckDB: `SELECT language, label, count(*) FROM 'data/train-*.parquet' \
                 GROUP BY ALL`."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Evaluation;
    use crate::report_sections::LabelScores;
    use automaldesc_common::types::Label;

    fn record(i: usize, language: Language, label: Label, seed: bool) -> ReleaseRecord {
        ReleaseRecord {
            sha256: format!("{i:064x}"),
            label,
            language,
            summary: "Lists files.".into(),
            provenance: if seed {
                "seed".into()
            } else {
                "iter-2:run=r7".into()
            },
            label_prob: (!seed).then_some(0.95),
            iteration: if seed { 0 } else { 2 },
        }
    }

    fn funnel() -> FunnelSummary {
        FunnelSummary {
            unlabelled: 10,
            unprocessed: 1,
            filtered: 9,
            rejected: [("truncated", 4), ("low-confidence", 1)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            remaining: vec![
                ("1-empty".into(), 9),
                ("2-well-formed".into(), 5),
                ("3-label-agreement".into(), 5),
                ("4-confidence".into(), 4),
                ("5-judge".into(), 4),
                ("6-language".into(), 4),
            ],
            accepted: 4,
            accepted_in_seed: 1,
            seed: 2,
            training_set: 5,
            accepted_by_label: [("benign", 1), ("malicious", 3)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ..FunnelSummary::default()
        }
    }

    /// A card with the seed split (of `seed_rows` rows) or without it.
    fn card_text(format: ReleaseFormat, with_seed: bool, seed_rows: u64) -> String {
        let accepted = vec![
            record(1, Language::Bash, Label::Malicious, false),
            record(2, Language::Bash, Label::Benign, false),
            record(3, Language::Python, Label::Malicious, false),
        ];
        let seed = vec![
            record(4, Language::Batch, Label::Benign, true),
            record(5, Language::Batch, Label::Benign, true),
        ];
        let manifest = Manifest {
            run_id: "r7".into(),
            iteration: 2,
            stage: "aggregate".into(),
            files: Vec::new(),
            config_hash: "c0ffee".into(),
            model_id: Some("sha256:base1234".into()),
            adapter_id: Some("sha256:adapt5678".into()),
            counts: BTreeMap::new(),
        };
        let report = IterationReport {
            run: "r7".into(),
            iteration: 2,
            annotator: "V2".into(),
            model_id: "tiny.gguf+adapter".into(),
            evaluation: Evaluation {
                scripts: 18,
                ..Evaluation::default()
            },
            previous: None,
            funnel: None,
            preference: None,
            judge_check: None,
            history: Vec::new(),
            label_scores: Some(LabelScores {
                samples: 18,
                auc: Some(0.875),
                label_nll: Some(0.4321),
            }),
            training: None,
            prompt: None,
            summary_reference: None,
        };
        let ext = format.extension();
        let mut splits = vec![CardSplit {
            config: "default".into(),
            split: "train".into(),
            glob: format!("data/train-*.{ext}"),
            files: 1,
            rows: 3,
            what: "accepted pseudo-labels".into(),
        }];
        if with_seed {
            splits.push(CardSplit {
                config: "default".into(),
                split: "seed".into(),
                glob: format!("data/seed-*.{ext}"),
                files: 1,
                rows: seed_rows,
                what: "expert labels".into(),
            });
        }
        splits.push(CardSplit {
            config: "rejected".into(),
            split: "train".into(),
            glob: format!("rejected/rejected-*.{ext}"),
            files: 1,
            rows: 6,
            what: "rejected scripts".into(),
        });
        let f = funnel();
        DatasetCard {
            run: "r7",
            run_phase: "succeeded",
            iteration: 2,
            license: "cc-by-4.0",
            format,
            splits,
            accepted: &accepted,
            seed: with_seed.then_some(seed.as_slice()),
            funnel: &f,
            manifest: &manifest,
            report: &report,
        }
        .markdown()
    }

    #[test]
    fn the_yaml_header_names_every_split_under_its_config() {
        let text = card_text(ReleaseFormat::Parquet, true, 2);
        let header = text.strip_prefix("---\n").unwrap();
        let header = &header[..header.find("\n---\n").unwrap()];
        assert!(header.contains("license: cc-by-4.0\n"), "{header}");
        assert!(header.contains("size_categories:\n- n<1K\n"), "{header}");
        assert!(
            header.contains("task_categories:\n- text-classification\n"),
            "{header}"
        );
        let configs = &header[header.find("configs:\n").unwrap()..];
        assert_eq!(
            configs,
            "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: \
             data/train-*.parquet\n  - split: seed\n    path: data/seed-*.parquet\n\
             - config_name: rejected\n  data_files:\n  - split: train\n    path: \
             rejected/rejected-*.parquet"
        );
    }

    #[test]
    fn the_body_counts_the_rows_and_carries_the_funnel_lineage_and_evaluation() {
        let text = card_text(ReleaseFormat::Parquet, true, 2);
        assert!(
            text.contains("| bash | 1 | 1 | 2 |\n| python | 0 | 1 | 1 |\n| all | 1 | 2 | 3 |"),
            "{text}"
        );
        assert!(
            text.contains("| batch | 2 | 0 | 2 |\n| all | 2 | 0 | 2 |"),
            "{text}"
        );
        assert!(
            text.contains("| 0-unprocessed (quarantined before the filter) | 1 | 9 |"),
            "{text}"
        );
        assert!(
            text.contains("| 2-well-formed | malformed 0, truncated 4 | 5 |"),
            "{text}"
        );
        assert!(
            text.contains("| 4-confidence | low-confidence 1 | 4 |"),
            "{text}"
        );
        assert!(
            text.contains("Accepted 4 of 10 (40.0%); 1 of them are seed scripts"),
            "{text}"
        );
        assert!(
            text.contains("| base model | `sha256:base1234` |"),
            "{text}"
        );
        assert!(
            text.contains("| adapter (LoRA) | `sha256:adapt5678` |"),
            "{text}"
        );
        assert!(text.contains("| config hash | `sha256:c0ffee` |"), "{text}");
        assert!(text.contains("(seed 2 + accepted 3)"), "{text}");
        assert!(
            text.contains("V2 (model `tiny.gguf+adapter`) on the run's test set:\n\n18 scripts"),
            "{text}"
        );
        assert!(
            text.contains(
                "pd.read_parquet(f) for f in sorted(glob.glob(\"data/train-*.parquet\"))"
            ),
            "{text}"
        );
        assert!(text.contains("ds[\"train\"], ds[\"seed\"]"), "{text}");
        assert!(text.contains("`SHA256SUMS`"), "{text}");
        assert!(
            text.contains("P(malicious) over 18 samples: AUC 0.875, label NLL 0.4321"),
            "{text}"
        );
        assert!(
            text.contains("accepted by label: benign 1, malicious 3"),
            "{text}"
        );
    }

    #[test]
    fn the_header_types_the_columns_and_leaves_an_empty_split_out_of_the_configs() {
        let text = card_text(ReleaseFormat::Parquet, true, 0);
        let header = &text[..text[4..].find("\n---\n").unwrap()];
        assert!(
            header.contains(
                "dataset_info:\n- config_name: default\n  features:\n  - name: sha256\n    \
                 dtype: string\n  - name: label\n    dtype: uint8\n"
            ),
            "{header}"
        );
        assert!(
            header.contains("  - name: label_prob\n    dtype: float32\n  - name: iteration\n    dtype: uint32\n"),
            "{header}"
        );
        assert!(
            header.contains("- config_name: rejected\n  features:\n  - name: sha256\n"),
            "{header}"
        );
        assert!(!header.contains("split: seed"), "{header}");
        assert!(
            text.contains(
                "Empty, so not in the header's configs (`datasets` cannot load an \
                 empty split): `data/seed-*.parquet`"
            ),
            "{text}"
        );
        assert!(!text.contains("ds[\"seed\"]"), "{text}");
    }

    #[test]
    fn a_jsonl_card_without_the_seed_says_how_to_read_jsonl() {
        let text = card_text(ReleaseFormat::Jsonl, false, 0);
        assert!(text.contains("path: data/train-*.jsonl"), "{text}");
        assert!(!text.contains("split: seed"), "{text}");
        assert!(!text.contains("seed (expert labels):"), "{text}");
        assert!(text.contains("pd.read_json(f, lines=True)"), "{text}");
        assert!(!text.contains("DuckDB"), "{text}");
    }
}
