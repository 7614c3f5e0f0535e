//! Decode and prefill attention over the slot KV cache, fused with rotary embedding and the
//! cache write: one pass per (slot, KV head, block of tokens); long steps (a prefill) run
//! their scores and weighted sums as panel products (`linear`).

use rayon::prelude::*;

use super::cpu::{axpy, dot, has_fma, rotate, simd_dispatch, softmax_in_place};
use super::linear;

/// The shape of one attention step over a slot cache (see `model::KvCache` for its layout).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionStep {
    /// The cache slots this step appends to, in the order of the rows of `qkv`.
    pub slots: Vec<usize>,
    /// Slots the cache holds.
    pub cache_slots: usize,
    /// New tokens per slot.
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions each slot of the cache holds.
    pub capacity: usize,
    /// Tokens already cached in each of `slots`; the new ones go right after them.
    pub lens: Vec<usize>,
    /// Inverse rotary frequencies, `head_dim / 2` of them (Hugging Face halves layout).
    pub inv_freq: Vec<f64>,
}

impl AttentionStep {
    fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// First element of `(cache slot, kv head, position)` in the flat cache.
    fn cache_offset(&self, slot: usize, head: usize, pos: usize) -> usize {
        ((slot * self.kv_heads + head) * self.capacity + pos) * self.head_dim
    }

    /// Rows of `qkv`: `t` per listed slot.
    fn rows(&self) -> usize {
        self.slots.len() * self.t
    }
}

/// Tokens of one slot handled by one parallel task (queries of a block share K/V reads).
const TOKENS_PER_TASK: usize = 16;
/// Tokens per task when a step is long enough (a prefill) for the matrix-product path.
const GEMM_TOKENS_PER_TASK: usize = 64;

/// Attention of tokens `tokens` of batch entry `s` (cache slot `step.slots[s]`) for the
/// query heads of KV head `h`; returns `[token, group, head_dim]`.
#[inline(always)]
fn attend_body<const FMA: bool>(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    step: &AttentionStep,
    s: usize,
    h: usize,
    tokens: std::ops::Range<usize>,
) -> Vec<f32> {
    let (hd, nh) = (step.head_dim, step.heads);
    let g = nh / step.kv_heads;
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let max_ctx = step.lens[s] + tokens.end;
    let mut scores = vec![0f32; g * max_ctx];
    let mut out = vec![0f32; tokens.len() * g * hd];
    let base = step.cache_offset(step.slots[s], h, 0);
    let wide = avx512::usable(hd);
    for (n, i) in tokens.clone().enumerate() {
        let ctx = step.lens[s] + i + 1;
        let keys = &k_cache[base..][..ctx * hd];
        let values = &v_cache[base..][..ctx * hd];
        let queries = &q[((s * step.t + i) * nh + h * g) * hd..][..g * hd];
        let o = &mut out[n * g * hd..][..g * hd];
        for ((query, row), acc) in queries
            .chunks_exact(hd)
            .zip(scores.chunks_exact_mut(max_ctx))
            .zip(o.chunks_exact_mut(hd))
        {
            let row = &mut row[..ctx];
            if wide {
                // SAFETY: `usable` checked the CPU and the head size.
                unsafe { avx512::scores(query, keys, scale, row) };
            } else {
                for (sc, k) in row.iter_mut().zip(keys.chunks_exact(hd)) {
                    *sc = dot::<FMA>(query, k) * scale;
                }
            }
            softmax_in_place(row);
            if wide {
                // SAFETY: as above.
                unsafe { avx512::weighted_sum(row, values, acc) };
            } else {
                for (&p, v) in row.iter().zip(values.chunks_exact(hd)) {
                    axpy::<FMA>(p, v, acc);
                }
            }
        }
    }
    out
}

