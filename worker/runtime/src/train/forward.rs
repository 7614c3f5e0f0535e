//! The decoder's forward pass for training: whole sequences at once (no KV cache), causal
//! attention, the LoRA branches added to their projections, and the log-probabilities of
//! chosen target tokens only (the answer's), so the vocabulary-wide logits are computed
//! for those rows alone. Runs on any device; on an autodiff device gradients flow into the
//! adapter (the base model is frozen with `no_grad`).

use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::kernels::causal::{self, CausalShape};
use crate::kernels::pointwise;
use crate::model::reference::{apply_rope, rms_norm, rope_tables};
use crate::model::{KvCache, Llama, Weight};

use super::lora::{LoraTensors, Proj};

/// A padded batch: `b` sequences of `t` tokens (row-major), each of its true length.
pub struct Batch {
    pub tokens: Vec<u32>,
    pub b: usize,
    pub t: usize,
    /// Each sequence's true length (rows `seq * t + lens[seq] ..` are padding).
    pub lens: Vec<usize>,
    /// Rows (`seq * t + position`) whose next token is scored over the whole vocabulary,
    /// that token, and the row's loss weight.
    pub rows: Vec<usize>,
    pub targets: Vec<u32>,
    pub weights: Vec<f32>,
    /// Rows whose next token is a choice among a few candidates (the language and the
    /// label of the answer schema): scored over the candidates only, as decoding chooses.
    pub choices: Vec<ChoiceRow>,
    /// With a frozen prefix: the residual stream entering block `start`, `[b * t, hidden]`
    /// row-major (padding rows zero); the blocks below are not run.
    pub prefix: Option<(usize, Vec<f32>)>,
}

/// One choice row of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceRow {
    pub row: usize,
    /// The candidate token ids; `target` indexes them.
    pub candidates: Vec<u32>,
    pub target: usize,
    pub weight: f32,
    /// Which sequence of the batch the row belongs to.
    pub seq: usize,
    /// The label choice (candidates benign, malicious), where a label head applies.
    pub is_label: bool,
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

/// An inverted-dropout mask `[rows, cols]` (kept entries scaled by 1 / (1 - p)), the same
/// on every device for a seed and salt. Each entry is kept when 32 bits of a counter-based
/// hash (SplitMix64's finaliser over seed, salt and the entry's index; one hash gives two
/// entries) fall below `(1 - p) · 2^32`: one multiply-xorshift chain per two entries, where
/// a sampled Bernoulli tensor cost a seeded ChaCha stream and a float per entry.
fn dropout_mask(
    d: Option<Dropout>,
    salt: u64,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    let d = d.filter(|d| d.p > 0.0)?;
    let key = mix(d.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ mix(salt));
    let threshold = ((1.0 - f64::from(d.p)) * 4_294_967_296.0) as u64;
    let kept = 1.0 / (1.0 - d.p);
    let mut mask = vec![0f32; rows * cols];
    mask.par_chunks_mut(1 << 14)
        .enumerate()
        .for_each(|(chunk, out)| {
            let first = (chunk << 13) as u64;
            for (n, pair) in out.chunks_mut(2).enumerate() {
                let bits = mix(key ^ (first + n as u64));
                for (half, m) in pair.iter_mut().enumerate() {
                    let draw = (bits >> (32 * half)) & 0xFFFF_FFFF;
                    *m = if draw < threshold { kept } else { 0.0 };
                }
            }
        });
    Some(Tensor::from_data(
        TensorData::new(mask, [rows, cols]),
        device,
    ))
}

/// SplitMix64's finaliser: a bijection of `u64` whose outputs pass as independent uniform
/// bits for consecutive inputs.
fn mix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Causal attention in burn tensor ops: the reference, and the path of every device but
/// the autodiff one over flex (`kernels::causal` there).
struct ReferenceAttention {
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// `[1, 1, 1, t, t]`: 0 where a query sees the key, -inf above the diagonal.
    causal: Tensor<5>,
}

