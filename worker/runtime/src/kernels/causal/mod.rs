//! Causal self-attention of LoRA training, forward and backward, as one operation on the
//! autodiff device over flex. The generic path composes it from a dozen burn ops (split the
//! fused Q|K|V rows, rotary on strided views, `Q·Kᵀ`, a masked softmax, `P·V`, transposes
//! back) and keeps the `[b, heads, t, t]` probabilities of every layer for the backward.
//! Here rotary is applied once while the rows are split into heads, and the work is cut
//! into blocks of 64 query rows of all the heads that share a key-value head. A block's
//! forward is two products on the packed-panel kernel (`S = Q·Kᵀ` over the keys its last
//! row sees, then `P·V`) around a causal softmax; only the rotated queries, keys and
//! values, the output and each row's log-sum-exp are kept. The backward recomputes a
//! block's probabilities and runs five products (`S`, `dP = dO·Vᵀ`, then `dQ = dS·K`,
//! `dK = dSᵀ·Q`, `dV = Pᵀ·dO`); the blocks' key and value gradients are summed after.
//! Grouped-query heads, rotary in the halves layout and sequences starting at position 0,
//! as `train::forward` builds them.
//!
//! The generic path stays the reference and the path of every other device: tests compare
//! the output and the input gradient with it, and the training tests run a whole step
//! through both.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::Tensor;
use rayon::prelude::*;

use std::ops::Range;

use super::cpu::{exp, fmadd, has_fma, max_of, rotate, simd_dispatch, sum_of};
use super::{contiguous, linear, new_tensor, slice};

mod backward;
use backward::backward;

/// Query rows per block (times the heads of a key-value group): 64 was 6% faster than 32
/// on whole `bench train --shape 896,128` runs (wall-time ratio of 3 interleaved pairs).
const ROWS_PER_TASK: usize = 64;

/// The shape of one training attention: `b` sequences of `t` tokens, rows sequence-major.
#[derive(Clone, Debug, PartialEq)]
pub struct CausalShape {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Inverse rotary frequencies, `head_dim / 2` of them.
    pub inv_freq: Vec<f64>,
}

impl CausalShape {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }

    /// Rotary tables `[t, head_dim / 2]`, the same values as `model::reference::rope_tables`.
    fn rope(&self) -> (Vec<f32>, Vec<f32>) {
        let angles = (0..self.t).flat_map(|p| self.inv_freq.iter().map(move |f| p as f64 * f));
        angles.map(|a| (a.cos() as f32, a.sin() as f32)).unzip()
    }
}

/// What the forward keeps for the backward, head-major: rotated queries
/// `[b, heads, t, hd]`, rotated keys and values `[b, kv_heads, t, hd]`, the output
/// `[b, heads, t, hd]` and each query row's log-sum-exp `[b, heads, t]`.
#[derive(Clone, Debug)]
pub struct Saved {
    shape: CausalShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
}

/// Splits `qkv` rows `[b * t, qkv_width]` into head-major queries, keys and values, the
/// first two rotated.
fn split_heads(qkv: &[f32], shape: &CausalShape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (b, t, hd) = (shape.b, shape.t, shape.head_dim);
    let (width, q_w, kv_w) = (shape.qkv_width(), shape.q_width(), shape.kv_width());
    let (cos, sin) = shape.rope();
    let half = hd / 2;
    let mut q = vec![0f32; b * shape.heads * t * hd];
    let mut k = vec![0f32; b * shape.kv_heads * t * hd];
    let mut v = vec![0f32; k.len()];
    for s in 0..b {
        for i in 0..t {
            let row = &qkv[(s * t + i) * width..][..width];
            let (c, sn) = (&cos[i * half..][..half], &sin[i * half..][..half]);
            for h in 0..shape.heads {
                let at = ((s * shape.heads + h) * t + i) * hd;
                rotate(&row[h * hd..][..hd], c, sn, &mut q[at..at + hd]);
            }
            for h in 0..shape.kv_heads {
                let at = ((s * shape.kv_heads + h) * t + i) * hd;
                rotate(&row[q_w + h * hd..][..hd], c, sn, &mut k[at..at + hd]);
                v[at..at + hd].copy_from_slice(&row[q_w + kv_w + h * hd..][..hd]);
            }
        }
    }
    (q, k, v)
}

/// Query rows `rows` of the heads of key-value head `c` of sequence `s`: the unit of work
/// of the forward and the backward.
struct Block {
    s: usize,
    c: usize,
    rows: Range<usize>,
}

