//! `train`: one task over a labelled split (`labels/` + `scripts/`), which fine-tunes a LoRA
//! adapter of the base model and writes it in PEFT's layout under `adapter/`, with
//! `lineage.json` (base model hash, training-set hash, hyperparameters, losses, wall time).
//! Training checkpoints every `checkpoint_every` steps into a directory on the worker keyed by the task's
//! input and config, so an attempt retried on the same worker resumes where the last one
//! stopped (bit-identical to an uninterrupted run).

use std::collections::HashMap;
use std::time::Instant;

use automaldesc_common::schema::{CorpusRow, LabelledRow};
use serde::{Deserialize, Serialize};

use super::{config, model_path, read_task, write_file};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};
use automaldesc_common::fault::TaskError;
use automaldesc_runtime::train::data::{prepare, Budget, Labelled};
use automaldesc_runtime::train::fit::Trainer;
use automaldesc_runtime::train::metrics::threshold_bias;
use automaldesc_runtime::train::{train_with, TrainConfig, TrainData};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStageConfig {
    pub model: String,
    pub train: TrainConfig,
    pub prompt_tokens: usize,
    pub answer_tokens: usize,
    /// Reference summaries are cut at their last whole sentence within this many tokens.
    #[serde(default)]
    pub summary_tokens: Option<usize>,
    /// Fraction of the scripts held out (stratified by label and language) for validation.
    pub val_fraction: f64,
    /// The system messages of the annotator and the judge (training and inference must
    /// agree).
    #[serde(default)]
    pub prompt: automaldesc_runtime::prompt::PromptStyle,
}

pub use automaldesc_runtime::runtime::CALIBRATION_FILE;

pub struct TrainExecutor;

