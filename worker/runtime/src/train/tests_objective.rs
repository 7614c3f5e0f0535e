//! The training objective: per-role weights, choices over candidates, forced tokens left
//! out, class balance, best-epoch selection, the frozen prefix, layer subsets.

use burn::module::Module;
use burn::tensor::Device;

use super::forward::{hidden_states, score};
use super::lora::{LayerSet, LoraConfig, LoraWeights, Proj};
use super::prefix::PrefixCache;
use super::run::is_better;
use super::scorer::Scorer;
use super::scoring::scores_with;
use super::*;
use crate::model::{Llama, LlamaConfig};
use crate::state_store::StateStore;

const LANGS: [u32; 5] = [10, 11, 12, 13, 14];
const LABELS: [u32; 2] = [20, 21];

fn choices() -> ChoiceIds {
    ChoiceIds {
        language: LANGS.to_vec(),
        label: LABELS.to_vec(),
    }
}

/// An answer-shaped example: language choice, two forced tokens, the label, a forced
/// token, three free summary tokens, a forced end.
fn labelled(seed: u32, label: u8) -> Example {
    let s = seed * 7;
    let lang = (seed % 5) as u8;
    Example {
        prompt: (0..6 + seed % 3).map(|k| (s + k * 5) % 60 + 30).collect(),
        target: vec![
            LANGS[usize::from(lang)],
            40,
            41,
            LABELS[usize::from(label)],
            42,
            (s % 50) + 30,
            (s % 40) + 33,
            (s % 30) + 36,
            43,
        ],
        roles: vec![
            TokenRole::Language(lang),
            TokenRole::Forced,
            TokenRole::Forced,
            TokenRole::Label(label),
            TokenRole::Forced,
            TokenRole::Free,
            TokenRole::Free,
            TokenRole::Free,
            TokenRole::Forced,
        ],
    }
}

fn set(n: u32) -> Vec<Example> {
    (0..n)
        .map(|i| labelled(i + 1, u8::from(i % 3 != 0)))
        .collect()
}

fn tiny(device: &Device) -> Llama {
    Llama::random(&LlamaConfig::tiny(97), 7, device).no_grad()
}

fn lora(layers: LayerSet) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
        layers,
        label_head: false,
        language_head: false,
    }
}

fn adapter(model: &Llama, layers: LayerSet) -> LoraWeights {
    let mut a = LoraWeights::init(&lora(layers.clone()), &model.config, 3).unwrap();
    let donor = LoraWeights::init(&lora(layers), &model.config, 4).unwrap();
    for (p, q) in a.pairs_mut().zip(donor.pairs()) {
        for (i, x) in p.b.iter_mut().enumerate() {
            *x = q.a[i % q.a.len()] * 0.5;
        }
    }
    a
}

fn vec1(t: burn::tensor::Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn the_loss_is_the_weighted_mean_over_roles_computed_by_hand() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let ex = set(3);
    let weights = Weights::new(2.0, 10.0, true, &ex);
    let batch = make_batch(&ex, &[0, 1, 2], Some(&choices()), &weights, None).unwrap();
    let scored = score(&model, &batch, None, None);
    let total_weight: f64 = batch.weights.iter().map(|&w| f64::from(w)).sum::<f64>()
        + batch
            .choices
            .iter()
            .map(|c| f64::from(c.weight))
            .sum::<f64>();
    let got = f64::from(vec1(scored.weighted_nll(&batch).unwrap())[0]) / total_weight;
    // By hand, from the logits of every position.
    let h = hidden_states(&model, &batch, None, None);
    let logits = model.logits(h);
    let vocab = model.config.vocab_size;
    let all: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let log_softmax_of = |row: &[f32], ids: &[u32], target: u32| -> f64 {
        let m = ids
            .iter()
            .map(|&i| f64::from(row[i as usize]))
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = ids
            .iter()
            .map(|&i| (f64::from(row[i as usize]) - m).exp())
            .sum();
        f64::from(row[target as usize]) - m - z.ln()
    };
    let every: Vec<u32> = (0..vocab as u32).collect();
    let (mut sum, mut wsum) = (0.0f64, 0.0f64);
    for (s, e) in ex.iter().enumerate() {
        for (k, (&tok, role)) in e.target.iter().zip(&e.roles).enumerate() {
            let row = &all[(s * batch.t + e.prompt.len() - 1 + k) * vocab..][..vocab];
            let (w, lp) = match role {
                TokenRole::Forced => continue,
                TokenRole::Free => (1.0, log_softmax_of(row, &every, tok)),
                TokenRole::Language(_) => (2.0, log_softmax_of(row, &LANGS, tok)),
                TokenRole::Label(l) => (
                    f64::from(weights.label[usize::from(*l)]),
                    log_softmax_of(row, &LABELS, tok),
                ),
            };
            sum -= w * lp;
            wsum += w;
        }
    }
    assert!(
        (wsum - total_weight).abs() < 1e-6,
        "{wsum} vs {total_weight}"
    );
    let want = sum / wsum;
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1.0),
        "{got} vs {want}"
    );
}

