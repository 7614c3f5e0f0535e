//! What the coordinator executes: a run is an input dataset and an ordered list of stages.
//! Stage 0 reads the input; stage k reads the committed output of stage k-1. The file is
//! TOML and unknown keys are rejected, so a typo is an error rather than a silent default.
//!
//! ```toml
//! input = "s3://corpus/unlabelled"     # a directory of Parquet files
//! output = "s3://work/out"             # stages write under <output>/runs/<run>/
//! task_bytes = 4194304                 # input bytes a task aims at (default 4 MiB)
//!
//! [[stage]]
//! kind = "echo"                        # the executor workers run
//! config = { delay_ms = 0 }            # handed to the executor as JSON
//!
//! [[stage]]
//! kind = "train"
//! input = "s3://corpus/seed"           # its own input (default: the previous stage's output;
//!                                      # "stage:N" is stage N's committed Parquet output)
//! single_task = true                   # the whole input is one task
//! refs = { adapter = 0 }               # earlier stages whose committed files the executor
//!                                      # gets, under config.refs.<name>
//!
//! [limits]                             # optional
//! max_quarantined_fraction = 0.01      # a stage quarantining more of its input fails the run
//! max_stall = 900                      # seconds of transient faults without progress before
//!                                      # the run fails
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Input bytes a task aims at when the spec does not say.
pub const DEFAULT_TASK_BYTES: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Object-store URL of the input dataset (a directory of Parquet files).
    pub input: String,
    /// Object-store URL stages write under.
    pub output: String,
    #[serde(default = "default_task_bytes")]
    pub task_bytes: u64,
    #[serde(rename = "stage")]
    pub stages: Vec<StageConfig>,
    /// When the run gives up (absent in specs recorded before limits existed: defaults).
    #[serde(default)]
    pub limits: RunLimits,
}

/// The most a run may lose or wait before it fails.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLimits {
    /// The largest share of a stage's input scripts that may be quarantined: above it the
    /// run fails; at or below it, with any quarantined, it ends SUCCEEDED_WITH_QUARANTINE.
    #[serde(default = "default_max_quarantined_fraction")]
    pub max_quarantined_fraction: f64,
    /// Seconds the open stage may go without a commit while transient faults (storage,
    /// disk, state store) keep failing its tasks; then the run fails with the cause.
    #[serde(default = "default_max_stall")]
    pub max_stall: f64,
}

/// See [`RunLimits`].
pub const DEFAULT_MAX_QUARANTINED_FRACTION: f64 = 0.01;
/// See [`RunLimits`]: fifteen minutes.
pub const DEFAULT_MAX_STALL_S: f64 = 900.0;

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_quarantined_fraction: DEFAULT_MAX_QUARANTINED_FRACTION,
            max_stall: DEFAULT_MAX_STALL_S,
        }
    }
}

fn default_max_quarantined_fraction() -> f64 {
    DEFAULT_MAX_QUARANTINED_FRACTION
}

fn default_max_stall() -> f64 {
    DEFAULT_MAX_STALL_S
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub kind: String,
    /// A person's name for the stage ("iteration 1 generate"), for progress displays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Settings for the executor, passed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// The stage's input: a dataset URL, or `stage:N` for the Parquet files stage N
    /// committed. Without it, the previous stage's output (the run's input for stage 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Plan the whole input as one task (training, aggregation, reports).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_task: bool,
    /// Earlier stages whose committed files the executor needs (an adapter, a funnel):
    /// resolved when the stage is planned into `config.refs.<name> = {root, files}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, u32>,
}

/// Where a stage reads its input from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageInput {
    /// The previous stage's output (the run's input for stage 0).
    Previous,
    /// The Parquet files stage N committed.
    Stage(u32),
    /// A dataset URL.
    Url(String),
}

