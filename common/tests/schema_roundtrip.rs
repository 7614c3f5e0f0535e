//! Every schema survives a trip through Parquet, in memory and on disk, and reading reports
//! wrong or missing columns by name.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, ListArray, ListBuilder, StringArray, StringDictionaryBuilder,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int8Type, Schema};
use arrow::record_batch::RecordBatch;
use automaldesc_common::manifest::{Manifest, ManifestFile};
use automaldesc_common::parquet_io::{read_dataset, write_dataset, WriterOptions};
use automaldesc_common::schema::*;
use automaldesc_common::store::open_store;
use automaldesc_common::{Label, Language};

fn corpus_rows() -> Vec<CorpusRow> {
    let mut a = CorpusRow::new(b"echo hi\n".to_vec(), "bin/a.sh", Some(Language::Bash));
    a.noisy_label = Some(Label::Malicious);
    let b = CorpusRow::new(vec![0xff, 0xfe, b'x', 0], "synth:dropper", None);
    vec![a, b]
}

fn labelled_rows() -> Vec<LabelledRow> {
    vec![
        LabelledRow {
            sha256: "a".repeat(64),
            language: Language::Powershell,
            label: Label::Malicious,
            summary: "downloads and runs a payload".into(),
            behaviours: vec!["download".into(), "exec".into()],
            provenance: "iter-2:model=abc:adapter=x1".into(),
        },
        LabelledRow {
            sha256: "b".repeat(64),
            language: Language::Python,
            label: Label::Benign,
            summary: "prints a table".into(),
            behaviours: vec![],
            provenance: "seed".into(),
        },
    ]
}

fn funnel_rows() -> Vec<FunnelRow> {
    vec![
        FunnelRow {
            stage: "generate".into(),
            reason: "kept".into(),
            count: 10,
        },
        FunnelRow {
            stage: "filter".into(),
            reason: "disagree".into(),
            count: 3,
        },
    ]
}

fn rejected_rows() -> Vec<RejectedRow> {
    vec![RejectedRow {
        sha256: "e".repeat(64),
        stage: "filter".into(),
        reason: "low_confidence".into(),
        detail: "p=0.55 < 0.9".into(),
    }]
}

fn answers_rows() -> Vec<AnswersRow> {
    let unjudged = AnswersRow {
        sha256: "f".repeat(64),
        content: b"echo hi\n".to_vec(),
        temperatures: vec![0.4, 0.6],
        responses: vec![
            r#"{"language": "bash", "label": 0, "summary": "Prints hi."}"#.into(),
            r#"{"language": "bash", "label": 1"#.into(),
        ],
        label_probs: vec![0.97, 0.51],
        finishes: vec![FinishReason::Stop, FinishReason::EarlyStopDisagree],
        generated_tokens: 30,
        saved_tokens: 490,
        model_id: "m@1+lora@2".into(),
        judge_labels: Vec::new(),
        judge_probs: Vec::new(),
    };
    let judged = AnswersRow {
        sha256: "0".repeat(64),
        judge_labels: vec![JudgeVerdict::Voted(Label::Benign), JudgeVerdict::NotAsked],
        judge_probs: vec![0.8, -1.0],
        ..unjudged.clone()
    };
    vec![unjudged, judged]
}

fn decision_rows() -> Vec<DecisionRow> {
    vec![
        DecisionRow {
            sha256: "1".repeat(64),
            content: b"rm -rf /tmp/x".to_vec(),
            accepted: true,
            reason: None,
            detail: String::new(),
            language: Some(Language::Bash),
            label: Some(Label::Benign),
            summary: Some("Cleans a temporary directory.".into()),
            temperature: 0.4,
            label_prob: 0.99,
            generated_tokens: 420,
            saved_tokens: 0,
        },
        DecisionRow {
            sha256: "2".repeat(64),
            content: b"x".to_vec(),
            accepted: false,
            reason: Some(FunnelReason::LabelDisagreement),
            detail: "labels 0,1,1".into(),
            language: None,
            label: None,
            summary: None,
            temperature: -1.0,
            label_prob: -1.0,
            generated_tokens: 12,
            saved_tokens: 1012,
        },
    ]
}

