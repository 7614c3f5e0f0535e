//! The decoder written with plain burn tensor ops: the path every device can run (burn-cuda,
//! autodiff for training) and the reference the fused CPU kernels are tested against.
//! Rotary tables and an additive mask are built per step; each slot's causal extent comes
//! from its length in the cache.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Block, FeedForward, KvCache, Llama};

/// See `Llama::blocks_forward`: blocks `0..upto`, the residual stream after them (no final
/// norm). Runs every slot of the cache (unlisted ones on a throwaway token, their lengths
/// left unchanged) and returns the rows of the listed slots.
pub(super) fn forward(
    model: &Llama,
    tokens: &[u32],
    t: usize,
    cache: &mut KvCache,
    slots: &[usize],
    layers: usize,
) -> Tensor<2> {
    let b = cache.slots();
    let device = model.device();
    let mut all = vec![0u32; b * t];
    for (j, &s) in slots.iter().enumerate() {
        all[s * t..(s + 1) * t].copy_from_slice(&tokens[j * t..(j + 1) * t]);
    }
    let mut x = model.embed_tokens(&all); // [b*t, hidden]
    let lens: Vec<usize> = (0..b).map(|s| cache.len(s)).collect();
    let positions: Vec<usize> = lens
        .iter()
        .flat_map(|&len| (0..t).map(move |i| len + i))
        .collect();
    let (cos, sin) = rope_tables(&model.inv_freq, &positions, b, t, &device);
    let upto = lens.iter().copied().max().unwrap_or(0) + t;
    let bias = attention_bias(cache, t, upto, &device);
    let eps = model.config.rms_norm_eps;
    for (layer, block) in model.blocks.iter().enumerate().take(layers) {
        let h = rms_norm(x.clone(), &block.attn_norm.val(), eps);
        let h = attention(model, h, block, layer, cache, t, (&cos, &sin), &bias, upto);
        x = x + h;
        let h = rms_norm(x.clone(), &block.ffn_norm.val(), eps);
        x = x + feed_forward(h, &block.ffn, model.config.intermediate_size);
    }
    cache.advance_slots(slots, t);
    if slots.len() == b && slots.iter().enumerate().all(|(j, &s)| j == s) {
        return x;
    }
    let rows: Vec<i64> = slots
        .iter()
        .flat_map(|&s| (s * t..(s + 1) * t).map(|r| r as i64))
        .collect();
    let n = rows.len();
    x.select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device),
    )
}

/// Blocks `start..` over the residual stream `x` of one sequence at positions 0.., on a
/// one-slot `cache` (no final norm).
pub(super) fn blocks_from(
    model: &Llama,
    mut x: Tensor<2>,
    start: usize,
    cache: &mut KvCache,
) -> Tensor<2> {
    let t = x.dims()[0];
    let device = model.device();
    let positions: Vec<usize> = (0..t).collect();
    let (cos, sin) = rope_tables(&model.inv_freq, &positions, 1, t, &device);
    let bias = attention_bias(cache, t, t, &device);
    let eps = model.config.rms_norm_eps;
    for (layer, block) in model.blocks.iter().enumerate().skip(start) {
        let h = rms_norm(x.clone(), &block.attn_norm.val(), eps);
        let h = attention(model, h, block, layer, cache, t, (&cos, &sin), &bias, t);
        x = x + h;
        let h = rms_norm(x.clone(), &block.ffn_norm.val(), eps);
        x = x + feed_forward(h, &block.ffn, model.config.intermediate_size);
    }
    cache.advance_slots(&[0], t);
    x
}

