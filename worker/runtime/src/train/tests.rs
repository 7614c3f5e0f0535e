use burn::module::Module;
use burn::tensor::Device;

use super::forward::target_log_probs;
use super::lora::{LayerSet, LoraConfig, LoraWeights, Proj};
use super::*;
use crate::model::load::TensorSource;
use crate::model::{KvCache, Llama, LlamaConfig};
use crate::safetensors::SafeTensors;
use std::collections::BTreeMap;

fn autodiff() -> Device {
    Device::flex().autodiff()
}

fn tiny_model(device: &Device) -> (LlamaConfig, Llama) {
    let config = LlamaConfig::tiny(97);
    let model = Llama::random(&config, 7, device).no_grad();
    (config, model)
}

fn examples(n: usize, seed: u32) -> Vec<Example> {
    (0..n as u32)
        .map(|i| {
            let s = seed * 131 + i * 17;
            Example::plain(
                (0..5 + i % 4).map(|k| (s + k * 7) % 90 + 3).collect(),
                (0..3 + i % 3).map(|k| (s * 3 + k * 11) % 90 + 3).collect(),
            )
        })
        .collect()
}

fn small_config() -> TrainConfig {
    TrainConfig {
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
            layers: LayerSet::all(),
            label_head: false,
            language_head: false,
        },
        learning_rate: 1e-2,
        weight_decay: 0.001,
        warmup: 0.05,
        epochs: 2,
        batch_tokens: 40,
        grad_accum: 2,
        patience: 5,
        seed: 3,
        ..TrainConfig::v1()
    }
}

/// An adapter with non-zero `B`, so it changes the model's output.
fn random_adapter(config: &LlamaConfig, lora: &LoraConfig, seed: u64) -> LoraWeights {
    let mut a = LoraWeights::init(lora, config, seed).unwrap();
    let b = LoraWeights::init(lora, config, seed + 1).unwrap();
    for (p, q) in a.pairs_mut().zip(b.pairs()) {
        for (i, x) in p.b.iter_mut().enumerate() {
            *x = q.a[i % q.a.len()] * 0.5;
        }
    }
    a
}