impl StageConfig {
    /// A stage reading the previous stage's output, planned into tasks by size.
    pub fn new(kind: &str, config: serde_json::Value) -> Self {
        Self {
            kind: kind.to_string(),
            name: None,
            config,
            input: None,
            single_task: false,
            refs: BTreeMap::new(),
        }
    }

    pub fn input(&self) -> StageInput {
        match self.input.as_deref() {
            None => StageInput::Previous,
            Some(s) => match s.strip_prefix("stage:").map(str::parse::<u32>) {
                Some(Ok(n)) => StageInput::Stage(n),
                _ => StageInput::Url(s.to_string()),
            },
        }
    }
}

fn default_task_bytes() -> u64 {
    DEFAULT_TASK_BYTES
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// What the workers can run, for checking a spec before a run is accepted: each stage
/// kind's executor and typed config, and the schema a kind reads from a dataset URL.
pub trait StageCatalog: Send + Sync {
    /// Parses a stage's config into its kind's typed config; an unknown kind is an error.
    fn check_stage(&self, kind: &str, config: &serde_json::Value) -> Result<(), crate::TaskError>;
    /// The columns a stage of `kind` needs in a dataset it reads by URL, if it reads one.
    fn input_schema(&self, kind: &str) -> Option<arrow::datatypes::SchemaRef>;
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("run spec: {0}")]
    Parse(String),
    #[error("run spec: {0}")]
    Invalid(String),
}