#[test]
fn forced_tokens_get_no_gradient() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let a = adapter(&model, LayerSet::all());
    let grads_of = |ex: &[Example]| {
        let batch = make_batch(ex, &[0, 1], Some(&choices()), &Weights::uniform(), None).unwrap();
        let t = a.tensors(&device, true);
        let nll = score(&model, &batch, Some(&t), None)
            .weighted_nll(&batch)
            .unwrap();
        let loss = vec1(nll.clone())[0];
        (loss, t.grads(&nll.backward()))
    };
    let ex = set(2);
    // Every forced target token replaced: loss and gradients stay exactly the same, since
    // those rows are never scored (the input tokens after them are unchanged too, because
    // the last forced token is the sequence's last).
    let mut other = ex.clone();
    for e in &mut other {
        let last = e.target.len() - 1;
        e.target[last] = 77;
    }
    let (l1, g1) = grads_of(&ex);
    let (l2, g2) = grads_of(&other);
    assert_eq!(l1, l2);
    assert_eq!(g1, g2);
    // A free token replaced does change them.
    let mut free = ex.clone();
    free[0].target[5] = 88;
    let (l3, _) = grads_of(&free);
    assert_ne!(l1, l3);
}

#[test]
fn class_balance_gives_each_class_half_the_label_weight() {
    let ex = set(4); // labels 0, 1, 1, 0 → i % 3 != 0: 0,1,1,0
    let counts = [
        ex.iter().filter(|e| e.label() == Some(0)).count(),
        ex.iter().filter(|e| e.label() == Some(1)).count(),
    ];
    assert_eq!(counts, [2, 2]);
    let ex = set(6); // i = 0..6: labels 0,1,1,0,1,1
    let w = Weights::new(1.0, 10.0, true, &ex);
    assert!(
        (w.label[0] - 10.0 * 6.0 / 4.0).abs() < 1e-6,
        "{:?}",
        w.label
    );
    assert!(
        (w.label[1] - 10.0 * 6.0 / 8.0).abs() < 1e-6,
        "{:?}",
        w.label
    );
    let total: f32 = ex
        .iter()
        .map(|e| w.label[usize::from(e.label().unwrap())])
        .sum();
    assert!(
        (total - 60.0).abs() < 1e-4,
        "the label's total weight is unchanged"
    );
    assert_eq!(Weights::new(1.0, 10.0, false, &ex).label, [10.0, 10.0]);
}

#[test]
fn micro_batches_mix_the_classes() {
    let ex = set(24);
    for b in micro_batches(&ex, 4 * 20, Some((3, 1))) {
        let labels: Vec<u8> = b.iter().filter_map(|&i| ex[i].label()).collect();
        assert!(
            labels.len() < 3 || (labels.contains(&0) && labels.contains(&1)),
            "{labels:?}"
        );
    }
}

