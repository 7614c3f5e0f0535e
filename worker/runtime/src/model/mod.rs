//! The Llama-family decoder (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU)
//! written on burn tensors. The KV cache lives outside the model (`KvCache`) so generation
//! code decides how slots are filled and reused; the model only appends to it.

pub mod cache;
pub mod config;
pub mod load;
pub(crate) mod reference;
pub mod weight;

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

pub use cache::KvCache;
pub use config::{LlamaConfig, RopeScaling};
pub use reference::rms_norm;
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

impl Block {
    /// The block's four linear weights.
    pub fn weights_mut(&mut self) -> [&mut Weight; 4] {
        [
            &mut self.attn.wqkv,
            &mut self.attn.wo,
            &mut self.ffn.w_gate_up,
            &mut self.ffn.w_down,
        ]
    }
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

    /// The linear weights of every block.
    fn block_weights(&mut self) -> impl Iterator<Item = &mut Weight> {
        self.blocks.iter_mut().flat_map(Block::weights_mut)
    }

    /// Packs every linear weight (and, with tied embeddings, a copy of the embedding's
    /// transpose as the lm-head) for the CPU kernel.
    pub fn pack(&mut self) {
        self.convert_linears(Weight::to_packed, Weight::packed_from_rows);
    }

    /// Replaces every linear weight by `each` of it, and the lm-head (with tied embeddings:
    /// `tied` of the embedding's `[vocab, hidden]` rows).
    fn convert_linears(
        &mut self,
        each: impl Fn(&Weight) -> Weight,
        tied: impl FnOnce(&[f32], usize, usize, &Device) -> Weight,
    ) {
        for w in self.block_weights() {
            *w = each(w);
        }
        self.lm_head = Some(match &self.lm_head {
            Some(w) => each(w),
            None => {
                let e = self.embed.val();
                let [vocab, hidden] = e.dims();
                let rows = e.into_data().try_into_vec::<f32>().expect("f32 embedding");
                tied(&rows, vocab, hidden, &self.device())
            }
        });
    }

    /// Readies a frozen model for LoRA training on the autodiff device over flex: every
    /// linear weight (the tied lm-head included) packed for the forward and, transposed, for
    /// the input gradient (`kernels::frozen`). Other devices keep their weights.
    pub fn freeze_for_training(&mut self) {
        if crate::kernels::frozen::native_device(&self.device()) {
            self.convert_linears(Weight::to_frozen, Weight::frozen_from_rows);
        }
    }