impl ReferenceAttention {
    fn new(shape: &CausalShape, device: &Device) -> Self {
        let (b, t) = (shape.b, shape.t);
        let positions: Vec<usize> = (0..b).flat_map(|_| 0..t).collect();
        let (cos, sin) = rope_tables(&shape.inv_freq, &positions, b, t, device);
        let mut causal = vec![0f32; t * t];
        for i in 0..t {
            for j in i + 1..t {
                causal[i * t + j] = f32::NEG_INFINITY;
            }
        }
        let causal = Tensor::<5>::from_data(TensorData::new(causal, [1, 1, 1, t, t]), device);
        Self { cos, sin, causal }
    }

    /// `qkv` rows `[b * t, (heads + 2 kv_heads) * hd]` → `[b * t, heads * hd]`.
    fn attend(&self, qkv: Tensor<2>, shape: &CausalShape) -> Tensor<2> {
        let (b, t, hd) = (shape.b, shape.t, shape.head_dim);
        let (nh, nkv) = (shape.heads, shape.kv_heads);
        let (g, q_w, kv_w) = (nh / nkv, nh * hd, nkv * hd);
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
        let q = apply_rope(q, &self.cos, &self.sin).reshape([b, nkv, g * t, hd]);
        let k = apply_rope(k, &self.cos, &self.sin);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (hd as f64).sqrt())
            .reshape([b, nkv, g, t, t])
            + self.causal.clone();
        let probs = softmax(scores, 4).reshape([b, nkv, g * t, t]);
        probs
            .matmul(v)
            .reshape([b, nh, t, hd])
            .swap_dims(1, 2)
            .reshape([b * t, q_w])
    }
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
    let (start, mut x) = match &batch.prefix {
        Some((start, states)) => (
            *start,
            Tensor::<2>::from_data(
                TensorData::new(states.clone(), [b * t, c.hidden_size]),
                &device,
            ),
        ),
        None => (0, model.embed_tokens(&batch.tokens)),
    };
    let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
    // A base frozen for training on the packed kernels also takes the fused attention.
    let fused = model
        .blocks
        .get(start)
        .is_some_and(|blk| matches!(blk.attn.wqkv, Weight::Frozen(_)))
        && causal::native_device(&device);
    let shape = CausalShape {
        b,
        t,
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
        inv_freq: model.inv_freq.clone(),
    };
    let reference = (!fused).then(|| ReferenceAttention::new(&shape, &device));
    let eps = c.rms_norm_eps;
    let norm = |x: Tensor<2>, weight: &Tensor<1>| match fused {
        true => pointwise::rms_norm(x, weight.clone(), eps),
        false => rms_norm(x, weight, eps),
    };
    let q_w = nh * hd;
    let ffn = c.intermediate_size;
    let rows = b * t;
    for (layer, block) in model.blocks.iter().enumerate().skip(start) {
        let lora_l = lora.map(|l| (l, layer));
        let salt = (layer as u64) << 8;
        let h = norm(x.clone(), &block.attn_norm.val());
        let mask = dropout_mask(dropout, salt, rows, c.hidden_size, &device);
        let kv_w = nkv * hd;
        let qkv = project(
            &block.attn.wqkv,
            h,
            lora_l,
            &[Proj::Q, Proj::K, Proj::V],
            &[q_w, kv_w, kv_w],
            mask,
        );
        let out = match &reference {
            Some(r) => r.attend(qkv, &shape),
            None => causal::causal_attention(qkv, shape.clone()),
        };
        let mask = dropout_mask(dropout, salt | 1, rows, q_w, &device);
        x = x + project(
            &block.attn.wo,
            out,
            lora_l,
            &[Proj::O],
            &[c.hidden_size],
            mask,
        );
        let h = norm(x.clone(), &block.ffn_norm.val());
        let mask = dropout_mask(dropout, salt | 2, rows, c.hidden_size, &device);
        let gate_up = project(
            &block.ffn.w_gate_up,
            h,
            lora_l,
            &[Proj::Gate, Proj::Up],
            &[ffn, ffn],
            mask,
        );
        let act = match fused {
            true => pointwise::swiglu(gate_up),
            false => silu(gate_up.clone().narrow(1, 0, ffn)) * gate_up.narrow(1, ffn, ffn),
        };
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
    norm(x, &model.norm.val())
}

