//! `automaldesc train`: fine-tune a LoRA adapter on a labelled split, and
//! `automaldesc bench train`: training tokens per second.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use automaldesc_loop::stages::defaults;
use automaldesc_runtime::train::data::{prepare, through_label, Budget, Labelled, Prepared};
use automaldesc_runtime::train::fit::Trainer;
use automaldesc_runtime::train::lora::{LayerSet, LoraConfig};
use automaldesc_runtime::train::metrics::threshold_bias;
use automaldesc_runtime::train::{train_with, Example, TrainConfig, TrainData};
use clap::Args;

use crate::model_args::ModelArg;

mod bench;
pub use bench::{bench, BenchTrainArgs};

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
    #[command(flatten)]
    pub model: ModelArg,
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
    /// The blocks that carry adapters: all, top:K or a comma-separated list.
    #[arg(long)]
    pub layers: Option<String>,
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
    /// Loss weight of the label choice (a summary token weighs 1).
    #[arg(long)]
    pub label_weight: Option<f32>,
    /// Loss weight of the language choice.
    #[arg(long)]
    pub language_weight: Option<f32>,
    /// Train a label head (a linear readout of the final hidden state on the label's
    /// logit) with the adapters.
    #[arg(long)]
    pub label_head: bool,
    /// Refit a language head (one readout per language) at every epoch's end.
    #[arg(long)]
    pub language_head: bool,
    /// Do not scale the label weight by inverse class frequency.
    #[arg(long)]
    pub no_balance: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of the examples held out for validation (stratified by label and language).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Use only the first N labelled scripts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Prompt tokens per script (the inference budget; longer scripts keep head and tail).
    #[arg(long, default_value_t = defaults::PROMPT_TOKENS)]
    pub prompt_tokens: usize,
    /// Answer tokens per example (an answer cut by it is counted in the lineage).
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    pub answer_tokens: usize,
    /// Cut reference summaries at their last whole sentence within this many tokens.
    #[arg(long)]
    pub summary_tokens: Option<usize>,
    /// Also score this labelled split after every epoch, label only (the language given,
    /// as the reference says): accuracy, AUC and balanced accuracy at the calibrated
    /// threshold. For experiments: a test split must never choose the epoch.
    #[arg(long)]
    pub eval_from: Option<String>,
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// The compact system prompt (a few dozen tokens instead of ~160).
    #[arg(long)]
    pub compact_prompt: bool,
    /// With --eval-from: also score the base model (no adapter) before training.
    #[arg(long, requires = "eval_from")]
    pub eval_base: bool,
    /// Write every rendered example (train, validation, eval) as JSON lines here, for the
    /// PyTorch + PEFT peer (`tests/peer/peft_recipe.py`) to train on the same tokens.
    #[arg(long)]
    pub dump_examples: Option<PathBuf>,
    /// Only render and dump the examples; do not train.
    #[arg(long, requires = "dump_examples")]
    pub dump_only: bool,
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

/// A `--layers` value: all, top:K, or a comma-separated list of block indices.
pub fn parse_layers(s: &str) -> anyhow::Result<LayerSet> {
    if s == "all" || s.starts_with("top:") {
        return Ok(LayerSet::Named(s.to_string()));
    }
    let list = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--layers {s:?}: all, top:K or a list like 20,21,22"))?;
    Ok(LayerSet::List(list))
}

/// The model on the CPU autodiff device, frozen.
fn load_trainer(model: PathBuf) -> anyhow::Result<Trainer> {
    anyhow::ensure!(
        model.exists(),
        "model file {} not found: run deploy/fetch_model.sh or pass --model",
        model.display()
    );
    Ok(Trainer::load(&model)?)
}

/// A labelled split rendered and split into training and validation examples.
fn load_split(
    trainer: &Trainer,
    from: &str,
    limit: Option<usize>,
    val_fraction: f64,
    budget: Budget,
) -> anyhow::Result<Prepared> {
    let (scripts, labels) = crate::labelled_split::read(from, limit)?;
    anyhow::ensure!(!labels.is_empty(), "{from} holds no labelled scripts");
    let items: Vec<Labelled> = scripts
        .iter()
        .zip(&labels)
        .map(|((sha, bytes), l)| Labelled {
            sha256: sha,
            script: bytes,
            language: l.language,
            malicious: l.label.as_u8() == 1,
            summary: &l.summary,
        })
        .collect();
    Ok(prepare(&trainer.annotator, &items, budget, val_fraction)?)
}

