//! `aggregate`: one task over every decision of an iteration. It writes
//! - `train/labels/` and `train/scripts/`: the next training set, the seed plus the
//!   accepted pseudo-labels, as Parquet shards of a target size (a labelled split that
//!   `automaldesc train --from` reads too);
//! - `rejected/`: every other unlabelled script with its funnel stage and reason;
//! - `funnel.json`: the counts ([`FunnelSummary`]);
//! - `manifest.json`: the shards with their checksums and the lineage (run, iteration,
//!   base model and adapter hashes, config hash, counts).
//!
//! Every distinct script of the unlabelled corpus ends in exactly one of accepted and
//! rejected: a script that never reached the filter (an earlier stage quarantined it) is
//! rejected as `0-unprocessed`; a decision for a script outside the corpus, or two
//! different decisions for one script, fail the task.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::filter::Funnel;
use crate::report::FunnelSummary;
use automaldesc_common::fault::TaskError;
use automaldesc_common::manifest::Manifest;
use automaldesc_common::parquet_io::{read_dataset, WriterOptions};
use automaldesc_common::schema::{CorpusRow, DecisionRow, LabelledRow, RejectedRow};
use automaldesc_common::store::{block_on, open_object};
use serde::{Deserialize, Serialize};

use super::{config, read_task, refs, write_file, write_rows};
use automaldesc_common::executor::{Executor, TaskInput, TaskOutput};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub run: String,
    pub iteration: u32,
    /// The seed split (`labels/` + `scripts/`).
    pub seed: String,
    /// The unlabelled corpus the iteration annotated.
    pub corpus: String,
    /// Target bytes of a training-set shard.
    pub shard_bytes: u64,
    /// sha256 of the run's config, for the manifest.
    pub config_hash: String,
    /// sha256 of the base model file, for the manifest.
    pub base_model_sha256: String,
}

fn read_url<R: automaldesc_common::schema::ArrowRow>(url: &str) -> super::StageResult<Vec<R>> {
    let (store, prefix) = open_object(url).map_err(|e| TaskError::from(e).context(url))?;
    block_on(read_dataset(store, &prefix))?
        .map_err(|e| TaskError::from(e).context(&format!("reading {url}")))
}

/// What a decision decides (its floats left out: a rejected row carries NaN).
fn verdict(d: &DecisionRow) -> impl PartialEq + '_ {
    (
        d.accepted, d.reason, &d.detail, d.language, d.label, &d.summary,
    )
}

pub struct AggregateExecutor;

impl Executor for AggregateExecutor {
    fn kind(&self) -> &str {
        "aggregate"
    }