#[test]
fn the_best_epoch_has_the_lowest_validation_label_nll() {
    let m = |nll: f64, tok: f64| SplitMetrics {
        label_nll: nll,
        token_loss: tok,
        ..SplitMetrics::default()
    };
    // A lower label NLL wins even with a worse token loss.
    assert!(is_better(&m(0.5, 3.0), Some((0.6, 2.0))));
    assert!(!is_better(&m(0.7, 1.0), Some((0.6, 2.0))));
    // A tie on the label goes to the token loss.
    assert!(is_better(&m(0.6, 1.9), Some((0.6, 2.0))));
    // Without labels, the token loss alone decides.
    assert!(is_better(&m(f64::NAN, 1.0), Some((0.0, 2.0))));
    assert!(is_better(&m(0.9, 9.0), None));
}

#[test]
fn the_cached_prefix_gives_the_uncached_loss_and_gradients() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let infer = Llama::random(&LlamaConfig::tiny(97), 7, &Device::flex());
    let a = adapter(&model, LayerSet::top(1));
    assert_eq!(a.first_adapted_layer(), 1);
    let ex = set(3);
    let cache = PrefixCache::build(&infer, &ex, 1, 1 << 20, None, None).unwrap();
    let spilled_dir = tempfile::tempdir().unwrap();
    let spilled = PrefixCache::build(&infer, &ex, 1, 0, Some(spilled_dir.path()), None).unwrap();
    assert!(spilled.spilled_bytes > 0 && spilled.memory_bytes == 0);
    let run = |prefix: Option<&PrefixCache>| {
        let batch = make_batch(
            &ex,
            &[0, 1, 2],
            Some(&choices()),
            &Weights::uniform(),
            prefix,
        )
        .unwrap();
        let t = a.tensors(&device, true);
        let nll = score(&model, &batch, Some(&t), None)
            .weighted_nll(&batch)
            .unwrap();
        (vec1(nll.clone())[0], t.grads(&nll.backward()))
    };
    let (l0, g0) = run(None);
    for p in [&cache, &spilled] {
        let (l1, g1) = run(Some(p));
        assert!((l0 - l1).abs() < 1e-4 * l0.abs().max(1.0), "{l0} vs {l1}");
        let scale = g0.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        for (x, y) in g0.iter().zip(&g1) {
            assert!((x - y).abs() < 1e-3 * scale, "{x} vs {y}");
        }
        assert!(g0.iter().any(|g| g.abs() > 1e-5));
    }
    // A prefix that does not end at the adapter's lowest block is refused.
    let data = TrainData {
        train: &ex,
        val: &[],
        choices: Some(&choices()),
        prefix: Some((&cache, &cache)),
        fused: None,
    };
    let mut config = TrainConfig::v1();
    config.lora = lora(LayerSet::all());
    let e = train_with(&model, &data, &config, None, &mut |_| true, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("lowest adapted block"), "{e}");
}

#[test]
fn layer_sets_resolve_or_name_the_key() {
    assert_eq!(LayerSet::top(2).resolve(30).unwrap(), vec![28, 29]);
    assert_eq!(
        LayerSet::top(8).resolve(2).unwrap(),
        vec![0, 1],
        "top:K of a smaller model: all"
    );
    assert_eq!(
        LayerSet::List(vec![5, 3, 5]).resolve(30).unwrap(),
        vec![3, 5]
    );
    for bad in [
        LayerSet::top(0),
        LayerSet::List(vec![30]),
        LayerSet::Named("bottom:3".into()),
        LayerSet::List(vec![]),
    ] {
        let e = bad.resolve(30).unwrap_err().to_string();
        assert!(e.contains("`layers`"), "{e}");
    }
}

