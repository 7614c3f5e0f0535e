//! A tiny random model that speaks like the real one: the real model's tokenizer and chat
//! template on two Llama layers of width 64, for tests of the whole loop in seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use automaldesc_runtime::gguf::{f32_bytes, write_gguf, GgmlType, GgufFile, MetaValue};
use rand::{Rng, SeedableRng};

const HIDDEN: usize = 64;
const FFN: usize = 128;
const LAYERS: usize = 2;

/// The real model file, whose tokenizer the tiny model borrows.
pub fn real_model() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("AUTOMALDESC_REQUIRE_MODEL").is_none(),
        "AUTOMALDESC_REQUIRE_MODEL is set but {} is missing (run deploy/fetch_model.sh)",
        p.display()
    );
    eprintln!(
        "skipping: {} missing (run deploy/fetch_model.sh)",
        p.display()
    );
    None
}

/// A random two-layer Llama with the real model's tokenizer and chat template. The row of
/// the `"` token is scaled up so that the random model closes its summaries after a few
/// tokens, as a trained one does (otherwise every answer is cut by the token budget and
/// the filter rejects everything at its second stage).
pub fn write_tiny_model(real: &Path, out: &Path) {
    let g = GgufFile::open(real).unwrap();
    let mut meta: BTreeMap<String, MetaValue> = g
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("llama."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("llama.embedding_length", HIDDEN as u32),
        ("llama.feed_forward_length", FFN as u32),
        ("llama.block_count", LAYERS as u32),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 16),
        ("llama.context_length", 2048),
    ] {
        meta.insert(k.into(), MetaValue::U32(v));
    }
    meta.insert(
        "llama.attention.layer_norm_rms_epsilon".into(),
        MetaValue::F32(1e-5),
    );
    meta.insert("llama.rope.freq_base".into(), MetaValue::F32(10_000.0));
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    let vocab = tokens.len();
    let quote = tokens.iter().position(|t| t == "\"").unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut normal = |n: usize, std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Irwin-Hall: the sum of 12 uniforms minus 6 is close to a standard normal.
                let s: f32 = (0..12).map(|_| rng.random::<f32>()).sum();
                (s - 6.0) * std
            })
            .collect()
    };
    let mut embed = normal(vocab * HIDDEN, 0.02);
    for v in &mut embed[quote * HIDDEN..(quote + 1) * HIDDEN] {
        *v *= 60.0;
    }
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> = vec![(
        "token_embd.weight".into(),
        vec![HIDDEN as u64, vocab as u64],
        f32_bytes(&embed),
    )];
    let ones = f32_bytes(&vec![1.0; HIDDEN]);
    for l in 0..LAYERS {
        let kv = 2 * 16;
        for (name, rows, cols) in [
            ("attn_q", HIDDEN, HIDDEN),
            ("attn_k", kv, HIDDEN),
            ("attn_v", kv, HIDDEN),
            ("attn_output", HIDDEN, HIDDEN),
            ("ffn_gate", FFN, HIDDEN),
            ("ffn_up", FFN, HIDDEN),
            ("ffn_down", HIDDEN, FFN),
        ] {
            tensors.push((
                format!("blk.{l}.{name}.weight"),
                vec![cols as u64, rows as u64],
                f32_bytes(&normal(rows * cols, 0.05)),
            ));
        }
        for name in ["attn_norm", "ffn_norm"] {
            tensors.push((
                format!("blk.{l}.{name}.weight"),
                vec![HIDDEN as u64],
                ones.clone(),
            ));
        }
    }
    tensors.push(("output_norm.weight".into(), vec![HIDDEN as u64], ones));
    let refs: Vec<(&str, &[u64], GgmlType, &[u8])> = tensors
        .iter()
        .map(|(n, d, b)| (n.as_str(), d.as_slice(), GgmlType::F32, b.as_slice()))
        .collect();
    write_gguf(out, &meta, &refs).unwrap();
}

/// A small synthetic corpus for the loop under `dir/corpus` (seed, test and about 30
/// unlabelled scripts, in row groups of 6); returns its URL.
pub async fn write_small_loop_corpus(dir: &Path) -> String {
    let synth = automaldesc_corpus::synth::SynthConfig {
        seed: 5,
        scale: 0.002,
        unlabelled_scale: Some(0.0002),
        ..Default::default()
    };
    let opts = automaldesc_common::parquet_io::WriterOptions {
        row_group_rows: 6,
        ..Default::default()
    };
    let url = dir.join("corpus").display().to_string();
    automaldesc_corpus::synth_dataset::write_synth_corpus(&synth, &url, &opts)
        .await
        .unwrap();
    url
}

/// A loop config over the corpus of [`write_small_loop_corpus`] with the tiny model: short
/// answers, two temperatures, one small adapter per iteration.
pub fn loop_config(dir: &Path, model: &Path, output: &Path, name: &str, iterations: u32) -> String {
    let d = dir.display();
    format!(
        r#"name = "{name}"
corpus = "{d}/corpus/unlabelled"
seed = "{d}/corpus/seed"
test = "{d}/corpus/test"
output = "{out}"
model = "{model}"
iterations = {iterations}
temperatures = [0.0, 1.0]
max_new_tokens = 24
prompt_tokens = 192
confidence = 0.45
slots = 4
preference_scripts = 3
task_bytes = 6000
summary_tokens = 64
# Above every judge's reach on 10 seed summaries: a judge adapter is trained.
judge_min_accuracy = 1.0
[[adapter]]
rank = 2
alpha = 4.0
dropout = 0.0
epochs = 1
batch_tokens = 2048
answer_tokens = 96
val_fraction = 0.2
layers = "top:1"
label_head = true
language_head = true
"#,
        out = output.display(),
        model = model.display()
    )
}

/// Writes the run spec of the loop config `cfg` (`automaldesc loop CFG --print-spec`) to
/// `out`.
pub fn write_spec(cfg: &Path, out: &Path) {
    let spec = std::process::Command::new(super::procs::bin())
        .args(["loop", cfg.to_str().unwrap(), "--print-spec"])
        .output()
        .unwrap();
    assert!(
        spec.status.success(),
        "{}",
        String::from_utf8_lossy(&spec.stderr)
    );
    std::fs::write(out, &spec.stdout).unwrap();
}
