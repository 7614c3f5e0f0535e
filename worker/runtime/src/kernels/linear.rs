//! `x · W` on the CPU with `W` packed once, at load time, into column panels: panel `p` holds
//! columns `p*PANEL .. (p+1)*PANEL` of the `[in, out]` matrix, row after row, so the kernel
//! reads every weight exactly once per call, front to back. A general GEMM library repacks
//! its right-hand side on every call; at decode batch sizes that repacking costs more than
//! the arithmetic, because the weights come from memory, not cache.
//!
//! The AVX-512 micro-kernel keeps an `MR x PANEL` block of the output in 16 registers and
//! streams `k` rows of one panel through it. On AVX2+FMA CPUs (16 registers of 8 lanes) the
//! micro-kernel covers half a panel at a time, 6 rows x 16 columns in 12 registers. Other
//! CPUs take a plain-loop fallback (correct, not tuned).

use rayon::prelude::*;

/// Output columns per panel (two 16-lane AVX-512 vectors).
pub const PANEL: usize = 32;
/// Rows of `x` per micro-kernel call.
const MR: usize = 8;

/// Panels needed for `out` columns (the last one zero-padded).
pub fn panels(out: usize) -> usize {
    out.div_ceil(PANEL)
}

/// Packs a row-major `[k, n]` matrix into `[panels(n), k, PANEL]`.
pub fn pack(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), k * n, "matrix size");
    let mut out = vec![0f32; panels(n) * k * PANEL];
    for (p, panel) in out.chunks_exact_mut(k * PANEL).enumerate() {
        let cols = (n - p * PANEL).min(PANEL);
        for (row, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
            dst[..cols].copy_from_slice(&w[row * n + p * PANEL..][..cols]);
        }
    }
    out
}

/// Packs the transpose of a row-major `[n, k]` matrix (`x · Wᵀ`, as for a tied lm-head
/// whose weight is the `[vocab, hidden]` embedding) into `[panels(n), k, PANEL]`.
pub fn pack_transposed(wt: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(wt.len(), n * k, "matrix size");
    let mut out = vec![0f32; panels(n) * k * PANEL];
    for (col, row) in wt.chunks_exact(k).enumerate() {
        let (p, lane) = (col / PANEL, col % PANEL);
        let panel = &mut out[p * k * PANEL..][..k * PANEL];
        for (kk, &v) in row.iter().enumerate() {
            panel[kk * PANEL + lane] = v;
        }
    }
    out
}

/// The inverse of [`pack`]: `[panels, k, PANEL]` back to row-major `[k, n]`.
pub fn unpack(packed: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * n];
    for (p, panel) in packed.chunks_exact(k * PANEL).enumerate() {
        let cols = (n - p * PANEL).min(PANEL);
        for (row, src) in panel.chunks_exact(PANEL).enumerate() {
            out[row * n + p * PANEL..][..cols].copy_from_slice(&src[..cols]);
        }
    }
    out
}

/// The output matrix, written by several tasks at once, each in its own columns.
struct Output(*mut f32);

// SAFETY: tasks write disjoint column ranges of the buffer (see `linear`), and the buffer
// outlives the parallel loop that shares it.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// `out[m, n] = x[m, k] · W`, with `W` packed by [`pack`]; panels run in parallel.
pub fn linear(x: &[f32], m: usize, k: usize, packed: &[f32], n: usize, out: &mut [f32]) {
    check_sizes(x, m, k, packed, n, out);
    let shared = Output(out.as_mut_ptr());
    let fast = simd_level();
    (0..panels(n)).into_par_iter().for_each(|p| {
        let base = &shared;
        // SAFETY: sizes checked; this task alone writes the columns of panel `p`.
        unsafe { panel_product(x, m, k, packed, p, n, base.0, fast) };
    });
}

/// [`linear`] on the calling thread, for callers that are already parallel tasks.
pub fn linear_serial(x: &[f32], m: usize, k: usize, packed: &[f32], n: usize, out: &mut [f32]) {
    check_sizes(x, m, k, packed, n, out);
    let fast = simd_level();
    for p in 0..panels(n) {
        // SAFETY: sizes checked; `out` is borrowed mutably for the whole loop.
        unsafe { panel_product(x, m, k, packed, p, n, out.as_mut_ptr(), fast) };
    }
}

fn check_sizes(x: &[f32], m: usize, k: usize, packed: &[f32], n: usize, out: &[f32]) {
    assert_eq!(x.len(), m * k, "x size");
    assert_eq!(packed.len(), panels(n) * k * PANEL, "packed weight size");
    assert_eq!(out.len(), m * n, "out size");
}

