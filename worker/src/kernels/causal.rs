//! Causal self-attention of LoRA training, forward and backward, as one operation on the
//! autodiff device over flex. The generic path composes it from a dozen burn ops (split the
//! fused Q|K|V rows, rotary on strided views, `Q·Kᵀ`, a masked softmax, `P·V`, transposes
//! back) and keeps the `[b, heads, t, t]` probabilities of every layer for the backward.
//! Here the forward is one pass per query row (rotary, scores over the keys up to the row,
//! an online softmax, the weighted sum of values) that keeps only the rotated queries,
//! keys and values, the output and each row's log-sum-exp; the backward recomputes the
//! probabilities a key-value group at a time. Grouped-query heads, rotary in the halves
//! layout and sequences starting at position 0, as `train::forward` builds them.
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
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{axpy, dot, exp, has_fma, rotate, simd_dispatch};

/// Query rows (or keys, in the backward's second pass) per parallel task.
const ROWS_PER_TASK: usize = 32;

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

/// Rows `rows` of one head's attention: `o` and `lse` are those rows' outputs and
/// log-sum-exps; `q` the head's queries, `k` and `v` its key-value head's, all `[t, hd]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows_body<const FMA: bool>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    first: usize,
    hd: usize,
    scale: f32,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let mut scores = vec![0f32; first + lse.len()];
    for (n, (acc, lse)) in o.chunks_exact_mut(hd).zip(lse.iter_mut()).enumerate() {
        let i = first + n;
        let query = &q[i * hd..][..hd];
        let row = &mut scores[..=i];
        for (sc, key) in row.iter_mut().zip(k.chunks_exact(hd)) {
            *sc = dot::<FMA>(query, key) * scale;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for sc in row.iter_mut() {
            *sc = exp(*sc - max);
            sum += *sc;
        }
        acc.fill(0.0);
        for (&p, value) in row.iter().zip(v.chunks_exact(hd)) {
            axpy::<FMA>(p, value, acc);
        }
        let inv = 1.0 / sum;
        acc.iter_mut().for_each(|x| *x *= inv);
        *lse = max + sum.ln();
    }
}

simd_dispatch!(fn forward_rows(q: &[f32], k: &[f32], v: &[f32], first: usize, hd: usize, scale: f32, o: &mut [f32], lse: &mut [f32]) => forward_rows_body);

/// The forward: `qkv` rows `[b * t, (heads + 2 kv_heads) * hd]` before rotary; returns the
/// output rows `[b * t, heads * hd]` and what the backward needs.
pub fn forward(qkv: &[f32], shape: &CausalShape) -> (Vec<f32>, Saved) {
    let (b, t, hd, g) = (shape.b, shape.t, shape.head_dim, shape.group());
    assert_eq!(
        qkv.len(),
        b * t * shape.qkv_width(),
        "qkv must be [b * t, width]"
    );
    let (q, k, v) = split_heads(qkv, shape);
    let scale = shape.scale();
    let mut o = vec![0f32; q.len()];
    let mut lse = vec![0f32; b * shape.heads * t];
    o.par_chunks_mut(t * hd)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each(|(sh, (o, lse))| {
            let (s, h) = (sh / shape.heads, sh % shape.heads);
            let q = &q[sh * t * hd..][..t * hd];
            let kv = (s * shape.kv_heads + h / g) * t * hd;
            let (k, v) = (&k[kv..][..t * hd], &v[kv..][..t * hd]);
            o.par_chunks_mut(ROWS_PER_TASK * hd)
                .zip(lse.par_chunks_mut(ROWS_PER_TASK))
                .enumerate()
                .for_each(|(block, (o, lse))| {
                    forward_rows(q, k, v, block * ROWS_PER_TASK, hd, scale, o, lse);
                });
        });
    let out = heads_to_rows(&o, shape.b, shape.heads, t, hd);
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

/// Head-major `[b, heads, t, hd]` to rows `[b * t, heads * hd]`.
fn heads_to_rows(x: &[f32], b: usize, heads: usize, t: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for s in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let from = &x[((s * heads + h) * t + i) * hd..][..hd];
                out[((s * t + i) * heads + h) * hd..][..hd].copy_from_slice(from);
            }
        }
    }
    out
}

/// Rows `[b * t, heads * hd]` to head-major `[b, heads, t, hd]`.
fn rows_to_heads(x: &[f32], b: usize, heads: usize, t: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for s in 0..b {
        for i in 0..t {
            for h in 0..heads {
                let from = &x[((s * t + i) * heads + h) * hd..][..hd];
                out[((s * heads + h) * t + i) * hd..][..hd].copy_from_slice(from);
            }
        }
    }
    out
}