/// AVX-512 versions of the decode attention's two inner loops, for head sizes 64 and 128.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    pub fn usable(head_dim: usize) -> bool {
        matches!(head_dim, 64 | 128) && std::arch::is_x86_feature_detected!("avx512f")
    }

    /// `out[j] = (query · keys[j]) * scale` for the `out.len()` rows of `keys`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `query.len()` is 64 or 128 and `keys` holds `out.len()` rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(query: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        match query.len() {
            64 => scores_n::<4>(query, keys, scale, out),
            _ => scores_n::<8>(query, keys, scale, out),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn scores_n<const C: usize>(query: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        assert!(query.len() == 16 * C && keys.len() >= out.len() * 16 * C);
        let q: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(query.as_ptr().add(16 * c)));
        for (j, o) in out.iter_mut().enumerate() {
            let k = keys.as_ptr().add(j * 16 * C);
            let mut acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(k));
            // `c` also offsets the key row: an index loop over the query's registers.
            #[allow(clippy::needless_range_loop)]
            for c in 1..C {
                acc = _mm512_fmadd_ps(q[c], _mm512_loadu_ps(k.add(16 * c)), acc);
            }
            *o = _mm512_reduce_add_ps(acc) * scale;
        }
    }

    /// `acc += Σ_j p[j] * values[j]` over the `p.len()` rows of `values`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `acc.len()` is 64 or 128 and `values` holds `p.len()` rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum(p: &[f32], values: &[f32], acc: &mut [f32]) {
        match acc.len() {
            64 => weighted_sum_n::<4>(p, values, acc),
            _ => weighted_sum_n::<8>(p, values, acc),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_sum_n<const C: usize>(p: &[f32], values: &[f32], acc: &mut [f32]) {
        assert!(acc.len() == 16 * C && values.len() >= p.len() * 16 * C);
        let mut a: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(acc.as_ptr().add(16 * c)));
        for (j, &pj) in p.iter().enumerate() {
            let w = _mm512_set1_ps(pj);
            let v = values.as_ptr().add(j * 16 * C);
            for (c, ac) in a.iter_mut().enumerate() {
                *ac = _mm512_fmadd_ps(w, _mm512_loadu_ps(v.add(16 * c)), *ac);
            }
        }
        for (c, ac) in a.iter().enumerate() {
            _mm512_storeu_ps(acc.as_mut_ptr().add(16 * c), *ac);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub fn usable(_: usize) -> bool {
        false
    }
    pub unsafe fn scores(_: &[f32], _: &[f32], _: f32, _: &mut [f32]) {
        unreachable!("avx512 is x86_64 only")
    }
    pub unsafe fn weighted_sum(_: &[f32], _: &[f32], _: &mut [f32]) {
        unreachable!("avx512 is x86_64 only")
    }
}

simd_dispatch!(fn attend_simd(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    step: &AttentionStep,
    s: usize,
    h: usize,
    tokens: std::ops::Range<usize>,
) -> Vec<f32> => attend_body);

#[inline(always)]
fn masked_softmax_body<const FMA: bool>(
    scores: &mut [f32],
    ctx: usize,
    valid: &[usize],
    scale: f32,
) {
    for (row, &len) in scores.chunks_exact_mut(ctx).zip(valid) {
        let (live, masked) = row.split_at_mut(len);
        for v in live.iter_mut() {
            *v *= scale;
        }
        softmax_in_place(live);
        masked.fill(0.0);
    }
}

simd_dispatch!(fn masked_softmax(scores: &mut [f32], ctx: usize, valid: &[usize], scale: f32) => masked_softmax_body);

/// [`attend_body`] as two matrix products on the packed-panel kernel, for blocks of many
/// tokens: `S = Q · Kᵀ` over every key the block's last token sees, a causal softmax per
/// row, then `S · V`. Keys and values are packed once per block.
fn attend_gemm(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    step: &AttentionStep,
    s: usize,
    h: usize,
    tokens: std::ops::Range<usize>,
) -> Vec<f32> {
    let (hd, nh) = (step.head_dim, step.heads);
    let g = nh / step.kv_heads;
    let ctx = step.lens[s] + tokens.end;
    let base = step.cache_offset(step.slots[s], h, 0);
    let keys = linear::pack_transposed(&k_cache[base..][..ctx * hd], ctx, hd);
    let values = linear::pack(&v_cache[base..][..ctx * hd], ctx, hd);
    let rows = tokens.len() * g;
    let mut queries = Vec::with_capacity(rows * hd);
    let mut valid = Vec::with_capacity(rows);
    for i in tokens {
        queries.extend_from_slice(&q[((s * step.t + i) * nh + h * g) * hd..][..g * hd]);
        valid.extend(std::iter::repeat_n(step.lens[s] + i + 1, g));
    }
    let mut scores = vec![0f32; rows * ctx];
    linear::linear_serial(&queries, rows, hd, &keys, ctx, &mut scores);
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    masked_softmax(&mut scores, ctx, &valid, scale);
    let mut out = vec![0f32; rows * hd];
    linear::linear_serial(&scores, rows, ctx, &values, hd, &mut out);
    out
}

/// One attention step: rotates the new queries and keys (rows of `qkv`, slot-major in the
/// order of `step.slots`, `[slots * t, (heads + 2 kv_heads) * head_dim]`), writes the new
/// keys and values into the caches after each slot's length, and attends every new token to
/// its slot's cache up to and including itself. Returns `[slots * t, heads * head_dim]`.
pub fn attention(
    qkv: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    step: &AttentionStep,
) -> Vec<f32> {
    let (t, hd, nh, nkv) = (step.t, step.head_dim, step.heads, step.kv_heads);
    let (half, width, rows) = (hd / 2, step.qkv_width(), step.rows());
    assert_eq!(qkv.len(), rows * width, "qkv has the wrong size");
    assert_eq!(step.lens.len(), step.slots.len(), "one length per slot");
    assert!(
        step.slots.iter().all(|&s| s < step.cache_slots),
        "slot outside the cache"
    );
    let mut seen = vec![false; step.cache_slots];
    assert!(
        step.slots
            .iter()
            .all(|&s| !std::mem::replace(&mut seen[s], true)),
        "a slot listed twice"
    );
    assert!(
        step.lens.iter().all(|&l| l + t <= step.capacity),
        "kv cache overflow: capacity {}",
        step.capacity
    );
    assert_eq!(
        k_cache.len(),
        step.cache_offset(step.cache_slots, 0, 0),
        "cache size"
    );
    assert_eq!(v_cache.len(), k_cache.len(), "cache size");

    let mut cos = vec![0f32; rows * half];
    let mut sin = vec![0f32; rows * half];
    for r in 0..rows {
        let pos = (step.lens[r / t] + r % t) as f64;
        for (j, f) in step.inv_freq.iter().enumerate() {
            let angle = pos * f;
            cos[r * half + j] = angle.cos() as f32;
            sin[r * half + j] = angle.sin() as f32;
        }
    }
    let mut q = vec![0f32; rows * nh * hd];
    q.par_chunks_mut(nh * hd).enumerate().for_each(|(r, qr)| {
        let (c, sn) = (&cos[r * half..][..half], &sin[r * half..][..half]);
        for (head, out) in qr.chunks_exact_mut(hd).enumerate() {
            rotate(&qkv[r * width + head * hd..][..hd], c, sn, out);
        }
    });
    for r in 0..rows {
        let (slot, pos) = (step.slots[r / t], step.lens[r / t] + r % t);
        let (c, sn) = (&cos[r * half..][..half], &sin[r * half..][..half]);
        for head in 0..nkv {
            let at = step.cache_offset(slot, head, pos);
            let k = &qkv[r * width + (nh + head) * hd..][..hd];
            rotate(k, c, sn, &mut k_cache[at..at + hd]);
            let v = &qkv[r * width + (nh + nkv + head) * hd..][..hd];
            v_cache[at..at + hd].copy_from_slice(v);
        }
    }

    let (k_cache, v_cache) = (&*k_cache, &*v_cache);
    let gemm = t >= GEMM_TOKENS_PER_TASK;
    let per_task = if gemm {
        GEMM_TOKENS_PER_TASK
    } else {
        TOKENS_PER_TASK
    };
    let tasks: Vec<(usize, usize, usize)> = (0..step.slots.len())
        .flat_map(|s| (0..nkv).flat_map(move |h| (0..t).step_by(per_task).map(move |i| (s, h, i))))
        .collect();
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(s, h, i0)| {
            let tokens = i0..(i0 + per_task).min(t);
            if gemm {
                attend_gemm(&q, k_cache, v_cache, step, s, h, tokens)
            } else {
                attend_simd(&q, k_cache, v_cache, step, s, h, tokens)
            }
        })
        .collect();
    let g = nh / nkv;
    let mut out = vec![0f32; rows * nh * hd];
    for (&(s, h, i0), part) in tasks.iter().zip(&parts) {
        for (n, chunk) in part.chunks_exact(g * hd).enumerate() {
            let row = s * t + i0 + n;
            out[(row * nh + h * g) * hd..][..g * hd].copy_from_slice(chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention computed the obvious way, in f64, from the same inputs.
    fn naive_attention(qkv: &[f32], k0: &[f32], v0: &[f32], step: &AttentionStep) -> Vec<f32> {
        let (t, hd, nh, nkv) = (step.t, step.head_dim, step.heads, step.kv_heads);
        let (half, width, g) = (hd / 2, step.qkv_width(), nh / nkv);
        let rot = |x: &[f32], pos: usize| -> Vec<f64> {
            let mut out = vec![0f64; hd];
            for j in 0..half {
                let a = pos as f64 * step.inv_freq[j];
                let (c, s) = (a.cos() as f32 as f64, a.sin() as f32 as f64);
                let (x1, x2) = (x[j] as f64, x[j + half] as f64);
                out[j] = x1 * c - x2 * s;
                out[j + half] = x2 * c + x1 * s;
            }
            out
        };
        let mut out = vec![0f32; step.rows() * nh * hd];
        for (e, &slot) in step.slots.iter().enumerate() {
            for h in 0..nkv {
                // Keys and values of this slot and head: the cached ones, then the new ones.
                let mut keys: Vec<Vec<f64>> = Vec::new();
                let mut vals: Vec<Vec<f64>> = Vec::new();
                for p in 0..step.lens[e] {
                    let at = step.cache_offset(slot, h, p);
                    keys.push(k0[at..at + hd].iter().map(|&x| x as f64).collect());
                    vals.push(v0[at..at + hd].iter().map(|&x| x as f64).collect());
                }
                for i in 0..t {
                    let row = &qkv[(e * t + i) * width..][..width];
                    keys.push(rot(&row[(nh + h) * hd..][..hd], step.lens[e] + i));
                    vals.push(
                        row[(nh + nkv + h) * hd..][..hd]
                            .iter()
                            .map(|&x| x as f64)
                            .collect(),
                    );
                }
                for i in 0..t {
                    let ctx = step.lens[e] + i + 1;
                    let row = &qkv[(e * t + i) * width..][..width];
                    for qh in h * g..(h + 1) * g {
                        let q = rot(&row[qh * hd..][..hd], step.lens[e] + i);
                        let sc: Vec<f64> = keys[..ctx]
                            .iter()
                            .map(|k| {
                                q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                                    / (hd as f64).sqrt()
                            })
                            .collect();
                        let m = sc.iter().copied().fold(f64::MIN, f64::max);
                        let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                        for d in 0..hd {
                            let v: f64 = sc
                                .iter()
                                .zip(&vals)
                                .map(|(x, v)| (x - m).exp() / z * v[d])
                                .sum();
                            out[((e * t + i) * nh + qh) * hd + d] = v as f32;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_a_naive_implementation() {
        // Head sizes on the AVX-512 path (64, 128) and off it (16); decode, short and long
        // (matrix-product) steps; slots listed out of order with different lengths.
        for hd in [16usize, 64, 128] {
            for t in [1usize, 3, 70] {
                let step = AttentionStep {
                    slots: vec![2, 0],
                    cache_slots: 3,
                    t,
                    heads: 6,
                    kv_heads: 2,
                    head_dim: hd,
                    capacity: 200,
                    lens: vec![37, 5],
                    inv_freq: (0..hd / 2)
                        .map(|j| 10_000f64.powf(-2.0 * j as f64 / hd as f64))
                        .collect(),
                };
                let val = |i: usize, salt: usize| {
                    (((i * 7919 + salt) % 2001) as f32 / 1000.0 - 1.0) * 0.5
                };
                let qkv: Vec<f32> = (0..step.rows() * step.qkv_width())
                    .map(|i| val(i, 1))
                    .collect();
                let size = step.cache_offset(3, 0, 0);
                let (k0, v0): (Vec<f32>, Vec<f32>) = (
                    (0..size).map(|i| val(i, 2)).collect(),
                    (0..size).map(|i| val(i, 3)).collect(),
                );
                let (mut k, mut v) = (k0.clone(), v0.clone());
                let got = attention(&qkv, &mut k, &mut v, &step);
                let want = naive_attention(&qkv, &k0, &v0, &step);
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Measured: at most 5e-8 (f32 rounding against f64).
                assert!(diff < 1e-6, "hd {hd}, t {t}: max diff {diff}");
                // Slot 1 was not listed: its cache is untouched.
                let (a, b) = (step.cache_offset(1, 0, 0), step.cache_offset(2, 0, 0));
                assert_eq!(k[a..b], k0[a..b]);
            }
        }
    }
}