async fn round_trip<R: ArrowRow + PartialEq + std::fmt::Debug>(url: &str, rows: Vec<R>) {
    // Batch conversion alone.
    let batch = R::to_batch(&rows).unwrap();
    assert_eq!(batch.schema(), R::schema());
    assert_eq!(R::from_batch(&batch).unwrap(), rows);
    // Through Parquet.
    let (store, prefix) = open_store(url).unwrap();
    let files = write_dataset(
        store.clone(),
        &prefix,
        rows.clone(),
        WriterOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].rows, rows.len() as u64);
    let back: Vec<R> = read_dataset(store, &prefix).await.unwrap();
    assert_eq!(back, rows, "round trip through {url}");
}

async fn all_round_trips(base: &str) {
    round_trip(&format!("{base}/corpus"), corpus_rows()).await;
    round_trip(&format!("{base}/labelled"), labelled_rows()).await;
    round_trip(&format!("{base}/funnel"), funnel_rows()).await;
    round_trip(&format!("{base}/rejected"), rejected_rows()).await;
    round_trip(&format!("{base}/answers"), answers_rows()).await;
    round_trip(&format!("{base}/decisions"), decision_rows()).await;
}

#[test]
fn inconsistent_answers_and_decisions_are_refused() {
    let mut short = answers_rows();
    short[0].label_probs.pop();
    let batch = AnswersRow::to_batch(&short).unwrap();
    let err = AnswersRow::from_batch(&batch).unwrap_err().to_string();
    assert!(
        err.contains("per-sample lists of different lengths"),
        "{err}"
    );
    let mut half_judged = answers_rows();
    half_judged[1].judge_labels.pop();
    let batch = AnswersRow::to_batch(&half_judged).unwrap();
    assert!(AnswersRow::from_batch(&batch).is_err());
    let mut bare = decision_rows();
    bare[0].summary = None;
    let batch = DecisionRow::to_batch(&bare).unwrap();
    let err = DecisionRow::from_batch(&batch).unwrap_err().to_string();
    assert!(err.contains("lacks language, label or summary"), "{err}");
}

#[tokio::test]
async fn every_schema_round_trips_in_memory() {
    all_round_trips("memory://schema-rt/run1").await;
}

#[tokio::test]
async fn every_schema_round_trips_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    all_round_trips(dir.path().to_str().unwrap()).await;
    assert!(dir.path().join("corpus/part-00000.parquet").is_file());
}

