//! What a worker runs for a task: a stage's executor reads the task's row-group ranges,
//! writes its output under the attempt's own prefix, and reports the files. Executors run on
//! a dedicated thread, never on the async runtime.

use automaldesc_common::manifest::ManifestFile;
use automaldesc_common::parquet_io::{read_row_groups, DatasetWriter, WriterOptions};
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::{block_on, open_object, open_store};
use object_store::path::Path;

/// One task as the executor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInput {
    /// Object-store URL the input files are relative to.
    pub input_root: String,
    /// (file, first row group, end row group).
    pub ranges: Vec<(String, usize, usize)>,
    /// Object-store URL this attempt writes under.
    pub output_prefix: String,
    pub config_json: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOutput {
    pub rows_in: u64,
    /// Paths relative to the output prefix.
    pub files: Vec<ManifestFile>,
    /// Input scripts that could not be processed: (sha256, reason).
    pub quarantined: Vec<(String, String)>,
}

pub trait Executor: Send + Sync {
    /// The stage kind it runs ("echo", "generate", ...).
    fn kind(&self) -> &str;
    fn run(&self, task: &TaskInput) -> Result<TaskOutput, String>;
}

/// Reads every input row and writes it back unchanged: the engine's test executor.
pub struct EchoExecutor;

impl Executor for EchoExecutor {
    fn kind(&self) -> &str {
        "echo"
    }

    fn run(&self, task: &TaskInput) -> Result<TaskOutput, String> {
        let err = |e: automaldesc_common::Error| e.to_string();
        block_on(async {
            let (input, _) = open_object(&task.input_root).map_err(err)?;
            let mut rows: Vec<CorpusRow> = Vec::new();
            for (file, start, end) in &task.ranges {
                let got = read_row_groups(input.clone(), &Path::from(file.as_str()), *start..*end)
                    .await
                    .map_err(err)?;
                rows.extend(got);
            }
            let rows_in = rows.len() as u64;
            let (out, prefix) = open_store(&task.output_prefix).map_err(err)?;
            let mut writer = DatasetWriter::<CorpusRow>::new(out, prefix, WriterOptions::default());
            writer.write_all(rows).await.map_err(err)?;
            let files = writer.finish().await.map_err(err)?;
            Ok(TaskOutput {
                rows_in,
                files,
                quarantined: Vec::new(),
            })
        })
        .map_err(err)?
    }
}