#[test]
fn bad_training_settings_are_refused_before_training() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let ex = set(4);
    let data = TrainData {
        train: &ex,
        val: &[],
        choices: Some(&choices()),
        prefix: None,
        fused: None,
    };
    for (key, edit) in [
        (
            "label_weight",
            Box::new(|c: &mut TrainConfig| c.label_weight = 0.0) as Box<dyn Fn(&mut TrainConfig)>,
        ),
        (
            "label_weight",
            Box::new(|c: &mut TrainConfig| c.label_weight = -1.0),
        ),
        (
            "layers",
            Box::new(|c: &mut TrainConfig| c.lora.layers = LayerSet::top(0)),
        ),
    ] {
        let mut config = TrainConfig::v1();
        edit(&mut config);
        let e =
            train_with(&model, &data, &config, None, &mut |_| true, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // One class only.
    let malicious: Vec<Example> = (0..4).map(|i| labelled(i + 1, 1)).collect();
    let data = TrainData {
        train: &malicious,
        val: &[],
        choices: Some(&choices()),
        prefix: None,
        fused: None,
    };
    let e = train_with(
        &model,
        &data,
        &TrainConfig::v1(),
        None,
        &mut |_| true,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("one class"), "{e}");
}

#[test]
fn a_checkpoint_of_other_layers_is_refused_naming_both() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let ex = set(4);
    let dir = tempfile::tempdir().unwrap();
    let mut config = TrainConfig::v1();
    config.lora = lora(LayerSet::top(1));
    config.epochs = 1;
    config.batch_tokens = 16;
    let data = TrainData {
        train: &ex,
        val: &[],
        choices: Some(&choices()),
        prefix: None,
        fused: None,
    };
    let stopped = train_with(
        &model,
        &data,
        &config,
        Some(dir.path()),
        &mut |_| false,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(stopped.is_none());
    config.lora.layers = LayerSet::all();
    let e = train_with(
        &model,
        &data,
        &config,
        Some(dir.path()),
        &mut |_| true,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("top:1") && e.contains("all"), "{e}");
}

#[test]
fn stratified_hold_out_keeps_every_stratum_and_enough_scripts() {
    let shas: Vec<String> = (0..400).map(sha256_of).collect();
    let items: Vec<(&str, String)> = shas
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), format!("{}/{}", i % 2, i % 5)))
        .collect();
    let held = stratified_hold_out(&items, 0.05, 30);
    let n = held.iter().filter(|&&h| h).count();
    assert!(n >= 30, "{n} held out of 400");
    for stratum in 0..10 {
        let of: Vec<bool> = items
            .iter()
            .zip(&held)
            .filter(|((_, s), _)| *s == format!("{}/{}", stratum % 2, stratum % 5))
            .map(|(_, &h)| h)
            .collect();
        if !of.is_empty() {
            assert!(of.iter().any(|&h| h) && of.iter().any(|&h| !h));
        }
    }
    // Reproducible, whatever the order of the items.
    let mut rev = items.clone();
    rev.reverse();
    let held_rev = stratified_hold_out(&rev, 0.05, 30);
    let mut a: Vec<&str> = items
        .iter()
        .zip(&held)
        .filter(|(_, &h)| h)
        .map(|((s, _), _)| *s)
        .collect();
    let mut b: Vec<&str> = rev
        .iter()
        .zip(&held_rev)
        .filter(|(_, &h)| h)
        .map(|((s, _), _)| *s)
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

fn sha256_of(i: usize) -> String {
    automaldesc_common::sha256_hex(i.to_string().as_bytes())
}

