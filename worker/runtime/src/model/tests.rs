use burn::tensor::{Device, Tensor};

use super::*;

fn device() -> Device {
    Device::flex()
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tiny() -> (LlamaConfig, Llama) {
    let config = LlamaConfig::tiny(97);
    let model = Llama::random(&config, 7, &device());
    (config, model)
}

/// The same model on both paths: fused CPU kernels, then plain tensor ops.
fn both_paths() -> [(LlamaConfig, Llama); 2] {
    let (config, fused) = tiny();
    let (_, mut reference) = tiny();
    reference.unpack();
    reference.reference_ops = true;
    [(config.clone(), fused), (config, reference)]
}

/// Logits of every position from one full forward pass with an empty cache.
fn full_logits(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config, 1, 64, &device());
    let h = model.forward(tokens, tokens.len(), &mut cache);
    to_vec(model.logits(h))
}

#[test]
fn cached_decode_equals_full_recompute() {
    for (config, model) in both_paths() {
        cached_decode_equals_full_recompute_on(config, model);
    }
}

fn cached_decode_equals_full_recompute_on(config: LlamaConfig, model: Llama) {
    let tokens: Vec<u32> = vec![5, 17, 3, 88, 42, 9, 61, 2, 33, 70];
    let full = full_logits(&model, &tokens);
    let v = config.vocab_size;

    let mut cache = KvCache::new(&config, 1, 64, &device());
    let prefix = 4;
    let h = model.forward(&tokens[..prefix], prefix, &mut cache);
    let mut got = to_vec(model.logits(h));
    for &tok in &tokens[prefix..] {
        let h = model.forward(&[tok], 1, &mut cache);
        got.extend(to_vec(model.logits(h)));
    }
    assert_eq!(got.len(), tokens.len() * v);
    let diff = max_abs_diff(&got, &full);
    assert!(
        diff < 1e-4,
        "cached decode differs from recompute by {diff}"
    );
}

#[test]
fn batch_of_slots_equals_single_runs() {
    for (config, model) in both_paths() {
        batch_of_slots_equals_single_runs_on(config, model);
    }
}

fn batch_of_slots_equals_single_runs_on(config: LlamaConfig, model: Llama) {
    let seqs: Vec<Vec<u32>> = vec![
        vec![1, 2, 3, 4, 5, 6],
        vec![9, 8, 7],
        vec![40, 41, 42, 43, 44],
    ];
    let v = config.vocab_size;
    // Prefill each sequence alone, then copy into one cache of three slots.
    let mut batch = KvCache::new(&config, seqs.len(), 32, &device());
    let mut expected = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        let mut single = KvCache::new(&config, 1, 32, &device());
        model.forward(&seq[..seq.len() - 1], seq.len() - 1, &mut single);
        batch.copy_slot_from(s, &single, 0);
        let full = full_logits(&model, seq);
        expected.extend_from_slice(&full[(seq.len() - 1) * v..]);
    }
    let last: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
    let got = to_vec(model.logits(model.forward(&last, 1, &mut batch)));
    let diff = max_abs_diff(&got, &expected);
    assert!(
        diff < 1e-4,
        "batched decode differs from single runs by {diff}"
    );
}

#[test]
fn a_changed_weight_changes_the_logits() {
    // Guards the two tests above against passing on a model that ignores its input.
    let (_, model) = tiny();
    let a = full_logits(&model, &[1, 2, 3]);
    let b = full_logits(&model, &[1, 2, 4]);
    assert!(max_abs_diff(&a[2 * 97..], &b[2 * 97..]) > 1e-3);
}

#[test]
fn gguf_rope_rows_are_unpermuted_to_halves() {
    // One head of dim 4, one column: GGUF order is (0, 2, 1, 3) of the halves layout.
    let gguf = [0.0, 2.0, 1.0, 3.0];
    assert_eq!(
        load::unpermute_rope_rows_for_test(&gguf, 1, 4, 1),
        vec![0.0, 1.0, 2.0, 3.0]
    );
}

#[test]
fn missing_and_mismatched_tensors_are_named() {
    let config = LlamaConfig::tiny(11);
    let mut src = load::MemorySource::default();
    let err = Llama::load(&config, &src, load::Naming::Gguf, &device()).unwrap_err();
    assert!(err.to_string().contains("token_embd.weight"), "{err}");
    src.tensors.insert(
        "token_embd.weight".into(),
        (vec![11, 65], vec![0.0; 11 * 65]),
    );
    let err = Llama::load(&config, &src, load::Naming::Gguf, &device()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("token_embd.weight") && msg.contains("[11, 65]") && msg.contains("[11, 64]"),
        "{msg}"
    );
}

