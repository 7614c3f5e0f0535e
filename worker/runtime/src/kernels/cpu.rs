//! The decoder's non-matmul steps as CPU kernels on plain f32 slices: RMSNorm and SwiGLU,
//! and the vector helpers the attention kernels share (`dot`, `axpy`, a vectorisable `exp`,
//! row maximum and sum, softmax, rotary). Composed from generic tensor ops these steps cost
//! more than the matmuls around them (strided views, scalar `exp`, a materialised mask);
//! here each is one pass over its data.
//!
//! Every kernel body is written once, generic over `FMA`, and compiled twice: with AVX2+FMA
//! enabled (chosen at run time when the CPU has them) and for the baseline target. Loops are
//! written so the compiler vectorises them; there is no hand-written assembly.

use rayon::prelude::*;

/// Whether the AVX2+FMA builds of the kernels may run on this CPU.
pub(super) fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name`, which runs `$body::<true>` compiled for AVX2+FMA when the CPU has them
/// and `$body::<false>` otherwise.
macro_rules! simd_dispatch {
    (fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $body::<true>($($arg),*)
                }
                if has_fma() {
                    // SAFETY: the CPU supports the features `fast` was compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(super) use simd_dispatch;

#[inline(always)]
pub(super) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Lanes of the accumulators: enough independent sums to hide FMA latency.
pub(super) const LANES: usize = 16;

#[inline(always)]
pub(super) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] = fmadd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    // Pairwise reduction of the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    let mut s = acc[0];
    for (x, y) in ar.iter().zip(br) {
        s = fmadd::<FMA>(*x, *y, s);
    }
    s
}

/// `y += alpha * x`.
#[inline(always)]
pub(super) fn axpy<const FMA: bool>(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = fmadd::<FMA>(alpha, *xi, *yi);
    }
}

/// `e^x` in f32, within 2 ulp on the range where it is neither 0 nor infinite: Cody-Waite
/// reduction to `|r| <= ln 2 / 2`, a degree-7 Taylor polynomial, and the power of two put
/// in the exponent bits. Branch-free and without float-to-int conversions, so loops over it
/// vectorise: adding 1.5 * 2^23 rounds `x log2 e` to an integer that lands in the low
/// mantissa bits. Inputs are clamped to [-87, 88]; callers never feed it a masked (-inf)
/// score.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23

    // Not `clamp`: max/min send NaN to -87 where clamp would pass it on.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // The rounded integer sits in the low bits of `shifted` (bias 0x4B40_0000).
    let int = shifted.to_bits().wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(int.wrapping_add(127) << 23);
    p * scale
}

/// Rows per parallel task of the row-wise kernels: enough work to pay for a task.
const ROWS_PER_TASK: usize = 16;

#[inline(always)]
fn rms_norm_rows_body<const FMA: bool>(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean_square = dot::<FMA>(xr, xr) / n as f32;
        let inv = 1.0 / (mean_square + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

simd_dispatch!(fn rms_norm_rows_simd(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) => rms_norm_rows_body);

/// `out = x / rms(x) * weight` for every row of `x` (`[rows, weight.len()]`).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let chunk = weight.len() * ROWS_PER_TASK;
    x.par_chunks(chunk)
        .zip(out.par_chunks_mut(chunk))
        .for_each(|(xc, oc)| rms_norm_rows_simd(xc, weight, eps, oc));
}

#[inline(always)]
fn swiglu_body<const FMA: bool>(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    for (gu, o) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (gate, up) = gu.split_at(ffn);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

simd_dispatch!(fn swiglu_simd(gate_up: &[f32], ffn: usize, out: &mut [f32]) => swiglu_body);

/// `out = silu(gate) * up` for every row of `gate_up` (`[rows, 2 * ffn]`, gate first).
pub fn swiglu(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    gate_up
        .par_chunks(2 * ffn * ROWS_PER_TASK)
        .zip(out.par_chunks_mut(ffn * ROWS_PER_TASK))
        .for_each(|(gu, o)| swiglu_simd(gu, ffn, o));
}

/// Rotates `x` (one head, halves layout) into `out`: dimension `j` pairs with `j + hd/2`.
#[inline(always)]
pub(super) fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = cos.len();
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        out[j] = a * cos[j] - b * sin[j];
        out[j + half] = b * cos[j] + a * sin[j];
    }
}

/// The sum of `x`, over independent lanes so the loop vectorises.
#[inline(always)]
pub(super) fn sum_of(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            lanes[l] += c[l];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The largest of `x` (not empty), over independent lanes so the loop vectorises.
#[inline(always)]
pub(super) fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    lanes.iter().fold(rest, |m, &v| m.max(v))
}

#[inline(always)]
pub(super) fn softmax_in_place(x: &mut [f32]) {
    let max = max_of(x);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let sum = sum_of(x);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_std() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3.0 * f32::EPSILON, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn dot_and_softmax_match_plain_loops() {
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot::<false>(&a, &b) - plain).abs() < 1e-5);
        assert!((dot::<true>(&a, &b) - plain).abs() < 1e-5);
        let mut s = a.clone();
        softmax_in_place(&mut s);
        let max = a.iter().copied().fold(f32::MIN, f32::max);
        let z: f32 = a.iter().map(|v| (v - max).exp()).sum();
        for (p, v) in s.iter().zip(&a) {
            assert!((p - (v - max).exp() / z).abs() < 1e-6);
        }
    }
}