#[test]
fn a_label_head_moves_the_label_and_survives_saving() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let mut config = lora(LayerSet::top(1));
    config.label_head = true;
    let mut a = LoraWeights::init(&config, &model.config, 3).unwrap();
    let hidden = model.config.hidden_size;
    assert_eq!(a.label_head.as_ref().map(Vec::len), Some(hidden + 1));
    let ex = set(2);
    let batch = make_batch(&ex, &[0, 1], Some(&choices()), &Weights::uniform(), None).unwrap();
    let p_malicious = |a: &LoraWeights| -> Vec<f32> {
        let s = score(&model, &batch, Some(&a.tensors(&device, false)), None);
        batch
            .choices
            .iter()
            .zip(&s.choices)
            .filter(|(c, _)| c.is_label)
            .map(|(_, lp)| vec1(lp.clone())[1].exp())
            .collect()
    };
    let neutral = p_malicious(&a);
    // A large bias makes every label malicious; a negative one benign.
    for (bias, want) in [(30.0f32, 1.0f32), (-30.0, 0.0)] {
        a.label_head.as_mut().unwrap()[hidden] = bias;
        for p in p_malicious(&a) {
            assert!((p - want).abs() < 1e-3, "bias {bias}: {p}");
        }
    }
    assert!(
        neutral.iter().all(|p| *p > 0.01 && *p < 0.99),
        "{neutral:?}"
    );
    // The head's gradient is there, from the label rows only.
    let t = a.tensors(&device, true);
    let nll = score(&model, &batch, Some(&t), None)
        .weighted_nll(&batch)
        .unwrap();
    let g = t.grads(&nll.backward());
    assert!(g[g.len() - hidden - 1..].iter().any(|x| x.abs() > 1e-6));
    // Saved beside the PEFT files and read back.
    let dir = tempfile::tempdir().unwrap();
    a.save_peft(dir.path(), "tiny", &Default::default())
        .unwrap();
    assert!(dir.path().join(super::lora::LABEL_HEAD_FILE).exists());
    let back = LoraWeights::load_peft(dir.path(), &model.config).unwrap();
    assert_eq!(back.label_head, a.label_head);
    assert!(back.config.label_head);
}

#[test]
fn a_language_head_moves_the_language_and_survives_saving() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let mut config = lora(LayerSet::top(1));
    config.language_head = true;
    let mut a = LoraWeights::init(&config, &model.config, 3).unwrap();
    let row = model.config.hidden_size + 1;
    // A large bias on language 3 makes it every example's most likely language.
    a.language_head.as_mut().unwrap()[3 * row + row - 1] = 30.0;
    let ex = set(3);
    let batch = make_batch(&ex, &[0, 1, 2], Some(&choices()), &Weights::uniform(), None).unwrap();
    let s = score(&model, &batch, Some(&a.tensors(&device, false)), None);
    for (c, lp) in batch
        .choices
        .iter()
        .zip(&s.choices)
        .filter(|(c, _)| !c.is_label)
    {
        let p = vec1(lp.clone());
        assert!(p[3].exp() > 0.999, "{:?} for {:?}", p, c.candidates);
    }
    // Not trained by gradient: outside the flat vector.
    assert_eq!(a.flatten().len(), a.num_params());
    let dir = tempfile::tempdir().unwrap();
    a.save_peft(dir.path(), "tiny", &Default::default())
        .unwrap();
    let back = LoraWeights::load_peft(dir.path(), &model.config).unwrap();
    assert_eq!(back.language_head, a.language_head);
    assert!(back.config.language_head && !back.config.label_head);
}

#[test]
fn refitted_heads_separate_what_the_features_separate() {
    // Training with both heads on the tiny model: the refit picks heads that fit the
    // training labels at least as well as no head does.
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let ex = set(12);
    let mut config = TrainConfig::v1();
    config.lora = lora(LayerSet::top(1));
    config.lora.label_head = true;
    config.lora.language_head = true;
    config.epochs = 1;
    config.batch_tokens = 64;
    config.learning_rate = 1e-3;
    let data = TrainData {
        train: &ex,
        val: &ex,
        choices: Some(&choices()),
        prefix: None,
        fused: None,
    };
    let trained = train_with(&model, &data, &config, None, &mut |_| true, &mut |_, _| {})
        .unwrap()
        .unwrap();
    let with_heads = trained.history[0].val.label_nll;
    let mut bare = trained.adapter.clone();
    bare.label_head = None;
    bare.language_head = None;
    let without = evaluate(&model, &ex, Some(&bare), 64, Some(&choices()), None).unwrap();
    assert!(
        with_heads < without.label_nll,
        "{with_heads} vs {}",
        without.label_nll
    );
    let lang_with = trained.history[0].val.language_accuracy;
    assert!(
        lang_with >= without.language_accuracy,
        "{lang_with} vs {}",
        without.language_accuracy
    );
    assert!(trained
        .adapter
        .language_head
        .as_ref()
        .is_some_and(|h| h.iter().any(|x| *x != 0.0)));
}