fn to_vec(t: burn::tensor::Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn weights_of(model: &Llama) -> Vec<f32> {
    let mut out = to_vec(model.embed.val().reshape([-1]));
    for b in &model.blocks {
        for w in [&b.attn.wqkv, &b.attn.wo, &b.ffn.w_gate_up, &b.ffn.w_down] {
            if let crate::model::Weight::Plain(p) = w {
                out.extend(to_vec(p.val().reshape([-1])));
            }
        }
    }
    out
}

#[test]
fn the_training_forward_matches_the_cached_inference_path() {
    let device = Device::flex();
    let config = LlamaConfig::tiny(97);
    let mut model = Llama::random(&config, 7, &device);
    model.unpack();
    model.reference_ops = true;
    let ex = examples(3, 1);
    let batch = make_batch(&ex, &[0, 1, 2], None, &Weights::uniform(), None).unwrap();
    let got = to_vec(target_log_probs(&model, &batch, None, None));
    // The same log-probabilities from full forward passes through the KV-cache path.
    let mut want = Vec::new();
    for e in &ex {
        let seq: Vec<u32> = e.prompt.iter().chain(&e.target).copied().collect();
        let n = seq.len() - 1;
        let mut cache = KvCache::new(&config, 1, n + 1, &device);
        let h = model.forward(&seq[..n], n, &mut cache);
        let logp = burn::tensor::activation::log_softmax(model.logits(h), 1);
        let logp = logp
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let vocab = config.vocab_size;
        for p in e.prompt.len() - 1..n {
            want.push(logp[p * vocab + seq[p + 1] as usize]);
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

/// The tiny model on the autodiff device, its weights frozen for training on the packed
/// kernels (`kernels::frozen`) or left plain (burn's matmul).
fn training_model(device: &Device, frozen: bool) -> (LlamaConfig, Llama) {
    let config = LlamaConfig::tiny(97);
    let mut model = Llama::random(&config, 7, device);
    if frozen {
        model.freeze_for_training();
        assert!(matches!(
            model.blocks[0].attn.wqkv,
            crate::model::Weight::Frozen(_)
        ));
    }
    (config, model.no_grad())
}

#[test]
fn adapter_gradients_match_finite_differences() {
    // Through burn's generic ops, and through the packed kernels with their own backward.
    for frozen in [false, true] {
        finite_differences(frozen);
    }
}

#[test]
fn the_frozen_base_gives_the_plain_base_s_loss_and_gradients() {
    let device = autodiff();
    let lora = small_config().lora;
    let ex = examples(3, 5);
    let batch = make_batch(&ex, &[0, 1, 2], None, &Weights::uniform(), None).unwrap();
    let run = |frozen: bool| {
        let (config, model) = training_model(&device, frozen);
        let adapter = random_adapter(&config, &lora, 9);
        let tensors = adapter.tensors(&device, true);
        let dropout = Some(forward::Dropout { p: 0.1, seed: 3 });
        let loss = target_log_probs(&model, &batch, Some(&tensors), dropout)
            .sum()
            .neg();
        (to_vec(loss.clone()), tensors.grads(&loss.backward()))
    };
    let (l0, g0) = run(false);
    let (l1, g1) = run(true);
    assert!(
        (l0[0] - l1[0]).abs() < 1e-4 * l0[0].abs().max(1.0),
        "{l0:?} vs {l1:?}"
    );
    let scale = g0.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 1e-3);
    for (a, b) in g0.iter().zip(&g1) {
        assert!((a - b).abs() < 1e-3 * scale, "{a} vs {b}");
    }
}

fn finite_differences(frozen: bool) {
    let device = autodiff();
    let (config, model) = training_model(&device, frozen);
    let lora = small_config().lora;
    let mut adapter = random_adapter(&config, &lora, 9);
    let ex = examples(2, 4);
    let batch = make_batch(&ex, &[0, 1], None, &Weights::uniform(), None).unwrap();
    let loss_of = |a: &LoraWeights| -> f64 {
        let t = a.tensors(&device, false);
        to_vec(target_log_probs(&model, &batch, Some(&t), None))
            .iter()
            .map(|&x| -f64::from(x))
            .sum()
    };
    let tensors = adapter.tensors(&device, true);
    let loss = target_log_probs(&model, &batch, Some(&tensors), None)
        .sum()
        .neg();
    let grads = tensors.grads(&loss.backward());
    let flat = adapter.flatten();
    assert_eq!(grads.len(), flat.len());
    // The largest gradients, and a few others, against central differences.
    let mut order: Vec<usize> = (0..flat.len()).collect();
    order.sort_by(|&i, &j| grads[j].abs().total_cmp(&grads[i].abs()));
    let mut checked = 0;
    for &i in order
        .iter()
        .take(6)
        .chain(order.iter().step_by(order.len() / 5).take(5))
    {
        let eps = 1e-2f32;
        let mut plus = flat.clone();
        plus[i] += eps;
        adapter.set_flat(&plus);
        let up = loss_of(&adapter);
        let mut minus = flat.clone();
        minus[i] -= eps;
        adapter.set_flat(&minus);
        let down = loss_of(&adapter);
        let numeric = (up - down) / (2.0 * f64::from(eps));
        let analytic = f64::from(grads[i]);
        let tol = 2e-2 * analytic.abs().max(numeric.abs()) + 2e-3;
        assert!(
            (numeric - analytic).abs() < tol,
            "param {i} (frozen {frozen}): numeric {numeric}, autodiff {analytic}"
        );
        checked += 1;
    }
    assert!(checked >= 10);
    assert!(
        grads.iter().any(|g| g.abs() > 1e-3),
        "the gradient is not all zero"
    );
}

#[test]
fn training_overfits_a_small_set_and_leaves_the_base_weights_untouched() {
    let device = autodiff();
    let (config, mut model) = tiny_model(&device);
    // The final RMSNorm fixes |h| and the random tied embedding is small, which caps how
    // far apart logits can get; a larger (frozen) norm weight lets the test model memorise.
    model.norm = burn::module::Param::from_tensor(
        burn::tensor::Tensor::<1>::ones([config.hidden_size], &device).mul_scalar(8.0),
    )
    .set_require_grad(false);
    let before = weights_of(&model);
    let ex = examples(4, 2);
    let mut config = small_config();
    config.epochs = 200;
    config.learning_rate = 2e-2;
    config.grad_accum = 1;
    config.batch_tokens = 1000;
    let initial = mean_loss(&model, &ex, None, 1000);
    let trained = train(&model, &ex, &ex, &config, None, &mut |_| true)
        .unwrap()
        .expect("not stopped");
    let last = trained.history.last().unwrap().val_loss;
    let best = trained
        .history
        .iter()
        .map(|h| h.val_loss)
        .fold(f64::INFINITY, f64::min);
    assert!(
        initial > 4.0,
        "a random model is near ln(97) = 4.57: {initial}"
    );
    assert!(
        best < 0.5,
        "loss {initial:.3} fell only to {best:.3} (last {last:.3})"
    );
    // The kept adapter is the best epoch's, and it reproduces that loss.
    let again = mean_loss(&model, &ex, Some(&trained.adapter), 1000);
    assert!((again - best).abs() < 1e-4, "{again} vs {best}");
    assert_eq!(trained.history[trained.best_epoch as usize].val_loss, best);
    assert_eq!(weights_of(&model), before, "frozen base weights changed");
}

#[test]
fn merged_and_unmerged_adapters_agree() {
    let device = Device::flex();
    let config = LlamaConfig::tiny(97);
    let mut model = Llama::random(&config, 7, &device);
    model.unpack();
    model.reference_ops = true;
    let adapter = random_adapter(&config, &small_config().lora, 5);
    let ex = examples(3, 3);
    let batch = make_batch(&ex, &[0, 1, 2], None, &Weights::uniform(), None).unwrap();
    let unmerged = to_vec(target_log_probs(
        &model,
        &batch,
        Some(&adapter.tensors(&device, false)),
        None,
    ));
    let base = to_vec(target_log_probs(&model, &batch, None, None));
    adapter.merge_into(&mut model).unwrap();
    let merged = to_vec(target_log_probs(&model, &batch, None, None));
    let differs = unmerged
        .iter()
        .zip(&base)
        .any(|(a, b)| (a - b).abs() > 1e-2);
    assert!(
        differs,
        "the adapter must change the output for this test to mean anything"
    );
    for (a, b) in unmerged.iter().zip(&merged) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // The merged model on the fused CPU kernels gives the same answer.
    model.pack();
    model.reference_ops = false;
    let fused = to_vec(target_log_probs(&model, &batch, None, None));
    for (a, b) in unmerged.iter().zip(&fused) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}

#[test]
fn a_peft_adapter_saved_and_loaded_is_the_same() {
    let config = LlamaConfig::tiny(97);
    let lora = LoraConfig {
        targets: vec![Proj::Q, Proj::V, Proj::Down],
        ..small_config().lora
    };
    let adapter = random_adapter(&config, &lora, 11);
    let dir = tempfile::tempdir().unwrap();
    let meta = BTreeMap::from([("base_model_sha256".to_string(), "abc".to_string())]);
    adapter.save_peft(dir.path(), "tiny", &meta).unwrap();
    let back = LoraWeights::load_peft(dir.path(), &config).unwrap();
    assert_eq!(back, adapter);
    // PEFT's names and shapes: A is [r, in], B is [out, r].
    let st = SafeTensors::open(&dir.path().join("adapter_model.safetensors")).unwrap();
    let (inp, out) = Proj::Down.dims(&config);
    assert_eq!(
        st.shape("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"),
        Some(vec![4, inp])
    );
    assert_eq!(
        st.shape("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"),
        Some(vec![out, 4])
    );
    assert_eq!(st.names().count(), 2 * 3 * config.num_layers);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    // A shape that does not fit the model is refused with the tensor's name.
    let mut other = config.clone();
    other.intermediate_size += 1;
    let e = LoraWeights::load_peft(dir.path(), &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("down_proj") && e.contains("shape"), "{e}");
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one() {
    let device = autodiff();
    let (_, model) = tiny_model(&device);
    let (train_set, val) = (examples(6, 5), examples(2, 6));
    let mut config = small_config();
    config.lora.dropout = 0.1;
    config.epochs = 3;
    // One example per micro-batch, two per step: three steps an epoch.
    config.batch_tokens = 16;
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = train(
        &model,
        &train_set,
        &val,
        &config,
        Some(whole_dir.path()),
        &mut |_| true,
    )
    .unwrap()
    .unwrap();
    assert!(whole.steps >= 6, "{} steps", whole.steps);
    // Stop mid-epoch, then start again on the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let stopped = train(
        &model,
        &train_set,
        &val,
        &config,
        Some(dir.path()),
        &mut |p| p.step < 4,
    )
    .unwrap();
    assert!(stopped.is_none());
    let resumed = train(
        &model,
        &train_set,
        &val,
        &config,
        Some(dir.path()),
        &mut |p| {
            assert!(p.step > 4, "resumed runs continue after the checkpoint");
            true
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(resumed.steps, whole.steps);
    assert_eq!(resumed.history, whole.history);
    assert_eq!(resumed.adapter, whole.adapter, "bit-identical adapters");
    // Another config on the same checkpoint is refused.
    let mut other = config.clone();
    other.learning_rate *= 2.0;
    let e = train(
        &model,
        &train_set,
        &val,
        &other,
        Some(dir.path()),
        &mut |_| true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("another config"), "{e}");
}

#[test]
fn micro_batches_respect_the_budget_and_cover_every_example_once() {
    let ex = examples(23, 7);
    let batches = micro_batches(&ex, 40, Some((1, 0)));
    let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..23).collect::<Vec<_>>());
    for b in &batches {
        let longest = b.iter().map(|&i| ex[i].len()).max().unwrap();
        assert!(b.len() == 1 || b.len() * longest <= 40);
    }
    assert_ne!(
        batches,
        micro_batches(&ex, 40, Some((1, 1))),
        "epochs shuffle differently"
    );
    assert_eq!(
        batches,
        micro_batches(&ex, 40, Some((1, 0))),
        "and reproducibly"
    );
}