fn config_from_args(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
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
    if let Some(v) = &args.layers {
        config.lora.layers = parse_layers(v)?;
    }
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
    if let Some(v) = args.label_weight {
        config.label_weight = v;
    }
    if let Some(v) = args.language_weight {
        config.language_weight = v;
    }
    config.balance_classes = !args.no_balance;
    config.lora.label_head = args.label_head;
    config.lora.language_head = args.language_head;
    config.validate()?;
    Ok(config)
}

fn dump_examples(path: &PathBuf, sets: &[(&str, &[Example])]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for (split, set) in sets {
        for e in set.iter() {
            let line = serde_json::json!({
                "split": split, "prompt": e.prompt, "target": e.target,
                "roles": e.roles, "label": e.label(),
            });
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = config_from_args(&args)?;
    let budget = Budget {
        prompt: args.prompt_tokens,
        answer: args.answer_tokens,
        summary: args.summary_tokens,
    };
    let mut trainer = load_trainer(args.model.path())?;
    if args.compact_prompt {
        trainer.annotator.prompt_style = automaldesc_runtime::prompt::PromptStyle::Compact;
    }
    let data = load_split(&trainer, &args.from, args.limit, args.val_fraction, budget)?;
    let eval: Vec<Example> = match &args.eval_from {
        Some(from) => load_split(&trainer, from, args.eval_limit, 0.0, budget)?
            .train
            .iter()
            .map(through_label)
            .collect(),
        None => Vec::new(),
    };
    if let Some(path) = &args.dump_examples {
        dump_examples(
            path,
            &[("train", &data.train), ("val", &data.val), ("eval", &eval)],
        )?;
        eprintln!("examples written to {}", path.display());
        if args.dump_only {
            return Ok(());
        }
    }
    let annotator = &trainer.annotator;
    let target_tokens: usize = data.train.iter().map(|e| e.target.len()).sum();
    eprintln!(
        "training on {} examples ({} answer tokens, {} targets cut by the answer budget, {} summaries shortened), validating on {}; base {}",
        data.train.len(),
        target_tokens,
        data.targets_cut,
        data.summaries_shortened,
        data.val.len(),
        annotator.model_id
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ckpt = args.out.join("checkpoint");
    let started = Instant::now();
    let caches = trainer.prefix_caches(
        &config,
        &[&data.train, &data.val, &eval],
        Some(&ckpt.join("prefix")),
    )?;
    // The epoch ends, and the eval split with each epoch's adapter merged, run on the fused
    // inference path.
    let infer = trainer.fused_model()?;
    if let Some(c) = &caches {
        eprintln!(
            "frozen prefix: blocks below {} run once ({:.1} s, {:.0} MiB in memory, {:.0} MiB spilled)",
            c[0].start,
            started.elapsed().as_secs_f64(),
            c.iter().map(|c| c.memory_bytes).sum::<usize>() as f64 / (1 << 20) as f64,
            c.iter().map(|c| c.spilled_bytes).sum::<u64>() as f64 / (1 << 20) as f64,
        );
    }
    let run = TrainData {
        train: &data.train,
        val: &data.val,
        choices: Some(&trainer.choices),
        prefix: caches.as_ref().map(|c| (&c[0], &c[1])),
        fused: Some(infer),
    };
    let mut eval_log = Vec::new();
    if args.eval_base && !eval.is_empty() {
        let prefix = caches.as_ref().map(|c| &c[2]);
        let t = automaldesc_runtime::train::label_eval::score_labels(
            infer,
            None,
            &eval,
            &trainer.choices,
            prefix,
        )?;
        let m = t.metrics();
        eprintln!(
            "  base model on eval ({} scripts): acc {:.3} bal {:.3} auc {:.3} nll {:.4} lang {:.3}",
            m.n, m.label_accuracy, m.balanced_accuracy, m.auc, m.label_nll, m.language_accuracy
        );
        eval_log.push(serde_json::json!({
            "epoch": 0, "eval": m,
            "p_malicious": t.labels.iter().map(|s| s.p).collect::<Vec<_>>(),
            "labels": t.labels.iter().map(|s| s.label).collect::<Vec<_>>(),
        }));
    }
    let trained = train_with(
        &annotator.model,
        &run,
        &config,
        Some(&ckpt),
        &mut |p| {
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
        },
        &mut |e, adapter| {
            eprintln!(
                "epoch {}: train loss {:.4} | train label nll {:.4} auc {:.3} | val tokens {:.4} label nll {:.4} acc {:.3} bal {:.3} auc {:.3} lang {:.3} ({:.0} s)",
                e.epoch + 1, e.train_loss, e.train.label_nll, e.train.auc, e.val.token_loss,
                e.val.label_nll, e.val.label_accuracy, e.val.balanced_accuracy, e.val.auc,
                e.val.language_accuracy, started.elapsed().as_secs_f64()
            );
            if eval.is_empty() {
                return;
            }
            let merged = automaldesc_runtime::train::label_eval::merged(infer, adapter);
            let prefix = caches.as_ref().map(|c| &c[2]);
            let scored = merged
                .map_err(|e| anyhow::anyhow!(e))
                .and_then(|m| Ok(automaldesc_runtime::train::label_eval::score_labels(&m, Some(adapter), &eval, &trainer.choices, prefix)?));
            match scored {
                Ok(t) => {
                    let m = t.metrics();
                    let th = automaldesc_runtime::train::metrics::calibrated_threshold(&t.labels);
                    let line = serde_json::json!({
                        "epoch": e.epoch + 1, "eval": m, "val": e.val,
                        "eval_oracle_threshold": th,
                        "eval_balanced_accuracy_at_oracle": automaldesc_runtime::train::metrics::balanced_accuracy(&t.labels, th),
                        "p_malicious": t.labels.iter().map(|s| s.p).collect::<Vec<_>>(),
                        "labels": t.labels.iter().map(|s| s.label).collect::<Vec<_>>(),
                        "seconds": started.elapsed().as_secs_f64(),
                    });
                    eprintln!(
                        "  eval ({} scripts): acc {:.3} bal {:.3} auc {:.3} nll {:.4} lang {:.3}",
                        m.n, m.label_accuracy, m.balanced_accuracy, m.auc, m.label_nll, m.language_accuracy
                    );
                    eval_log.push(line);
                }
                Err(err) => eprintln!("  eval failed: {err}"),
            }
        },
    )?
    .context("training stopped before its end")?;
    let manifest = automaldesc_common::sha256_hex(data.train_shas.join("\n").as_bytes());
    let model_path = args.model.path();
    let model_sha256 = file_sha256(&model_path)?;
    // The training set's manifest: every script by its hash, in training order.
    std::fs::write(
        args.out.join("training_set.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "from": args.from, "train": data.train_shas, "validation": data.val_shas }),
        )?,
    )?;
    // Epochs are numbered from 1 in everything a person reads (lineage, metadata, output).
    let epochs = trained.epochs_from_one();
    let lineage = serde_json::json!({
        "base_model": annotator.model_id,
        "base_model_file": model_path,
        "base_model_sha256": model_sha256,
        "training_set": { "from": args.from, "examples": data.train.len(), "validation": data.val.len(),
                          "sha256_of_script_hashes": manifest },
        "config": config,
        "prompt_tokens": args.prompt_tokens,
        "answer_tokens": args.answer_tokens,
        "summary_tokens": args.summary_tokens,
        "prompt_style": trainer.annotator.prompt_style,
        "system_prompt_tokens": trainer.annotator.system_prompt_tokens(),
        "targets_cut": data.targets_cut,
        "summaries_shortened": data.summaries_shortened,
        "epochs": epochs,
        "best_epoch": trained.best_epoch + 1,
        "label_threshold": trained.label_threshold,
        "steps": trained.steps,
        "stopped_early": trained.stopped_early,
        "seconds": started.elapsed().as_secs_f64(),
        "eval": eval_log,
    });
    let meta = trained.adapter_metadata(&annotator.model_id, &model_sha256, &manifest);
    let adapter_dir = args.out.join("adapter");
    trained
        .adapter
        .save_peft(&adapter_dir, &annotator.model_id, &meta)?;
    std::fs::write(
        adapter_dir.join(automaldesc_loop::stages::train::CALIBRATION_FILE),
        serde_json::to_string_pretty(&serde_json::json!({
            "label_threshold": trained.label_threshold,
            "label_bias": threshold_bias(trained.label_threshold),
            "validation_scripts": data.val.len(),
        }))?,
    )?;
    std::fs::write(
        args.out.join("lineage.json"),
        serde_json::to_string_pretty(&lineage)?,
    )?;
    eprintln!(
        "adapter (best epoch {}, label threshold {:.3}) written to {}",
        trained.best_epoch + 1,
        trained.label_threshold,
        adapter_dir.display()
    );
    Ok(())
}

fn file_sha256(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(automaldesc_loop::stages::train::file_sha256(path)?)
}
