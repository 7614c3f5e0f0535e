//! The aggregate stage on real Parquet: every distinct unlabelled script ends in exactly one
//! of the next training set and the rejected set (a script without a decision is rejected
//! as unprocessed), the funnel and manifest agree with the files, and decisions that cannot
//! be trusted (a script outside the corpus, two different decisions) fail the task.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use automaldesc_common::executor::{Executor, TaskInput};
use automaldesc_common::manifest::Manifest;
use automaldesc_common::parquet_io::{dataset_layout, read_dataset, write_dataset, WriterOptions};
use automaldesc_common::schema::{CorpusRow, DecisionRow, FunnelReason, LabelledRow, RejectedRow};
use automaldesc_common::store::{block_on, child, open_store};
use automaldesc_common::{Label, Language};
use automaldesc_loop::report::FunnelSummary;
use automaldesc_loop::stages::aggregate::AggregateExecutor;

fn script(i: u32) -> CorpusRow {
    CorpusRow::new(format!("echo script {i}\n").into_bytes(), "t", None)
}

fn accepted(row: &CorpusRow) -> DecisionRow {
    DecisionRow {
        sha256: row.sha256.clone(),
        content: row.content.clone(),
        accepted: true,
        reason: None,
        detail: String::new(),
        language: Some(Language::Bash),
        label: Some(Label::Benign),
        summary: Some("Prints a line.".into()),
        temperature: 0.4,
        label_prob: 0.97,
        generated_tokens: 300,
        saved_tokens: 0,
    }
}

fn rejected(row: &CorpusRow, reason: FunnelReason, detail: &str) -> DecisionRow {
    DecisionRow {
        accepted: false,
        reason: Some(reason),
        detail: detail.into(),
        language: None,
        label: None,
        summary: None,
        temperature: f32::NAN,
        label_prob: f32::NAN,
        ..accepted(row)
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    corpus: Vec<CorpusRow>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap().to_string();
        let corpus: Vec<CorpusRow> = (0..5).map(script).collect();
        let seed: Vec<CorpusRow> = (100..102).map(script).collect();
        let labels: Vec<LabelledRow> = seed
            .iter()
            .map(|s| LabelledRow {
                sha256: s.sha256.clone(),
                language: Language::Bash,
                label: Label::Malicious,
                summary: "Expert summary.".into(),
                behaviours: Vec::new(),
                provenance: "seed".into(),
            })
            .collect();
        block_on(async {
            let (store, prefix) = open_store(&root).unwrap();
            // The corpus holds script 2 twice: it is one script.
            let mut unlabelled = corpus.clone();
            unlabelled.push(corpus[2].clone());
            for (sub, rows) in [("unlabelled", unlabelled), ("seed/scripts", seed)] {
                write_dataset(
                    store.clone(),
                    &child(&prefix, sub),
                    rows,
                    WriterOptions::default(),
                )
                .await
                .unwrap();
            }
            write_dataset(
                store,
                &child(&prefix, "seed/labels"),
                labels,
                WriterOptions::default(),
            )
            .await
            .unwrap();
        })
        .unwrap();
        Self { dir, corpus }
    }

    fn root(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }

    /// Runs the aggregate executor over `decisions`, written as the task's input.
    fn run(&self, name: &str, decisions: Vec<DecisionRow>) -> Result<String, String> {
        let root = self.root();
        let ranges = block_on(async {
            let (store, prefix) = open_store(&root).unwrap();
            let dir = child(&prefix, &format!("decisions-{name}"));
            write_dataset(store.clone(), &dir, decisions, WriterOptions::default())
                .await
                .unwrap();
            dataset_layout(store, &dir)
                .await
                .unwrap()
                .iter()
                .map(|l| (l.path.to_string(), 0, l.num_row_groups()))
                .collect::<Vec<_>>()
        })
        .unwrap();
        let out = format!("{root}/out-{name}");
        let config = serde_json::json!({
            "run": "r", "iteration": 1, "seed": format!("{root}/seed"),
            "corpus": format!("{root}/unlabelled"), "shard_bytes": 1 << 20,
            "config_hash": "c0ffee", "base_model_sha256": "b".repeat(64),
        });
        let task = TaskInput {
            input_root: root.clone(),
            ranges,
            output_prefix: out.clone(),
            config_json: config.to_string(),
            cancel: Arc::new(AtomicBool::new(false)),
            telemetry: Default::default(),
        };
        AggregateExecutor
            .run(&task)
            .map(|_| out)
            .map_err(|e| e.to_string())
    }
}