impl CausalShape {
    fn blocks(&self) -> Vec<Block> {
        let mut out = Vec::new();
        for s in 0..self.b {
            for c in 0..self.kv_heads {
                for first in (0..self.t).step_by(ROWS_PER_TASK) {
                    let rows = first..(first + ROWS_PER_TASK).min(self.t);
                    out.push(Block { s, c, rows });
                }
            }
        }
        out
    }

    /// First element of key-value head `c` of sequence `s` in `[b, kv_heads, t, hd]`.
    fn kv_at(&self, block: &Block) -> usize {
        (block.s * self.kv_heads + block.c) * self.t * self.head_dim
    }

    /// The block's rows of every head of its group from a head-major `[b, heads, t, w]`
    /// buffer, `[group * rows, w]` (head after head).
    fn gather(&self, x: &[f32], block: &Block, w: usize) -> Vec<f32> {
        let g = self.group();
        let mut out = Vec::with_capacity(g * block.rows.len() * w);
        for h in block.c * g..(block.c + 1) * g {
            let at = (block.s * self.heads + h) * self.t;
            out.extend_from_slice(&x[(at + block.rows.start) * w..(at + block.rows.end) * w]);
        }
        out
    }

    /// Writes [`CausalShape::gather`]'s layout back into a head-major buffer.
    fn scatter(&self, x: &mut [f32], block: &Block, w: usize, from: &[f32]) {
        let g = self.group();
        let n = block.rows.len() * w;
        for (h, part) in (block.c * g..(block.c + 1) * g).zip(from.chunks_exact(n)) {
            let at = (block.s * self.heads + h) * self.t;
            x[(at + block.rows.start) * w..][..n].copy_from_slice(part);
        }
    }
}

/// `x [m, k] · W` for a row-major `w` `[k, n]`, on the packed-panel kernel.
fn times(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let packed = linear::pack(w, k, n);
    let mut out = vec![0f32; m * n];
    linear::linear_serial(x, m, k, &packed, n, &mut out);
    out
}

/// `x [m, k] · Wᵀ` for a row-major `w` `[n, k]`.
fn times_t(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let packed = linear::pack_transposed(w, n, k);
    let mut out = vec![0f32; m * n];
    linear::linear_serial(x, m, k, &packed, n, &mut out);
    out
}

/// `[m, n]` to `[n, m]`, in 8 x 8 tiles so that reads and writes both stay in a few
/// cache lines.
fn transpose(x: &[f32], m: usize, n: usize) -> Vec<f32> {
    const TILE: usize = 8;
    let mut out = vec![0f32; m * n];
    for i0 in (0..m).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for i in i0..(i0 + TILE).min(m) {
                for j in j0..(j0 + TILE).min(n) {
                    out[j * m + i] = x[i * n + j];
                }
            }
        }
    }
    out
}

/// Softmax of each row of a block's scores `[group * r, ctx]` over the keys its query
/// sees (row `n` is query `first + n % r`; keys after it become 0), scaled by `scale`
/// first; returns each row's log-sum-exp.
#[inline(always)]
fn causal_softmax_body<const FMA: bool>(
    scores: &mut [f32],
    ctx: usize,
    first: usize,
    r: usize,
    scale: f32,
) -> Vec<f32> {
    let mut lse = Vec::with_capacity(scores.len() / ctx);
    for (n, row) in scores.chunks_exact_mut(ctx).enumerate() {
        let (seen, unseen) = row.split_at_mut(first + n % r + 1);
        unseen.fill(0.0);
        let max = max_of(seen) * scale;
        // Two loops: a float sum inside the first would keep it from vectorising.
        for x in seen.iter_mut() {
            *x = exp(fmadd::<FMA>(*x, scale, -max));
        }
        let sum = sum_of(seen);
        let inv = 1.0 / sum;
        seen.iter_mut().for_each(|x| *x *= inv);
        lse.push(max + sum.ln());
    }
    lse
}

simd_dispatch!(fn causal_softmax(scores: &mut [f32], ctx: usize, first: usize, r: usize, scale: f32) -> Vec<f32> => causal_softmax_body);

/// One block's forward: its output rows `[group * r, hd]` and their log-sum-exps.
fn forward_block(
    shape: &CausalShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    block: &Block,
) -> (Vec<f32>, Vec<f32>) {
    let (hd, ctx, r) = (shape.head_dim, block.rows.end, block.rows.len());
    let m = shape.group() * r;
    let kv = shape.kv_at(block);
    let (keys, values) = (&k[kv..][..ctx * hd], &v[kv..][..ctx * hd]);
    let queries = shape.gather(q, block, hd);
    let mut scores = times_t(&queries, m, hd, keys, ctx);
    let lse = causal_softmax(&mut scores, ctx, block.rows.start, r, shape.scale());
    (times(&scores, m, ctx, values, hd), lse)
}

