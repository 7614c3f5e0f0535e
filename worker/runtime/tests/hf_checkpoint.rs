//! The Hugging Face path (`config.json` + safetensors + `tokenizer.json`) loads the same model
//! as the GGUF path. The directory is written from the GGUF by `tests/peer/gguf_to_hf.py`
//! (Python: the `gguf` package dequantises, numpy restores the rotary row order, the
//! `safetensors` and `tokenizers` packages write the files), so the two loaders meet only in
//! the numbers. Runs whenever the model file is present; with `AUTOMALDESC_REQUIRE_MODEL=1`
//! (CI) a missing model or Python package fails instead of skipping.

use std::path::Path;
use std::process::Command;

use automaldesc_runtime::model::KvCache;
use automaldesc_runtime::prompt::Role;
use automaldesc_runtime::runtime::Annotator;
use burn::tensor::Device;

mod support;
use support::{model_path, root, skip};

fn convert(gguf: &Path, out: &Path, extra: &[&str]) -> bool {
    let status = Command::new("python3")
        .arg(root().join("tests/peer/gguf_to_hf.py"))
        .arg("--gguf")
        .arg(gguf)
        .arg("--out")
        .arg(out)
        .args(extra)
        .status();
    let ok = matches!(status, Ok(s) if s.success());
    if !ok {
        skip(&format!(
            "gguf_to_hf.py failed: {status:?} (pip install gguf numpy safetensors tokenizers)"
        ));
    }
    ok
}

const TEXTS: &[&str] = &[
    "Hello, world!",
    "#!/bin/bash\nfor i in 1 2 3; do echo \"$i\" >> /tmp/log.txt; done\n",
    "powershell -NoP -W Hidden -Enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA=",
    "import os, base64\nexec(base64.b64decode('cHJpbnQoMSk='))  # 12345678\n",
    "<|im_start|>user\nwhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces\ttabs\r\nCRLF and ünïcödé 日本語 🎉",
];

/// Logits of the last prompt position, then of 8 greedy steps.
fn greedy(annotator: &Annotator, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let model = &annotator.model;
    let device = model.device();
    let mut cache = KvCache::new(&model.config, 1, prompt.len() + 16, &device);
    let h = model.forward(prompt, prompt.len(), &mut cache);
    let mut logits = model.logits(h.narrow(0, prompt.len() - 1, 1));
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let row = logits.into_data().try_to_vec::<f32>().unwrap();
        let next = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as u32;
        tokens.push(next);
        all.push(row);
        logits = model.logits(model.forward(&[next], 1, &mut cache));
    }
    (tokens, all)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn hf_directory_loads_the_same_model_as_the_gguf() {
    let Some(gguf) = model_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let f32_dir = dir.path().join("f32");
    let f16_dir = dir.path().join("f16-sharded");
    if !convert(&gguf, &f32_dir, &[])
        || !convert(&gguf, &f16_dir, &["--dtype", "F16", "--shards", "3"])
    {
        return;
    }
    let device = Device::flex();
    let from_gguf = Annotator::load_gguf(&gguf, &device).unwrap();
    let from_hf = Annotator::load(&f32_dir, &device).unwrap();
    assert_eq!(from_hf.model.config, from_gguf.model.config);
    assert_eq!(from_hf.template, from_gguf.template);

    for text in TEXTS {
        assert_eq!(
            from_hf.tokenizer.encode(text).unwrap(),
            from_gguf.tokenizer.encode(text).unwrap(),
            "tokenizer.json and GGUF tokenizer disagree on {text:?}"
        );
    }

    let prompt = from_gguf.encode_chat(&[(Role::User, "What does `rm -rf /tmp/cache` do?")]);
    assert_eq!(
        from_hf.encode_chat(&[(Role::User, "What does `rm -rf /tmp/cache` do?")]),
        prompt
    );
    let (tokens_gguf, logits_gguf) = greedy(&from_gguf, &prompt);
    let (tokens_hf, logits_hf) = greedy(&from_hf, &prompt);
    let diff = max_diff(&logits_gguf, &logits_hf);
    eprintln!("f32 safetensors vs gguf: max |logit diff| {diff:.3e}");
    assert_eq!(tokens_hf, tokens_gguf);
    // The same f32 values in the same fused layout: the same arithmetic.
    assert!(diff <= 1e-4, "f32 safetensors logits differ by {diff}");

    // F16 weights round every value; three shards exercise the index.
    let from_f16 = Annotator::load(&f16_dir, &device).unwrap();
    let (tokens_f16, logits_f16) = greedy(&from_f16, &prompt);
    let diff16 = max_diff(&logits_gguf, &logits_f16);
    let matching = tokens_f16
        .iter()
        .zip(&tokens_gguf)
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!(
        "f16 sharded vs gguf: max |logit diff| {diff16:.3e}, {matching}/8 greedy tokens equal"
    );
    assert!(
        diff16 > 0.0 && diff16 < 0.5,
        "f16 logits differ by {diff16}"
    );
    assert!(matching >= 4, "f16 greedy tokens diverge after {matching}");
}

#[test]
fn a_mismatched_checkpoint_names_the_tensor_and_both_shapes() {
    let Some(gguf) = model_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    if !convert(&gguf, &out, &[]) {
        return;
    }
    // Claim a wider FFN than the weights have.
    let cfg_path = out.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 2048.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = Annotator::load(&out, &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight")
            && err.contains("[1536, 576]")
            && err.contains("[2048, 576]"),
        "{err}"
    );
}
