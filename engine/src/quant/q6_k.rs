//! Q6_K (ggml id 14): 256-value super-blocks of 210 bytes: `ql` (128 bytes, the low four
//! bits), `qh` (64 bytes, the high two), 16 signed 8-bit scales (one per 16 values), then an
//! f16 `d`; value i = d * scales[i / 16] * (q_i - 32) with q_i in 0..64.
//!
//! Each half of 128 values reads 64 bytes of `ql` and 32 of `qh`: value j (0..128) of the
//! half takes the low nibble of `ql[j]` for j < 64 and the high nibble of `ql[j - 64]` after,
//! and bits `2 * (j / 32)` .. + 2 of `qh[j % 32]` as its high two bits.

use half::f16;

pub const BLOCK: usize = 256;
pub const BLOCK_BYTES: usize = 210;
const QL: usize = 0;
const QH: usize = 128;
const SCALES: usize = 192;
const D: usize = 208;

/// The 6-bit code (0..64) of value `i` of a block.
#[inline]
pub fn code(blk: &[u8], i: usize) -> u8 {
    let (half, j) = (i / 128, i % 128);
    let ql = blk[QL + 64 * half + j % 64];
    let low = if j < 64 { ql & 15 } else { ql >> 4 };
    let high = (blk[QH + 32 * half + j % 32] >> (2 * (j / 32))) & 3;
    low | (high << 4)
}

/// The block's `d` and its 16 sub-block scales.
#[inline]
pub fn scales(blk: &[u8]) -> (f32, [i8; 16]) {
    let d = f16::from_le_bytes([blk[D], blk[D + 1]]).to_f32();
    (d, std::array::from_fn(|s| blk[SCALES + s] as i8))
}

/// Row of Q6_K blocks to f32.
pub fn dequantize_row(row: &[u8], out: &mut [f32]) {
    for (blk, ob) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let (d, sc) = scales(blk);
        for (i, o) in ob.iter_mut().enumerate() {
            *o = d * sc[i / 16] as f32 * (code(blk, i) as i32 - 32) as f32;
        }
    }
}

/// `v` rounded to the nearest integer, ties to even (as ggml's k-quant quantizers round).
fn nearest(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// The scale of `x` (16 values) on the grid -32..31 that minimises the squared error weighted
/// by x², found by trying 19 starting scales around `-32 / max` (the value of largest
/// magnitude maps to -32 at the first): ggml's search for k-quant sub-blocks. `codes` gets
/// each value's level + 32.
fn sub_block_scale(x: &[f32], codes: &mut [u8]) -> f32 {
    const NMAX: f32 = 32.0;
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-30 {
        codes.fill(32);
        return 0.0;
    }
    let levels = |iscale: f32, out: &mut [i32]| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (o, &v) in out.iter_mut().zip(x) {
            let l = nearest(iscale * v).clamp(-32, 31);
            *o = l;
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * (l * l) as f32;
        }
        (sumlx, suml2)
    };
    let mut best_l = [0i32; 16];
    let (sumlx, suml2) = levels(-NMAX / max, &mut best_l);
    let mut scale = if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut l = [0i32; 16];
    for step in -9..=9 {
        if step == 0 {
            continue;
        }
        let (sumlx, suml2) = levels(-(NMAX + 0.1 * step as f32) / max, &mut l);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            scale = sumlx / suml2;
            best = scale * sumlx;
            best_l = l;
        }
    }
    for (c, &l) in codes.iter_mut().zip(&best_l) {
        *c = (l + 32) as u8;
    }
    scale
}

/// Quantizes one row (a multiple of 256 values): per sub-block of 16 the searched scale,
/// the 16 scales quantized to 8 bits against the largest (`d = max / -128`), then every value
/// again against its sub-block's quantized scale.
pub fn quantize_row(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let mut codes = [32u8; BLOCK];
        let mut sub = [0f32; 16];
        let (mut amax, mut max) = (0f32, 0f32);
        for (s, sc) in sub.iter_mut().enumerate() {
            *sc = sub_block_scale(&xb[16 * s..16 * (s + 1)], &mut codes[16 * s..16 * (s + 1)]);
            if sc.abs() > amax {
                amax = sc.abs();
                max = *sc;
            }
        }
        ob.fill(0);
        if amax < 1e-30 {
            for half in 0..2 {
                pack_half(&[32; 128], ob, half);
            }
            continue;
        }
        let iscale = -128.0 / max;
        let d = f16::from_f32(1.0 / iscale);
        ob[D..D + 2].copy_from_slice(&d.to_le_bytes());
        let d = d.to_f32();
        for (s, &sc) in sub.iter().enumerate() {
            let q = nearest(iscale * sc).min(127);
            ob[SCALES + s] = q as i8 as u8;
            let dd = d * q as f32;
            if dd == 0.0 {
                continue;
            }
            for i in 16 * s..16 * (s + 1) {
                codes[i] = (nearest(xb[i] / dd).clamp(-32, 31) + 32) as u8;
            }
        }
        for half in 0..2 {
            let c: &[u8; 128] = codes[128 * half..128 * (half + 1)].try_into().unwrap();
            pack_half(c, ob, half);
        }
    }
}

/// Writes half `half` (128 codes) of a block's `ql` and `qh`.
fn pack_half(codes: &[u8; 128], blk: &mut [u8], half: usize) {
    for j in 0..64 {
        let (lo, hi) = (codes[j] & 15, codes[j + 64] & 15);
        blk[QL + 64 * half + j] = lo | (hi << 4);
    }
    for j in 0..32 {
        let mut h = 0u8;
        for s in 0..4 {
            h |= (codes[j + 32 * s] >> 4) << (2 * s);
        }
        blk[QH + 32 * half + j] = h;
    }
}
