//! Annotation of scripts with one model: prompts (with the truncation policy), the
//! temperatures sharing one prefill, early stop, and one result per script.

use std::time::Instant;

use automaldesc_common::schema::FinishReason;
use serde::Serialize;

use crate::generate::{EarlyStop, Engine, Format, GenStats, PrefillReuse, Request, SamplingParams};
use crate::runtime::Annotator;

#[derive(Clone, Debug)]
pub struct AnnotateOptions {
    pub temperatures: Vec<f32>,
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Prompt tokens allowed per script (the context budget minus the answer's room).
    pub prompt_budget: usize,
    pub early_stop: EarlyStop,
    pub slots: usize,
    /// The summary never repeats an n-gram of this size (0: off).
    pub no_repeat_ngram: usize,
    /// Penalty on tokens already in the summary (1: off).
    pub repetition_penalty: f32,
    /// A label-only evaluation: every script stops right after its label, except those
    /// whose sha256 is listed (they get whole answers, for the summary metrics).
    pub label_only_except: Option<std::collections::BTreeSet<String>>,
    /// Prefill states shared with other runs of models with the same lower blocks.
    pub reuse: Option<PrefillReuse>,
}

impl Default for AnnotateOptions {
    fn default() -> Self {
        Self {
            temperatures: vec![0.4, 0.6, 0.8],
            top_p: 0.95,
            seed: 0,
            max_new_tokens: 512,
            prompt_budget: 1536,
            early_stop: EarlyStop::default(),
            slots: 8,
            no_repeat_ngram: 0,
            repetition_penalty: 1.0,
            label_only_except: None,
            reuse: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SampleAnswer {
    pub temperature: f32,
    pub seed: u64,
    /// The JSON answer text exactly as generated (closed if cut by the token budget).
    pub response: String,
    pub language: Option<String>,
    pub label: Option<u8>,
    pub label_prob: f32,
    pub language_probs: std::collections::BTreeMap<String, f32>,
    pub generated_tokens: usize,
    pub finish_reason: FinishReason,
    pub prefill_ms: f64,
    pub wall_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScriptAnnotation {
    pub name: String,
    pub sha256: String,
    pub prompt_tokens: usize,
    pub prompt_truncated: bool,
    pub truncated_bytes: usize,
    pub model_id: String,
    pub samples: Vec<SampleAnswer>,
}

/// Annotates every script; results come back in input order.
pub fn annotate(
    annotator: &Annotator,
    scripts: &[(String, Vec<u8>)],
    opts: &AnnotateOptions,
) -> (Vec<ScriptAnnotation>, GenStats, f64) {
    let started = Instant::now();
    let prompts: Vec<_> = scripts
        .iter()
        .map(|(_, bytes)| annotator.annotation_prompt(bytes, opts.prompt_budget))
        .collect();
    let requests: Vec<Request> = prompts
        .iter()
        .zip(scripts)
        .map(|(p, (_, bytes))| Request {
            prompt: p.tokens.clone(),
            samples: opts
                .temperatures
                .iter()
                .enumerate()
                .map(|(j, &t)| SamplingParams {
                    no_repeat_ngram: opts.no_repeat_ngram,
                    repetition_penalty: opts.repetition_penalty,
                    ..SamplingParams::new(
                        t,
                        opts.top_p,
                        sample_seed(opts.seed, content_key(bytes), j),
                    )
                })
                .collect(),
            max_new_tokens: opts.max_new_tokens,
            format: Format::Answer,
            label_only: opts
                .label_only_except
                .as_ref()
                .is_some_and(|keep| !keep.contains(&automaldesc_common::sha256_hex(bytes))),
        })
        .collect();
    let engine = Engine {
        model: &annotator.model,
        schema: &annotator.schema,
        slots: opts.slots,
        reuse: opts.reuse.as_ref(),
    };
    let (outputs, stats) = engine.run(&requests, &opts.early_stop);
    let mut results: Vec<ScriptAnnotation> = scripts
        .iter()
        .zip(&prompts)
        .map(|((name, bytes), p)| ScriptAnnotation {
            name: name.clone(),
            sha256: automaldesc_common::sha256_hex(bytes),
            prompt_tokens: p.tokens.len(),
            prompt_truncated: p.truncated.is_some(),
            truncated_bytes: p.truncated.as_ref().map_or(0, |t| t.dropped_bytes),
            model_id: annotator.model_id.clone(),
            samples: Vec::new(),
        })
        .collect();
    for o in outputs {
        let params = &requests[o.request].samples[o.sample];
        results[o.request].samples.push(SampleAnswer {
            temperature: params.temperature,
            seed: params.seed,
            response: o.json,
            language: o.language.map(|l| l.as_str().to_string()),
            label: o.label,
            label_prob: o.label_prob,
            language_probs: automaldesc_common::Language::ALL
                .iter()
                .zip(o.language_probs)
                .map(|(l, p)| (l.as_str().to_string(), p))
                .collect(),
            generated_tokens: o.tokens.len(),
            finish_reason: o.finish,
            prefill_ms: o.prefill_secs * 1e3,
            wall_ms: o.wall_secs * 1e3,
        });
    }
    (results, stats, started.elapsed().as_secs_f64())
}

/// A script's key for [`sample_seed`]: from its content, so a script gets the same samples
/// whatever else is in its batch or task.
pub fn content_key(bytes: &[u8]) -> usize {
    let digest = automaldesc_common::sha256_hex(bytes);
    u64::from_str_radix(&digest[..16], 16).unwrap_or(0) as usize
}

/// A distinct, reproducible seed per (run seed, script, sample).
pub fn sample_seed(seed: u64, script: usize, sample: usize) -> u64 {
    let x = seed ^ (script as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (sample as u64) << 48;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ (x >> 31)
}
