//! Batched generation over a slot cache. A request (one prompt, several samples at their own
//! temperatures and seeds) is prefilled once; its KV rows are copied into one slot per
//! sample. All occupied slots then decode together, a finished slot is refilled from the
//! queue at once, and samples that the early-stop policy already condemns stop right after
//! their label.

use std::time::Instant;

use automaldesc_common::schema::FinishReason;
use automaldesc_common::Language;
use burn::tensor::{Tensor, TensorData};

use super::sampler::{choice_probs, control_repetition, log_prob, Sampler, SamplingParams};
use super::schema::{AnswerSchema, AnswerState, Next};
use crate::model::{KvCache, Llama};
use crate::state_store::StateStore;

/// One prompt to answer, several times.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt tokens; for `Format::Answer` they end with the answer prefix
    /// (`{"language": "`).
    pub prompt: Vec<u32>,
    pub samples: Vec<SamplingParams>,
    pub max_new_tokens: usize,
    pub format: Format,
    /// Stop every sample right after its label (a label-only evaluation).
    pub label_only: bool,
}

/// What a sample may generate.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Format {
    /// The annotator's JSON answer, constrained to its schema (see `schema`).
    #[default]
    Answer,
    /// Any token; the sample ends after one of `stop` (kept in its tokens) or at
    /// `max_new_tokens`.
    Text { stop: Vec<u32> },
}

/// Which samples may stop right after their label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EarlyStop {
    /// Stop every sample of a prompt once their labels are known and differ.
    pub require_agreement: bool,
    /// Stop a sample whose label probability is under this.
    pub min_label_prob: Option<f32>,
}

#[derive(Clone, Debug)]
pub struct SampleOutput {
    pub request: usize,
    pub sample: usize,
    /// The JSON answer (`Format::Answer`); empty for `Format::Text` (see `tokens`).
    pub json: String,
    pub language: Option<Language>,
    /// Probability of each language (in `Language::ALL` order) at the language choice.
    pub language_probs: [f32; 5],
    pub label: Option<u8>,
    /// Mass of the chosen label against the other one, from the model's raw logits.
    pub label_prob: f32,
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token under the unconstrained model.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// Seconds spent prefilling this sample's prompt (shared by its siblings).
    pub prefill_secs: f64,
    /// Seconds from the prompt's admission to this sample's retirement.
    pub wall_secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenStats {
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    /// Tokens produced by samples (one per sample per decode step).
    pub decode_tokens: usize,
    pub decode_steps: usize,
    pub decode_secs: f64,
    /// Prompt tokens whose prefill below the reuse block was read from the store.
    pub prefill_reused_tokens: usize,
    pub early_stopped: usize,
    /// `max_new_tokens - generated` summed over early-stopped samples: an upper bound on
    /// the decode tokens early stop saved.
    pub saved_tokens_bound: usize,
}

struct Active {
    request: usize,
    sample: usize,
    state: AnswerState,
    sampler: Sampler,
    feed: u32,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    language_probs: [f32; 5],
    label_prob: f32,
    /// Where the summary's tokens start in `tokens`, once it has begun.
    summary_start: Option<usize>,
    finish: Option<FinishReason>,
    admitted: Instant,
    prefill_secs: f64,
}

pub struct Engine<'a> {
    pub model: &'a Llama,
    pub schema: &'a AnswerSchema,
    /// Slots decoded together.
    pub slots: usize,
    /// Prefill states kept across runs, for models that share the blocks below a block.
    pub reuse: Option<&'a PrefillReuse>,
}

/// A store of prompts' prefill states below `block`: the keys and values of blocks
/// `0..block` and the residual stream entering `block`. Models whose blocks below `block`
/// are the same (a base model and its adapters on higher blocks) read what another one
/// left instead of running those blocks again; the result is the same to the bit.
#[derive(Clone, Debug)]
pub struct PrefillReuse {
    /// Keyed by the base model's content hash; see [`PrefillReuse::for_model`].
    pub store: StateStore,
    pub block: usize,
}

impl PrefillReuse {
    /// Reuse below `block` for a model whose lowest block that differs from the base model
    /// is `first_changed` (`None`: the base model itself); `None` when the model changes a
    /// block below `block`, or when `block` is 0 (nothing to share).
    pub fn for_model(
        store: StateStore,
        block: usize,
        first_changed: Option<usize>,
    ) -> Option<Self> {
        let shared = first_changed.is_none_or(|f| f >= block);
        (block > 0 && shared).then_some(Self { store, block })
    }
}

