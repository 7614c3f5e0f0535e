use burn::tensor::Device;

use super::*;
use crate::model::{Llama, LlamaConfig};

/// A toy byte-level vocabulary: id 0 is the end-of-turn control token, ids 1..=256 the
/// single bytes, then a few multi-byte tokens (words, quotes, escapes) so the schema's
/// multi-byte paths are exercised. Plain text encodes by greedy longest match.
struct ToyVocab {
    tokens: Vec<Vec<u8>>,
}

impl ToyVocab {
    fn new() -> Self {
        let mut tokens = vec![b"<|end|>".to_vec()];
        tokens.extend((0..=255u8).map(|b| vec![b]));
        for w in [
            "bash",
            "bat",
            "ch",
            "javascript",
            "power",
            "shell",
            "python",
            "\", \"",
            "label",
            "\": ",
            "summary",
            "\"}",
            "\\n",
            "\\\"",
            "\"",
            " the",
            " script",
            "\\u00",
            "\\",
            "}\"",
            "a\"b",
            "\n\n",
            " runs",
        ] {
            tokens.push(w.as_bytes().to_vec());
        }
        Self { tokens }
    }
}

impl Vocab for ToyVocab {
    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    fn token_bytes(&self, id: u32) -> &[u8] {
        &self.tokens[id as usize]
    }
    fn is_control(&self, id: u32) -> bool {
        id == 0
    }
    fn encode_plain(&self, text: &str) -> Vec<u32> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let (id, len) = (1..self.tokens.len())
                .filter(|&t| bytes[i..].starts_with(&self.tokens[t]))
                .map(|t| (t as u32, self.tokens[t].len()))
                .max_by_key(|&(t, l)| (l, std::cmp::Reverse(t)))
                .expect("every byte is a token");
            out.push(id);
            i += len;
        }
        out
    }
}

fn setup() -> (Llama, AnswerSchema, ToyVocab) {
    let vocab = ToyVocab::new();
    let config = LlamaConfig::tiny(vocab.vocab_size());
    let model = Llama::random(&config, 11, &Device::flex());
    let schema = AnswerSchema::new(&vocab, 0).unwrap();
    (model, schema, vocab)
}

fn requests(vocab: &ToyVocab, n: usize, temps: &[f32], max_new: usize, seed: u64) -> Vec<Request> {
    (0..n)
        .map(|i| {
            let mut prompt = vocab.encode_plain(&format!("script {i}: echo {}\n", i * 7));
            prompt.extend(vocab.encode_plain(ANSWER_PREFIX));
            Request {
                prompt,
                samples: temps
                    .iter()
                    .enumerate()
                    .map(|(j, &t)| SamplingParams::new(t, 0.95, seed + (i * 10 + j) as u64))
                    .collect(),
                max_new_tokens: max_new,
                format: Format::Answer,
                label_only: false,
            }
        })
        .collect()
}

fn check_answer(json: &str) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let obj = v.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 3, "{json}");
    // Key order is checked on the text: serde_json's map may sort keys.
    let (l, b, s) = (
        json.find("\"language\"").unwrap(),
        json.find("\"label\"").unwrap(),
        json.find("\"summary\"").unwrap(),
    );
    assert!(l < b && b < s, "{json}");
    let lang = obj["language"].as_str().unwrap();
    assert!(
        lang.parse::<automaldesc_common::Language>().is_ok(),
        "{json}"
    );
    assert!(matches!(obj["label"].as_u64(), Some(0 | 1)), "{json}");
    assert!(obj["summary"].is_string(), "{json}");
}

#[test]
fn constrained_answers_always_parse() {
    let (model, schema, vocab) = setup();
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 8,
        reuse: None,
    };
    for (seed, max_new) in [(1u64, 60usize), (2, 25), (3, 14)] {
        let reqs = requests(&vocab, 12, &[0.7, 1.5, 3.0], max_new, seed * 1000);
        let (out, stats) = engine.run(&reqs, &EarlyStop::default());
        assert_eq!(out.len(), 36);
        for o in &out {
            check_answer(&o.json);
            assert!(o.tokens.len() <= max_new);
            let p: f32 = o.language_probs.iter().sum();
            assert!((p - 1.0).abs() < 1e-4, "language probs sum to {p}");
            assert!(o.label_prob > 0.0 && o.label_prob <= 1.0);
        }
        // One prefill per request, not per sample.
        let prompt_tokens: usize = reqs.iter().map(|r| r.prompt.len()).sum();
        assert_eq!(stats.prefill_tokens, prompt_tokens);
        assert!(out.iter().any(|o| o.finish == FinishReason::Length) || max_new == 60);
    }
}