/// The forward: `qkv` rows `[b * t, (heads + 2 kv_heads) * hd]` before rotary; returns the
/// output rows `[b * t, heads * hd]` and what the backward needs.
pub fn forward(qkv: &[f32], shape: &CausalShape) -> (Vec<f32>, Saved) {
    let (b, t, hd) = (shape.b, shape.t, shape.head_dim);
    assert_eq!(
        qkv.len(),
        b * t * shape.qkv_width(),
        "qkv must be [b * t, width]"
    );
    let (q, k, v) = split_heads(qkv, shape);
    let blocks = shape.blocks();
    let results: Vec<(Vec<f32>, Vec<f32>)> = blocks
        .par_iter()
        .map(|block| forward_block(shape, &q, &k, &v, block))
        .collect();
    let mut o = vec![0f32; q.len()];
    let mut lse = vec![0f32; b * shape.heads * t];
    for (block, (out, l)) in blocks.iter().zip(&results) {
        shape.scatter(&mut o, block, hd, out);
        shape.scatter(&mut lse, block, 1, l);
    }
    let out = swap_middle(&o, b, shape.heads, t, hd);
    let saved = Saved {
        shape: shape.clone(),
        q,
        k,
        v,
        o,
        lse,
    };
    (out, saved)
}

/// `[b, p, q, w]` to `[b, q, p, w]`: rows `[b * t, heads * hd]` to head-major
/// `[b, heads, t, hd]` with `(p, q) = (t, heads)`, and back with `(heads, t)`.
fn swap_middle(x: &[f32], b: usize, p: usize, q: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for s in 0..b {
        for i in 0..p {
            for j in 0..q {
                let from = &x[((s * p + i) * q + j) * w..][..w];
                out[((s * q + j) * p + i) * w..][..w].copy_from_slice(from);
            }
        }
    }
    out
}

#[backend_extension(Flex, Autodiff)]
pub trait CausalAttentionOps: Backend {
    /// Causal attention of `qkv` rows `[b * t, (heads + 2 kv_heads) * head_dim]` (fused
    /// Q|K|V before rotary) → `[b * t, heads * head_dim]`.
    fn causal_attention(qkv: FloatTensor<Self>, shape: CausalShape) -> FloatTensor<Self>;
}

impl CausalAttentionOps for Flex {
    fn causal_attention(qkv: FlexTensor, shape: CausalShape) -> FlexTensor {
        let (out, _) = forward(slice(&contiguous(qkv)), &shape);
        new_tensor(out, vec![shape.b * shape.t, shape.q_width()])
    }
}

/// The backward step: the `qkv` gradient from the saved forward.
#[derive(Debug)]
struct CausalBackward;

impl Backward<Flex, 1> for CausalBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [qkv] = ops.parents;
        let d_out = grads.consume::<Flex>(&ops.node);
        if let Some(qkv) = qkv {
            let shape = &ops.state.shape;
            let d_qkv = backward(&ops.state, slice(&contiguous(d_out)));
            let rows = shape.b * shape.t;
            grads.register::<Flex>(qkv.id, new_tensor(d_qkv, vec![rows, shape.qkv_width()]));
        }
    }
}

impl<C: CheckpointStrategy> CausalAttentionOps for Autodiff<Flex, C> {
    fn causal_attention(qkv: FloatTensor<Self>, shape: CausalShape) -> FloatTensor<Self> {
        let (qkv, node) = qkv.into_parts();
        match CausalBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, saved) = forward(slice(&contiguous(qkv)), &shape);
                prep.finish(
                    saved,
                    new_tensor(out, vec![shape.b * shape.t, shape.q_width()]),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<Flex as CausalAttentionOps>::causal_attention(qkv, shape))
            }
        }
    }
}

/// Whether tensors on `device` take this path: an autodiff device over flex.
pub use super::frozen::native_device;

/// Causal attention of fused `qkv` rows (see [`CausalAttentionOps::causal_attention`]).
pub fn causal_attention(qkv: Tensor<2>, shape: CausalShape) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as CausalAttentionOps>::causal_attention(
        qkv.into_dispatch(),
        shape,
    ))
}
