//! Dequantisation of ggml storage types to f32.
//!
//! Block layouts follow the ggml format description: legacy 32-element
//! blocks (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`) hold an f16 scale (and
//! minimum) followed by packed quants; k-quants use 256-element super-blocks
//! with 6-bit (or 4-bit) sub-block scales.

use half::{bf16, f16};

use super::{GgmlType, GgufError, Result};

/// Decodes `n_elements` values of type `dtype` from `bytes`.
///
/// `bytes` must be exactly the stored size of `n_elements` values, and
/// `n_elements` a multiple of the type's block size.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    let (block, size) = dtype
        .block_layout()
        .ok_or(GgufError::UnsupportedType(dtype))?;
    let mismatch = |expected| GgufError::SizeMismatch {
        dtype,
        n_elements,
        expected,
        got: bytes.len(),
    };
    if !n_elements.is_multiple_of(block) {
        return Err(mismatch(n_elements.div_ceil(block) * size));
    }
    let expected = n_elements / block * size;
    if bytes.len() != expected {
        return Err(mismatch(expected));
    }
    let mut out = vec![0f32; n_elements];
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(block));
    match dtype {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::F64 => blocks.for_each(|(b, y)| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            y[0] = f64::from_le_bytes(a) as f32;
        }),
        GgmlType::I8 => blocks.for_each(|(b, y)| y[0] = f32::from(b[0] as i8)),
        GgmlType::I16 => {
            blocks.for_each(|(b, y)| y[0] = f32::from(i16::from_le_bytes([b[0], b[1]])))
        }
        GgmlType::I32 => {
            blocks.for_each(|(b, y)| y[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        other => return Err(GgufError::UnsupportedType(other)),
    }
    Ok(out)
}

#[inline]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `d: f16, qs: [u8; 16]`; low nibbles are elements 0..16, high 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for (j, &q) in qs.iter().enumerate() {
        y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..20];
    for (j, &q) in qs.iter().enumerate() {
        y[j] = (q & 0x0f) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `d: f16, qh: u32, qs: [u8; 16]`; bit j of qh is the fifth bit of element j.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (j, &q) in qs.iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((q & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// `d: f16, m: f16, qh: u32, qs: [u8; 16]`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (j, &q) in qs.iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((q & 0x0f) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// `d: f16, qs: [i8; 32]`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let d = half_at(b, 80);
    let dmin = half_at(b, 82);
    let mut is = 0;
    for (half, yh) in y.chunks_exact_mut(128).enumerate() {
        let q = &b[16 + 32 * half..16 + 32 * half + 32];
        for (j, yj) in yh.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            for (k, ys) in yj.chunks_exact_mut(16).enumerate() {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0f) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for (l, v) in ys.iter_mut().enumerate() {
                    *v = dl * ((q[l + 16 * k] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12] (6-bit packed), d: f16`.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let s = &b[96..108];
    let d = half_at(b, 108);
    let mut scales = [0i32; 16];
    for (i, sc) in scales.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *sc = (low | (high << 4)) as i32 - 32;
    }
    let mut is = 0;
    for (half, yh) in y.chunks_exact_mut(128).enumerate() {
        let q = &b[32 + 32 * half..32 + 32 * half + 32];
        for (j, yj) in yh.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            let m = 1u8 << (4 * half + j);
            for (k, ys) in yj.chunks_exact_mut(16).enumerate() {
                let dl = d * scales[is] as f32;
                is += 1;
                for (l, v) in ys.iter_mut().enumerate() {
                    let idx = l + 16 * k;
                    let low = ((q[idx] >> shift) & 3) as i32;
                    let sub = if hmask[idx] & m != 0 { 0 } else { 4 };
                    *v = dl * (low - sub) as f32;
                }
            }
        }
    }
}

/// Scale and minimum of sub-block `j` from the 12-byte packed k-quant scales.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (j, yj) in y.chunks_exact_mut(64).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * j..32 * j + 32];
        let (lo, hi) = yj.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (j, yj) in y.chunks_exact_mut(64).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        let q = &qs[32 * j..32 * j + 32];
        let (lo, hi) = yj.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((q[l] & 0x0f) + h1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 208);
    for (n, yh) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            yh[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            yh[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            yh[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            yh[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
