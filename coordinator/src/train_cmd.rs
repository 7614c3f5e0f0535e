//! `automaldesc train`: fine-tune a LoRA adapter on a labelled split, and
//! `automaldesc bench train`: training tokens per second.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use automaldesc_worker::runtime::Annotator;
use automaldesc_worker::train::data::{render, Budget};
use automaldesc_worker::train::lora::LoraConfig;
use automaldesc_worker::train::{held_out, train, Example, TrainConfig};
use burn::module::Module;
use clap::Args;
use rand::{Rng, SeedableRng};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The labelled split to train on (`scripts/` + `labels/`, as `corpus synth` writes
    /// its `seed` split).
    #[arg(long)]
    pub from: String,
    /// Output directory: `adapter/` (PEFT layout), `lineage.json`, `training_set.json`,
    /// `checkpoint/` (training started again on the same directory resumes).
    #[arg(long)]
    pub out: PathBuf,
    /// Base model [default: $AUTOMALDESC_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The published adapter settings to start from: v1 (rank 8) or v2 (rank 16).
    #[arg(long, default_value = "v1")]
    pub preset: String,
    /// Override the preset's adapter rank, alpha and dropout.
    #[arg(long)]
    pub rank: Option<usize>,
    #[arg(long)]
    pub alpha: Option<f32>,
    #[arg(long)]
    pub dropout: Option<f32>,
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub learning_rate: Option<f32>,
    /// Padded tokens per micro-batch.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<u32>,
    #[arg(long)]
    pub patience: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of the examples held out for validation (chosen by script hash).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Use only the first N labelled scripts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prompt tokens per script (the inference budget; longer scripts keep head and tail).
    #[arg(long, default_value_t = 1024)]
    pub prompt_tokens: usize,
    /// Answer tokens per example (longer summaries are cut).
    #[arg(long, default_value_t = 256)]
    pub answer_tokens: usize,
}

fn preset(name: &str) -> anyhow::Result<TrainConfig> {
    let mut c = TrainConfig::v1();
    match name {
        "v1" => {}
        "v2" => c.lora = LoraConfig::v2(),
        other => anyhow::bail!("no adapter preset {other:?} (v1 or v2)"),
    }
    Ok(c)
}

/// The model on the CPU autodiff device, frozen.
fn load_frozen(model: Option<PathBuf>) -> anyhow::Result<Annotator> {
    let model = model.unwrap_or_else(crate::annotate_cmd::default_model_path);
    anyhow::ensure!(
        model.exists(),
        "model file {} not found: run deploy/fetch_model.sh or pass --model",
        model.display()
    );
    let device = burn::tensor::Device::flex().autodiff();
    let mut annotator = Annotator::load(&model, &device)?;
    annotator.model = annotator.model.no_grad();
    Ok(annotator)
}

/// The frozen model and a split rendered as examples.
struct Loaded {
    annotator: Annotator,
    train: Vec<Example>,
    val: Vec<Example>,
    /// sha256 of each training script, in order.
    train_shas: Vec<String>,
}