    /// Undoes [`Llama::pack`]: `[in, out]` weights for plain matmuls.
    pub fn unpack(&mut self) {
        for w in self.block_weights() {
            *w = w.to_plain();
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
        let all: Vec<usize> = (0..cache.slots()).collect();
        self.forward_slots(tokens, t, cache, &all)
    }

    /// Appends `t` tokens to each of the listed cache slots (the others are left alone) and
    /// returns their final hidden states, `[slots.len() * t, hidden]`, in the order listed.
    /// `tokens[j * t + i]` is token `i` of slot `slots[j]`.
    pub fn forward_slots(
        &self,
        tokens: &[u32],
        t: usize,
        cache: &mut KvCache,
        slots: &[usize],
    ) -> Tensor<2> {
        assert_eq!(tokens.len(), slots.len() * t, "tokens must be slots * t");
        let x = self.blocks_forward(tokens, t, cache, slots, self.blocks.len());
        let eps = self.config.rms_norm_eps;
        if self.uses_reference_ops() {
            reference::rms_norm(x, &self.norm.val(), eps)
        } else {
            crate::kernels::rms_norm(x, &self.norm.val(), eps)
        }
    }

    fn uses_reference_ops(&self) -> bool {
        self.reference_ops || !crate::kernels::native(&self.embed.val())
    }

    /// The residual stream entering block `upto` (before any norm), `[tokens.len(), hidden]`,
    /// for one sequence from position 0: what the frozen blocks below a LoRA run's lowest
    /// adapted block compute.
    pub fn residual_stream(&self, tokens: &[u32], upto: usize) -> Tensor<2> {
        let n = tokens.len();
        let mut cache = KvCache::new(&self.config, 1, n.max(1), &self.device());
        self.blocks_forward(tokens, n, &mut cache, &[0], upto.min(self.blocks.len()))
    }

    /// The final hidden states `[rows, hidden]` of one sequence from position 0 whose
    /// residual stream entering block `start` is `x` (see [`Llama::residual_stream`]): the
    /// blocks from `start` on and the final norm, on the fused path.
    pub fn forward_from(&self, x: Tensor<2>, start: usize) -> Tensor<2> {
        let n = x.dims()[0];
        let mut cache = KvCache::new(&self.config, 1, n.max(1), &self.device());
        let eps = self.config.rms_norm_eps;
        if self.uses_reference_ops() {
            let x = reference::blocks_from(self, x, start, &mut cache);
            return reference::rms_norm(x, &self.norm.val(), eps);
        }
        let x = self.fused_blocks(x, n, &mut cache, &[0], start, self.blocks.len());
        crate::kernels::rms_norm(x, &self.norm.val(), eps)
    }

    /// Runs blocks `0..upto` over `t` new tokens of each listed slot and returns the
    /// residual stream after them (no final norm); the cache advances by `t`.
    fn blocks_forward(
        &self,
        tokens: &[u32],
        t: usize,
        cache: &mut KvCache,
        slots: &[usize],
        upto: usize,
    ) -> Tensor<2> {
        if self.uses_reference_ops() {
            return reference::forward(self, tokens, t, cache, slots, upto);
        }
        let x = self.embed_tokens(tokens);
        let x = self.fused_blocks(x, t, cache, slots, 0, upto);
        cache.advance_slots(slots, t);
        x
    }

    /// Whether the prefill can be split at a block ([`Llama::prefill_upto`] and
    /// [`Llama::prefill_from`]): on the fused kernels only.
    pub fn splits_prefill(&self) -> bool {
        !self.uses_reference_ops()
    }

    /// The first half of a split prefill: blocks `0..upto` over one prompt written into
    /// slot 0 of the empty `cache` from position 0, returning the residual stream entering
    /// block `upto`. The cache's length stays 0 until [`Llama::prefill_from`] runs the rest.
    pub fn prefill_upto(&self, tokens: &[u32], cache: &mut KvCache, upto: usize) -> Tensor<2> {
        assert!(
            self.splits_prefill() && cache.len(0) == 0,
            "a split prefill needs the fused path and an empty slot 0"
        );
        let x = self.embed_tokens(tokens);
        self.fused_blocks(x, tokens.len(), cache, &[0], 0, upto)
    }

    /// The second half of a split prefill: blocks `from..` over the residual stream `x`
    /// entering block `from` of one prompt in slot 0 (whose rows of blocks below `from` are
    /// already in `cache`, from [`Llama::prefill_upto`] or read back from a store). Returns
    /// the final hidden states and leaves the slot holding the whole prompt.
    pub fn prefill_from(&self, x: Tensor<2>, cache: &mut KvCache, from: usize) -> Tensor<2> {
        assert!(
            self.splits_prefill() && cache.len(0) == 0,
            "a split prefill needs the fused path and an empty slot 0"
        );
        let n = x.dims()[0];
        let x = self.fused_blocks(x, n, cache, &[0], from, self.blocks.len());
        cache.advance_slots(&[0], n);
        crate::kernels::rms_norm(x, &self.norm.val(), self.config.rms_norm_eps)
    }

    /// Blocks `from..upto` on the fused kernels over residual stream `x`; the new rows go to
    /// each slot's cache after its current length, which the caller then advances.
    fn fused_blocks(
        &self,
        mut x: Tensor<2>,
        t: usize,
        cache: &mut KvCache,
        slots: &[usize],
        from: usize,
        upto: usize,
    ) -> Tensor<2> {
        let eps = self.config.rms_norm_eps;
        for (layer, block) in self.blocks.iter().enumerate().take(upto).skip(from) {
            let h = crate::kernels::rms_norm(x.clone(), &block.attn_norm.val(), eps);
            x = x + self.attention_fused(h, block, layer, cache, t, slots);
            let h = crate::kernels::rms_norm(x.clone(), &block.ffn_norm.val(), eps);
            let gate_up = block.ffn.w_gate_up.apply(h);
            x = x + block.ffn.w_down.apply(crate::kernels::swiglu(gate_up));
        }
        x
    }

    /// Embedding rows `[tokens.len(), hidden]`.
    pub(crate) fn embed_tokens(&self, tokens: &[u32]) -> Tensor<2> {
        let ids: Vec<i64> = tokens.iter().map(|&x| i64::from(x)).collect();
        let n = ids.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device());
        self.embed.val().select(0, ids)
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
        slots: &[usize],
    ) -> Tensor<2> {
        let c = &self.config;
        let qkv = block.attn.wqkv.apply(x); // [b*t, (nh + 2 nkv) * hd]
        let step = crate::kernels::AttentionStep {
            slots: slots.to_vec(),
            cache_slots: cache.slots(),
            t,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            capacity: cache.capacity(),
            lens: slots.iter().map(|&s| cache.len(s)).collect(),
            inv_freq: self.inv_freq.clone(),
        };
        let (k, v) = cache.take_layer(layer);
        let (out, k, v) = crate::kernels::attention(qkv, k, v, step); // out: [b*t, nh*hd]
        cache.put_layer(layer, k, v);
        block.attn.wo.apply(out)
    }
}

fn ones(n: usize, device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::ones([n], device))
}

#[cfg(test)]
mod tests;
