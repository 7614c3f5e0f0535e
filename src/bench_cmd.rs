//! `automaldesc bench runtime`: decoder throughput measured like `llama-batched-bench`,
//! next to llama.cpp's own numbers taken in the same run, reported as ratios.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use automaldesc_runtime::bench::batched_bench;
use automaldesc_runtime::model::{Llama, LlamaConfig};
use automaldesc_runtime::runtime::Annotator;
use clap::Args;

use crate::model_args::{ModelArg, SamplingArgs};
use serde_json::Value;

mod engine;
pub use engine::{engine, BenchEngineArgs};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub npp: usize,
    /// Decode steps.
    #[arg(long, default_value_t = 128)]
    pub ntg: usize,
    /// Sequence counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub npl: Vec<usize>,
    /// The GGUF llama.cpp runs (an F32 copy of --model gives the same numerics).
    #[arg(long)]
    pub llamacpp_model: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Directory with llama.cpp's built tools (llama-batched-bench), if any.
    #[arg(long)]
    pub llamacpp_tools: Option<PathBuf>,
    /// Use deterministic random weights of this preset's shape instead of a model file
    /// (e.g. smollm2-135m): throughput does not depend on the values.
    #[arg(long)]
    pub random_weights: Option<String>,
}

/// Checks the selected device against the flex CPU backend on a small random model: the
/// same tokens through the same weights must give the same logits.
pub fn device_check() -> anyhow::Result<()> {
    use automaldesc_runtime::model::{KvCache, Llama, LlamaConfig};
    let device = crate::device::select()?;
    let cpu = burn::tensor::Device::flex();
    let mut config = LlamaConfig::smollm2_135m();
    config.num_layers = 4;
    let tokens: Vec<u32> = (0..64).map(|i| (i * 7919 % 49152) as u32).collect();
    let run = |d: &burn::tensor::Device| -> anyhow::Result<Vec<f32>> {
        let model = Llama::random(&config, 5, d);
        let mut cache = KvCache::new(&config, 1, 80, d);
        let h = model.forward(&tokens, tokens.len(), &mut cache);
        let mut out = model
            .logits(h)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let h = model.forward(&[17], 1, &mut cache);
        out.extend(
            model
                .logits(h)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
        Ok(out)
    };
    let (a, b) = (run(&device)?, run(&cpu)?);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
    println!(
        "device {device:?} vs flex: {} logits, max |diff| {diff:.2e} (max |logit| {scale:.2})",
        a.len()
    );
    anyhow::ensure!(
        diff <= 1e-2 * scale.max(1.0),
        "the device disagrees with the CPU backend"
    );
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let model = args.model.path();
    let device = crate::device::select()?;
    let llama = match &args.random_weights {
        Some(name) => {
            let config = LlamaConfig::by_name(name).with_context(|| {
                format!("unknown preset {name}; known: {:?}", LlamaConfig::PRESETS)
            })?;
            Llama::random(&config, 1, &device)
        }
        None => Annotator::load(&model, &device)?.model,
    };
    eprintln!("device: {device:?}");
    // Warm-up at full prompt size: first calls allocate and fault in weights and buffers.
    batched_bench(&llama, args.npp, 4, 1, 0);
    let mut ours = Vec::new();
    for &b in &args.npl {
        let row = batched_bench(&llama, args.npp, args.ntg, b, 1);
        eprintln!("automaldesc B={b}: {}", serde_json::to_string(&row)?);
        ours.push(row);
    }
    let peer = match &args.llamacpp_model {
        Some(m) => Some(llamacpp(&args, m)?),
        None => None,
    };
    println!("| B | prefill tok/s (ours / llama.cpp / ratio) | decode tok/s (ours / llama.cpp / ratio) | total tok/s (ours / llama.cpp / ratio) |");
    println!("|---|---|---|---|");
    for row in &ours {
        let theirs = peer.as_ref().and_then(|p| peer_row(p, row.sequences));
        let cell = |o: f64, key: &str| match theirs.as_ref().and_then(|t| t[key].as_f64()) {
            Some(t) => format!("{o:.1} / {t:.1} / {:.2}", o / t),
            None => format!("{o:.1} / - / -"),
        };
        println!(
            "| {} | {} | {} | {} |",
            row.sequences,
            cell(row.prefill_tps, "s_pp"),
            cell(row.decode_tps, "s_tg"),
            cell(row.total_tps, "s")
        );
    }
    Ok(())
}

fn llamacpp(args: &BenchArgs, model: &PathBuf) -> anyhow::Result<Value> {
    let npl: Vec<String> = args.npl.iter().map(|n| n.to_string()).collect();
    let mut cmd = Command::new("python3");
    cmd.arg("tests/peer/llamacpp_bench.py")
        .arg("--model")
        .arg(model)
        .args(["--threads", &args.threads.to_string()])
        .args([
            "--npp",
            &args.npp.to_string(),
            "--ntg",
            &args.ntg.to_string(),
        ])
        .args(["--npl", &npl.join(",")]);
    if let Some(t) = &args.llamacpp_tools {
        cmd.arg("--tools-dir").arg(t);
    }
    let v = peer_json(
        &mut cmd,
        "the llama.cpp bench (tests/peer/llamacpp_bench.py)",
    )?;
    eprintln!("llama.cpp: {v}");
    Ok(v)
}

/// Runs a peer benchmark and reads the JSON it prints on standard output.
pub(crate) fn peer_json(cmd: &mut Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON"))
}

fn peer_row(peer: &Value, sequences: usize) -> Option<Value> {
    peer["models"][0]["results"]
        .as_array()?
        .iter()
        .find(|r| r["pl"].as_u64() == Some(sequences as u64))
        .cloned()
}

#[derive(Args, Debug)]
pub struct BenchAnnotateArgs {
    /// A labelled split (as written by `corpus synth`), e.g. data/quickstart/corpus/test.
    #[arg(long)]
    pub from: String,
    /// Scripts taken from the split.
    #[arg(long, default_value_t = 12)]
    pub limit: usize,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `automaldesc bench annotate`: the whole annotate path (prompts, one shared prefill per
/// script, constrained decoding at every temperature) on the same scripts without and with
/// early stop, in one run.
pub fn annotate(args: BenchAnnotateArgs) -> anyhow::Result<()> {
    use automaldesc_runtime::annotate::{annotate, AnnotateOptions};
    use automaldesc_runtime::generate::EarlyStop;

    let (scripts, truth) = crate::labelled_split::read(&args.from, Some(args.limit))?;
    let model = args.model.path();
    let device = crate::device::select()?;
    let annotator = Annotator::load(&model, &device)?;
    let s = &args.sampling;
    let base = AnnotateOptions {
        temperatures: s.temperatures.clone(),
        top_p: s.top_p,
        max_new_tokens: s.max_new_tokens,
        prompt_budget: s.prompt_budget,
        slots: s.slots,
        ..AnnotateOptions::default()
    };
    println!(
        "{} scripts, {} temperatures, max {} new tokens, {} slots",
        scripts.len(),
        s.temperatures.len(),
        s.max_new_tokens,
        s.slots
    );
    println!("| early stop | wall s | scripts/s | prefill tokens (s) | decode tokens (s) | decode steps | early-stopped samples | decode tokens saved (bound) | majority label accuracy |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for early in [false, true] {
        let opts = AnnotateOptions {
            early_stop: EarlyStop {
                require_agreement: early,
                min_label_prob: early.then_some(args.sampling.min_label_prob),
            },
            ..base.clone()
        };
        let (results, stats, secs) = annotate(&annotator, &scripts, &opts);
        let correct = crate::labelled_split::score_counts(&results, &truth).majority_ok;
        println!(
            "| {} | {secs:.1} | {:.3} | {} ({:.1}) | {} ({:.1}) | {} | {} | {} | {}/{} |",
            if early { "on" } else { "off" },
            results.len() as f64 / secs,
            stats.prefill_tokens,
            stats.prefill_secs,
            stats.decode_tokens,
            stats.decode_secs,
            stats.decode_steps,
            stats.early_stopped,
            stats.saved_tokens_bound,
            correct,
            results.len()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchMatmulArgs {
    /// Shapes `MxKxN`, comma-separated. The default: the 1024³ peak, then SmolLM2-135M's
    /// projections over a 464-token sequence (qkv, o, gate+up, down).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024x1024x1024,464x576x960,464x576x576,464x576x3072,464x1536x576"
    )]
    pub shapes: Vec<String>,
    /// Timed repetitions per shape and path (the best is kept).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

/// `automaldesc bench matmul`: GFLOP/s of burn's general matmul (the machine's measured
/// matrix-product peak) next to the packed-panel kernels, on the calling thread pool.
pub fn matmul(args: BenchMatmulArgs) -> anyhow::Result<()> {
    let shapes = args
        .shapes
        .iter()
        .map(|s| {
            let dims: Vec<usize> = s
                .split('x')
                .map(|d| d.parse::<usize>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--shapes: `{s}` is not MxKxN"))?;
            match dims[..] {
                [m, k, n] if m * k * n > 0 => Ok((m, k, n)),
                _ => anyhow::bail!("--shapes: `{s}` is not MxKxN with positive sizes"),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "{} threads; GFLOP/s, best of {}",
        rayon::current_num_threads(),
        args.reps
    );
    println!("| M x K x N | burn matmul | packed x·W | packed dY·Wᵀ |");
    println!("|---|---|---|---|");
    let rows = automaldesc_runtime::bench::matmul_rates(&shapes, args.reps);
    for chunk in rows.chunks(3) {
        let r = &chunk[0];
        let rates: Vec<String> = chunk.iter().map(|c| format!("{:.1}", c.gflops)).collect();
        println!("| {}x{}x{} | {} |", r.m, r.k, r.n, rates.join(" | "));
    }
    Ok(())
}