/// [`hidden_states`] on the fused inference path, for forward-only passes: `model` is an
/// inference model (flex, packed) with the adapter's blocks merged into its weights
/// (`label_eval::merged`), so no adapter branch and no graph. Each sequence runs alone at
/// its true length from the batch's frozen-prefix states when it has them; padding rows
/// are zero.
pub fn hidden_states_merged(model: &Llama, batch: &Batch) -> Tensor<2> {
    let (t, width) = (batch.t, model.config.hidden_size);
    let device = model.device();
    let seqs: Vec<Tensor<2>> = batch
        .lens
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let h = match &batch.prefix {
                Some((start, states)) => {
                    let rows = states[s * t * width..(s * t + n) * width].to_vec();
                    let x = Tensor::<2>::from_data(TensorData::new(rows, [n, width]), &device);
                    model.forward_from(x, *start)
                }
                None => {
                    let mut cache = KvCache::new(&model.config, 1, n, &device);
                    model.forward(&batch.tokens[s * t..s * t + n], n, &mut cache)
                }
            };
            if n == t {
                h
            } else {
                Tensor::cat(vec![h, Tensor::zeros([t - n, width], &device)], 0)
            }
        })
        .collect();
    Tensor::cat(seqs, 0)
}

/// Log-probabilities `[rows.len()]` of the batch's vocabulary-wide targets.
pub fn target_log_probs(
    model: &Llama,
    batch: &Batch,
    lora: Option<&LoraTensors>,
    dropout: Option<Dropout>,
) -> Tensor<1> {
    let hidden = hidden_states(model, batch, lora, dropout);
    vocab_log_probs(model, &hidden, batch)
}

fn index_tensor(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let n = v.len();
    Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
}

fn vocab_log_probs(model: &Llama, hidden: &Tensor<2>, batch: &Batch) -> Tensor<1> {
    let device = hidden.device();
    let n = batch.rows.len();
    let picked = hidden.clone().select(0, index_tensor(&batch.rows, &device));
    let logp = log_softmax(model.logits(picked), 1); // [n, vocab]
    let targets: Vec<i64> = batch.targets.iter().map(|&t| i64::from(t)).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    logp.gather(1, idx).reshape([n])
}

/// What one forward pass scores.
pub struct Scored {
    /// Log-probabilities of the vocabulary-wide targets, `[rows]`.
    pub vocab: Option<Tensor<1>>,
    /// Per choice row (in `Batch::choices` order): log-probabilities over its candidates.
    pub choices: Vec<Tensor<1>>,
}

impl Scored {
    /// The weighted negative log-likelihood summed over the batch (divide by the step's
    /// total weight for the weighted mean).
    pub fn weighted_nll(&self, batch: &Batch) -> Option<Tensor<1>> {
        let device = self
            .choices
            .first()
            .map(|c| c.device())
            .or_else(|| self.vocab.as_ref().map(|v| v.device()))?;
        let mut total: Option<Tensor<1>> = None;
        let mut add = |t: Tensor<1>| {
            total = Some(match total.take() {
                Some(acc) => acc + t,
                None => t,
            })
        };
        if let Some(v) = &self.vocab {
            let n = batch.weights.len();
            let w = Tensor::<1>::from_data(TensorData::new(batch.weights.clone(), [n]), &device);
            add((v.clone() * w).sum().neg());
        }
        for (c, row) in self.choices.iter().zip(&batch.choices) {
            if row.weight != 0.0 {
                add(c.clone().narrow(0, row.target, 1).mul_scalar(-row.weight));
            }
        }
        total
    }
}