#[test]
fn wrong_type_and_missing_column_are_named() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("count", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(StringArray::from(vec!["b"])),
        Arc::new(StringArray::from(vec!["3"])),
    ];
    let b = RecordBatch::try_new(schema, cols).unwrap();
    let err = FunnelRow::from_batch(&b).unwrap_err().to_string();
    assert!(
        err.contains("`count`") && err.contains("Utf8") && err.contains("UInt64"),
        "{err}"
    );

    let schema = Arc::new(Schema::new(vec![
        Field::new("stage", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(UInt64Array::from(vec![1u64])),
    ];
    let b = RecordBatch::try_new(schema, cols).unwrap();
    let err = FunnelRow::from_batch(&b).unwrap_err().to_string();
    assert!(err.contains("`reason`") && err.contains("missing"), "{err}");
}

#[test]
fn bad_values_are_named_by_row() {
    let batch = LabelledRow::to_batch(&labelled_rows()).unwrap();
    // Swap in an unknown language on row 1.
    let mut cols = batch.columns().to_vec();
    cols[1] = Arc::new(StringArray::from(vec!["powershell", "ruby"]));
    let bad = RecordBatch::try_new(batch.schema(), cols).unwrap();
    let err = LabelledRow::from_batch(&bad).unwrap_err().to_string();
    assert!(
        err.contains("`language` row 1") && err.contains("ruby"),
        "{err}"
    );
}

/// The names behind the codes of dictionary list column `name` at `row`.
fn stored_names(batch: &RecordBatch, name: &str, row: usize) -> Vec<String> {
    let list = batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap()
        .value(row);
    let dict = list
        .as_any()
        .downcast_ref::<DictionaryArray<Int8Type>>()
        .unwrap();
    let names = dict
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    dict.keys()
        .iter()
        .map(|k| names.value(k.unwrap() as usize).to_string())
        .collect()
}

/// Column `name` of `batch` rebuilt as a list of dictionary values (the builder's own
/// dictionary order), with row `row`'s items replaced by `bad`.
fn with_bad_item(batch: &RecordBatch, name: &str, row: usize, bad: &str) -> RecordBatch {
    let mut b = ListBuilder::new(StringDictionaryBuilder::<Int8Type>::new());
    for r in 0..batch.num_rows() {
        for v in stored_names(batch, name, r) {
            b.values().append_value(if r == row { bad } else { &v });
        }
        b.append(true);
    }
    let i = batch.schema().index_of(name).unwrap();
    let mut cols = batch.columns().to_vec();
    cols[i] = Arc::new(b.finish());
    RecordBatch::try_new(batch.schema(), cols).unwrap()
}

#[test]
fn finish_reasons_and_judge_verdicts_are_stored_as_dictionaries_and_checked_on_reading() {
    let mut rows = answers_rows();
    rows[1].judge_labels = vec![JudgeVerdict::Voted(Label::Malicious), JudgeVerdict::Skipped];
    let batch = AnswersRow::to_batch(&rows).unwrap();
    let dictionary = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
    for column in ["finishes", "judge_labels"] {
        let DataType::List(item) = batch
            .schema()
            .field_with_name(column)
            .unwrap()
            .data_type()
            .clone()
        else {
            panic!("{column} is not a list");
        };
        assert_eq!(item.data_type(), &dictionary, "{column}");
    }
    assert_eq!(
        stored_names(&batch, "finishes", 0),
        ["stop", "early_stop_disagree"]
    );
    assert_eq!(
        stored_names(&batch, "judge_labels", 1),
        ["malicious", "skipped"]
    );
    assert_eq!(AnswersRow::from_batch(&batch).unwrap(), rows);
    // A name no stage writes is refused, naming the column and the row.
    for (column, bad) in [("finishes", "early_stop_maybe"), ("judge_labels", "1")] {
        let err = AnswersRow::from_batch(&with_bad_item(&batch, column, 1, bad))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{column}` row 1")) && err.contains(bad),
            "{err}"
        );
    }
}

#[test]
fn a_decision_stores_its_funnel_reason_as_a_dictionary_null_when_accepted() {
    let batch = DecisionRow::to_batch(&decision_rows()).unwrap();
    let reason = batch
        .column_by_name("reason")
        .unwrap()
        .as_any()
        .downcast_ref::<DictionaryArray<Int8Type>>()
        .unwrap();
    assert!(reason.is_null(0), "accepted: no reason");
    let names = reason
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let code = reason.keys().value(1);
    assert_eq!(names.value(code as usize), "label-disagreement");
    assert_eq!(
        code,
        FunnelReason::LabelDisagreement as i8,
        "the documented code"
    );
    assert!(
        batch.column_by_name("stage").is_none(),
        "the stage follows from the reason"
    );
    // An accepted script with a reason, or a rejected one without, is refused.
    for (i, reason) in [(0, Some(FunnelReason::Empty)), (1, None)] {
        let mut rows = decision_rows();
        rows[i].reason = reason;
        let err = DecisionRow::from_batch(&DecisionRow::to_batch(&rows).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("decision row {i}")), "{err}");
    }
}

#[test]
fn manifest_round_trips_as_json() {
    let m = Manifest {
        run_id: "r1".into(),
        iteration: 2,
        stage: "generate".into(),
        files: vec![ManifestFile {
            path: "part-00000.parquet".into(),
            rows: 10,
            bytes: 1234,
            sha256: "f".repeat(64),
        }],
        config_hash: "abc".into(),
        model_id: Some("m".into()),
        adapter_id: None,
        counts: [("kept".to_string(), 7u64)].into_iter().collect(),
    };
    let back = Manifest::from_json(&m.to_json().unwrap()).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.total_rows(), 10);
}