#[test]
fn same_seed_same_answers() {
    let (model, schema, vocab) = setup();
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 4,
        reuse: None,
    };
    let reqs = requests(&vocab, 5, &[0.4, 0.8], 30, 7);
    let (a, _) = engine.run(&reqs, &EarlyStop::default());
    let (b, _) = engine.run(&reqs, &EarlyStop::default());
    let texts = |o: &[SampleOutput]| o.iter().map(|x| x.json.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b));
    let (c, _) = engine.run(
        &requests(&vocab, 5, &[0.4, 0.8], 30, 8),
        &EarlyStop::default(),
    );
    assert_ne!(texts(&a), texts(&c));
}

#[test]
fn early_stop_only_stops_samples_the_policy_rejects() {
    let (model, schema, vocab) = setup();
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 6,
        reuse: None,
    };
    let reqs = requests(&vocab, 10, &[0.4, 0.6, 0.8], 40, 99);
    let (full, full_stats) = engine.run(&reqs, &EarlyStop::default());
    let policy = EarlyStop {
        require_agreement: true,
        min_label_prob: Some(0.55),
    };
    let (early, early_stats) = engine.run(&reqs, &policy);
    assert_eq!(full.len(), early.len());
    let mut rejected = 0;
    for r in 0..reqs.len() {
        let group: Vec<&SampleOutput> = full.iter().filter(|o| o.request == r).collect();
        let agree = group.windows(2).all(|w| w[0].label == w[1].label);
        for o in group {
            let e = &early[full.iter().position(|x| std::ptr::eq(x, o)).unwrap()];
            let keep = agree && o.label_prob >= 0.55;
            if keep {
                assert_eq!(e.json, o.json, "a kept sample changed");
                assert_eq!(e.finish, o.finish);
            } else {
                rejected += 1;
                assert!(
                    matches!(
                        e.finish,
                        FinishReason::EarlyStopDisagree | FinishReason::EarlyStopLowConfidence
                    ),
                    "a rejected sample ran to the end: {:?}",
                    e.finish
                );
                assert_eq!(e.label, o.label);
            }
        }
    }
    assert!(
        rejected > 0,
        "the policy rejected nothing; the test proves nothing"
    );
    assert_eq!(early_stats.early_stopped, rejected);
    assert!(early_stats.decode_tokens < full_stats.decode_tokens);
}

#[test]
fn string_state_accepts_escapes_and_rejects_raw_controls() {
    use schema::StrState;
    assert_eq!(
        StrState::Normal.run(b"a\\nb\\u00e9"),
        Some(StrState::Normal)
    );
    assert_eq!(StrState::Normal.run(b"x\"}"), Some(StrState::Ended));
    assert_eq!(StrState::Normal.run(b"x\ny"), None);
    assert_eq!(StrState::Normal.run(b"\\q"), None);
    assert_eq!(StrState::Normal.run(b"\"a"), None);
}

/// Greedy continuation of `prompt` with the model alone: the reference for text requests.
fn greedy_reference(model: &Llama, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
    let device = model.device();
    let mut cache =
        crate::model::KvCache::new(&model.config, 1, prompt.len() + max_new + 1, &device);
    let mut h = model.forward(prompt, prompt.len(), &mut cache);
    h = h.narrow(0, prompt.len() - 1, 1);
    let mut out = Vec::new();
    loop {
        let row = model.logits(h).into_data().try_to_vec::<f32>().unwrap();
        let next = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as u32;
        out.push(next);
        if stop.contains(&next) || out.len() >= max_new {
            return out;
        }
        h = model.forward(&[next], 1, &mut cache);
    }
}