/// The label head's shift of the malicious logit for hidden states `h` `[m, hidden]`:
/// `h · w + b` with `head = [w, b]`, `[m]`.
pub fn label_head_logit(h: Tensor<2>, head: Tensor<1>) -> Tensor<1> {
    let [m, hidden] = h.dims();
    let w = head.clone().narrow(0, 0, hidden).reshape([hidden, 1]);
    let b = head.narrow(0, hidden, 1);
    h.matmul(w).reshape([m]) + b
}

/// The language head's shifts of the five language logits for hidden states `h`
/// `[m, hidden]`: `h · w_l + b_l` with `head` `[5, hidden + 1]`, `[m, 5]`.
pub fn language_head_logits(h: Tensor<2>, head: Tensor<2>) -> Tensor<2> {
    let [m, hidden] = h.dims();
    let w = head.clone().narrow(1, 0, hidden).transpose(); // [hidden, 5]
    let b = head.narrow(1, hidden, 1).reshape([1, 5]);
    h.matmul(w) + b.expand([m, 5])
}

/// Scores a batch: vocabulary-wide targets, and each choice row over its candidates (the
/// label's with the label head's shift, when the adapter has one).
pub fn score(
    model: &Llama,
    batch: &Batch,
    lora: Option<&LoraTensors>,
    dropout: Option<Dropout>,
) -> Scored {
    score_hidden(
        model,
        hidden_states(model, batch, lora, dropout),
        batch,
        lora,
    )
}

