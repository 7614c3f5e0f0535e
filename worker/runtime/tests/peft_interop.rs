//! LoRA adapters move between this project and PEFT itself (with transformers and torch):
//! `tests/peer/peft_check.py` builds a tiny random Llama and an adapter with PEFT; this
//! test loads both and gets PEFT's logits, unmerged and merged into the weights. An adapter
//! written here is loaded by PEFT and gives this project's logits.
//!
//! PEFT needs torch (about 3 GB with its CUDA libraries), so the Python that has it is named
//! by `AUTOMALDESC_PEFT_PYTHON`; without it the test says why it skips, and with
//! `AUTOMALDESC_REQUIRE_PEFT=1` it fails instead.

use std::path::Path;
use std::process::Command;

use automaldesc_runtime::model::load::Naming;
use automaldesc_runtime::model::{Llama, LlamaConfig};
use automaldesc_runtime::safetensors::SafeTensors;
use automaldesc_runtime::train::forward::{hidden_states, Batch};
use automaldesc_runtime::train::lora::{LayerSet, LoraConfig, LoraWeights, Proj};
use burn::tensor::Device;

mod support;
use support::root;

fn python() -> Option<String> {
    match std::env::var("AUTOMALDESC_PEFT_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var("AUTOMALDESC_REQUIRE_PEFT").map_or(true, |v| v != "1"),
                "AUTOMALDESC_REQUIRE_PEFT=1 but AUTOMALDESC_PEFT_PYTHON is not set"
            );
            eprintln!(
                "SKIP: set AUTOMALDESC_PEFT_PYTHON to a Python with peft, transformers and torch"
            );
            None
        }
    }
}

fn run(py: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg(root().join("tests/peer/peft_check.py"))
        .args(args)
        .output()
        .expect("run the PEFT peer");
    assert!(
        out.status.success(),
        "peft_check.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Logits {
    tokens: Vec<u32>,
    values: Vec<f32>,
}

fn parse(text: &str) -> Logits {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    Logits {
        tokens: v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect(),
        values: v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

fn load_base(dir: &Path, device: &Device) -> Llama {
    let config =
        LlamaConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap())
            .unwrap();
    let st = SafeTensors::open(dir).unwrap();
    let mut model = Llama::load(&config, &st, Naming::HuggingFace, device).unwrap();
    model.unpack();
    model.reference_ops = true;
    model
}

/// Logits of every position, the adapter applied unmerged (or none).
fn our_logits(model: &Llama, tokens: &[u32], adapter: Option<&LoraWeights>) -> Vec<f32> {
    let device = model.device();
    let batch = Batch {
        tokens: tokens.to_vec(),
        b: 1,
        t: tokens.len(),
        lens: vec![tokens.len()],
        rows: Vec::new(),
        targets: Vec::new(),
        weights: Vec::new(),
        choices: Vec::new(),
        prefix: None,
    };
    let tensors = adapter.map(|a| a.tensors(&device, false));
    let h = hidden_states(model, &batch, tensors.as_ref(), None);
    model
        .logits(h)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32], tol: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max |diff| {worst:.2e} over {} logits", ours.len());
    assert!(worst < tol, "{what}: max |diff| {worst} >= {tol}");
}

#[test]
fn adapters_move_between_peft_and_automaldesc() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    run(&py, &["make", "--out", dir.path().to_str().unwrap()]);
    let device = Device::flex();
    let mut model = load_base(&dir.path().join("base"), &device);
    let peft = parse(&std::fs::read_to_string(dir.path().join("peft_logits.json")).unwrap());

    // PEFT's adapter here: the same logits unmerged, and merged into the weights.
    let theirs = LoraWeights::load_peft(&dir.path().join("peft_adapter"), &model.config).unwrap();
    assert_eq!(theirs.config.rank, 4);
    assert_eq!(theirs.config.targets.len(), 7);
    let base = our_logits(&model, &peft.tokens, None);
    let moved = base
        .iter()
        .zip(&peft.values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-2,
        "PEFT's adapter must change the logits ({moved})"
    );
    assert_close(
        "PEFT adapter, unmerged",
        &our_logits(&model, &peft.tokens, Some(&theirs)),
        &peft.values,
        1e-4,
    );
    let mut merged = load_base(&dir.path().join("base"), &device);
    theirs.merge_into(&mut merged).unwrap();
    assert_close(
        "PEFT adapter, merged",
        &our_logits(&merged, &peft.tokens, None),
        &peft.values,
        1e-4,
    );

    // A PEFT adapter on block 1 only (`layers_to_transform`): read as such, same logits.
    let top_logits =
        parse(&std::fs::read_to_string(dir.path().join("peft_logits_top.json")).unwrap());
    let top = LoraWeights::load_peft(&dir.path().join("peft_adapter_top"), &model.config).unwrap();
    assert_eq!(top.adapted_layers(), vec![1]);
    assert_eq!(top.config.layers, LayerSet::List(vec![1]));
    assert_close(
        "PEFT adapter on block 1, unmerged",
        &our_logits(&model, &top_logits.tokens, Some(&top)),
        &top_logits.values,
        1e-4,
    );
    // Ours on block 1 only, in PEFT.
    let mut ours_top = LoraWeights::init(
        &LoraConfig {
            layers: LayerSet::top(1),
            ..top.config.clone()
        },
        &model.config,
        31,
    )
    .unwrap();
    let donor = LoraWeights::init(&ours_top.config, &model.config, 32).unwrap();
    for (p, q) in ours_top.pairs_mut().zip(donor.pairs()) {
        for (i, x) in p.b.iter_mut().enumerate() {
            *x = q.a[i % q.a.len()];
        }
    }
    let out_top = dir.path().join("ours_top");
    ours_top
        .save_peft(&out_top, "tiny", &Default::default())
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_top.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["layers_to_transform"], serde_json::json!([1]));
    let tokens_arg = top_logits
        .tokens
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let in_peft_top = parse(&run(
        &py,
        &[
            "logits",
            "--base",
            dir.path().join("base").to_str().unwrap(),
            "--adapter",
            out_top.to_str().unwrap(),
            "--tokens",
            &tokens_arg,
        ],
    ));
    assert_close(
        "our adapter on block 1 in PEFT",
        &our_logits(&model, &top_logits.tokens, Some(&ours_top)),
        &in_peft_top.values,
        1e-4,
    );

    // An adapter of ours in PEFT.
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: vec![
            Proj::Q,
            Proj::K,
            Proj::V,
            Proj::O,
            Proj::Gate,
            Proj::Up,
            Proj::Down,
        ],
        layers: LayerSet::all(),
        label_head: false,
        language_head: false,
    };
    let mut ours = LoraWeights::init(&lora, &model.config, 21).unwrap();
    let donor = LoraWeights::init(&lora, &model.config, 22).unwrap();
    for (p, q) in ours.pairs_mut().zip(donor.pairs()) {
        for (i, x) in p.b.iter_mut().enumerate() {
            *x = q.a[i % q.a.len()];
        }
    }
    let out = dir.path().join("ours");
    ours.save_peft(&out, "tiny", &Default::default()).unwrap();
    let tokens = peft
        .tokens
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let in_peft = parse(&run(
        &py,
        &[
            "logits",
            "--base",
            dir.path().join("base").to_str().unwrap(),
            "--adapter",
            out.to_str().unwrap(),
            "--tokens",
            &tokens,
        ],
    ));
    model.reference_ops = true;
    assert_close(
        "our adapter in PEFT",
        &our_logits(&model, &peft.tokens, Some(&ours)),
        &in_peft.values,
        1e-4,
    );
}
