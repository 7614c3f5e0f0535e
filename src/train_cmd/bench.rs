//! `bench train`: training steps on the real model timed, all tokens and answer tokens per
//! second and peak memory, beside PyTorch + PEFT on the same shapes in the same run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use automaldesc_runtime::train::data::Budget;
use automaldesc_runtime::train::{train_with, Example, TrainData};
use clap::Args;
use rand::{Rng, SeedableRng};

use super::{load_split, load_trainer, parse_layers, preset};
use crate::model_args::ModelArg;

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// A labelled split whose scripts are the training examples (not needed with --shape).
    #[arg(long, required_unless_present = "shape")]
    pub from: Option<String>,
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long, default_value = "v1")]
    pub preset: String,
    /// Optimizer steps to time (after one warm-up step).
    #[arg(long, default_value_t = 4)]
    pub steps: u64,
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub limit: usize,
    /// Instead of the split's scripts, random sequences of exactly PROMPT,ANSWER tokens, one
    /// per step (the shapes `tests/peer/peft_train_bench.py` times for PyTorch + PEFT).
    #[arg(long, value_delimiter = ',', value_name = "PROMPT,ANSWER")]
    pub shape: Option<Vec<usize>>,
    /// With --shape: also time PyTorch + PEFT on the same shapes in the same run, with this
    /// Python (a venv with `peft`), on --peft-model.
    #[arg(long, requires_all = ["shape", "peft_model"])]
    pub peft_python: Option<PathBuf>,
    /// The model as a Hugging Face directory for the PEFT side (`tests/peer/gguf_to_hf.py`
    /// writes one from the GGUF).
    #[arg(long)]
    pub peft_model: Option<PathBuf>,
    /// The blocks that carry adapters (all, top:K or a list). Above block 0 the frozen
    /// prefix is computed once first (timed apart) and the steps start above it, as a
    /// training stage runs them; PEFT gets the same blocks.
    #[arg(long, default_value = "all")]
    pub layers: String,
}

/// This process's peak resident memory in MiB (`VmHWM`), 0 where unknown.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Times training steps on the real model: all tokens (prompt and answer) and answer tokens
/// per second; with --peft-python, PyTorch + PEFT on the same shapes, and the ratio.
pub fn bench(args: BenchTrainArgs) -> anyhow::Result<()> {
    let mut config = preset(&args.preset)?;
    config.batch_tokens = args.batch_tokens;
    config.epochs = 1000;
    config.lora.layers = parse_layers(&args.layers)?;
    let steps = args.steps + 1;
    let trainer = load_trainer(args.model.path())?;
    let (annotator, tr) = match (&args.shape, &args.from) {
        (Some(shape), _) => {
            anyhow::ensure!(
                shape.len() == 2 && shape.iter().all(|&n| n > 0),
                "--shape takes two positive lengths, PROMPT,ANSWER (got {shape:?})"
            );
            let (prompt, answer) = (shape[0], shape[1]);
            let annotator = &trainer.annotator;
            let vocab = annotator.model.config.vocab_size as u32;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let mut random =
                |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
            let tr: Vec<Example> = (0..steps)
                .map(|_| Example::plain(random(prompt), random(answer)))
                .collect();
            // One sequence per step, as the PEFT side runs.
            config.batch_tokens = prompt + answer;
            (annotator, tr)
        }
        (None, Some(from)) => {
            let data = load_split(&trainer, from, Some(args.limit), 0.0, Budget::default())?;
            (&trainer.annotator, data.train)
        }
        (None, None) => anyhow::bail!("--from or --shape is needed"),
    };
    let mut marks: Vec<(Instant, u64)> = Vec::new();
    let total_tokens = |ex: &[Example]| {
        ex.iter()
            .map(|e| e.prompt.len() + e.target.len())
            .sum::<usize>()
    };
    let answer_tokens: usize = tr.iter().map(|e| e.target.len()).sum();
    let started = Instant::now();
    let caches = trainer.prefix_caches(&config, &[&tr, &[]], None)?;
    if let Some(c) = &caches {
        println!(
            "frozen prefix: blocks below {} for {} sequences in {:.1} s ({:.0} sequence tokens/s)",
            c[0].start,
            tr.len(),
            started.elapsed().as_secs_f64(),
            total_tokens(&tr) as f64 / started.elapsed().as_secs_f64()
        );
    }
    let data = TrainData {
        train: &tr,
        val: &[],
        choices: None,
        prefix: caches.as_ref().map(|c| (&c[0], &c[1])),
        fused: None,
    };
    train_with(
        &annotator.model,
        &data,
        &config,
        None,
        &mut |p| {
            marks.push((Instant::now(), p.tokens));
            p.step < steps
        },
        &mut |_, _| {},
    )?;
    anyhow::ensure!(marks.len() >= 2, "too few steps to time");
    let (t0, k0) = marks[0];
    let (t1, k1) = *marks.last().expect("marks");
    let secs = t1.duration_since(t0).as_secs_f64();
    let answer_per_s = (k1 - k0) as f64 / secs;
    // Padded positions computed per answer token, from the whole set's proportions.
    let ratio = total_tokens(&tr) as f64 / answer_tokens.max(1) as f64;
    println!(
        "ours: training on {} ({} threads, layers {}): {:.1} answer tokens/s, ~{:.0} sequence tokens/s ({} steps of <= {} padded tokens, rank {}), peak RSS {:.0} MiB",
        annotator.model_id,
        rayon::current_num_threads(),
        args.layers,
        answer_per_s,
        answer_per_s * ratio,
        marks.len() - 1,
        config.batch_tokens,
        config.lora.rank,
        peak_rss_mib(),
    );
    if let (Some(python), Some(model), Some(shape)) =
        (&args.peft_python, &args.peft_model, &args.shape)
    {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/peft_train_bench.py");
        let peer = crate::bench_cmd::peer_json(
            std::process::Command::new(python)
                .arg(&script)
                .arg("--model")
                .arg(model)
                .args([
                    "--prompt",
                    &shape[0].to_string(),
                    "--answer",
                    &shape[1].to_string(),
                ])
                .args(["--steps", &args.steps.to_string()])
                .args(["--threads", &rayon::current_num_threads().to_string()])
                .args(["--rank", &config.lora.rank.to_string()])
                .args(["--layers", &args.layers]),
            "the PEFT side (tests/peer/peft_train_bench.py)",
        )?;
        let peer_answer = peer["answer_tokens_per_s"]
            .as_f64()
            .context("no answer_tokens_per_s")?;
        println!(
            "PyTorch {} + PEFT {}: {:.1} answer tokens/s, {:.0} sequence tokens/s ({} steps), peak RSS {:.0} MiB",
            peer["torch"].as_str().unwrap_or("?"),
            peer["peft"].as_str().unwrap_or("?"),
            peer_answer,
            peer["sequence_tokens_per_s"].as_f64().unwrap_or(0.0),
            peer["steps"],
            peer["peak_rss_mib"].as_f64().unwrap_or(0.0),
        );
        println!("ours / PyTorch+PEFT: {:.2}", answer_per_s / peer_answer);
    }
    Ok(())
}