#[test]
fn text_requests_generate_free_tokens_up_to_a_stop_token() {
    let (model, schema, vocab) = setup();
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 4,
        reuse: None,
    };
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|i| vocab.encode_plain(&format!("say {i}:")))
        .collect();
    // Stop on a token greedy decoding of the first prompt produces early, so that request
    // stops before its budget; the others stop there too or run to the budget.
    let free = greedy_reference(&model, &prompts[0], 12, &[]);
    let stop = vec![free[2]];
    let reqs: Vec<Request> = prompts
        .iter()
        .map(|p| Request {
            prompt: p.clone(),
            samples: vec![SamplingParams::greedy(), SamplingParams::new(0.9, 0.9, 5)],
            max_new_tokens: 12,
            format: Format::Text { stop: stop.clone() },
            label_only: false,
        })
        .collect();
    let (outs, _) = engine.run(&reqs, &EarlyStop::default());
    assert_eq!(outs.len(), 6);
    for o in &outs {
        assert!(o.json.is_empty() && o.label.is_none());
        let ends_on_stop = stop.contains(o.tokens.last().unwrap());
        assert_eq!(o.finish == FinishReason::Stop, ends_on_stop);
        assert!(ends_on_stop || o.tokens.len() == 12, "{:?}", o.tokens);
        assert!(o.tokens[..o.tokens.len() - 1]
            .iter()
            .all(|t| !stop.contains(t)));
        if o.sample == 0 {
            let want = greedy_reference(&model, &prompts[o.request], 12, &stop);
            assert_eq!(o.tokens, want, "greedy text of request {}", o.request);
        }
    }
    let first_stop = free.iter().position(|t| stop.contains(t)).unwrap() + 1;
    assert_eq!(
        outs[0].tokens.len(),
        first_stop,
        "the first request stops on its stop token"
    );
    // Same seed, same tokens, whatever else shares the batch.
    let (alone, _) = engine.run(&reqs[2..], &EarlyStop::default());
    assert_eq!(alone[1].tokens, outs[5].tokens);
}

/// Every n-gram of `tokens` that occurs more than once.
fn repeated_ngrams(tokens: &[u32], n: usize) -> Vec<Vec<u32>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for w in tokens.windows(n) {
        if !seen.insert(w.to_vec()) {
            out.push(w.to_vec());
        }
    }
    out
}

#[test]
fn no_repeat_ngram_stops_a_summary_that_would_loop() {
    let (model, schema, vocab) = setup();
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 2,
        reuse: None,
    };
    let run = |params: SamplingParams| {
        let mut prompt = vocab.encode_plain("script 3: echo 21\n");
        prompt.extend(vocab.encode_plain(ANSWER_PREFIX));
        let req = Request {
            prompt,
            samples: vec![params],
            max_new_tokens: 80,
            format: Format::Answer,
            label_only: false,
        };
        let (outs, _) = engine.run(&[req], &EarlyStop::default());
        outs.into_iter().next().unwrap()
    };
    let summary_of = |o: &SampleOutput| {
        // The summary's tokens: after the label and the forced text that follows it.
        let at = o
            .tokens
            .iter()
            .position(|t| schema.label_ids.contains(t))
            .unwrap();
        o.tokens[at + 1..].to_vec()
    };
    // Greedy decoding of this random model loops: some 3-gram of its summary repeats.
    let plain = run(SamplingParams::greedy());
    assert!(
        !repeated_ngrams(&summary_of(&plain), 3).is_empty(),
        "the model must loop for this test to mean anything: {:?}",
        plain.tokens
    );
    let controlled = run(SamplingParams {
        no_repeat_ngram: 3,
        ..SamplingParams::greedy()
    });
    let summary = summary_of(&controlled);
    // The forced text after the label is not the summary's: start after it.
    let free = &summary[schema
        .target_parts(&vocab, automaldesc_common::Language::Bash, 0, "")
        .after_label
        .len()..];
    assert!(free.len() > 20, "the summary ran: {free:?}");
    assert_eq!(repeated_ngrams(free, 3), Vec::<Vec<u32>>::new(), "{free:?}");
}

