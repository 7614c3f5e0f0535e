//! What a worker runs for a task: a stage's executor reads the task's row-group ranges,
//! writes its output under the attempt's own prefix, and reports the files. Executors run on
//! a dedicated thread, never on the async runtime, and stay loaded between tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::fault::TaskError;
use crate::manifest::ManifestFile;
use crate::parquet_io::{read_row_groups, DatasetWriter, WriterOptions};
use crate::schema::{check_identity, CorpusRow};
use crate::store::{block_on, open_object, open_store};
use object_store::path::Path;
use serde::Deserialize;

/// One task as the executor sees it.
#[derive(Clone, Debug)]
pub struct TaskInput {
    /// Object-store URL the input files are relative to.
    pub input_root: String,
    /// (file, first row group, end row group).
    pub ranges: Vec<(String, usize, usize)>,
    /// Object-store URL this attempt writes under.
    pub output_prefix: String,
    pub config_json: String,
    /// Set when the worker gives the task up (it is shutting down): an executor checks it
    /// between batches and returns early with an error.
    pub cancel: Arc<AtomicBool>,
    /// The counters of the worker running the task.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

impl TaskInput {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOutput {
    pub rows_in: u64,
    /// Paths relative to the output prefix.
    pub files: Vec<ManifestFile>,
    /// Input scripts that could not be processed: (sha256, reason).
    pub quarantined: Vec<(String, String)>,
    /// Input scripts whose content an earlier script of the task already had.
    pub duplicates: u64,
}

pub trait Executor: Send + Sync {
    /// The stage kind it runs ("echo", "generate", ...).
    fn kind(&self) -> &str;
    /// Runs one task. An error fails the attempt, and its kind says what happens next: a
    /// transient fault is retried without counting an attempt, invalid input and internal
    /// errors are retried and then quarantined. A single script that cannot be processed
    /// goes to `TaskOutput::quarantined` instead.
    fn run(&self, task: &TaskInput) -> Result<TaskOutput, TaskError>;
}

/// Settings of the echo executor, from the stage's config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// Sleep this long per task (to test leases and failover).
    #[serde(default)]
    pub delay_ms: u64,
    /// A script whose content contains this is quarantined alone, with a reason.
    #[serde(default)]
    pub quarantine_marker: Option<String>,
    /// A task holding a script whose content contains this fails, every attempt.
    #[serde(default)]
    pub fail_marker: Option<String>,
}

/// Reads every input row and writes it back unchanged: the engine's test executor.
pub struct EchoExecutor;

impl Executor for EchoExecutor {
    fn kind(&self) -> &str {
        "echo"
    }

    fn run(&self, task: &TaskInput) -> Result<TaskOutput, TaskError> {
        let cfg: EchoConfig = serde_json::from_str(&task.config_json)
            .map_err(|e| TaskError::invalid(format!("echo stage config: {e}")))?;
        let rows: Vec<CorpusRow> = block_on(async {
            let (input, _) = open_object(&task.input_root)?;
            let mut rows = Vec::new();
            for (file, start, end) in &task.ranges {
                let got = read_row_groups(input.clone(), &Path::from(file.as_str()), *start..*end)
                    .await?;
                rows.extend(got);
            }
            Ok::<_, crate::Error>(rows)
        })?
        .map_err(|e| TaskError::from(e).context("echo: reading the task's input"))?;
        let rows_in = rows.len() as u64;
        let checked = check_identity(rows);
        let (mut rows, mut quarantined) = (checked.rows, checked.mismatched);
        if let Some(m) = &cfg.fail_marker {
            if let Some(r) = rows.iter().find(|r| contains(&r.content, m.as_bytes())) {
                return Err(TaskError::invalid(format!(
                    "echo: script {} holds the failure marker",
                    r.sha256
                )));
            }
        }
        if let Some(m) = &cfg.quarantine_marker {
            rows.retain(|r| {
                let bad = contains(&r.content, m.as_bytes());
                if bad {
                    quarantined.push((r.sha256.clone(), "echo: quarantine marker".to_string()));
                }
                !bad
            });
        }
        // Sleep in slices so a cancelled task stops promptly.
        let until = std::time::Instant::now() + Duration::from_millis(cfg.delay_ms);
        while std::time::Instant::now() < until {
            if task.cancelled() {
                return Err(TaskError::cancelled("echo: cancelled"));
            }
            std::thread::sleep(Duration::from_millis(10).min(until - std::time::Instant::now()));
        }
        task.telemetry.add_work(rows_in, 0);
        let files = block_on(async {
            let (out, prefix) = open_store(&task.output_prefix)?;
            let mut writer = DatasetWriter::<CorpusRow>::new(out, prefix, WriterOptions::default());
            writer.write_all(rows).await?;
            writer.finish().await
        })?
        .map_err(|e| TaskError::from(e).context("echo: writing the output"))?;
        Ok(TaskOutput {
            rows_in,
            files,
            quarantined,
            duplicates: checked.duplicates,
        })
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