impl RunSpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: RunSpec = toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if self.input.trim().is_empty() {
            return bad("`input` must name a dataset".into());
        }
        if self.output.trim().is_empty() {
            return bad("`output` must name a location".into());
        }
        if self.stages.is_empty() {
            return bad("a run needs at least one [[stage]]".into());
        }
        if self.task_bytes == 0 {
            return bad("`task_bytes` must be positive".into());
        }
        let q = self.limits.max_quarantined_fraction;
        if !(0.0..=1.0).contains(&q) {
            return bad(format!(
                "`limits.max_quarantined_fraction` must be between 0 and 1, not {q}"
            ));
        }
        let stall = self.limits.max_stall;
        if !(stall.is_finite() && stall > 0.0) {
            return bad(format!(
                "`limits.max_stall` must be positive seconds, not {stall}"
            ));
        }
        for (i, s) in self.stages.iter().enumerate() {
            let valid = !s.kind.is_empty()
                && s.kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return bad(format!(
                    "stage {i}: kind {:?} must be lowercase letters, digits and '-'",
                    s.kind
                ));
            }
            if !s.config.is_object() {
                return bad(format!("stage {i}: `config` must be a table"));
            }
            if s.config.get("refs").is_some() {
                return bad(format!(
                    "stage {i}: `config.refs` is filled in from `refs` when the stage is planned"
                ));
            }
            if s.input.as_deref().is_some_and(|u| u.starts_with("stage:"))
                && !matches!(s.input(), StageInput::Stage(_))
            {
                return bad(format!(
                    "stage {i}: input {:?} must be stage:N with N a number",
                    s.input.as_deref().unwrap_or_default()
                ));
            }
            let earlier = |n: u32| (n as usize) < i;
            if let StageInput::Stage(n) = s.input() {
                if !earlier(n) {
                    return bad(format!(
                        "stage {i}: input stage:{n} is not an earlier stage"
                    ));
                }
            }
            if let Some((name, n)) = s.refs.iter().find(|(_, &n)| !earlier(n)) {
                return bad(format!(
                    "stage {i}: ref {name} = {n} is not an earlier stage"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_parses_with_defaults() {
        let spec = RunSpec::from_toml(
            r#"
            input = "data/corpus/unlabelled"
            output = "data/out"
            [[stage]]
            kind = "echo"
            [[stage]]
            kind = "echo"
            config = { delay_ms = 5, quarantine_marker = "X" }
            "#,
        )
        .unwrap();
        assert_eq!(spec.task_bytes, DEFAULT_TASK_BYTES);
        assert_eq!(spec.stages.len(), 2);
        assert_eq!(spec.stages[0].config, serde_json::json!({}));
        assert_eq!(spec.stages[1].config["delay_ms"], 5);
    }

    #[test]
    fn unknown_keys_and_empty_runs_are_errors() {
        let typo = RunSpec::from_toml(
            "input = \"a\"\noutput = \"b\"\ntask_byte = 3\n[[stage]]\nkind = \"echo\"\n",
        );
        assert!(matches!(typo, Err(SpecError::Parse(m)) if m.contains("task_byte")));
        let none = RunSpec::from_toml("input = \"a\"\noutput = \"b\"\nstage = []\n");
        assert!(matches!(none, Err(SpecError::Invalid(m)) if m.contains("at least one")));
        let kind =
            RunSpec::from_toml("input = \"a\"\noutput = \"b\"\n[[stage]]\nkind = \"Echo!\"\n");
        assert!(matches!(kind, Err(SpecError::Invalid(m)) if m.contains("Echo!")));
    }

    #[test]
    fn inputs_and_refs_name_earlier_stages() {
        let spec = |extra: &str| {
            RunSpec::from_toml(&format!(
                "input = \"a\"\noutput = \"b\"\n[[stage]]\nkind = \"echo\"\n[[stage]]\nkind = \"echo\"\n{extra}"
            ))
        };
        let ok = spec("input = \"stage:0\"\nsingle_task = true\nrefs = { first = 0 }\n").unwrap();
        assert_eq!(ok.stages[1].input(), StageInput::Stage(0));
        assert_eq!(ok.stages[0].input(), StageInput::Previous);
        assert!(ok.stages[1].single_task);
        assert_eq!(ok.stages[1].refs["first"], 0);
        let url = spec("input = \"s3://b/seed\"\n").unwrap();
        assert_eq!(url.stages[1].input(), StageInput::Url("s3://b/seed".into()));
        let later = spec("input = \"stage:1\"\n");
        assert!(matches!(later, Err(SpecError::Invalid(m)) if m.contains("not an earlier stage")));
        let bad_ref = spec("refs = { x = 4 }\n");
        assert!(matches!(bad_ref, Err(SpecError::Invalid(m)) if m.contains("ref x = 4")));
        let junk = spec("input = \"stage:one\"\n");
        assert!(matches!(junk, Err(SpecError::Invalid(m)) if m.contains("stage:N")));
        let reserved = spec("config = { refs = 1 }\n");
        assert!(matches!(reserved, Err(SpecError::Invalid(m)) if m.contains("config.refs")));
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let base = "input = \"a\"\noutput = \"b\"\n[[stage]]\nkind = \"echo\"\n";
        let spec = RunSpec::from_toml(base).unwrap();
        assert_eq!(spec.limits, RunLimits::default());
        assert_eq!(spec.limits.max_quarantined_fraction, 0.01);
        let set = RunSpec::from_toml(&format!(
            "{base}[limits]\nmax_quarantined_fraction = 0.2\nmax_stall = 5\n"
        ))
        .unwrap();
        assert_eq!(
            (set.limits.max_quarantined_fraction, set.limits.max_stall),
            (0.2, 5.0)
        );
        let high = RunSpec::from_toml(&format!("{base}[limits]\nmax_quarantined_fraction = 2\n"));
        assert!(
            matches!(high, Err(SpecError::Invalid(m)) if m.contains("max_quarantined_fraction"))
        );
        let typo = RunSpec::from_toml(&format!("{base}[limits]\nmax_stal = 5\n"));
        assert!(matches!(typo, Err(SpecError::Parse(m)) if m.contains("max_stal")));
        // A spec recorded before limits existed reads with the defaults.
        let old: RunSpec = serde_json::from_str(
            r#"{"input":"a","output":"b","task_bytes":1,"stage":[{"kind":"echo"}]}"#,
        )
        .unwrap();
        assert_eq!(old.limits, RunLimits::default());
    }
}