/// One head's queries, output gradient and row terms in the backward.
struct HeadRows<'a> {
    q: &'a [f32],
    d_o: &'a [f32],
    lse: &'a [f32],
    /// `dO_i · O_i` per row.
    delta: &'a [f32],
}

/// The backward's first pass over query rows `first..` of one head: the probabilities `p`
/// and score gradients `ds` of those rows (`[rows, t]`, keys up to the row filled) and the
/// rows' query gradients `dq` (rotated space).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn query_pass_body<const FMA: bool>(
    head: &HeadRows,
    k: &[f32],
    v: &[f32],
    first: usize,
    hd: usize,
    scale: f32,
    p: &mut [f32],
    ds: &mut [f32],
    dq: &mut [f32],
) {
    let t = k.len() / hd;
    for (n, dq) in dq.chunks_exact_mut(hd).enumerate() {
        let i = first + n;
        let (query, d_o) = (&head.q[i * hd..][..hd], &head.d_o[i * hd..][..hd]);
        let (p, ds) = (&mut p[n * t..][..=i], &mut ds[n * t..][..=i]);
        let (lse, delta) = (head.lse[i], head.delta[i]);
        dq.fill(0.0);
        for (j, (key, value)) in k
            .chunks_exact(hd)
            .zip(v.chunks_exact(hd))
            .take(i + 1)
            .enumerate()
        {
            let prob = exp(dot::<FMA>(query, key) * scale - lse);
            let grad = prob * (dot::<FMA>(d_o, value) - delta);
            p[j] = prob;
            ds[j] = grad;
            axpy::<FMA>(grad, key, dq);
        }
        dq.iter_mut().for_each(|x| *x *= scale);
    }
}

simd_dispatch!(fn query_pass(head: &HeadRows, k: &[f32], v: &[f32], first: usize, hd: usize, scale: f32, p: &mut [f32], ds: &mut [f32], dq: &mut [f32]) => query_pass_body);

/// The backward's second pass over keys `first..` of one key-value head: their key and
/// value gradients (rotated space) from the group's probabilities and score gradients
/// (`[group, t, t]`), queries and output gradients (`[group, t, hd]`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn key_pass_body<const FMA: bool>(
    p: &[f32],
    ds: &[f32],
    q: &[f32],
    d_o: &[f32],
    first: usize,
    t: usize,
    hd: usize,
    scale: f32,
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let group = q.len() / (t * hd);
    for (n, (dk, dv)) in dk
        .chunks_exact_mut(hd)
        .zip(dv.chunks_exact_mut(hd))
        .enumerate()
    {
        let j = first + n;
        dk.fill(0.0);
        dv.fill(0.0);
        for h in 0..group {
            let (p, ds) = (&p[h * t * t..][..t * t], &ds[h * t * t..][..t * t]);
            let (q, d_o) = (&q[h * t * hd..][..t * hd], &d_o[h * t * hd..][..t * hd]);
            for i in j..t {
                axpy::<FMA>(ds[i * t + j], &q[i * hd..][..hd], dk);
                axpy::<FMA>(p[i * t + j], &d_o[i * hd..][..hd], dv);
            }
        }
        dk.iter_mut().for_each(|x| *x *= scale);
    }
}

simd_dispatch!(fn key_pass(p: &[f32], ds: &[f32], q: &[f32], d_o: &[f32], first: usize, t: usize, hd: usize, scale: f32, dk: &mut [f32], dv: &mut [f32]) => key_pass_body);

