//! The decoder's forward pass for training: whole sequences at once (no KV cache), causal
//! attention, the LoRA branches added to their projections, and the log-probabilities of
//! chosen target tokens only (the answer's), so the vocabulary-wide logits are computed
//! for those rows alone. Runs on any device; on an autodiff device gradients flow into the
//! adapter (the base model is frozen with `no_grad`).

use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::model::reference::{apply_rope, rms_norm, rope_tables};
use crate::model::{Llama, Weight};

use super::lora::{LoraTensors, Proj};

/// A padded batch: `b` sequences of `t` tokens (row-major), each of its true length.
pub struct Batch {
    pub tokens: Vec<u32>,
    pub b: usize,
    pub t: usize,
    /// Rows (`seq * t + position`) whose next token is scored, and that token.
    pub rows: Vec<usize>,
    pub targets: Vec<u32>,
}

/// LoRA dropout for one forward pass: the probability and a seed for its masks.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

/// `x · W` plus the adapters of the projections `W` holds (their deltas side by side).
fn project(
    w: &Weight,
    x: Tensor<2>,
    lora: Option<(&LoraTensors, usize)>,
    projs: &[Proj],
    widths: &[usize],
    mask: Option<Tensor<2>>,
) -> Tensor<2> {
    let base = w.apply(x.clone());
    let Some((l, layer)) = lora else {
        return base;
    };
    let pairs = &l.layers[layer];
    if !projs.iter().any(|p| pairs.iter().any(|(q, _, _)| q == p)) {
        return base;
    }
    let rows = x.dims()[0];
    let xin = match mask {
        Some(m) => x * m,
        None => x,
    };
    let device = xin.device();
    let deltas: Vec<Tensor<2>> = projs
        .iter()
        .zip(widths)
        .map(|(p, &width)| match pairs.iter().find(|(q, _, _)| q == p) {
            Some((_, a, b)) => xin.clone().matmul(a.clone()).matmul(b.clone()),
            None => Tensor::zeros([rows, width], &device),
        })
        .collect();
    let delta = if deltas.len() == 1 {
        deltas.into_iter().next().expect("one delta")
    } else {
        Tensor::cat(deltas, 1)
    };
    base + delta.mul_scalar(l.scale)
}

/// An inverted-dropout mask `[rows, cols]` (kept entries scaled by 1 / (1 - p)).
fn dropout_mask(
    d: Option<Dropout>,
    salt: u64,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    let d = d.filter(|d| d.p > 0.0)?;
    device.seed(d.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt);
    let keep = Tensor::<2>::random(
        [rows, cols],
        Distribution::Bernoulli(1.0 - d.p as f64),
        device,
    );
    Some(keep.mul_scalar(1.0 / (1.0 - d.p)))
}

/// Final hidden states `[b * t, hidden]` of a batch.
pub fn hidden_states(
    model: &Llama,
    batch: &Batch,
    lora: Option<&LoraTensors>,
    dropout: Option<Dropout>,
) -> Tensor<2> {
    let c = &model.config;
    let (b, t) = (batch.b, batch.t);
    let device = model.device();
    let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
    let g = nh / nkv;
    let positions: Vec<usize> = (0..b).flat_map(|_| 0..t).collect();
    let (cos, sin) = rope_tables(model, &positions, b, t, &device);
    let mut causal = vec![0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            causal[i * t + j] = f32::NEG_INFINITY;
        }
    }
    let causal = Tensor::<5>::from_data(TensorData::new(causal, [1, 1, 1, t, t]), &device);
    let (q_w, kv_w) = (nh * hd, nkv * hd);
    let ffn = c.intermediate_size;
    let eps = c.rms_norm_eps;
    let rows = b * t;
    let mut x = model.embed_tokens(&batch.tokens);
    for (layer, block) in model.blocks.iter().enumerate() {
        let lora_l = lora.map(|l| (l, layer));
        let salt = (layer as u64) << 8;
        let h = rms_norm(x.clone(), &block.attn_norm.val(), eps);
        let mask = dropout_mask(dropout, salt, rows, c.hidden_size, &device);
        let qkv = project(
            &block.attn.wqkv,
            h,
            lora_l,
            &[Proj::Q, Proj::K, Proj::V],
            &[q_w, kv_w, kv_w],
            mask,
        );
        let q = qkv
            .clone()
            .narrow(1, 0, q_w)
            .reshape([b, t, nh, hd])
            .swap_dims(1, 2);
        let k = qkv
            .clone()
            .narrow(1, q_w, kv_w)
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        let v = qkv
            .narrow(1, q_w + kv_w, kv_w)
            .reshape([b, t, nkv, hd])
            .swap_dims(1, 2);
        let q = apply_rope(q, &cos, &sin).reshape([b, nkv, g * t, hd]);
        let k = apply_rope(k, &cos, &sin);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (hd as f64).sqrt())
            .reshape([b, nkv, g, t, t])
            + causal.clone();
        let probs = softmax(scores, 4).reshape([b, nkv, g * t, t]);
        let out = probs
            .matmul(v)
            .reshape([b, nh, t, hd])
            .swap_dims(1, 2)
            .reshape([rows, q_w]);
        let mask = dropout_mask(dropout, salt | 1, rows, q_w, &device);
        x = x + project(
            &block.attn.wo,
            out,
            lora_l,
            &[Proj::O],
            &[c.hidden_size],
            mask,
        );
        let h = rms_norm(x.clone(), &block.ffn_norm.val(), eps);
        let mask = dropout_mask(dropout, salt | 2, rows, c.hidden_size, &device);
        let gate_up = project(
            &block.ffn.w_gate_up,
            h,
            lora_l,
            &[Proj::Gate, Proj::Up],
            &[ffn, ffn],
            mask,
        );
        let act = silu(gate_up.clone().narrow(1, 0, ffn)) * gate_up.narrow(1, ffn, ffn);
        let mask = dropout_mask(dropout, salt | 3, rows, ffn, &device);
        x = x + project(
            &block.ffn.w_down,
            act,
            lora_l,
            &[Proj::Down],
            &[c.hidden_size],
            mask,
        );
    }
    rms_norm(x, &model.norm.val(), eps)
}

/// Log-probabilities `[rows.len()]` of the batch's targets.
pub fn target_log_probs(
    model: &Llama,
    batch: &Batch,
    lora: Option<&LoraTensors>,
    dropout: Option<Dropout>,
) -> Tensor<1> {
    let device = model.device();
    let hidden = hidden_states(model, batch, lora, dropout);
    let n = batch.rows.len();
    let rows: Vec<i64> = batch.rows.iter().map(|&r| r as i64).collect();
    let picked = hidden.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device),
    );
    let logp = log_softmax(model.logits(picked), 1); // [n, vocab]
    let targets: Vec<i64> = batch.targets.iter().map(|&t| i64::from(t)).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    logp.gather(1, idx).reshape([n])
}