    fn run(&self, task: &TaskInput) -> super::StageResult<TaskOutput> {
        let cfg: AggregateConfig = config("aggregate", &task.config_json)?;
        let refs = refs(&task.config_json)?;
        let decisions: Vec<DecisionRow> = read_task(task, "")?;
        let rows_in = decisions.len() as u64;
        let seed = cfg.seed.trim_end_matches('/');
        let seed_labels: Vec<LabelledRow> = read_url(&format!("{seed}/labels"))?;
        let seed_scripts: Vec<CorpusRow> = read_url(&format!("{seed}/scripts"))?;
        let corpus: Vec<CorpusRow> = read_url(&cfg.corpus)?;
        let universe: HashSet<&str> = corpus.iter().map(|r| r.sha256.as_str()).collect();

        let mut by_sha: HashMap<&str, &DecisionRow> = HashMap::new();
        for d in &decisions {
            if !universe.contains(d.sha256.as_str()) {
                return Err(TaskError::invalid(format!(
                    "a decision for script {} which is not in the corpus {}",
                    d.sha256, cfg.corpus
                )));
            }
            match by_sha.get(d.sha256.as_str()) {
                // A script that occurs twice in the corpus is decided twice, alike.
                Some(prev) if verdict(prev) != verdict(d) => {
                    return Err(TaskError::invalid(format!(
                        "two different decisions for script {}",
                        d.sha256
                    )))
                }
                _ => {
                    by_sha.insert(&d.sha256, d);
                }
            }
        }

        let seed_shas: HashSet<&str> = seed_labels.iter().map(|l| l.sha256.as_str()).collect();
        let mut funnel = Funnel::default();
        let mut labels = seed_labels.clone();
        let mut scripts = seed_scripts.clone();
        let mut rejected = Vec::new();
        let mut accepted_in_seed = 0;
        let mut unprocessed = 0;
        let mut accepted_by_label: BTreeMap<String, u64> = BTreeMap::new();
        let mut rejected_by_label: BTreeMap<String, u64> = BTreeMap::new();
        let adapter = adapter_hash(&refs)?;
        let provenance = format!(
            "iter-{}:run={}:model={}:adapter={}",
            cfg.iteration,
            cfg.run,
            &cfg.base_model_sha256[..16.min(cfg.base_model_sha256.len())],
            adapter.get(..16).unwrap_or("none")
        );
        let mut order: Vec<&CorpusRow> = corpus.iter().collect();
        order.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        order.dedup_by(|a, b| a.sha256 == b.sha256);
        for script in order {
            let Some(d) = by_sha.get(script.sha256.as_str()) else {
                unprocessed += 1;
                rejected.push(RejectedRow {
                    sha256: script.sha256.clone(),
                    stage: "0-unprocessed".into(),
                    reason: "unprocessed".into(),
                    detail: "quarantined before the filter (see the run's quarantine)".into(),
                });
                continue;
            };
            let class = |l: Option<automaldesc_common::Label>| match l {
                Some(automaldesc_common::Label::Benign) => "benign",
                Some(automaldesc_common::Label::Malicious) => "malicious",
                None => "none",
            };
            if !d.accepted {
                *rejected_by_label
                    .entry(class(d.label).to_string())
                    .or_insert(0) += 1;
                let Some(reason) = d.reason else {
                    return Err(TaskError::invalid(format!(
                        "rejected script {} without its reason",
                        d.sha256
                    )));
                };
                funnel.reject(reason);
                rejected.push(RejectedRow {
                    sha256: d.sha256.clone(),
                    stage: reason.stage().into(),
                    reason: reason.as_str().into(),
                    detail: d.detail.clone(),
                });
                continue;
            }
            funnel.accept();
            *accepted_by_label
                .entry(class(d.label).to_string())
                .or_insert(0) += 1;
            if seed_shas.contains(d.sha256.as_str()) {
                accepted_in_seed += 1;
                continue;
            }
            let (Some(language), Some(label), Some(summary)) = (d.language, d.label, &d.summary)
            else {
                return Err(TaskError::invalid(format!(
                    "accepted script {} without its answer",
                    d.sha256
                )));
            };
            labels.push(LabelledRow {
                sha256: d.sha256.clone(),
                language,
                label,
                summary: summary.clone(),
                behaviours: Vec::new(),
                provenance: provenance.clone(),
            });
            scripts.push(script.clone());
        }

        let generated_tokens = decisions.iter().map(|d| d.generated_tokens).sum();
        let saved_tokens = decisions.iter().map(|d| d.saved_tokens).sum();
        let summary = FunnelSummary {
            unlabelled: universe.len() as u64,
            unprocessed,
            accepted_in_seed,
            seed: seed_labels.len() as u64,
            training_set: labels.len() as u64,
            generated_tokens,
            saved_tokens,
            accepted_by_label,
            rejected_by_label,
            judge: refs
                .get("judge")
                .map(|r| r.json("judge.json"))
                .transpose()?,
            ..FunnelSummary::from_funnel(&funnel)
        };
        if !summary.adds_up() {
            return Err(TaskError::internal(format!(
                "the funnel does not add up: {summary:?}"
            )));
        }

        let shards = WriterOptions {
            target_file_bytes: cfg.shard_bytes.max(1),
            ..WriterOptions::default()
        };
        let mut files = write_rows(task, "train/labels", labels, shards.clone())?;
        files.extend(write_rows(task, "train/scripts", scripts, shards)?);
        let train_files = files.clone();
        files.extend(write_rows(
            task,
            "rejected",
            rejected,
            WriterOptions::default(),
        )?);
        let funnel_json =
            serde_json::to_vec_pretty(&summary).map_err(|e| TaskError::internal(e.to_string()))?;
        files.push(write_file(task, "funnel.json", funnel_json)?);
        let counts: BTreeMap<String, u64> = [
            ("unlabelled", summary.unlabelled),
            ("accepted", summary.accepted),
            ("rejected", summary.unlabelled - summary.accepted),
            ("unprocessed", summary.unprocessed),
            ("seed", summary.seed),
            ("training_set", summary.training_set),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(
            summary
                .rejected
                .iter()
                .map(|(k, v)| (format!("rejected:{k}"), *v)),
        )
        .collect();
        let manifest = Manifest {
            run_id: cfg.run.clone(),
            iteration: cfg.iteration,
            stage: "aggregate".into(),
            files: train_files,
            config_hash: cfg.config_hash.clone(),
            model_id: Some(format!("sha256:{}", cfg.base_model_sha256)),
            adapter_id: Some(format!("sha256:{adapter}")),
            counts,
        };
        let manifest_json = manifest.to_json().map_err(|e| e.to_string())?;
        files.push(write_file(
            task,
            "manifest.json",
            manifest_json.into_bytes(),
        )?);
        Ok(TaskOutput {
            rows_in,
            files,
            quarantined: Vec::new(),
            duplicates: 0,
        })
    }
}

/// sha256 of the adapter weights of the ref `adapter` ("none" without one).
fn adapter_hash(refs: &BTreeMap<String, super::StageRef>) -> super::StageResult<String> {
    match refs.get("adapter") {
        Some(r) => {
            let path = r.one("adapter_model.safetensors")?;
            Ok(automaldesc_common::sha256_hex(&r.read(path)?))
        }
        None => Ok("none".into()),
    }
}