/// [`score`] from the batch's final hidden states (from [`hidden_states`] or
/// [`hidden_states_merged`]); `lora` contributes its heads only.
pub fn score_hidden(
    model: &Llama,
    hidden: Tensor<2>,
    batch: &Batch,
    lora: Option<&LoraTensors>,
) -> Scored {
    let vocab = (!batch.rows.is_empty()).then(|| vocab_log_probs(model, &hidden, batch));
    let device = hidden.device();
    let mut choices = Vec::with_capacity(batch.choices.len());
    if !batch.choices.is_empty() {
        let rows: Vec<usize> = batch.choices.iter().map(|c| c.row).collect();
        let h = hidden.select(0, index_tensor(&rows, &device)); // [m, hidden]
        let head = lora
            .and_then(|l| l.label_head.clone())
            .map(|w| label_head_logit(h.clone(), w));
        let lang_head = lora
            .and_then(|l| l.language_head.clone())
            .map(|w| language_head_logits(h.clone(), w)); // [m, 5]
        let logits = model.logits(h); // [m, vocab]
        for (i, c) in batch.choices.iter().enumerate() {
            let cand: Vec<usize> = c.candidates.iter().map(|&x| x as usize).collect();
            let row = logits.clone().narrow(0, i, 1).reshape([logits.dims()[1]]);
            let mut picked = row.select(0, index_tensor(&cand, &device));
            if let (Some(d), true, 2) = (&head, c.is_label, cand.len()) {
                let shift = Tensor::cat(
                    vec![Tensor::zeros([1], &device), d.clone().narrow(0, i, 1)],
                    0,
                );
                picked = picked + shift;
            }
            if let (Some(d), false, 5) = (&lang_head, c.is_label, cand.len()) {
                picked = picked + d.clone().narrow(0, i, 1).reshape([5]);
            }
            choices.push(log_softmax(picked.reshape([1, cand.len()]), 1).reshape([cand.len()]));
        }
    }
    Scored { vocab, choices }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    fn to_vec(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn dropout_masks_keep_one_minus_p_scaled_and_differ_by_salt_and_seed() {
        let device = Device::flex();
        let mask = |p: f32, seed: u64, salt: u64| {
            let d = Some(Dropout { p, seed });
            to_vec(dropout_mask(d, salt, 301, 257, &device).expect("a mask"))
        };
        let m = mask(0.1, 3, 7);
        assert_eq!(m.len(), 301 * 257);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / m.len() as f64;
        // 77,357 draws: the kept share is within 4 standard deviations (0.0043) of 0.9.
        assert!((kept - 0.9).abs() < 0.0043, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Both halves of each hash are used: odd and even entries alike.
        for parity in 0..2 {
            let half: Vec<f32> = m.iter().skip(parity).step_by(2).copied().collect();
            let kept = half.iter().filter(|&&v| v != 0.0).count() as f64 / half.len() as f64;
            assert!((kept - 0.9).abs() < 0.0061, "parity {parity}: kept {kept}");
        }
        assert_eq!(m, mask(0.1, 3, 7), "reproducible");
        for other in [mask(0.1, 4, 7), mask(0.1, 3, 8)] {
            let same = m.iter().zip(&other).filter(|(a, b)| a == b).count() as f64;
            // Independent masks agree on about 0.82 of the entries (0.9^2 + 0.1^2).
            assert!((same / m.len() as f64 - 0.82).abs() < 0.01, "{same}");
        }
        let half = mask(0.5, 3, 7);
        let kept = half.iter().filter(|&&v| v != 0.0).count() as f64 / half.len() as f64;
        assert!((kept - 0.5).abs() < 0.0072, "kept {kept}");
        assert!(dropout_mask(Some(Dropout { p: 0.0, seed: 1 }), 0, 2, 2, &device).is_none());
        assert!(dropout_mask(None, 0, 2, 2, &device).is_none());
    }

    #[test]
    fn the_fused_attention_gives_the_reference_s_output_and_input_gradient() {
        let device = Device::flex().autodiff();
        assert!(causal::native_device(&device));
        // Ragged lengths around the kernel's 32-row tasks, grouped and plain heads.
        for &(b, t, heads, kv_heads, head_dim) in
            &[(2, 13, 4, 2, 8), (1, 70, 3, 1, 6), (3, 33, 2, 2, 4)]
        {
            let shape = CausalShape {
                b,
                t,
                heads,
                kv_heads,
                head_dim,
                inv_freq: (0..head_dim / 2)
                    .map(|i| 10_000f64.powf(-2.0 * i as f64 / head_dim as f64))
                    .collect(),
            };
            let width = (heads + 2 * kv_heads) * head_dim;
            let qkv =
                Tensor::<2>::random([b * t, width], Distribution::Uniform(-2.0, 2.0), &device);
            let weigh = Tensor::<2>::random(
                [b * t, heads * head_dim],
                Distribution::Uniform(-1.0, 1.0),
                &device,
            );
            let run = |fused: bool| {
                let x = qkv.clone().require_grad();
                let out = match fused {
                    true => causal::causal_attention(x.clone(), shape.clone()),
                    false => ReferenceAttention::new(&shape, &device).attend(x.clone(), &shape),
                };
                let grads = (out.clone() * weigh.clone()).sum().backward();
                (
                    to_vec(out),
                    to_vec(x.grad(&grads).expect("qkv has a gradient")),
                )
            };
            let (out_ref, grad_ref) = run(false);
            let (out, grad) = run(true);
            assert_eq!((out.len(), grad.len()), (out_ref.len(), grad_ref.len()));
            for (a, r) in out.iter().zip(&out_ref).chain(grad.iter().zip(&grad_ref)) {
                assert!(
                    (a - r).abs() <= 1e-4 * r.abs().max(1.0),
                    "{b}x{t}x{heads}/{kv_heads}: {a} vs {r}"
                );
            }
            // Queries, keys and values all receive a gradient.
            let row = &grad[(b * t - 1) * width..];
            for part in row
                .chunks(heads * head_dim)
                .take(1)
                .chain(row[heads * head_dim..].chunks(kv_heads * head_dim))
            {
                assert!(part.iter().any(|g| g.abs() > 1e-4), "{part:?}");
            }
            // Untracked, the forward alone.
            let plain = causal::causal_attention(qkv.clone(), shape.clone());
            assert_eq!(to_vec(plain), out);
        }
    }
}