#[test]
fn every_script_is_accepted_or_rejected_once_and_the_files_agree() {
    let f = Fixture::new();
    let c = &f.corpus;
    // Scripts 3 and 4 never reached the filter (quarantined earlier).
    let out = f
        .run(
            "ok",
            vec![
                accepted(&c[0]),
                rejected(&c[1], FunnelReason::Truncated, "sample 0 cut at 512 tokens"),
                rejected(&c[2], FunnelReason::LabelDisagreement, "labels 0,1,1"),
                // Script 2 occurs twice in the corpus and is decided twice, alike.
                rejected(&c[2], FunnelReason::LabelDisagreement, "labels 0,1,1"),
            ],
        )
        .unwrap();
    let read = |p: &str| std::fs::read(format!("{out}/{p}")).unwrap();
    let funnel: FunnelSummary = serde_json::from_slice(&read("funnel.json")).unwrap();
    assert!(funnel.adds_up(), "{funnel:?}");
    assert_eq!(
        (
            funnel.unlabelled,
            funnel.unprocessed,
            funnel.filtered,
            funnel.accepted
        ),
        (5, 2, 3, 1)
    );
    assert_eq!(funnel.rejected["truncated"], 1);
    assert_eq!(funnel.rejected["label-disagreement"], 1);
    assert_eq!((funnel.seed, funnel.training_set), (2, 3));

    let (labels, scripts, rejected_rows) = block_on(async {
        let (store, prefix) = open_store(&out).unwrap();
        let labels: Vec<LabelledRow> = read_dataset(store.clone(), &child(&prefix, "train/labels"))
            .await
            .unwrap();
        let scripts: Vec<CorpusRow> = read_dataset(store.clone(), &child(&prefix, "train/scripts"))
            .await
            .unwrap();
        let rejected: Vec<RejectedRow> = read_dataset(store, &child(&prefix, "rejected"))
            .await
            .unwrap();
        (labels, scripts, rejected)
    })
    .unwrap();
    let new: Vec<&LabelledRow> = labels.iter().filter(|l| l.provenance != "seed").collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].sha256, c[0].sha256);
    assert!(new[0]
        .provenance
        .starts_with("iter-1:run=r:model=bbbbbbbbbbbbbbbb:adapter=none"));
    let label_shas: BTreeSet<&str> = labels.iter().map(|l| l.sha256.as_str()).collect();
    let script_shas: BTreeSet<&str> = scripts.iter().map(|s| s.sha256.as_str()).collect();
    assert_eq!(label_shas, script_shas, "every label has its script");

    let rejected_shas: BTreeSet<&str> = rejected_rows.iter().map(|r| r.sha256.as_str()).collect();
    assert_eq!(rejected_shas.len(), rejected_rows.len(), "rejected once");
    assert!(rejected_shas.is_disjoint(&label_shas));
    let all: BTreeSet<&str> = c.iter().map(|s| s.sha256.as_str()).collect();
    let covered: BTreeSet<&str> = rejected_shas
        .union(&[c[0].sha256.as_str()].into())
        .copied()
        .collect();
    assert_eq!(covered, all);
    let unprocessed: BTreeSet<&str> = rejected_rows
        .iter()
        .filter(|r| r.stage == "0-unprocessed")
        .map(|r| r.sha256.as_str())
        .collect();
    assert_eq!(
        unprocessed,
        [c[3].sha256.as_str(), c[4].sha256.as_str()].into()
    );

    let manifest = Manifest::from_json(&String::from_utf8(read("manifest.json")).unwrap()).unwrap();
    assert_eq!((manifest.run_id.as_str(), manifest.iteration), ("r", 1));
    assert_eq!(manifest.config_hash, "c0ffee");
    assert_eq!(manifest.adapter_id.as_deref(), Some("sha256:none"));
    assert_eq!(manifest.counts["rejected"], 4);
    assert_eq!(manifest.total_rows(), 6, "3 labels and 3 scripts");
    for file in &manifest.files {
        let bytes = read(&file.path);
        assert_eq!(bytes.len() as u64, file.bytes, "{}", file.path);
        assert_eq!(
            automaldesc_common::sha256_hex(&bytes),
            file.sha256,
            "{}",
            file.path
        );
    }
}

#[test]
fn untrustworthy_decisions_fail_the_task() {
    let f = Fixture::new();
    let c = &f.corpus;
    let foreign = f.run(
        "foreign",
        vec![accepted(&script(999)), accepted(&c[0]), accepted(&c[1])],
    );
    assert!(foreign.unwrap_err().contains("not in the corpus"));
    let conflict = f.run(
        "conflict",
        vec![
            accepted(&c[0]),
            rejected(
                &c[0],
                FunnelReason::JudgeDisagreement,
                "the judge disagreed",
            ),
            accepted(&c[1]),
        ],
    );
    assert!(conflict.unwrap_err().contains("two different decisions"));
    // A rejection must say which check rejected it.
    let unexplained = f.run(
        "unexplained",
        vec![
            DecisionRow {
                reason: None,
                ..rejected(&c[0], FunnelReason::Empty, "")
            },
            accepted(&c[1]),
            accepted(&c[2]),
        ],
    );
    let err = unexplained.unwrap_err();
    assert!(
        err.contains("rejected but has no rejection reason"),
        "{err}"
    );
}