#[test]
fn a_crash_resumes_from_the_last_periodic_checkpoint_bit_identically() {
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let ex = set(8);
    let mut config = TrainConfig::v1();
    config.lora = lora(LayerSet::all());
    config.lora.dropout = 0.1;
    config.epochs = 2;
    config.batch_tokens = 16;
    config.checkpoint_every = 2;
    let data = TrainData {
        train: &ex,
        val: &[],
        choices: Some(&choices()),
        prefix: None,
        fused: None,
    };
    let whole = train_with(&model, &data, &config, None, &mut |_| true, &mut |_, _| {})
        .unwrap()
        .unwrap();
    assert!(whole.steps >= 8, "{} steps", whole.steps);
    let dir = tempfile::tempdir().unwrap();
    // The process dies at step 5: no checkpoint is written then; the last is step 4's.
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_with(
            &model,
            &data,
            &config,
            Some(dir.path()),
            &mut |p| {
                assert!(p.step < 5, "crash");
                true
            },
            &mut |_, _| {},
        )
    }));
    assert!(crashed.is_err());
    let mut first_step = None;
    let resumed = train_with(
        &model,
        &data,
        &config,
        Some(dir.path()),
        &mut |p| {
            first_step.get_or_insert(p.step);
            true
        },
        &mut |_, _| {},
    )
    .unwrap()
    .unwrap();
    assert_eq!(first_step, Some(5), "resumed after the step-4 checkpoint");
    assert_eq!(resumed.adapter, whole.adapter, "bit-identical adapters");
    assert_eq!(resumed.history, whole.history);
}

#[test]
fn the_epoch_end_scores_on_the_fused_path_are_the_training_model_s() {
    // The passes at an epoch's end run on an inference copy with the adapter merged: the
    // same token NLL, label probabilities and language hits as through the training model
    // with the adapter as branches, with and without the frozen prefix, in padded batches.
    let device = Device::flex().autodiff();
    let model = tiny(&device);
    let infer = Llama::random(&LlamaConfig::tiny(97), 7, &Device::flex());
    let hidden = model.config.hidden_size;
    let mut a = adapter(&model, LayerSet::top(1));
    a.label_head = Some(
        (0..=hidden)
            .map(|i| (i as f32 * 0.37).sin() * 0.2)
            .collect(),
    );
    a.language_head = Some(
        (0..5 * (hidden + 1))
            .map(|i| (i as f32 * 0.11).cos() * 0.2)
            .collect(),
    );
    let ex = set(7);
    let cache = PrefixCache::build(&infer, &ex, 1, 1 << 20, None, None).unwrap();
    let merged = Scorer::new(&model, Some(&infer), &a).unwrap();
    assert!(matches!(merged, Scorer::Merged(_)));
    for prefix in [None, Some(&cache)] {
        let want = scores_with(
            &Scorer::Branches(&model),
            &ex,
            Some(&a),
            40,
            Some(&choices()),
            prefix,
        )
        .unwrap();
        let got = scores_with(&merged, &ex, Some(&a), 40, Some(&choices()), prefix).unwrap();
        assert_eq!(got.scripts, 7);
        assert_eq!(
            (got.tokens, got.labels.len()),
            (want.tokens, want.labels.len())
        );
        assert!(want.tokens > 0 && want.labels.len() == 7);
        let (g, w) = (got.token_nll, want.token_nll);
        assert!(
            (g - w).abs() < 1e-3 * w.abs().max(1.0),
            "token nll {g} vs {w}"
        );
        for (g, w) in got.labels.iter().zip(&want.labels) {
            assert_eq!(g.label, w.label);
            assert!((g.p - w.p).abs() < 1e-4, "P(malicious) {} vs {}", g.p, w.p);
        }
        assert_eq!(
            (got.languages, got.languages_right),
            (want.languages, want.languages_right)
        );
    }
    // Merging left the base copy untouched, and a zero adapter (B = 0) merges to the base:
    // without an adapter, all three score alike.
    let no_adapter = |scorer: &Scorer| {
        scores_with(scorer, &ex, None, 40, Some(&choices()), None)
            .unwrap()
            .token_nll
    };
    let bare = no_adapter(&Scorer::Branches(&model));
    let zero = LoraWeights::init(&lora(LayerSet::top(1)), &model.config, 3).unwrap();
    for other in [
        no_adapter(&Scorer::new(&model, Some(&infer), &zero).unwrap()),
        no_adapter(&Scorer::Merged(Box::new(infer.clone()))),
    ] {
        assert!(
            (bare - other).abs() < 1e-3 * bare.abs().max(1.0),
            "{bare} vs {other}"
        );
    }
}

