//! Q4_0 (ggml id 2): 32-value blocks of 18 bytes, an f16 scale `d` then 16 bytes of 4-bit
//! codes (byte j holds value j in its low nibble and value j + 16 in its high nibble);
//! value = (code - 8) * d. A prepared file's tied token embedding / output head.

use half::f16;

pub const BLOCK: usize = 32;
pub const BLOCK_BYTES: usize = 18;

/// Quantizes one row by ggml's rule: the value of largest magnitude maps to code 0
/// (d = that value / -8), every value to `min(15, trunc(x / d + 8.5))`.
pub fn quantize_row(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        // `as u8` truncates (the argument is >= 0 up to rounding) and saturates a NaN to 0.
        let code = |v: f32| ((v * id + 8.5) as u8).min(15);
        for j in 0..BLOCK / 2 {
            ob[2 + j] = code(xb[j]) | (code(xb[j + BLOCK / 2]) << 4);
        }
    }
}

/// Row of Q4_0 blocks to f32.
pub fn dequantize_row(row: &[u8], out: &mut [f32]) {
    for (blk, ob) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        for j in 0..BLOCK / 2 {
            let c = blk[2 + j];
            ob[j] = ((c & 15) as i32 - 8) as f32 * d;
            ob[j + BLOCK / 2] = ((c >> 4) as i32 - 8) as f32 * d;
        }
    }
}