/// The model on the CPU autodiff device, frozen, and the split rendered as examples.
fn load(
    args_model: Option<PathBuf>,
    from: &str,
    limit: Option<usize>,
    val_fraction: f64,
    budget: Budget,
) -> anyhow::Result<Loaded> {
    let annotator = load_frozen(args_model)?;
    let (scripts, labels) = crate::labelled_split::read(from, limit)?;
    anyhow::ensure!(!labels.is_empty(), "{from} holds no labelled scripts");
    let (mut tr, mut va, mut shas) = (Vec::new(), Vec::new(), Vec::new());
    for ((sha, bytes), l) in scripts.iter().zip(&labels) {
        let ex = render(
            &annotator,
            bytes,
            l.language,
            l.label.as_u8() == 1,
            &l.summary,
            budget,
        );
        // Held out by hash, so the split does not depend on the order of the files.
        if held_out(sha, val_fraction) {
            va.push(ex);
        } else {
            tr.push(ex);
            shas.push(sha.clone());
        }
    }
    Ok(Loaded {
        annotator,
        train: tr,
        val: va,
        train_shas: shas,
    })
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut config = preset(&args.preset)?;
    config.seed = args.seed;
    if let Some(v) = args.rank {
        config.lora.rank = v;
    }
    if let Some(v) = args.alpha {
        config.lora.alpha = v;
    }
    if let Some(v) = args.dropout {
        config.lora.dropout = v;
    }
    anyhow::ensure!(config.lora.rank > 0, "--rank must be at least 1");
    anyhow::ensure!(
        (0.0..1.0).contains(&config.lora.dropout),
        "--dropout must be in [0, 1)"
    );
    if let Some(v) = args.epochs {
        config.epochs = v;
    }
    if let Some(v) = args.learning_rate {
        config.learning_rate = v;
    }
    if let Some(v) = args.batch_tokens {
        config.batch_tokens = v;
    }
    if let Some(v) = args.grad_accum {
        config.grad_accum = v;
    }
    if let Some(v) = args.patience {
        config.patience = v;
    }
    let budget = Budget {
        prompt: args.prompt_tokens,
        answer: args.answer_tokens,
    };
    let Loaded {
        annotator,
        train: tr,
        val: va,
        train_shas: shas,
    } = load(
        args.model.clone(),
        &args.from,
        args.limit,
        args.val_fraction,
        budget,
    )?;
    let target_tokens: usize = tr.iter().map(|e| e.target.len()).sum();
    eprintln!(
        "training on {} examples ({} answer tokens), validating on {}; base {}",
        tr.len(),
        target_tokens,
        va.len(),
        annotator.model_id
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ckpt = args.out.join("checkpoint");
    let started = Instant::now();
    let trained = train(&annotator.model, &tr, &va, &config, Some(&ckpt), &mut |p| {
        eprintln!(
            "step {}/{} epoch {} loss {:.4} lr {:.2e} tokens {} ({:.0}/s) eta {:.0}s",
            p.step,
            p.total_steps,
            p.epoch + 1,
            p.loss,
            p.learning_rate,
            p.tokens,
            p.tokens_per_s,
            p.eta_s
        );
        true
    })?
    .context("training stopped before its end")?;
    let manifest = automaldesc_common::sha256_hex(shas.join("\n").as_bytes());
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(crate::annotate_cmd::default_model_path);
    let model_sha256 = file_sha256(&model_path)?;
    // The training set's manifest: every script by its hash, in training order.
    std::fs::write(
        args.out.join("training_set.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "from": args.from, "train": shas }))?,
    )?;
    // Epochs are numbered from 1 in everything a person reads (lineage, metadata, output).
    let epochs = trained.epochs_from_one();
    let lineage = serde_json::json!({
        "base_model": annotator.model_id,
        "base_model_file": model_path,
        "base_model_sha256": model_sha256,
        "training_set": { "from": args.from, "examples": tr.len(), "validation": va.len(),
                          "sha256_of_script_hashes": manifest },
        "config": config,
        "epochs": epochs,
        "best_epoch": trained.best_epoch + 1,
        "steps": trained.steps,
        "stopped_early": trained.stopped_early,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let meta = trained.adapter_metadata(&annotator.model_id, &model_sha256, &manifest);
    let adapter_dir = args.out.join("adapter");
    trained
        .adapter
        .save_peft(&adapter_dir, &annotator.model_id, &meta)?;
    std::fs::write(
        args.out.join("lineage.json"),
        serde_json::to_string_pretty(&lineage)?,
    )?;
    for h in &trained.history {
        eprintln!(
            "epoch {}: train loss {:.4}, validation loss {:.4}",
            h.epoch + 1,
            h.train_loss,
            h.val_loss
        );
    }
    eprintln!(
        "adapter (best epoch {}) written to {}",
        trained.best_epoch + 1,
        adapter_dir.display()
    );
    Ok(())
}

fn file_sha256(path: &std::path::Path) -> anyhow::Result<String> {
    automaldesc_worker::stages::train::file_sha256(path).map_err(anyhow::Error::msg)
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// A labelled split whose scripts are the training examples (not needed with --shape).
    #[arg(long, required_unless_present = "shape")]
    pub from: Option<String>,
    #[arg(long)]
    pub model: Option<PathBuf>,
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
}

/// Times training steps on the real model: all tokens (prompt and answer) and answer tokens
/// per second; with --peft-python, PyTorch + PEFT on the same shapes, and the ratio.
pub fn bench(args: BenchTrainArgs) -> anyhow::Result<()> {
    let mut config = preset(&args.preset)?;
    config.batch_tokens = args.batch_tokens;
    config.epochs = 1000;
    let steps = args.steps + 1;
    let (annotator, tr) = match (&args.shape, &args.from) {
        (Some(shape), _) => {
            anyhow::ensure!(
                shape.len() == 2 && shape.iter().all(|&n| n > 0),
                "--shape takes two positive lengths, PROMPT,ANSWER (got {shape:?})"
            );
            let (prompt, answer) = (shape[0], shape[1]);
            let annotator = load_frozen(args.model.clone())?;
            let vocab = annotator.model.config.vocab_size as u32;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let mut random =
                |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
            let tr: Vec<Example> = (0..steps)
                .map(|_| Example {
                    prompt: random(prompt),
                    target: random(answer),
                })
                .collect();
            // One sequence per step, as the PEFT side runs.
            config.batch_tokens = prompt + answer;
            (annotator, tr)
        }
        (None, Some(from)) => {
            let Loaded {
                annotator, train, ..
            } = load(
                args.model.clone(),
                from,
                Some(args.limit),
                0.0,
                Budget::default(),
            )?;
            (annotator, train)
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
    train(&annotator.model, &tr, &[], &config, None, &mut |p| {
        marks.push((Instant::now(), p.tokens));
        p.step < steps
    })?;
    anyhow::ensure!(marks.len() >= 2, "too few steps to time");
    let (t0, k0) = marks[0];
    let (t1, k1) = *marks.last().expect("marks");
    let secs = t1.duration_since(t0).as_secs_f64();
    let answer_per_s = (k1 - k0) as f64 / secs;
    // Padded positions computed per answer token, from the whole set's proportions.
    let ratio = total_tokens(&tr) as f64 / answer_tokens.max(1) as f64;
    println!(
        "ours: training on {} ({} threads): {:.1} answer tokens/s, ~{:.0} sequence tokens/s ({} steps of <= {} padded tokens, rank {})",
        annotator.model_id,
        rayon::current_num_threads(),
        answer_per_s,
        answer_per_s * ratio,
        marks.len() - 1,
        config.batch_tokens,
        config.lora.rank,
    );
    if let (Some(python), Some(model), Some(shape)) =
        (&args.peft_python, &args.peft_model, &args.shape)
    {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/peer/peft_train_bench.py");
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
                .args(["--rank", &config.lora.rank.to_string()]),
            "the PEFT side (tests/peer/peft_train_bench.py)",
        )?;
        let peer_answer = peer["answer_tokens_per_s"]
            .as_f64()
            .context("no answer_tokens_per_s")?;
        println!(
            "PyTorch {} + PEFT {}: {:.1} answer tokens/s, {:.0} sequence tokens/s ({} steps)",
            peer["torch"].as_str().unwrap_or("?"),
            peer["peft"].as_str().unwrap_or("?"),
            peer_answer,
            peer["sequence_tokens_per_s"].as_f64().unwrap_or(0.0),
            peer["steps"],
        );
        println!("ours / PyTorch+PEFT: {:.2}", answer_per_s / peer_answer);
    }
    Ok(())
}
