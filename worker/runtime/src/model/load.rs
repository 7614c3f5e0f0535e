//! Weight import through a name-mapping table: checkpoint tensor names (GGUF or Hugging Face)
//! to the module's fused matrices, with every shape checked before anything is built.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use super::{Attention, Block, FeedForward, Llama, LlamaConfig, Weight};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tensor {name} is missing from the checkpoint")]
    Missing { name: String },
    #[error("tensor {name} has shape {found:?}, the model expects {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("cannot read tensor {name}: {reason}")]
    Read { name: String, reason: String },
    #[error("invalid checkpoint: {0}")]
    Invalid(String),
}

/// A checkpoint that can hand out dequantised tensors, row-major, with the shape a
/// PyTorch user would print (`[out_features, in_features]` for a linear layer).
pub trait TensorSource {
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, LoadError>;
}

/// How a checkpoint names its tensors and lays out rotary rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// llama.cpp's converter: `blk.N.attn_q.weight`, Q/K rows permuted for interleaved rope.
    Gguf,
    /// Hugging Face transformers: `model.layers.N.self_attn.q_proj.weight`.
    HuggingFace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Embed,
    OutNorm,
    Output,
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

fn name_of(naming: Naming, part: Part, layer: usize) -> String {
    let gguf = |s: &str| format!("blk.{layer}.{s}.weight");
    let hf = |s: &str| format!("model.layers.{layer}.{s}.weight");
    match (naming, part) {
        (Naming::Gguf, Part::Embed) => "token_embd.weight".into(),
        (Naming::Gguf, Part::OutNorm) => "output_norm.weight".into(),
        (Naming::Gguf, Part::Output) => "output.weight".into(),
        (Naming::Gguf, Part::AttnNorm) => gguf("attn_norm"),
        (Naming::Gguf, Part::Q) => gguf("attn_q"),
        (Naming::Gguf, Part::K) => gguf("attn_k"),
        (Naming::Gguf, Part::V) => gguf("attn_v"),
        (Naming::Gguf, Part::O) => gguf("attn_output"),
        (Naming::Gguf, Part::FfnNorm) => gguf("ffn_norm"),
        (Naming::Gguf, Part::Gate) => gguf("ffn_gate"),
        (Naming::Gguf, Part::Up) => gguf("ffn_up"),
        (Naming::Gguf, Part::Down) => gguf("ffn_down"),
        (Naming::HuggingFace, Part::Embed) => "model.embed_tokens.weight".into(),
        (Naming::HuggingFace, Part::OutNorm) => "model.norm.weight".into(),
        (Naming::HuggingFace, Part::Output) => "lm_head.weight".into(),
        (Naming::HuggingFace, Part::AttnNorm) => hf("input_layernorm"),
        (Naming::HuggingFace, Part::Q) => hf("self_attn.q_proj"),
        (Naming::HuggingFace, Part::K) => hf("self_attn.k_proj"),
        (Naming::HuggingFace, Part::V) => hf("self_attn.v_proj"),
        (Naming::HuggingFace, Part::O) => hf("self_attn.o_proj"),
        (Naming::HuggingFace, Part::FfnNorm) => hf("post_attention_layernorm"),
        (Naming::HuggingFace, Part::Gate) => hf("mlp.gate_proj"),
        (Naming::HuggingFace, Part::Up) => hf("mlp.up_proj"),
        (Naming::HuggingFace, Part::Down) => hf("mlp.down_proj"),
    }
}

struct Loader<'a> {
    src: &'a dyn TensorSource,
    naming: Naming,
    config: &'a LlamaConfig,
}

impl Loader<'_> {
    fn read(&self, part: Part, layer: usize, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let name = name_of(self.naming, part, layer);
        let found = self
            .src
            .shape(&name)
            .ok_or_else(|| LoadError::Missing { name: name.clone() })?;
        if found != expected {
            return Err(LoadError::Shape {
                name,
                expected: expected.to_vec(),
                found,
            });
        }
        self.src.read_f32(&name)
    }

    /// A linear weight `[out, in]` from the checkpoint.
    fn linear(
        &self,
        part: Part,
        layer: usize,
        out: usize,
        inp: usize,
    ) -> Result<Vec<f32>, LoadError> {
        let mut w = self.read(part, layer, &[out, inp])?;
        if self.naming == Naming::Gguf && matches!(part, Part::Q | Part::K) {
            let heads = if part == Part::Q {
                self.config.num_heads
            } else {
                self.config.num_kv_heads
            };
            w = unpermute_rope_rows(&w, heads, self.config.head_dim, inp);
        }
        Ok(w)
    }
}

