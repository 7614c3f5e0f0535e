//! What a coordinator checks before it accepts a run: every stage kind has an executor,
//! each stage's config parses into its kind's typed config (unknown keys refused, the key
//! named), and a stage reading scripts is given a dataset with the corpus schema.

use arrow::datatypes::SchemaRef;
use automaldesc_common::fault::TaskError;
use automaldesc_common::schema::{ArrowRow, CorpusRow};

use super::aggregate::AggregateConfig;
use super::filter::FilterConfig;
use super::generate::GenerateConfig;
use super::judge::JudgeConfig;
use super::judge_train::JudgeTrainConfig;
use super::report::ReportConfig;
use super::train::TrainStageConfig;
use automaldesc_common::executor::EchoConfig;

/// Every stage kind a worker has an executor for.
pub const KINDS: [&str; 8] = [
    "echo",
    "train",
    "judge-train",
    "generate",
    "judge",
    "filter",
    "aggregate",
    "report",
];

/// Parses `config` (a stage's `config` table, without the refs the coordinator adds) into
/// the typed config of `kind`; the error names the kind and the offending key.
pub fn check_config(kind: &str, config: &serde_json::Value) -> Result<(), TaskError> {
    let json = config.to_string();
    match kind {
        "echo" => super::config::<EchoConfig>(kind, &json).map(drop),
        "train" => super::config::<TrainStageConfig>(kind, &json).map(drop),
        "judge-train" => super::config::<JudgeTrainConfig>(kind, &json).map(drop),
        "generate" => super::config::<GenerateConfig>(kind, &json).map(drop),
        "judge" => super::config::<JudgeConfig>(kind, &json).map(drop),
        "filter" => super::config::<FilterConfig>(kind, &json).map(drop),
        "aggregate" => super::config::<AggregateConfig>(kind, &json).map(drop),
        "report" => super::config::<ReportConfig>(kind, &json).map(drop),
        other => Err(TaskError::invalid(format!(
            "no executor for stage kind {other:?} (known: {})",
            KINDS.join(", ")
        ))),
    }
}

/// The Arrow schema a stage of `kind` reads from a dataset URL, when it reads scripts.
pub fn input_schema(kind: &str) -> Option<SchemaRef> {
    matches!(kind, "echo" | "generate").then(CorpusRow::schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_into_their_kinds_and_typos_are_named() {
        check_config("echo", &serde_json::json!({ "delay_ms": 5 })).unwrap();
        let typo = check_config("echo", &serde_json::json!({ "dealy_ms": 5 })).unwrap_err();
        assert!(typo.message.contains("dealy_ms"), "{typo}");
        assert!(typo.message.starts_with("echo stage config"), "{typo}");
        let unknown = check_config("ecoh", &serde_json::json!({})).unwrap_err();
        assert!(unknown.message.contains("\"ecoh\""), "{unknown}");
        let missing = check_config("generate", &serde_json::json!({})).unwrap_err();
        assert!(missing.message.contains("missing field"), "{missing}");
        assert!(input_schema("echo").is_some());
        assert!(input_schema("aggregate").is_none());
        for kind in KINDS {
            assert!(
                !check_config(kind, &serde_json::json!({ "no_such_key": 1 }))
                    .unwrap_err()
                    .message
                    .contains("no executor"),
                "{kind} has a typed config"
            );
        }
    }
}
