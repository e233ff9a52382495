//! The quantized output head's arithmetic (Q8_0, Q6_K and Q4_0 rows), as ggml's CPU backend
//! does it: the input vector is quantized to 8 bits per 32-value block (Q8_0's rule), the
//! integer dot of each group of values that share a weight scale (32 for Q8_0 and Q4_0, 16
//! for Q6_K) is exact, and the row's result is `sum over groups of isum * (d_w * d_x)` in f32.
//! [`dot_scalar`] is the specification; the SIMD kernels in `crate::kernels` differ from it
//! only in the order of the float sums.

use half::f16;

use crate::gguf::GgmlType;

/// Values per block of the weights and of the quantized input.
pub const BLOCK: usize = 32;

/// Values per SIMD lane of an integer dot (`vpdpbusd` sums four byte products).
pub const LANE: usize = 4;

/// One input vector quantized for a Q8_0 or Q4_0 head: `q[i] = round(x[i] / d_b)` with
/// `d_b = max |x| / 127` over block b, plus the per-lane terms the kernels start from.
#[derive(Debug, Clone, Default)]
pub struct HeadActs {
    /// The quantized values, in the order of `x`.
    pub q: Vec<i8>,
    /// Block scales, one per [`BLOCK`] values.
    pub d: Vec<f32>,
    /// The block's scale once per [`LANE`] values: multiplied lane by lane.
    pub d_lanes: Vec<f32>,
    /// `-offset * (sum of the lane's four values)`, where the kernels read the weight codes
    /// as unsigned bytes `offset` above their value (Q8_0: 128, Q6_K: 32, Q4_0: 8): an
    /// integer dot started from it gives the signed dot.
    pub corr: Vec<i32>,
}

/// Whether `ty` is a head type with quantized-input kernels.
pub fn is_quantized_head(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q6K | GgmlType::Q4_0)
}

/// (values, bytes) per block of a quantized head type.
pub fn block_shape(ty: GgmlType) -> (usize, usize) {
    match ty {
        GgmlType::Q8_0 => (super::q8_0::BLOCK, super::q8_0::BLOCK_BYTES),
        GgmlType::Q6K => (super::q6_k::BLOCK, super::q6_k::BLOCK_BYTES),
        GgmlType::Q4_0 => (super::q4_0::BLOCK, super::q4_0::BLOCK_BYTES),
        other => unreachable!("{other} is not a quantized head type"),
    }
}

/// Bytes of one row of `k` values of a quantized head type.
pub fn row_bytes(ty: GgmlType, k: usize) -> usize {
    let (n, b) = block_shape(ty);
    k / n * b
}

/// The unsigned offset of `ty`'s codes as the kernels read them.
fn code_offset(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q8_0 => 128,
        GgmlType::Q6K => 32,
        GgmlType::Q4_0 => 8,
        other => unreachable!("{other} is not a quantized head type"),
    }
}

impl HeadActs {
    /// Quantizes `x` (a multiple of [`BLOCK`] values) for rows of type `ty`.
    pub fn new(x: &[f32], ty: GgmlType) -> Self {
        let mut a = Self::default();
        a.quantize(x, ty);
        a
    }

    /// As [`HeadActs::new`], reusing this one's buffers.
    pub fn quantize(&mut self, x: &[f32], ty: GgmlType) {
        assert!(x.len().is_multiple_of(BLOCK), "{} values", x.len());
        let off = code_offset(ty);
        let k = x.len();
        self.q.resize(k, 0);
        self.d.resize(k / BLOCK, 0.0);
        self.d_lanes.resize(k / LANE, 0.0);
        self.corr.resize(k / LANE, 0);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            // A non-finite input gives a non-finite scale (`max` would drop a NaN): the
            // row's logits are NaN, as with the F16 head.
            let amax = xb.iter().fold(0f32, |m, v| {
                if v.is_nan() || v.abs() > m {
                    v.abs()
                } else {
                    m
                }
            });
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            self.d[b] = d;
            let q = &mut self.q[b * BLOCK..(b + 1) * BLOCK];
            for (o, &v) in q.iter_mut().zip(xb) {
                *o = (v * id).round() as i8;
            }
            for l in 0..BLOCK / LANE {
                let lane = b * BLOCK / LANE + l;
                let sum: i32 = q[l * LANE..(l + 1) * LANE].iter().map(|&v| v as i32).sum();
                self.d_lanes[lane] = d;
                self.corr[lane] = -off * sum;
            }
        }
    }

    /// Values quantized.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// The specification: `row` (Q8_0, Q6_K or Q4_0 blocks) against `x`, group by group in f32.
pub fn dot_scalar(ty: GgmlType, row: &[u8], x: &HeadActs) -> f32 {
    let (n, bb) = block_shape(ty);
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(bb).take(x.len() / n).enumerate() {
        let q = &x.q[b * n..(b + 1) * n];
        match ty {
            GgmlType::Q6K => {
                let (d, sc) = super::q6_k::scales(blk);
                for (s, &scale) in sc.iter().enumerate() {
                    let isum: i32 = (16 * s..16 * (s + 1))
                        .map(|i| (super::q6_k::code(blk, i) as i32 - 32) * q[i] as i32)
                        .sum();
                    let dx = x.d[(b * n + 16 * s) / BLOCK];
                    acc += isum as f32 * (d * scale as f32 * dx);
                }
            }
            _ => {
                let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                let isum: i32 = match ty {
                    GgmlType::Q8_0 => blk[2..]
                        .iter()
                        .zip(q)
                        .map(|(&w, &a)| w as i8 as i32 * a as i32)
                        .sum(),
                    _ => (0..BLOCK / 2)
                        .map(|j| {
                            let c = blk[2 + j];
                            ((c & 15) as i32 - 8) * q[j] as i32
                                + ((c >> 4) as i32 - 8) * q[j + BLOCK / 2] as i32
                        })
                        .sum(),
                };
                acc += isum as f32 * (dw * x.d[b]);
            }
        }
    }
    acc
}

/// Bytes of a dense matrix's form in `ty` (Q8_0, Q6_K or Q4_0).
pub fn matrix_bytes(ty: GgmlType, m: &super::DenseMatrix<'_>) -> usize {
    m.rows * row_bytes(ty, m.k)
}

/// Quantizes a dense matrix to `ty` (Q8_0, Q6_K or Q4_0) into `out` ([`matrix_bytes`] long), on
/// the installed kernel pool.
pub fn quantize_matrix_into(ty: GgmlType, m: &super::DenseMatrix<'_>, out: &mut [u8]) {
    let quantize_row: fn(&[f32], &mut [u8]) = match ty {
        // Q8_0 has an AVX-512 path from F16 rows.
        GgmlType::Q8_0 => return super::q8_0::quantize_matrix_into(m, out),
        GgmlType::Q4_0 => super::q4_0::quantize_row,
        GgmlType::Q6K => super::q6_k::quantize_row,
        other => unreachable!("{other} is not a quantized head type"),
    };
    let rb = row_bytes(ty, m.k);
    assert_eq!(out.len(), m.rows * rb);
    if rb == 0 {
        return;
    }
    // 64 rows per task; chunk c holds rows 64c ..
    crate::kernels::pool::for_each_chunk_mut(out, rb * 64, &|c, chunk| {
        let mut row = vec![0f32; m.k];
        for (i, o) in chunk.chunks_exact_mut(rb).enumerate() {
            m.row_f32(c * 64 + i, &mut row);
            quantize_row(&row, o);
        }
    });
}