impl Executor for TrainExecutor {
    fn kind(&self) -> &str {
        "train"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: TrainStageConfig = config("train", &task.config_json)?;
        cfg.train.validate().map_err(|e| format!("train: {e}"))?;
        let started = Instant::now();
        let labels: Vec<LabelledRow> = read_task(task, "/labels/")?;
        let scripts: Vec<CorpusRow> = read_task(task, "/scripts/")?;
        if labels.is_empty() {
            return Err("train: the input holds no labels (expected a labels/ dataset)".into());
        }
        let by_sha: HashMap<&str, &CorpusRow> =
            scripts.iter().map(|r| (r.sha256.as_str(), r)).collect();
        let model = model_path(&cfg.model)?;
        // Training stays on the CPU backend even in a CUDA build: the LoRA training path has
        // not been checked on CUDA yet (inference stages use the worker's device).
        let mut trainer = Trainer::load(&model).map_err(|e| format!("{}: {e}", model.display()))?;
        trainer.annotator.prompt_style = cfg.prompt;
        let model_sha256 = super::model_sha256(&model)?;
        trainer.prefix_store = Some(super::prefix_store(&model_sha256));
        let budget = Budget {
            prompt: cfg.prompt_tokens,
            answer: cfg.answer_tokens,
            summary: cfg.summary_tokens,
        };
        let items = labels
            .iter()
            .map(|l| {
                let script = by_sha.get(l.sha256.as_str()).ok_or_else(|| {
                    TaskError::invalid(format!("train: label {} has no script", l.sha256))
                })?;
                Ok(Labelled {
                    sha256: &l.sha256,
                    script: &script.content,
                    language: l.language,
                    malicious: l.label.as_u8() == 1,
                    summary: &l.summary,
                })
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        let data = prepare(&trainer.annotator, &items, budget, cfg.val_fraction)
            .map_err(|e| TaskError::invalid(format!("train: {e}")))?;
        let key = automaldesc_common::sha256_hex(
            format!("{}|{:?}|{}", task.input_root, task.ranges, task.config_json).as_bytes(),
        );
        let base = std::env::temp_dir()
            .join("automaldesc-train")
            .join(&key[..16]);
        // The checkpoint belongs to one process at a time: a twin attempt of the same task
        // on this machine (speculation) trains in a directory of its own.
        let (ckpt, _lock) = match CheckpointLock::take(&base) {
            Some(lock) => (base, Some(lock)),
            None => (
                base.with_extension(format!("pid-{}", std::process::id())),
                None,
            ),
        };
        let caches = trainer
            .prefix_caches(
                &cfg.train,
                &[&data.train, &data.val],
                Some(&ckpt.join("prefix")),
            )
            .map_err(|e| TaskError::invalid(format!("train: {e}")))?;
        let cancel = task.cancel.clone();
        let run = TrainData {
            train: &data.train,
            val: &data.val,
            choices: Some(&trainer.choices),
            prefix: caches.as_ref().map(|c| (&c[0], &c[1])),
            fused: Some(trainer.fused_model().map_err(|e| format!("train: {e}"))?),
        };
        let trained = train_with(
            &trainer.annotator.model,
            &run,
            &cfg.train,
            Some(&ckpt),
            &mut |p| {
                task.telemetry.task_progress(p.step, p.total_steps);
                tracing::info!(
                    step = p.step,
                    total = p.total_steps,
                    epoch = p.epoch + 1,
                    loss = p.loss,
                    "training"
                );
                !cancel.load(std::sync::atomic::Ordering::Relaxed)
            },
            &mut |e, _| {
                tracing::info!(
                    epoch = e.epoch + 1,
                    train_loss = e.train_loss,
                    val_token_loss = e.val.token_loss,
                    val_label_nll = e.val.label_nll,
                    val_auc = e.val.auc,
                    val_balanced_accuracy = e.val.balanced_accuracy,
                    val_language_accuracy = e.val.language_accuracy,
                    "epoch scored"
                );
            },
        )
        .map_err(|e| format!("train: {e}"))?
        .ok_or_else(|| TaskError::cancelled("train: cancelled"))?;
        let annotator = &trainer.annotator;
        let set_sha256 = automaldesc_common::sha256_hex(data.train_shas.join("\n").as_bytes());
        let epochs = trained.epochs_from_one();
        let meta = trained.adapter_metadata(&annotator.model_id, &model_sha256, &set_sha256);
        let local = ckpt.join("adapter-out");
        trained
            .adapter
            .save_peft(&local, &annotator.model_id, &meta)
            .map_err(|e| format!("saving the adapter: {e}"))?;
        let calibration = serde_json::json!({
            "label_threshold": trained.label_threshold,
            "label_bias": threshold_bias(trained.label_threshold),
            "validation_scripts": data.val.len(),
        });
        std::fs::write(
            local.join(CALIBRATION_FILE),
            serde_json::to_vec_pretty(&calibration)
                .map_err(|e| TaskError::internal(e.to_string()))?,
        )
        .map_err(|e| TaskError::transient(format!("writing {CALIBRATION_FILE}: {e}")))?;
        let mut files = super::write_adapter_dir(task, &local)?;
        let lineage = serde_json::json!({
            "base_model": annotator.model_id,
            "base_model_sha256": model_sha256,
            "training_set": { "input": task.input_root, "examples": data.train.len(),
                              "validation": data.val.len(),
                              "sha256_of_script_hashes": set_sha256 },
            "config": cfg.train,
            "prompt_tokens": cfg.prompt_tokens,
            "answer_tokens": cfg.answer_tokens,
            "summary_tokens": cfg.summary_tokens,
            "prompt_style": cfg.prompt,
            "system_prompt_tokens": trainer.annotator.system_prompt_tokens(),
            "targets_cut": data.targets_cut,
            "summaries_shortened": data.summaries_shortened,
            "adapted_layers": trained.adapter.adapted_layers(),
            "epochs": epochs,
            "best_epoch": trained.best_epoch + 1,
            "label_threshold": trained.label_threshold,
            "steps": trained.steps,
            "stopped_early": trained.stopped_early,
            "seconds": started.elapsed().as_secs_f64(),
        });
        let lineage =
            serde_json::to_vec_pretty(&lineage).map_err(|e| TaskError::internal(e.to_string()))?;
        files.push(write_file(task, "lineage.json", lineage)?);
        let shas_json =
            serde_json::to_vec(&data.train_shas).map_err(|e| TaskError::internal(e.to_string()))?;
        files.push(write_file(task, "training_set.json", shas_json)?);
        // The outputs are written; a later attempt would train from scratch on purpose.
        let _ = std::fs::remove_dir_all(&ckpt);
        Ok(TaskOutput {
            rows_in: labels.len() as u64,
            files,
            quarantined: Vec::new(),
            duplicates: 0,
        })
    }
}

/// An exclusive `flock` on `<dir>.lock`, held by the open file and released when it is
/// dropped (or when the process dies).
struct CheckpointLock {
    _file: std::fs::File,
}

impl CheckpointLock {
    fn take(dir: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(dir.parent()?).ok()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.with_extension("lock"))
            .ok()?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        (rc == 0).then_some(Self { _file: file })
    }
}

/// Hex sha256 of a model file (of a directory's files, by name). An error names the file.
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let named = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{p}: {e}"))
    };
    let mut hasher = Sha256::new();
    let mut files = vec![path.to_path_buf()];
    if path.is_dir() {
        files = std::fs::read_dir(path)
            .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
            .map_err(named(path))?;
        files.sort();
    }
    for f in files.iter().filter(|f| f.is_file()) {
        let mut file = std::fs::File::open(f).map_err(named(f))?;
        std::io::copy(&mut file, &mut hasher).map_err(named(f))?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}
