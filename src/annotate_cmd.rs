//! `automaldesc annotate <files...>`: a verdict and a summary per script, one JSON line each,
//! for an analyst who just wants answers.

use std::path::PathBuf;

use anyhow::Context;
use automaldesc_runtime::annotate::{annotate, AnnotateOptions};
use automaldesc_runtime::generate::EarlyStop;
use automaldesc_runtime::runtime::Annotator;
use std::io::Write;

use crate::model_args::{ModelArg, SamplingArgs};
use automaldesc_loop::stages::defaults;
use clap::Args;

#[derive(Args, Debug)]
pub struct AnnotateArgs {
    /// Script files to annotate.
    #[arg(required_unless_present = "from")]
    pub files: Vec<PathBuf>,
    /// A labelled split (a directory or URL with `scripts/` and `labels/`, as written by
    /// `corpus synth` or `corpus import-labels`): annotate its scripts and score the answers
    /// against its labels.
    #[arg(long, conflicts_with = "files")]
    pub from: Option<String>,
    /// With --from: annotate only the first N scripts.
    #[arg(long, conflicts_with = "spread")]
    pub limit: Option<usize>,
    /// With --from: annotate N scripts spread evenly over the split (which is stored by
    /// language, so every language is sampled), for a quick evaluation.
    #[arg(long)]
    pub spread: Option<usize>,
    /// Write the JSON lines here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArg,
    /// A LoRA adapter directory in PEFT's layout (`adapter_config.json` +
    /// `adapter_model.safetensors`), as `automaldesc train` writes it, merged into the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop samples right after the label when the temperatures disagree or the label
    /// probability is under --min-label-prob.
    #[arg(long)]
    pub early_stop: bool,
    /// The summary never repeats an n-gram of this size (0: off).
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram: usize,
    /// Penalty on tokens already in the summary (1: off).
    #[arg(long, default_value_t = defaults::REPETITION_PENALTY)]
    pub repetition_penalty: f32,
    /// Label-only: stop every sample right after its label (`{"language", "label"}`).
    #[arg(long)]
    pub label_only: bool,
}

pub fn run(args: AnnotateArgs) -> anyhow::Result<()> {
    let model = args.model.path();
    anyhow::ensure!(
        model.exists(),
        "model file {} not found: run deploy/fetch_model.sh or pass --model",
        model.display()
    );
    let (scripts, truth) = match &args.from {
        Some(url) => {
            let (scripts, labels) = crate::labelled_split::read(url, args.limit)?;
            match args.spread {
                Some(n) => crate::labelled_split::spread(scripts, labels, n),
                None => (scripts, labels),
            }
        }
        None => {
            let mut scripts = Vec::with_capacity(args.files.len());
            for f in &args.files {
                let bytes =
                    std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                scripts.push((f.display().to_string(), bytes));
            }
            (scripts, Vec::new())
        }
    };
    let device = crate::device::select()?;
    let started = std::time::Instant::now();
    let mut annotator = Annotator::load(&model, &device)?;
    if let Some(dir) = &args.adapter {
        annotator = annotator.with_adapter(dir)?;
    }
    tracing::info!(model = %annotator.model_id, secs = started.elapsed().as_secs_f64(), "model loaded");
    let opts = AnnotateOptions {
        temperatures: args.sampling.temperatures,
        top_p: args.sampling.top_p,
        seed: args.seed,
        max_new_tokens: args.sampling.max_new_tokens,
        prompt_budget: args.sampling.prompt_budget,
        early_stop: EarlyStop {
            require_agreement: args.early_stop,
            min_label_prob: args.early_stop.then_some(args.sampling.min_label_prob),
        },
        slots: args.sampling.slots,
        no_repeat_ngram: args.no_repeat_ngram,
        repetition_penalty: args.repetition_penalty,
        label_only_except: args.label_only.then(Default::default),
        reuse: None,
    };
    let (results, stats, secs) = annotate(&annotator, &scripts, &opts);
    let mut sink: Box<dyn std::io::Write> = match &args.out {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    for r in &results {
        writeln!(sink, "{}", serde_json::to_string(r)?)?;
    }
    if !truth.is_empty() {
        eprintln!("{}", crate::labelled_split::score(&results, &truth));
    }
    eprintln!(
        "{} scripts in {secs:.1}s ({:.3} scripts/s); prefill {} tokens in {:.1}s, decode {} tokens in {:.1}s; early-stopped samples {} (at most {} decode tokens saved)",
        results.len(),
        results.len() as f64 / secs,
        stats.prefill_tokens,
        stats.prefill_secs,
        stats.decode_tokens,
        stats.decode_secs,
        stats.early_stopped,
        stats.saved_tokens_bound
    );
    tracing::info!(
        scripts = results.len(),
        secs,
        scripts_per_sec = results.len() as f64 / secs,
        prefill_tokens = stats.prefill_tokens,
        decode_tokens = stats.decode_tokens,
        early_stopped = stats.early_stopped,
        "annotation finished"
    );
    Ok(())
}
