//! Checks against the real SmolLM2-135M-Instruct Q4_1 GGUF file, when present.
//!
//! The file is found via `AUTOMALDESC_GGUF` or at
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` under the workspace root. The
//! dequantisation reference comes from the independent Python `gguf` package
//! through `tests/peer/gguf_reference.py`; without it that test is skipped.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use automaldesc_runtime::gguf::{GgmlType, GgufError, GgufFile};

mod support;
use support::{model_path, root as workspace_root, skip};

#[test]
fn real_file_structure() {
    let Some(path) = model_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.tensors().len(), 272);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in g.tensors() {
        *counts.entry(format!("{:?}", t.dtype)).or_default() += 1;
    }
    assert_eq!(counts.get("Q4_1"), Some(&210));
    assert_eq!(counts.get("F32"), Some(&61));
    assert_eq!(counts.get("Q8_0"), Some(&1));
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dtype, GgmlType::Q8_0);
    assert_eq!(emb.dims, [576, 49152]);
    assert!(!g.has_tensor("output.weight"));
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert!(g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap() > 0.0);
    let err = g.dequantize("output.weight").unwrap_err();
    assert!(err.to_string().contains("output.weight"), "{err}");
}

#[test]
fn real_file_truncated_copy_is_an_error() {
    let Some(path) = model_path() else { return };
    let full = std::fs::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    for len in [
        0,
        3,
        7,
        100,
        5_000,
        1_000_000,
        full.len() / 2,
        full.len() - 1,
    ] {
        std::fs::write(&cut, &full[..len]).unwrap();
        let err = GgufFile::open(&cut).unwrap_err();
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. }
            ),
            "{len}: {err}"
        );
    }
}

#[test]
fn real_file_dequantize_all() {
    let Some(path) = model_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    let start = Instant::now();
    let mut total = 0usize;
    for t in g.tensors() {
        let v = g.dequantize(&t.name).unwrap();
        assert_eq!(v.len() as u64, t.n_elements());
        total += v.len();
    }
    println!(
        "dequantised {} tensors, {total} values in {:?}",
        g.tensors().len(),
        start.elapsed()
    );
}

#[derive(serde::Deserialize)]
struct Reference {
    dtype: String,
    dims: Vec<u64>,
    n_elements: usize,
    first: Vec<f32>,
    sum: f64,
    abs_sum: f64,
}

#[test]
fn real_file_matches_python_gguf() {
    let Some(path) = model_path() else { return };
    let names = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_norm.weight",
        "blk.0.ffn_down.weight",
        "blk.17.attn_v.weight",
        "blk.29.ffn_gate.weight",
        "output_norm.weight",
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ref.json");
    let script = workspace_root().join("tests/peer/gguf_reference.py");
    let status = Command::new("python3")
        .arg(&script)
        .arg(&path)
        .arg(&out)
        .args(names)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) if s.code() == Some(3) => {
            skip("python gguf package missing (pip install gguf numpy)");
            return;
        }
        Ok(s) => panic!("reference script failed: {s}"),
        Err(e) => {
            skip(&format!("cannot run python3: {e}"));
            return;
        }
    }
    let refs: BTreeMap<String, Reference> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    for name in names {
        let r = &refs[name];
        let t = g.tensor(name).unwrap();
        assert_eq!(format!("{:?}", t.dtype), r.dtype, "{name}");
        assert_eq!(t.dims, r.dims, "{name}");
        let v = g.dequantize(name).unwrap();
        assert_eq!(v.len(), r.n_elements, "{name}");
        for (i, (a, b)) in v.iter().zip(&r.first).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs(),
                "{name}[{i}]: {a} vs reference {b}"
            );
        }
        let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let abs_sum: f64 = v.iter().map(|&x| f64::from(x).abs()).sum();
        assert!(
            (sum - r.sum).abs() <= 1e-6 * r.abs_sum,
            "{name}: sum {sum} vs {}",
            r.sum
        );
        assert!(
            (abs_sum - r.abs_sum).abs() <= 1e-9 * r.abs_sum,
            "{name}: abs sum {abs_sum} vs {}",
            r.abs_sum
        );
        println!(
            "{name} ({}): first {} equal, sum {sum:.6} (ref {:.6}), abs sum {abs_sum:.6} (ref {:.6})",
            r.dtype,
            r.first.len(),
            r.sum,
            r.abs_sum
        );
    }
}
