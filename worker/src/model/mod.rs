//! The Llama-family decoder (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU)
//! written on burn tensors. The KV cache lives outside the model (`KvCache`) so generation
//! code decides how slots are filled and reused; the model only appends to it.

pub mod cache;
pub mod config;
pub mod load;
pub mod weight;

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

pub use cache::KvCache;
pub use config::{LlamaConfig, RopeScaling};
pub use weight::Weight;

/// Weights of one attention block. Q, K and V are fused into one `[hidden, q+k+v]` matrix
/// so a step does one matmul instead of three; rows use the Hugging Face rotary layout
/// (halves, not interleaved pairs).
#[derive(Module, Debug)]
pub struct Attention {
    pub wqkv: Weight,
    pub wo: Weight,
}

/// SwiGLU feed-forward with gate and up fused into one `[hidden, 2 * ffn]` matrix.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub w_gate_up: Weight,
    pub w_down: Weight,
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: Param<Tensor<1>>,
    pub attn: Attention,
    pub ffn_norm: Param<Tensor<1>>,
    pub ffn: FeedForward,
}

#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, hidden]`; also the output projection when embeddings are tied.
    pub embed: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    pub norm: Param<Tensor<1>>,
    /// `[hidden, vocab]` when the checkpoint has its own output matrix; with tied
    /// embeddings, a packed copy of the embedding's transpose once the model is packed.
    pub lm_head: Option<Weight>,
    #[module(skip)]
    pub config: LlamaConfig,
    /// Inverse rotary frequencies, `head_dim / 2` of them.
    #[module(skip)]
    pub inv_freq: Vec<f64>,
    /// Forces the reference path (plain tensor ops) even where the fused CPU kernels could
    /// run; tests compare the two.
    #[module(skip)]
    pub reference_ops: bool,
}