#[test]
fn a_second_run_reads_the_prefix_states_the_first_one_stored() {
    let infer = Llama::random(&LlamaConfig::tiny(97), 7, &Device::flex());
    let ex = set(4);
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path(), "tiny@7", 1 << 30);
    let first = PrefixCache::build(&infer, &ex, 1, 1 << 20, None, Some(&store)).unwrap();
    assert_eq!(first.reused, 0);
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files(), 4);
    let second = PrefixCache::build(&infer, &ex, 1, 1 << 20, None, Some(&store)).unwrap();
    assert_eq!(second.reused, 4);
    for i in 0..ex.len() {
        assert_eq!(first.states(i).unwrap(), second.states(i).unwrap());
    }
    // Another block, or another model, is another entry.
    let above = PrefixCache::build(&infer, &ex[..1], 2, 1 << 20, None, Some(&store)).unwrap();
    assert_eq!(above.reused, 0);
    let other = StateStore::new(dir.path(), "tiny@8", 1 << 30);
    let o = PrefixCache::build(&infer, &ex[..1], 1, 1 << 20, None, Some(&other)).unwrap();
    assert_eq!((o.reused, files()), (0, 6));
    // Truncated entries are computed again (and rewritten), never read.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let one = std::fs::metadata(&entries[0]).unwrap().len();
    for p in &entries {
        std::fs::write(p, [0u8; 8]).unwrap();
    }
    let again = PrefixCache::build(&infer, &ex, 1, 1 << 20, None, Some(&store)).unwrap();
    assert_eq!(again.reused, 0);
    let third = PrefixCache::build(&infer, &ex, 1, 1 << 20, None, Some(&store)).unwrap();
    assert_eq!(third.reused, 4);
    for i in 0..ex.len() {
        assert_eq!(first.states(i).unwrap(), again.states(i).unwrap());
        assert_eq!(first.states(i).unwrap(), third.states(i).unwrap());
    }
    // A crashed writer's temporary file goes once it is an hour old, a fresh one stays.
    let (old, fresh) = (dir.path().join("x.tmp-1-0"), dir.path().join("y.tmp-1-1"));
    for p in [&old, &fresh] {
        std::fs::write(p, [1u8; 4]).unwrap();
    }
    let two_hours = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_hours)
        .unwrap();
    store.evict();
    assert!(!old.exists() && fresh.exists());
    std::fs::remove_file(&fresh).unwrap();
    // Beyond the cap the least recently used entries go, down to the cap.
    let small = StateStore::new(dir.path(), "tiny@7", 2 * one);
    small.evict();
    let left: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        left <= 2 * one && left > 0,
        "{left} bytes left, cap {}",
        2 * one
    );
}