/// Columns of panel `p` for all `m` rows, written to the row-major `[m, n]` matrix at `out`.
///
/// # Safety
/// `out` must be valid for writes of `m * n` elements, `x` must hold `m * k` and `packed`
/// `panels(n) * k * PANEL`, and `simd` must be what [`simd_level`] says of this CPU (or
/// less).
#[allow(clippy::too_many_arguments)]
unsafe fn panel_product(
    x: &[f32],
    m: usize,
    k: usize,
    packed: &[f32],
    p: usize,
    n: usize,
    out: *mut f32,
    simd: Simd,
) {
    let panel = &packed[p * k * PANEL..][..k * PANEL];
    let cols = (n - p * PANEL).min(PANEL);
    let dst = out.add(p * PANEL);
    #[cfg(target_arch = "x86_64")]
    match simd {
        Simd::Avx512 => return avx512::block(x, m, k, panel, dst, n, cols),
        Simd::Avx2 => return avx2::block(x, m, k, panel, dst, n, cols),
        Simd::None => {}
    }
    let _ = simd;
    block_generic(x, m, k, panel, dst, n, cols);
}

/// The widest vector instructions the micro-kernel may use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    None,
}

pub fn simd_level() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2;
        }
    }
    Simd::None
}

/// `rows` rows of `x` times one panel, into `cols` columns at `dst` (row stride `n`).
///
/// # Safety
/// `dst + r * n + c` must be valid for writes for every `r < rows`, `c < cols`.
unsafe fn block_generic(
    x: &[f32],
    rows: usize,
    k: usize,
    panel: &[f32],
    dst: *mut f32,
    n: usize,
    cols: usize,
) {
    for r in 0..rows {
        let mut acc = [0f32; PANEL];
        for (xv, w) in x[r * k..][..k].iter().zip(panel.chunks_exact(PANEL)) {
            for (a, wv) in acc.iter_mut().zip(w) {
                *a += xv * wv;
            }
        }
        std::ptr::copy_nonoverlapping(acc.as_ptr(), dst.add(r * n), cols);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, PANEL};

    /// `R` rows at once (`R <= MR`): `2R` accumulators, two weight loads and `R` broadcasts
    /// per step of `k`. Eight rows keep 16 of the 32 vector registers busy.
    #[inline(always)]
    unsafe fn tile<const R: usize>(
        x: &[f32],
        k: usize,
        panel: &[f32],
        dst: *mut f32,
        n: usize,
        cols: usize,
    ) {
        let mut c = [[_mm512_setzero_ps(); 2]; R];
        let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..][..k]);
        for (kk, w) in panel.chunks_exact(PANEL).enumerate() {
            let w0 = _mm512_loadu_ps(w.as_ptr());
            let w1 = _mm512_loadu_ps(w.as_ptr().add(16));
            for r in 0..R {
                let xv = _mm512_set1_ps(*rows[r].get_unchecked(kk));
                c[r][0] = _mm512_fmadd_ps(xv, w0, c[r][0]);
                c[r][1] = _mm512_fmadd_ps(xv, w1, c[r][1]);
            }
        }
        for (r, [lo, hi]) in c.into_iter().enumerate() {
            store(lo, hi, dst.add(r * n), cols);
        }
    }

    /// Writes the first `cols` lanes of `lo|hi` to `dst`.
    #[inline(always)]
    unsafe fn store(lo: __m512, hi: __m512, dst: *mut f32, cols: usize) {
        if cols == PANEL {
            _mm512_storeu_ps(dst, lo);
            _mm512_storeu_ps(dst.add(16), hi);
        } else {
            let mut tmp = [0f32; PANEL];
            _mm512_storeu_ps(tmp.as_mut_ptr(), lo);
            _mm512_storeu_ps(tmp.as_mut_ptr().add(16), hi);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
        }
    }

    /// See `super::block_generic`; the caller also guarantees AVX-512F. A short block is
    /// split into 4-, 2- and 1-row tiles.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(
        x: &[f32],
        rows: usize,
        k: usize,
        panel: &[f32],
        dst: *mut f32,
        n: usize,
        cols: usize,
    ) {
        let mut r = 0;
        while r < rows {
            let (xs, d) = (&x[r * k..], dst.add(r * n));
            r += match rows - r {
                8.. => {
                    tile::<MR>(xs, k, panel, d, n, cols);
                    MR
                }
                4..=7 => {
                    tile::<4>(xs, k, panel, d, n, cols);
                    4
                }
                2 | 3 => {
                    tile::<2>(xs, k, panel, d, n, cols);
                    2
                }
                _ => {
                    tile::<1>(xs, k, panel, d, n, cols);
                    1
                }
            };
        }
    }
}
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// Half a panel (16 columns, two 8-lane vectors) for `R` rows: `2R` accumulators, two
    /// weight loads and `R` broadcasts per step of `k`.
    #[inline(always)]
    unsafe fn tile<const R: usize>(
        x: &[f32],
        k: usize,
        panel: &[f32],
        half: usize,
        dst: *mut f32,
        n: usize,
        cols: usize,
    ) {
        let mut c = [[_mm256_setzero_ps(); 2]; R];
        let rows: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..][..k]);
        let w = panel.as_ptr().add(16 * half);
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(w.add(kk * PANEL));
            let w1 = _mm256_loadu_ps(w.add(kk * PANEL + 8));
            for r in 0..R {
                let xv = _mm256_set1_ps(*rows[r].get_unchecked(kk));
                c[r][0] = _mm256_fmadd_ps(xv, w0, c[r][0]);
                c[r][1] = _mm256_fmadd_ps(xv, w1, c[r][1]);
            }
        }
        let first = 16 * half;
        let width = cols.saturating_sub(first).min(16);
        for (r, [lo, hi]) in c.into_iter().enumerate() {
            let d = dst.add(r * n + first);
            if width == 16 {
                _mm256_storeu_ps(d, lo);
                _mm256_storeu_ps(d.add(8), hi);
            } else {
                let mut tmp = [0f32; 16];
                _mm256_storeu_ps(tmp.as_mut_ptr(), lo);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), d, width);
            }
        }
    }

    /// See `super::block_generic`; the caller also guarantees AVX2 and FMA. Rows go in
    /// tiles of 6, 4, 2 and 1, each over both halves of the panel that hold columns.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(
        x: &[f32],
        rows: usize,
        k: usize,
        panel: &[f32],
        dst: *mut f32,
        n: usize,
        cols: usize,
    ) {
        let halves = cols.div_ceil(16);
        let mut r = 0;
        while r < rows {
            let (xs, d) = (&x[r * k..], dst.add(r * n));
            let step = match rows - r {
                6.. => 6,
                4 | 5 => 4,
                2 | 3 => 2,
                _ => 1,
            };
            for half in 0..halves {
                match step {
                    6 => tile::<6>(xs, k, panel, half, d, n, cols),
                    4 => tile::<4>(xs, k, panel, half, d, n, cols),
                    2 => tile::<2>(xs, k, panel, half, d, n, cols),
                    _ => tile::<1>(xs, k, panel, half, d, n, cols),
                }
            }
            r += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum();
            }
        }
        out
    }

    #[test]
    fn packed_linear_matches_a_plain_matmul() {
        // Ragged shapes: rows not a multiple of 8, columns not a multiple of the panel.
        for &(m, k, n) in &[
            (1, 7, 5),
            (3, 64, 32),
            (8, 40, 70),
            (19, 33, 97),
            (64, 16, 64),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 23) as f32 - 11.0) / 5.0)
                .collect();
            let packed = pack(&w, k, n);
            assert_eq!(unpack(&packed, k, n), w);
            let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            assert_eq!(pack_transposed(&wt, n, k), packed);
            let mut out = vec![f32::NAN; m * n];
            linear(&x, m, k, &packed, n, &mut out);
            let expected = matmul(&x, m, k, &w, n);
            for (a, b) in out.iter().zip(&expected) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{m}x{k}x{n}: {a} vs {b}"
                );
            }
            let mut generic = vec![0f32; m * n];
            for p in 0..panels(n) {
                let cols = (n - p * PANEL).min(PANEL);
                let panel = &packed[p * k * PANEL..][..k * PANEL];
                // SAFETY: columns `p*PANEL..+cols` of `m` rows of stride `n` are in `generic`.
                unsafe {
                    block_generic(&x, m, k, panel, generic[p * PANEL..].as_mut_ptr(), n, cols)
                };
            }
            for (a, b) in generic.iter().zip(&expected) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "generic {m}x{k}x{n}"
                );
            }
            // Every micro-kernel this CPU can run gives the same product.
            #[cfg(target_arch = "x86_64")]
            for simd in [Simd::Avx512, Simd::Avx2] {
                let usable = match simd {
                    Simd::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                    _ => {
                        std::arch::is_x86_feature_detected!("avx2")
                            && std::arch::is_x86_feature_detected!("fma")
                    }
                };
                if !usable {
                    continue;
                }
                let mut got = vec![f32::NAN; m * n];
                for p in 0..panels(n) {
                    // SAFETY: sizes as above; the CPU has the features of `simd`.
                    unsafe { panel_product(&x, m, k, &packed, p, n, got.as_mut_ptr(), simd) };
                }
                for (a, b) in got.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{simd:?} {m}x{k}x{n}"
                    );
                }
            }
        }
    }
}