/// The backward: the gradient of the output rows `[b * t, heads * hd]` to the gradient of
/// the `qkv` rows the forward took (through the rotary embedding).
pub fn backward(saved: &Saved, d_out: &[f32]) -> Vec<f32> {
    let shape = &saved.shape;
    let (b, t, hd, g) = (shape.b, shape.t, shape.head_dim, shape.group());
    let (heads, kv_heads, scale) = (shape.heads, shape.kv_heads, shape.scale());
    let d_o = rows_to_heads(d_out, b, heads, t, hd);
    let delta: Vec<f32> = d_o
        .chunks_exact(hd)
        .zip(saved.o.chunks_exact(hd))
        .map(|(a, o)| a.iter().zip(o).map(|(x, y)| x * y).sum())
        .collect();
    let mut dq = vec![0f32; saved.q.len()];
    let mut dk = vec![0f32; saved.k.len()];
    let mut dv = vec![0f32; saved.v.len()];
    // One key-value group at a time: its heads' probabilities and score gradients.
    let mut p = vec![0f32; g * t * t];
    let mut ds = vec![0f32; g * t * t];
    for s in 0..b {
        for c in 0..kv_heads {
            let kv = (s * kv_heads + c) * t * hd;
            let (k, v) = (&saved.k[kv..][..t * hd], &saved.v[kv..][..t * hd]);
            let heads_at = (s * heads + c * g) * t;
            let group_dq = &mut dq[heads_at * hd..][..g * t * hd];
            group_dq
                .par_chunks_mut(t * hd)
                .zip(p.par_chunks_mut(t * t).zip(ds.par_chunks_mut(t * t)))
                .enumerate()
                .for_each(|(h, (dq, (p, ds)))| {
                    let at = heads_at + h * t;
                    let head = HeadRows {
                        q: &saved.q[at * hd..][..t * hd],
                        d_o: &d_o[at * hd..][..t * hd],
                        lse: &saved.lse[at..][..t],
                        delta: &delta[at..][..t],
                    };
                    dq.par_chunks_mut(ROWS_PER_TASK * hd)
                        .zip(p.par_chunks_mut(ROWS_PER_TASK * t))
                        .zip(ds.par_chunks_mut(ROWS_PER_TASK * t))
                        .enumerate()
                        .for_each(|(block, ((dq, p), ds))| {
                            query_pass(&head, k, v, block * ROWS_PER_TASK, hd, scale, p, ds, dq);
                        });
                });
            let q = &saved.q[heads_at * hd..][..g * t * hd];
            let group_d_o = &d_o[heads_at * hd..][..g * t * hd];
            dk[kv..][..t * hd]
                .par_chunks_mut(ROWS_PER_TASK * hd)
                .zip(dv[kv..][..t * hd].par_chunks_mut(ROWS_PER_TASK * hd))
                .enumerate()
                .for_each(|(block, (dk, dv))| {
                    let first = block * ROWS_PER_TASK;
                    key_pass(&p, &ds, q, group_d_o, first, t, hd, scale, dk, dv);
                });
        }
    }
    merge_grads(shape, &dq, &dk, &dv)
}

/// The gradient of the `qkv` rows: the query and key gradients rotated back (the rotary
/// embedding's transpose is the rotation by minus the angle), the value gradient as is.
fn merge_grads(shape: &CausalShape, dq: &[f32], dk: &[f32], dv: &[f32]) -> Vec<f32> {
    let (b, t, hd) = (shape.b, shape.t, shape.head_dim);
    let (width, q_w, kv_w) = (shape.qkv_width(), shape.q_width(), shape.kv_width());
    let (cos, sin) = shape.rope();
    let half = hd / 2;
    let minus: Vec<f32> = sin.iter().map(|x| -x).collect();
    let mut out = vec![0f32; b * t * width];
    for s in 0..b {
        for i in 0..t {
            let row = &mut out[(s * t + i) * width..][..width];
            let (c, sn) = (&cos[i * half..][..half], &minus[i * half..][..half]);
            for h in 0..shape.heads {
                let from = &dq[((s * shape.heads + h) * t + i) * hd..][..hd];
                rotate(from, c, sn, &mut row[h * hd..][..hd]);
            }
            for h in 0..shape.kv_heads {
                let at = ((s * shape.kv_heads + h) * t + i) * hd;
                rotate(&dk[at..at + hd], c, sn, &mut row[q_w + h * hd..][..hd]);
                row[q_w + kv_w + h * hd..][..hd].copy_from_slice(&dv[at..at + hd]);
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

fn contiguous_f32(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.is_contiguous() {
        true => std::borrow::Cow::Borrowed(t.as_slice::<f32>().expect("f32 attention input")),
        false => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("f32 attention input")
                .to_vec(),
        ),
    }
}

fn rows_tensor(data: Vec<f32>, rows: usize, width: usize) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(
        data,
        Shape::from(vec![rows, width]),
    ))
}

impl CausalAttentionOps for Flex {
    fn causal_attention(qkv: FlexTensor, shape: CausalShape) -> FlexTensor {
        let (out, _) = forward(&contiguous_f32(&qkv), &shape);
        rows_tensor(out, shape.b * shape.t, shape.q_width())
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
            let d_qkv = backward(&ops.state, &contiguous_f32(&d_out));
            let rows = shape.b * shape.t;
            grads.register::<Flex>(qkv.id, rows_tensor(d_qkv, rows, shape.qkv_width()));
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
                let (out, saved) = forward(&contiguous_f32(&qkv), &shape);
                prep.finish(saved, rows_tensor(out, shape.b * shape.t, shape.q_width()))
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