#[test]
fn a_label_only_request_stops_right_after_its_label() {
    let (model, schema, vocab) = setup();
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 4,
        reuse: None,
    };
    let mut reqs = requests(&vocab, 2, &[0.0], 60, 1);
    reqs[0].label_only = true;
    let (outs, _) = engine.run(&reqs, &EarlyStop::default());
    let (only, full) = (&outs[0], &outs[1]);
    assert_eq!(only.finish, FinishReason::LabelOnly);
    assert_eq!(
        Some(only.tokens.last().copied().unwrap()),
        only.label.map(|l| schema.label_ids[usize::from(l)])
    );
    let v: serde_json::Value = serde_json::from_str(&only.json).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2, "{}", only.json);
    assert_eq!(v["label"], only.label.unwrap());
    assert!(full.tokens.len() > only.tokens.len() && full.finish != FinishReason::LabelOnly);
}

#[test]
fn the_label_head_and_the_calibration_move_the_label_choice() {
    let (model, mut schema, vocab) = setup();
    let hidden = model.config.hidden_size;
    let reqs = requests(&vocab, 4, &[0.0], 30, 1);
    for (bias, want) in [(40.0f32, 1u8), (-40.0, 0)] {
        let mut head = vec![0.0; hidden + 1];
        head[hidden] = bias;
        schema.label_head = Some(head);
        let engine = Engine {
            model: &model,
            schema: &schema,
            slots: 4,
            reuse: None,
        };
        let (outs, _) = engine.run(&reqs, &EarlyStop::default());
        assert!(
            outs.iter().all(|o| o.label == Some(want)),
            "head bias {bias}"
        );
        assert!(outs.iter().all(|o| o.label_prob > 0.999));
    }
    schema.label_head = None;
    schema.label_bias = -40.0;
    let engine = Engine {
        model: &model,
        schema: &schema,
        slots: 4,
        reuse: None,
    };
    let (outs, _) = engine.run(&reqs, &EarlyStop::default());
    assert!(outs.iter().all(|o| o.label == Some(0)), "calibration bias");
}

/// What a sample answered, without its timings: its JSON, tokens, label probability and
/// language probabilities (as bits) and finish reason.
type Answer = (String, Vec<u32>, u32, [u32; 5], FinishReason);

fn answers(out: &[SampleOutput]) -> Vec<Answer> {
    out.iter()
        .map(|o| {
            (
                o.json.clone(),
                o.tokens.clone(),
                o.label_prob.to_bits(),
                o.language_probs.map(f32::to_bits),
                o.finish,
            )
        })
        .collect()
}

#[test]
fn a_prefill_read_back_below_the_adapted_blocks_changes_no_answer() {
    let (base, schema, vocab) = setup();
    // An "adapted" model: the base model with its top block replaced.
    let mut adapted = base.clone();
    adapted.blocks[1] = Llama::random(&base.config, 99, &Device::flex()).blocks[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let store = crate::state_store::StateStore::new(dir.path(), "base", 1 << 30);
    let reuse = PrefillReuse::for_model(store.clone(), 1, Some(1)).unwrap();
    let reqs = requests(&vocab, 6, &[0.0, 0.9], 40, 5);
    let run = |model: &Llama, reuse: Option<&PrefillReuse>| {
        let engine = Engine {
            model,
            schema: &schema,
            slots: 4,
            reuse,
        };
        engine.run(&reqs, &EarlyStop::default())
    };
    let (base_plain, _) = run(&base, None);
    let (adapted_plain, _) = run(&adapted, None);
    assert_ne!(
        answers(&base_plain),
        answers(&adapted_plain),
        "the top block matters"
    );

    // The base model fills the store, the adapted model reads it.
    let (base_stored, stored) = run(&base, Some(&reuse));
    assert_eq!(stored.prefill_reused_tokens, 0);
    assert_eq!(answers(&base_stored), answers(&base_plain));
    let (adapted_reused, reused) = run(&adapted, Some(&reuse));
    assert_eq!(reused.prefill_reused_tokens, reused.prefill_tokens);
    assert_eq!(answers(&adapted_reused), answers(&adapted_plain));

    // A model changed below the block never reads the store.
    assert!(PrefillReuse::for_model(store.clone(), 1, Some(0)).is_none());
    assert!(PrefillReuse::for_model(store, 0, None).is_none());
}