/// Cosine and sine tables `[b, 1, t, head_dim / 2]` for the given positions.
pub(crate) fn rope_tables(
    inv_freq: &[f64],
    positions: &[usize],
    b: usize,
    t: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for &f in inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let shape = [b, 1, t, half];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

#[allow(clippy::too_many_arguments)]
fn attention(
    model: &Llama,
    x: Tensor<2>,
    block: &Block,
    layer: usize,
    cache: &mut KvCache,
    t: usize,
    rope: (&Tensor<4>, &Tensor<4>),
    bias: &Tensor<5>,
    upto: usize,
) -> Tensor<2> {
    let c = &model.config;
    let (b, hd, nh, nkv) = (cache.slots(), c.head_dim, c.num_heads, c.num_kv_heads);
    let qkv = block.attn.wqkv.apply(x); // [b*t, (nh + 2 nkv) * hd]
    let q = qkv.clone().narrow(1, 0, nh * hd);
    let k = qkv.clone().narrow(1, nh * hd, nkv * hd);
    let v = qkv.narrow(1, (nh + nkv) * hd, nkv * hd);
    // [b*t, heads*hd] -> [b, t, heads, hd] -> [b, heads, t, hd]
    let q = q.reshape([b, t, nh, hd]).swap_dims(1, 2);
    let k = k.reshape([b, t, nkv, hd]).swap_dims(1, 2);
    let v = v.reshape([b, t, nkv, hd]).swap_dims(1, 2);
    let q = apply_rope(q, rope.0, rope.1);
    let k = apply_rope(k, rope.0, rope.1);

    let (k_all, v_all) = cache.append(layer, k, v, upto); // [b, nkv, upto, hd]
    let g = nh / nkv;
    // Query heads of one KV head are adjacent: [b, nh, t, hd] -> [b, nkv, g*t, hd].
    let q = q.reshape([b, nkv, g * t, hd]);
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = q.matmul(k_all.swap_dims(2, 3)).mul_scalar(scale); // [b, nkv, g*t, upto]
    let scores = scores.reshape([b, nkv, g, t, upto]) + bias.clone();
    let probs = softmax(scores, 4).reshape([b, nkv, g * t, upto]);
    let out = probs.matmul(v_all); // [b, nkv, g*t, hd]
                                   // [b, nh, t, hd] -> [b, t, nh, hd] -> [b*t, nh*hd]
    let out = out
        .reshape([b, nh, t, hd])
        .swap_dims(1, 2)
        .reshape([b * t, nh * hd]);
    block.attn.wo.apply(out)
}

/// `x / rms(x) * weight` over the last dimension of `[rows, hidden]`.
pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let ms = (x.clone() * x.clone()).mean_dim(1); // [rows, 1]
    let inv = ms.add_scalar(eps).sqrt().recip();
    x * inv * weight.clone().unsqueeze_dim::<2>(0)
}

fn feed_forward(x: Tensor<2>, ffn: &FeedForward, inner: usize) -> Tensor<2> {
    let gate_up = ffn.w_gate_up.apply(x); // [rows, 2 * inner]
    let gate = gate_up.clone().narrow(1, 0, inner);
    let up = gate_up.narrow(1, inner, inner);
    ffn.w_down.apply(silu(gate) * up)
}

/// Rotates `[b, heads, t, hd]` by the tables `[b, 1, t, hd / 2]`, pairing dimension `i`
/// with `i + hd / 2` (the Hugging Face layout).
pub(crate) fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos.clone() + x1 * sin.clone();
    Tensor::cat(vec![r1, r2], 3)
}

/// Additive mask `[b, 1, 1, t, upto]`: key `j` is visible to new token `i` of slot `s`
/// when `j <= len(s) + i`; everything else (other slots' padding, the future) is -inf.
fn attention_bias(cache: &KvCache, t: usize, upto: usize, device: &Device) -> Tensor<5> {
    let b = cache.slots();
    let mut data = vec![0f32; b * t * upto];
    for s in 0..b {
        let len = cache.len(s);
        for i in 0..t {
            let row = &mut data[(s * t + i) * upto..(s * t + i + 1) * upto];
            for (j, v) in row.iter_mut().enumerate() {
                if j > len + i {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, 1, t, upto]), device)
}
