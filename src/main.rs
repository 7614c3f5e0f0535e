//! The `automaldesc` binary: parses arguments and calls the library crates.

use automaldesc::cluster_cmd as cluster;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "automaldesc",
    version,
    about = "Self-training annotation of scripts at scale"
)]
struct Cli {
    /// Log format on stderr: text, or json (one object per line, with the run, stage, task
    /// and worker ids as fields).
    #[arg(
        long,
        global = true,
        env = "AUTOMALDESC_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Build, import and inspect script corpora.
    #[command(subcommand)]
    Corpus(automaldesc::corpus_cmd::CorpusCmd),
    /// Annotate script files: one JSON line per script with verdict, summary and timings.
    Annotate(automaldesc::annotate_cmd::AnnotateArgs),
    /// Score answers against references: accuracies per language, unparseable answers,
    /// the confusion matrix, and summary BLEU / chrF / ROUGE-L.
    Eval(automaldesc::eval_cmd::EvalArgs),
    /// McNemar's tests of two annotators' answers on the same references.
    Mcnemar(automaldesc::eval_cmd::McNemarArgs),
    /// Fine-tune a LoRA adapter on a labelled split.
    Train(automaldesc::train_cmd::TrainArgs),
    /// The self-training loop: train, generate, judge, filter, aggregate and evaluate for
    /// each iteration, with a report per iteration (on this machine, or `--print-spec` for
    /// a cluster).
    Loop(automaldesc::loop_cmd::LoopArgs),
    /// Run a whole run on this machine: a coordinator and workers in one process, with the
    /// embedded state store (a run interrupted here resumes when started again).
    Local(cluster::LocalArgs),
    /// Serve as a cluster's coordinator (state in etcd with leader election, or embedded).
    Coordinator(cluster::CoordinatorArgs),
    /// Serve as a cluster's worker: lease tasks from the coordinator and run them.
    ///
    /// Exits 0 once the coordinator says the work is finished, 143 when SIGTERM or SIGINT
    /// stopped it before that (after draining), 1 on an error.
    Worker(cluster::WorkerArgs),
    /// Submit a run spec to a coordinator.
    Submit(cluster::SubmitArgs),
    /// Show runs on a coordinator (one run, optionally followed until it ends).
    Status(cluster::StatusArgs),
    /// Cancel a run.
    Cancel(cluster::CancelArgs),
    /// Run an ended run again from its first stage with quarantined scripts (or the stage
    /// it failed in), once the cause is fixed.
    RetryQuarantined(cluster::RetryArgs),
    /// Write a finished self-training run's dataset in the release format, with a dataset
    /// card and checksums.
    Export(automaldesc::export_cmd::ExportArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Decoder throughput next to llama.cpp's, as ratios.
    Runtime(automaldesc::bench_cmd::BenchArgs),
    /// Scripts per second of the whole annotate path, without and with early stop.
    Annotate(automaldesc::bench_cmd::BenchAnnotateArgs),
    /// One echo stage through a coordinator and N worker processes, next to the same
    /// dataflow in plain pyarrow + multiprocessing.
    Engine(automaldesc::bench_cmd::BenchEngineArgs),
    /// Training tokens per second on the real model.
    Train(automaldesc::train_cmd::BenchTrainArgs),
    /// Matrix-product GFLOP/s: the machine's measured peak next to the packed kernels.
    Matmul(automaldesc::bench_cmd::BenchMatmulArgs),
    /// Compare the selected device (e.g. CUDA) with the CPU backend on a random model.
    DeviceCheck,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => {
            logs.json()
                .flatten_event(true)
                .with_current_span(false)
                .init();
            cluster::log_json(true);
        }
    }
    automaldesc_runtime::runtime::keep_freed_memory();
    match cli.command {
        Command::Corpus(cmd) => automaldesc::corpus_cmd::run(cmd),
        Command::Annotate(args) => automaldesc::annotate_cmd::run(args),
        Command::Eval(args) => automaldesc::eval_cmd::run_eval(args),
        Command::Mcnemar(args) => automaldesc::eval_cmd::run_mcnemar(args),
        Command::Train(args) => automaldesc::train_cmd::run(args),
        Command::Loop(args) => automaldesc::loop_cmd::run(args),
        Command::Local(args) => cluster::local(args),
        Command::Coordinator(args) => cluster::coordinator(args),
        Command::Worker(args) => cluster::worker(args),
        Command::Submit(args) => cluster::submit(args),
        Command::Status(args) => cluster::status(args),
        Command::Cancel(args) => cluster::cancel(args),
        Command::RetryQuarantined(args) => cluster::retry_quarantined(args),
        Command::Export(args) => automaldesc::export_cmd::run(args),
        Command::Bench(BenchCmd::Runtime(args)) => automaldesc::bench_cmd::run(args),
        Command::Bench(BenchCmd::Annotate(args)) => automaldesc::bench_cmd::annotate(args),
        Command::Bench(BenchCmd::Train(args)) => automaldesc::train_cmd::bench(args),
        Command::Bench(BenchCmd::Engine(args)) => automaldesc::bench_cmd::engine(args),
        Command::Bench(BenchCmd::Matmul(args)) => automaldesc::bench_cmd::matmul(args),
        Command::Bench(BenchCmd::DeviceCheck) => automaldesc::bench_cmd::device_check(),
    }
}