#[test]
fn fused_kernels_match_the_reference_ops() {
    let [(config, fused), (_, reference)] = both_paths();
    let v = config.vocab_size;
    // Three slots at different lengths. The 150-token prefill and the 70-token step take the
    // matrix-product attention (blocks of 64, the last one partial); the others the
    // per-token path (blocks of 16).
    let prompts: Vec<Vec<u32>> = vec![
        (0..150).map(|i| (i * 13 % 97) as u32).collect(),
        (0..5).map(|i| (i * 7 + 1) as u32).collect(),
        (0..20).map(|i| (i * 29 % 97) as u32).collect(),
    ];
    let run = |model: &Llama| -> Vec<f32> {
        let mut cache = KvCache::new(&config, prompts.len(), 240, &device());
        let mut out = Vec::new();
        for (s, p) in prompts.iter().enumerate() {
            let mut single = KvCache::new(&config, 1, 160, &device());
            out.extend(to_vec(model.logits(model.forward(p, p.len(), &mut single))));
            cache.copy_slot_from(s, &single, 0);
        }
        // Two decode steps of all slots, then multi-token steps over a filled cache.
        for step in 0..2u32 {
            let feed: Vec<u32> = (0..3).map(|s| 50 + step * 3 + s).collect();
            out.extend(to_vec(model.logits(model.forward(&feed, 1, &mut cache))));
        }
        for t in [3usize, 70] {
            let feed: Vec<u32> = (0..3 * t).map(|i| (i * 11 % 97) as u32).collect();
            out.extend(to_vec(model.logits(model.forward(&feed, t, &mut cache))));
        }
        out
    };
    let (a, b) = (run(&fused), run(&reference));
    assert_eq!(a.len(), (150 + 5 + 20 + 2 * 3 + 3 * 3 + 3 * 70) * v);
    let diff = max_abs_diff(&a, &b);
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        diff < 1e-4 * scale.max(1.0),
        "fused and reference differ by {diff} (scale {scale})"
    );
    assert!(scale > 0.1, "logits are degenerate");
}

#[test]
fn packing_round_trips_and_keeps_the_logits() {
    let (config, mut model) = tiny();
    assert!(
        matches!(model.blocks[0].attn.wqkv, Weight::Packed(_)),
        "flex packs"
    );
    let tokens = [3u32, 14, 15, 92, 65, 35];
    let packed = full_logits(&model, &tokens);
    model.unpack();
    assert!(matches!(model.blocks[0].attn.wqkv, Weight::Plain(_)));
    assert!(
        model.lm_head.is_none(),
        "tied embeddings need no lm-head when unpacked"
    );
    let plain = full_logits(&model, &tokens);
    assert!(max_abs_diff(&packed, &plain) < 1e-4);
    assert_eq!(
        model.blocks[1].ffn.w_down.dims(),
        [config.intermediate_size, config.hidden_size]
    );
}

#[test]
fn forward_on_a_subset_of_slots_leaves_the_others_alone() {
    for (config, model) in both_paths() {
        let v = config.vocab_size;
        let seqs: [&[u32]; 3] = [&[1, 2, 3, 4], &[9, 8], &[40, 41, 42]];
        let mut cache = KvCache::new(&config, 3, 16, &device());
        for (s, seq) in seqs.iter().enumerate() {
            let mut single = KvCache::new(&config, 1, 16, &device());
            model.forward(seq, seq.len(), &mut single);
            cache.copy_slot_from(s, &single, 0);
        }
        // Slots 2 and 0, in that order; slot 1 sits out.
        let got = to_vec(model.logits(model.forward_slots(&[7, 5], 1, &mut cache, &[2, 0])));
        assert_eq!((cache.len(0), cache.len(1), cache.len(2)), (5, 2, 4));
        let expect2 = full_logits(&model, &[40, 41, 42, 7]);
        let expect0 = full_logits(&model, &[1, 2, 3, 4, 5]);
        assert!(max_abs_diff(&got[..v], &expect2[3 * v..]) < 1e-4);
        assert!(max_abs_diff(&got[v..], &expect0[4 * v..]) < 1e-4);
        // Slot 1 continues as if nothing happened.
        let next = to_vec(model.logits(model.forward_slots(&[3], 1, &mut cache, &[1])));
        assert!(max_abs_diff(&next, &full_logits(&model, &[9, 8, 3])[2 * v..]) < 1e-4);
    }
}

#[test]
fn a_prefill_split_and_read_back_decodes_like_one_prefill() {
    let mut config = LlamaConfig::tiny(97);
    config.num_layers = 3;
    let model = Llama::random(&config, 11, &device());
    let prompt: Vec<u32> = vec![5, 17, 3, 88, 42, 9, 61, 2, 33, 70, 14];
    let tail = [8u32, 51, 23];
    let decode = |mut cache: KvCache, last: Tensor<2>| {
        let mut out = to_vec(model.logits(last));
        let mut big = KvCache::new(&config, 1, prompt.len() + tail.len(), &device());
        big.copy_slot_from(0, &cache, 0);
        cache = big;
        for &t in &tail {
            out.extend(to_vec(model.logits(model.forward(&[t], 1, &mut cache))));
        }
        out
    };
    let n = prompt.len();
    let mut plain = KvCache::new(&config, 1, n, &device());
    let h = model.forward(&prompt, n, &mut plain);
    let want = decode(plain, h.narrow(0, n - 1, 1));

    for split in 0..=config.num_layers {
        // The first half, its rows copied out as a store would keep them...
        let mut first = KvCache::new(&config, 1, n, &device());
        let x = model.prefill_upto(&prompt, &mut first, split);
        let rows: Vec<_> = (0..split).map(|l| first.layer_rows(l)).collect();
        let states = to_vec(x);
        // ...read back into a fresh cache, and the rest run from there.
        let mut second = KvCache::new(&config, 1, n, &device());
        for (l, (k, v)) in rows.into_iter().enumerate() {
            second.set_layer_rows(l, k, v);
        }
        let x = Tensor::from_data(
            burn::tensor::TensorData::new(states, [n, config.hidden_size]),
            &device(),
        );
        let h = model.prefill_from(x, &mut second, split);
        assert_eq!(second.len(0), n);
        let got = decode(second, h.narrow(0, n - 1, 1));
        assert_eq!(got, want, "split at block {split}: logits differ");
    }
}