impl Llama {
    /// A model with deterministic random weights, for tests and benchmarks of shapes.
    pub fn random(config: &LlamaConfig, seed: u64, device: &Device) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut mat = |rows: usize, cols: usize| {
            let scale = 1.0 / (rows as f32).sqrt();
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
                .collect();
            Param::from_tensor(Tensor::from_data(
                TensorData::new(data, [rows, cols]),
                device,
            ))
        };
        let c = config;
        let qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        let embed = mat(c.vocab_size, c.hidden_size);
        let blocks = (0..c.num_layers)
            .map(|_| Block {
                attn_norm: ones(c.hidden_size, device),
                attn: Attention {
                    wqkv: Weight::Plain(mat(c.hidden_size, qkv)),
                    wo: Weight::Plain(mat(c.num_heads * c.head_dim, c.hidden_size)),
                },
                ffn_norm: ones(c.hidden_size, device),
                ffn: FeedForward {
                    w_gate_up: Weight::Plain(mat(c.hidden_size, 2 * c.intermediate_size)),
                    w_down: Weight::Plain(mat(c.intermediate_size, c.hidden_size)),
                },
            })
            .collect();
        let lm_head = (!c.tie_embeddings).then(|| Weight::Plain(mat(c.hidden_size, c.vocab_size)));
        Self {
            embed,
            blocks,
            norm: ones(c.hidden_size, device),
            lm_head,
            inv_freq: c.rope_inv_freq(),
            config: c.clone(),
            reference_ops: false,
        }
        .packed_for_device()
    }

    /// Packs the linear weights when the device runs the fused CPU kernels.
    pub(crate) fn packed_for_device(mut self) -> Self {
        if crate::kernels::native_device(&self.device()) {
            self.pack();
        }
        self
    }

    /// Packs every linear weight (and, with tied embeddings, a copy of the embedding's
    /// transpose as the lm-head) for the CPU kernel.
    pub fn pack(&mut self) {
        for b in &mut self.blocks {
            for w in [
                &mut b.attn.wqkv,
                &mut b.attn.wo,
                &mut b.ffn.w_gate_up,
                &mut b.ffn.w_down,
            ] {
                *w = w.to_packed();
            }
        }
        self.lm_head = Some(match &self.lm_head {
            Some(w) => w.to_packed(),
            None => {
                let e = self.embed.val();
                let [vocab, hidden] = e.dims();
                let rows = e.into_data().try_into_vec::<f32>().expect("f32 embedding");
                Weight::packed_from_rows(&rows, vocab, hidden, &self.device())
            }
        });
    }

    /// Undoes [`Llama::pack`]: `[in, out]` weights for plain matmuls.
    pub fn unpack(&mut self) {
        for b in &mut self.blocks {
            for w in [
                &mut b.attn.wqkv,
                &mut b.attn.wo,
                &mut b.ffn.w_gate_up,
                &mut b.ffn.w_down,
            ] {
                *w = w.to_plain();
            }
        }
        self.lm_head = match &self.lm_head {
            _ if self.config.tie_embeddings => None,
            Some(w) => Some(w.to_plain()),
            None => None,
        };
    }

    pub fn device(&self) -> Device {
        self.embed.val().device()
    }

    /// Appends `t` tokens to every slot of `cache` and returns the final hidden states,
    /// `[slots * t, hidden]`, row `b * t + i` for token `i` of slot `b`.
    /// `tokens` is slot-major: `tokens[b * t + i]`.
    pub fn forward(&self, tokens: &[u32], t: usize, cache: &mut KvCache) -> Tensor<2> {
        let b = cache.slots();
        assert_eq!(tokens.len(), b * t, "tokens must be slots * t");
        let device = self.device();
        let ids: Vec<i64> = tokens.iter().map(|&x| i64::from(x)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * t]), &device);
        let mut x = self.embed.val().select(0, ids); // [b*t, hidden]

        let eps = self.config.rms_norm_eps;
        if !self.reference_ops && crate::kernels::native(&x) {
            for (layer, block) in self.blocks.iter().enumerate() {
                let h = crate::kernels::rms_norm(x.clone(), &block.attn_norm.val(), eps);
                x = x + self.attention_fused(h, block, layer, cache, t);
                let h = crate::kernels::rms_norm(x.clone(), &block.ffn_norm.val(), eps);
                let gate_up = block.ffn.w_gate_up.apply(h);
                x = x + block.ffn.w_down.apply(crate::kernels::swiglu(gate_up));
            }
            cache.advance(t);
            return crate::kernels::rms_norm(x, &self.norm.val(), eps);
        }

        let lens: Vec<usize> = (0..b).map(|s| cache.len(s)).collect();
        let positions: Vec<usize> = lens
            .iter()
            .flat_map(|&len| (0..t).map(move |i| len + i))
            .collect();
        let (cos, sin) = self.rope_tables(&positions, b, t, &device);
        let upto = lens.iter().copied().max().unwrap_or(0) + t;
        let bias = attention_bias(cache, t, upto, &device);

        for (layer, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(x.clone(), &block.attn_norm.val(), eps);
            let h = self.attention(h, block, layer, cache, t, (&cos, &sin), &bias, upto);
            x = x + h;
            let h = rms_norm(x.clone(), &block.ffn_norm.val(), eps);
            x = x + feed_forward(h, &block.ffn, self.config.intermediate_size);
        }
        cache.advance(t);
        rms_norm(x, &self.norm.val(), eps)
    }

    /// Logits `[rows, vocab]` for the given final hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        match &self.lm_head {
            Some(w) => w.apply(hidden),
            // A 2-D matmul against the transposed view of `[vocab, hidden]`: the broadcast
            // 3-D form was measured 15x slower on the CPU backend.
            None => hidden.matmul(self.embed.val().transpose()),
        }
    }

    /// Attention through the fused CPU kernel: rotary embedding, cache write and attention
    /// in one pass, with each slot's causal extent taken from its length (no mask tensor).
    fn attention_fused(
        &self,
        x: Tensor<2>,
        block: &Block,
        layer: usize,
        cache: &mut KvCache,
        t: usize,
    ) -> Tensor<2> {
        let c = &self.config;
        let qkv = block.attn.wqkv.apply(x); // [b*t, (nh + 2 nkv) * hd]
        let step = crate::kernels::AttentionStep {
            slots: cache.slots(),
            t,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            capacity: cache.capacity(),
            lens: (0..cache.slots()).map(|s| cache.len(s)).collect(),
            inv_freq: self.inv_freq.clone(),
        };
        let (k, v) = cache.take_layer(layer);
        let (out, k, v) = crate::kernels::attention(qkv, k, v, step); // out: [b*t, nh*hd]
        cache.put_layer(layer, k, v);
        block.attn.wo.apply(out)
    }

    /// Cosine and sine tables `[b, 1, t, head_dim / 2]` for the given positions.
    fn rope_tables(
        &self,
        positions: &[usize],
        b: usize,
        t: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let half = self.config.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
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
        &self,
        x: Tensor<2>,
        block: &Block,
        layer: usize,
        cache: &mut KvCache,
        t: usize,
        rope: (&Tensor<4>, &Tensor<4>),
        bias: &Tensor<5>,
        upto: usize,
    ) -> Tensor<2> {
        let c = &self.config;
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
}

fn ones(n: usize, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::ones([n], device))
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
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
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

#[cfg(test)]
mod tests;