impl Engine<'_> {
    /// Answers every request; outputs come back in request order, samples in order.
    pub fn run(&self, requests: &[Request], early: &EarlyStop) -> (Vec<SampleOutput>, GenStats) {
        let mut stats = GenStats::default();
        let mut outputs: Vec<Option<SampleOutput>> = Vec::new();
        let offsets: Vec<usize> = requests
            .iter()
            .scan(0, |acc, r| {
                let o = *acc;
                *acc += r.samples.len();
                Some(o)
            })
            .collect();
        outputs.resize(requests.iter().map(|r| r.samples.len()).sum(), None);
        let capacity = requests
            .iter()
            .map(|r| r.prompt.len() + r.max_new_tokens + 1)
            .max()
            .unwrap_or(1);
        let widest = requests.iter().map(|r| r.samples.len()).max().unwrap_or(1);
        let slots = self.slots.max(widest);
        let device = self.model.device();
        let mut cache = KvCache::new(&self.model.config, slots, capacity, &device);
        let mut active: Vec<Option<Active>> = (0..slots).map(|_| None).collect();
        let mut queue = 0usize;

        loop {
            // Admit requests while their samples fit in free slots.
            while queue < requests.len() {
                let free: Vec<usize> = (0..active.len()).filter(|&s| active[s].is_none()).collect();
                let req = &requests[queue];
                if free.len() < req.samples.len() {
                    break;
                }
                let started = Instant::now();
                let (single, last) = self.prefill(&req.prompt, &mut stats);
                let shift = Shifts {
                    label: self.schema.label_head_shift(&last)[0],
                    language: self.schema.language_head_shift(&last)[0],
                };
                let logits = flat_logits(self.model.logits(last));
                stats.prefill_tokens += req.prompt.len();
                let prefill_secs = started.elapsed().as_secs_f64();
                for (i, params) in req.samples.iter().enumerate() {
                    let slot = free[i];
                    cache.copy_slot_from(slot, &single, 0);
                    let mut a = Active {
                        request: queue,
                        sample: i,
                        state: AnswerState::new(),
                        sampler: Sampler::new(params.clone()),
                        feed: 0,
                        tokens: Vec::new(),
                        logprobs: Vec::new(),
                        language_probs: [0.0; 5],
                        label_prob: 0.0,
                        summary_start: None,
                        finish: None,
                        admitted: started,
                        prefill_secs,
                    };
                    self.decide(&mut a, &logits, req, shift);
                    active[slot] = Some(a);
                }
                stats.prefill_secs += started.elapsed().as_secs_f64();
                queue += 1;
            }
            self.apply_early_stop(&mut active, early, requests);
            self.retire(&mut active, &mut outputs, &offsets, &mut stats, requests);
            if active.iter().all(Option::is_none) {
                if queue >= requests.len() {
                    break;
                }
                continue;
            }
            // One decode step for the samples still generating. Finished samples waiting
            // for their siblings and free slots stay out of the batch.
            let started = Instant::now();
            let live: Vec<usize> = (0..active.len())
                .filter(|&s| matches!(&active[s], Some(a) if a.finish.is_none()))
                .collect();
            let feed: Vec<u32> = live
                .iter()
                .map(|&s| active[s].as_ref().map_or(0, |a| a.feed))
                .collect();
            let h = self.model.forward_slots(&feed, 1, &mut cache, &live);
            let shifts: Vec<Shifts> = self
                .schema
                .label_head_shift(&h)
                .into_iter()
                .zip(self.schema.language_head_shift(&h))
                .map(|(label, language)| Shifts { label, language })
                .collect();
            let logits = flat_logits(self.model.logits(h));
            let vocab = self.model.config.vocab_size;
            for (row, &s) in live.iter().enumerate() {
                if let Some(a) = active[s].as_mut() {
                    let req = &requests[a.request];
                    self.decide(a, &logits[row * vocab..(row + 1) * vocab], req, shifts[row]);
                    stats.decode_tokens += 1;
                }
            }
            stats.decode_steps += 1;
            stats.decode_secs += started.elapsed().as_secs_f64();
        }
        (outputs.into_iter().flatten().collect(), stats)
    }

    /// Prefills one prompt into a one-slot cache of its length; returns the cache and the
    /// final hidden state of its last token. With [`PrefillReuse`], the blocks below its
    /// block come from the store when a run left them there, and go there otherwise.
    fn prefill(&self, prompt: &[u32], stats: &mut GenStats) -> (KvCache, Tensor<2>) {
        let n = prompt.len();
        let device = self.model.device();
        let c = &self.model.config;
        let mut single = KvCache::new(c, 1, n, &device);
        let reuse = self.reuse.filter(|_| self.model.splits_prefill());
        let Some(reuse) = reuse else {
            let h = self.model.forward(prompt, n, &mut single);
            return (single, h.narrow(0, n - 1, 1));
        };
        let block = reuse.block.min(c.num_layers);
        let layer = c.num_kv_heads * n * c.head_dim;
        let len = 2 * block * layer + n * c.hidden_size;
        let x = match reuse.store.get(block, prompt, len) {
            Some(mut v) => {
                let states = v.split_off(2 * block * layer);
                for (l, kv) in v.chunks_exact(2 * layer).enumerate() {
                    single.set_layer_rows(l, kv[..layer].to_vec(), kv[layer..].to_vec());
                }
                stats.prefill_reused_tokens += n;
                Tensor::from_data(TensorData::new(states, [n, c.hidden_size]), &device)
            }
            None => {
                let x = self.model.prefill_upto(prompt, &mut single, block);
                let mut v = Vec::with_capacity(len);
                for l in 0..block {
                    let (k, vv) = single.layer_rows(l);
                    v.extend(k);
                    v.extend(vv);
                }
                v.extend(
                    x.clone()
                        .into_data()
                        .try_into_vec::<f32>()
                        .expect("the residual stream is f32"),
                );
                reuse.store.put(block, prompt, &v);
                x
            }
        };
        let h = self.model.prefill_from(x, &mut single, block);
        (single, h.narrow(0, n - 1, 1))
    }

    /// Chooses the token that follows `logits` for one sample and records it; `heads` are
    /// the adapter's heads' shifts of the choice logits for this row.
    fn decide(&self, a: &mut Active, logits: &[f32], req: &Request, heads: Shifts) {
        if let Format::Text { stop } = &req.format {
            let all: Vec<(u32, f32)> = (0u32..).zip(logits.iter().copied()).collect();
            let token = a.sampler.sample(&all);
            a.logprobs.push(log_prob(logits, token));
            a.tokens.push(token);
            a.feed = token;
            if stop.contains(&token) {
                a.finish = Some(FinishReason::Stop);
            } else if a.tokens.len() >= req.max_new_tokens {
                a.finish = Some(FinishReason::Length);
            }
            return;
        }
        let max_new = req.max_new_tokens;
        let schema = self.schema;
        let token = match a.state.next(schema) {
            Next::Done => {
                a.finish = Some(FinishReason::Stop);
                return;
            }
            Next::Forced(t) => t,
            Next::Language(ids) => {
                let mut five = candidates(logits, ids);
                for (c, s) in five.iter_mut().zip(heads.language) {
                    c.1 += s;
                }
                let shifted: Vec<f32> = five.iter().map(|c| c.1).collect();
                let probs = choice_probs(&shifted, &[0, 1, 2, 3, 4]);
                a.language_probs.copy_from_slice(&probs);
                a.sampler.sample(&five)
            }
            Next::Label(ids) => {
                // The calibrated choice: the adapter's bias on the malicious digit.
                let mut both = candidates(logits, ids);
                both[1].1 += schema.label_bias + heads.label;
                let pair = [both[0].1, both[1].1];
                let probs = choice_probs(&pair, &[0, 1]);
                let t = a.sampler.sample(&both);
                a.label_prob = if t == ids[1] { probs[1] } else { probs[0] };
                t
            }
            Next::Summary(s) => {
                let allowed = schema.string_allowed(s);
                let mut cands = candidates(logits, allowed.as_ref());
                let start = *a.summary_start.get_or_insert(a.tokens.len());
                control_repetition(&mut cands, &a.tokens[start..], a.sampler.params());
                a.sampler.sample(&cands)
            }
        };
        a.logprobs.push(log_prob(logits, token));
        a.tokens.push(token);
        a.state.advance(schema, token);
        a.feed = token;
        if a.state.is_done() {
            a.finish = Some(FinishReason::Stop);
        } else if a.tokens.len() >= max_new {
            a.finish = Some(FinishReason::Length);
        }
    }

    fn apply_early_stop(&self, active: &mut [Option<Active>], early: &EarlyStop, reqs: &[Request]) {
        for a in active.iter_mut().flatten() {
            if a.finish.is_none() && a.state.has_label() && reqs[a.request].label_only {
                a.finish = Some(FinishReason::LabelOnly);
            }
        }
        if let Some(min) = early.min_label_prob {
            for a in active.iter_mut().flatten() {
                if a.finish.is_none() && a.state.has_label() && a.label_prob < min {
                    a.finish = Some(FinishReason::EarlyStopLowConfidence);
                }
            }
        }
        if !early.require_agreement {
            return;
        }
        // A request's samples are admitted together and stay in slots until retired, so
        // all its labels are visible here once every sample has one.
        let mut by_request: std::collections::BTreeMap<usize, Vec<Option<u8>>> = Default::default();
        for a in active.iter().flatten() {
            by_request.entry(a.request).or_default().push(a.state.label);
        }
        for (r, labels) in by_request {
            let complete =
                labels.len() == reqs[r].samples.len() && labels.iter().all(Option::is_some);
            let agree = labels.windows(2).all(|w| w[0] == w[1]);
            if complete && !agree {
                for a in active.iter_mut().flatten().filter(|a| a.request == r) {
                    if a.finish.is_none() || a.finish == Some(FinishReason::EarlyStopLowConfidence)
                    {
                        a.finish = Some(FinishReason::EarlyStopDisagree);
                    }
                }
            }
        }
    }

    /// Moves finished samples out of their slots, once every sample of their request is
    /// finished (so agreement can still be judged while siblings run).
    fn retire(
        &self,
        active: &mut [Option<Active>],
        outputs: &mut [Option<SampleOutput>],
        offsets: &[usize],
        stats: &mut GenStats,
        reqs: &[Request],
    ) {
        let unfinished: std::collections::BTreeSet<usize> = active
            .iter()
            .flatten()
            .filter(|a| a.finish.is_none())
            .map(|a| a.request)
            .collect();
        for slot in active.iter_mut() {
            let done =
                matches!(slot, Some(a) if a.finish.is_some() && !unfinished.contains(&a.request));
            if !done {
                continue;
            }
            let Some(a) = slot.take() else { continue };
            let finish = a.finish.unwrap_or(FinishReason::Stop);
            if matches!(
                finish,
                FinishReason::EarlyStopDisagree | FinishReason::EarlyStopLowConfidence
            ) {
                stats.early_stopped += 1;
                stats.saved_tokens_bound += reqs[a.request]
                    .max_new_tokens
                    .saturating_sub(a.tokens.len());
            }
            outputs[offsets[a.request] + a.sample] = Some(SampleOutput {
                request: a.request,
                sample: a.sample,
                json: match reqs[a.request].format {
                    Format::Answer if a.finish == Some(FinishReason::LabelOnly) => {
                        a.state.to_label_json()
                    }
                    Format::Answer => a.state.to_json(),
                    Format::Text { .. } => String::new(),
                },
                language: a.state.language,
                language_probs: a.language_probs,
                label: a.state.label,
                label_prob: a.label_prob,
                tokens: a.tokens,
                logprobs: a.logprobs,
                finish,
                prefill_secs: a.prefill_secs,
                wall_secs: a.admitted.elapsed().as_secs_f64(),
            });
        }
    }
}

/// The adapter's heads' shifts of one row's choice logits.
#[derive(Clone, Copy, Debug, Default)]
struct Shifts {
    label: f32,
    language: [f32; 5],
}

fn candidates(logits: &[f32], ids: &[u32]) -> Vec<(u32, f32)> {
    ids.iter().map(|&i| (i, logits[i as usize])).collect()
}

/// Logits `[rows, vocab]` as one row-major vector; rows are sliced out, not copied.
fn flat_logits(logits: Tensor<2>) -> Vec<f32> {
    logits
        .into_data()
        .try_to_vec::<f32>()
        .expect("logits are f32")
}