/// llama.cpp's converter stores each head's rows as interleaved pairs (0, hd/2, 1, hd/2+1,
/// ...); this restores the halves layout: row `half * hd/2 + i` comes from row `2 i + half`.
fn unpermute_rope_rows(w: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..hd / 2 {
                let dst = h * hd + half * hd / 2 + i;
                let src = h * hd + 2 * i + half;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Transposes row-major `[rows, cols]` matrices and places them side by side:
/// the result is `[cols, sum of rows]`, ready for `x.matmul(w)`.
fn fuse_transposed(parts: &[(&[f32], usize)], cols: usize) -> (Vec<f32>, usize) {
    let total: usize = parts.iter().map(|(_, r)| r).sum();
    let mut out = vec![0f32; cols * total];
    let mut offset = 0;
    for (w, rows) in parts {
        for r in 0..*rows {
            for c in 0..cols {
                out[c * total + offset + r] = w[r * cols + c];
            }
        }
        offset += rows;
    }
    (out, total)
}

fn param2(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
}

fn param1(data: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

impl Llama {
    /// Builds the model from a checkpoint. Every tensor is shape-checked; a missing or
    /// mismatched one is an error naming it and both shapes.
    pub fn load(
        config: &LlamaConfig,
        src: &dyn TensorSource,
        naming: Naming,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let c = config;
        let ld = Loader {
            src,
            naming,
            config,
        };
        let (hid, hd) = (c.hidden_size, c.head_dim);
        let (q_rows, kv_rows) = (c.num_heads * hd, c.num_kv_heads * hd);
        let embed = ld.read(Part::Embed, 0, &[c.vocab_size, hid])?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let q = ld.linear(Part::Q, l, q_rows, hid)?;
            let k = ld.linear(Part::K, l, kv_rows, hid)?;
            let v = ld.linear(Part::V, l, kv_rows, hid)?;
            let (wqkv, n) = fuse_transposed(&[(&q, q_rows), (&k, kv_rows), (&v, kv_rows)], hid);
            let o = ld.linear(Part::O, l, hid, q_rows)?;
            let (wo, _) = fuse_transposed(&[(&o, hid)], q_rows);
            let ffn = c.intermediate_size;
            let gate = ld.linear(Part::Gate, l, ffn, hid)?;
            let up = ld.linear(Part::Up, l, ffn, hid)?;
            let (w_gate_up, _) = fuse_transposed(&[(&gate, ffn), (&up, ffn)], hid);
            let down = ld.linear(Part::Down, l, hid, ffn)?;
            let (w_down, _) = fuse_transposed(&[(&down, hid)], ffn);
            blocks.push(Block {
                attn_norm: param1(ld.read(Part::AttnNorm, l, &[hid])?, device),
                attn: Attention {
                    wqkv: Weight::plain(wqkv, [hid, n], device),
                    wo: Weight::plain(wo, [q_rows, hid], device),
                },
                ffn_norm: param1(ld.read(Part::FfnNorm, l, &[hid])?, device),
                ffn: FeedForward {
                    w_gate_up: Weight::plain(w_gate_up, [hid, 2 * ffn], device),
                    w_down: Weight::plain(w_down, [ffn, hid], device),
                },
            });
        }
        let out_name = name_of(naming, Part::Output, 0);
        let lm_head = if c.tie_embeddings || src.shape(&out_name).is_none() {
            None
        } else {
            let w = ld.read(Part::Output, 0, &[c.vocab_size, hid])?;
            let (w, _) = fuse_transposed(&[(&w, c.vocab_size)], hid);
            Some(Weight::plain(w, [hid, c.vocab_size], device))
        };
        if lm_head.is_none() && !c.tie_embeddings {
            return Err(LoadError::Missing { name: out_name });
        }
        Ok(Self {
            embed: param2(embed, [c.vocab_size, hid], device),
            blocks,
            norm: param1(ld.read(Part::OutNorm, 0, &[hid])?, device),
            lm_head,
            inv_freq: c.rope_inv_freq(),
            config: c.clone(),
            reference_ops: false,
        }
        .packed_for_device())
    }
}

/// An in-memory checkpoint, for tests and for writers of other formats.
#[derive(Default)]
pub struct MemorySource {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorSource for MemorySource {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|(s, _)| s.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, LoadError> {
        self.tensors
            .get(name)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| LoadError::Missing { name: name.into() })
    }
}

#[cfg(test)]
pub(crate) fn unpermute_rope_rows_for_test(
    w: &[f32],
    heads: usize,
    hd: usize,
    cols: usize,
) -> Vec<f32> {
    unpermute_rope_rows(w, heads, hd, cols)
}
