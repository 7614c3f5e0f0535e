//! The backward of the training attention, block by block: recompute a block's
//! probabilities from the saved log-sum-exp, then `dP = dO·Vᵀ`, `dS`, and the query, key and
//! value gradients as panel products; the blocks' key and value gradients are summed, and
//! the query and key gradients rotated back into the fused `qkv` rows.

use rayon::prelude::*;

use super::super::cpu::{exp, fmadd, has_fma, rotate, simd_dispatch};
use super::{swap_middle, times, times_t, transpose, Block, CausalShape, Saved};

/// A block's probabilities from its scores `[group * r, ctx]` (in place) and its score
/// gradients from the probabilities' gradients `dp` (in place): `p = exp(scale·s − lse)`
/// over the keys each query sees (0 after), `ds = p ⊙ (dp − delta)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn score_grads_body<const FMA: bool>(
    s: &mut [f32],
    dp: &mut [f32],
    ctx: usize,
    first: usize,
    r: usize,
    scale: f32,
    lse: &[f32],
    delta: &[f32],
) {
    let rows = s.chunks_exact_mut(ctx).zip(dp.chunks_exact_mut(ctx));
    for (n, (s, dp)) in rows.enumerate() {
        let seen = first + n % r + 1;
        let (lse, delta) = (lse[n], delta[n]);
        for (x, d) in s[..seen].iter_mut().zip(&mut dp[..seen]) {
            *x = exp(fmadd::<FMA>(*x, scale, -lse));
            *d = *x * (*d - delta);
        }
        s[seen..].fill(0.0);
        dp[seen..].fill(0.0);
    }
}

simd_dispatch!(fn score_grads(s: &mut [f32], dp: &mut [f32], ctx: usize, first: usize, r: usize, scale: f32, lse: &[f32], delta: &[f32]) => score_grads_body);

/// One block's gradients: its query rows' `[group * r, hd]`, and its share of the key and
/// value gradients of keys `0..ctx` `[ctx, hd]` each (rotated space).
struct BlockGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn backward_block(saved: &Saved, d_o: &[f32], delta: &[f32], block: &Block) -> BlockGrads {
    let shape = &saved.shape;
    let (hd, ctx, r, scale) = (
        shape.head_dim,
        block.rows.end,
        block.rows.len(),
        shape.scale(),
    );
    let m = shape.group() * r;
    let kv = shape.kv_at(block);
    let (keys, values) = (&saved.k[kv..][..ctx * hd], &saved.v[kv..][..ctx * hd]);
    let queries = shape.gather(&saved.q, block, hd);
    let grads = shape.gather(d_o, block, hd);
    let (lse, delta) = (
        shape.gather(&saved.lse, block, 1),
        shape.gather(delta, block, 1),
    );
    let mut p = times_t(&queries, m, hd, keys, ctx);
    let mut ds = times_t(&grads, m, hd, values, ctx);
    score_grads(
        &mut p,
        &mut ds,
        ctx,
        block.rows.start,
        r,
        scale,
        &lse,
        &delta,
    );
    let scaled = |mut x: Vec<f32>| {
        x.iter_mut().for_each(|v| *v *= scale);
        x
    };
    // `dK = dSᵀ·Q` and `dV = Pᵀ·dO` as their transposes `Qᵀ·dS` and `dOᵀ·P`: the block's
    // wide `[m, ctx]` matrices are packed as they are, only `[m, hd]` ones transposed.
    let dk_t = times(&transpose(&queries, m, hd), hd, m, &ds, ctx);
    let dv_t = times(&transpose(&grads, m, hd), hd, m, &p, ctx);
    BlockGrads {
        dq: scaled(times(&ds, m, ctx, keys, hd)),
        dk: scaled(transpose(&dk_t, hd, ctx)),
        dv: transpose(&dv_t, hd, ctx),
    }
}

/// The backward: the gradient of the output rows `[b * t, heads * hd]` to the gradient of
/// the `qkv` rows the forward took (through the rotary embedding).
pub(super) fn backward(saved: &Saved, d_out: &[f32]) -> Vec<f32> {
    let shape = &saved.shape;
    let (b, t, hd) = (shape.b, shape.t, shape.head_dim);
    let d_o = swap_middle(d_out, b, t, shape.heads, hd);
    let delta: Vec<f32> = d_o
        .chunks_exact(hd)
        .zip(saved.o.chunks_exact(hd))
        .map(|(a, o)| a.iter().zip(o).map(|(x, y)| x * y).sum())
        .collect();
    let blocks = shape.blocks();
    let results: Vec<BlockGrads> = blocks
        .par_iter()
        .map(|block| backward_block(saved, &d_o, &delta, block))
        .collect();
    let mut dq = vec![0f32; saved.q.len()];
    let mut dk = vec![0f32; saved.k.len()];
    let mut dv = vec![0f32; saved.v.len()];
    for (block, g) in blocks.iter().zip(&results) {
        shape.scatter(&mut dq, block, hd, &g.dq);
        let kv = shape.kv_at(block);
        let n = g.dk.len();
        dk[kv..kv + n]
            .iter_mut()
            .zip(&g.dk)
            .for_each(|(a, x)| *a += x);
        dv[kv..kv + n]
            .iter_mut()
            .zip(&g.dv)
            .for_each(|(a, x)| *a += x);
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
