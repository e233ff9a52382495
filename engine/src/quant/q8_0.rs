//! Q8_0 (ggml id 8): 32-value blocks of 34 bytes, an f16 scale `d` then 32 int8 values;
//! value = q * d. Used for the opt-in quantized output head.

use half::f16;

use super::DenseMatrix;

pub const BLOCK: usize = 32;
pub const BLOCK_BYTES: usize = 34;

/// Quantizes one row (ggml's rule: d = amax / 127, q = round(x / d)).
pub fn quantize_row(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (o, &v) in ob[2..].iter_mut().zip(xb) {
            *o = (v * id).round() as i8 as u8;
        }
    }
}

/// Quantizes a whole dense matrix, rows in parallel (call inside the kernel thread pool).
pub fn quantize_matrix(m: &DenseMatrix<'_>) -> Vec<u8> {
    use rayon::prelude::*;
    let rb = m.k / BLOCK * BLOCK_BYTES;
    let mut out = vec![0u8; m.rows * rb];
    out.par_chunks_mut(rb * 64)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut row = vec![0f32; m.k];
            for (i, o) in chunk.chunks_exact_mut(rb).enumerate() {
                m.row_f32(c * 64 + i, &mut row);
                quantize_row(&row, o);
            }
        });
    out
}
