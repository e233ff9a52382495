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

/// Quantizes an F16 row (`2 * k` bytes) with AVX-512, bit-identical to converting it to f32
/// and calling [`quantize_row`]: same maximum, the same `d` and `1 / d` in f32, and ggml's
/// round-half-away-from-zero done exactly (`trunc`, then the exact fraction decides). Blocks
/// holding a non-finite value go through [`quantize_row`] itself (NaN ordering in `max`).
///
/// # Safety
/// The CPU supports AVX-512 F/BW; `row.len() == 2 * k`, `out.len() == k / 32 * 34`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
pub unsafe fn quantize_f16_row_avx512(row: &[u8], out: &mut [u8]) {
    use std::arch::x86_64::*;
    assert_eq!(row.len() / 64 * BLOCK_BYTES, out.len());
    let abs = |v: __m512| {
        _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(v),
            _mm512_set1_epi32(0x7fff_ffff),
        ))
    };
    let sign = _mm512_set1_epi32(i32::MIN);
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let inf = _mm512_set1_ps(f32::INFINITY);
    for (rb, ob) in row.chunks_exact(64).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        // SAFETY: `rb` is 64 bytes: 32 f16 values in two 32-byte halves.
        let (lo, hi) = unsafe {
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(rb.as_ptr() as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(rb.as_ptr().add(32) as *const __m256i)),
            )
        };
        let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs(lo), inf) == 0xFFFF
            && _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs(hi), inf) == 0xFFFF;
        if !finite {
            let mut x = [0f32; BLOCK];
            for (o, c) in x.iter_mut().zip(rb.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
            quantize_row(&x, ob);
            continue;
        }
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(lo), abs(hi)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // The hardware conversion rounds to nearest even, as `f16::from_f32` does (d is
        // finite here).
        let d16 = _mm_cvtsi128_si32(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(d)));
        ob[..2].copy_from_slice(&(d16 as u16).to_le_bytes());
        let idv = _mm512_set1_ps(id);
        let q = [lo, hi].map(|x| {
            let v = _mm512_mul_ps(x, idv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            // |v - t| is exact; >= 0.5 means round away from zero.
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(abs(_mm512_sub_ps(v, t)), half);
            let step = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(one),
                _mm512_and_si512(_mm512_castps_si512(v), sign),
            ));
            let r = _mm512_mask_add_ps(t, away, t, step);
            // Integral values: truncation is exact; `as i8` saturates, so does this.
            _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(r))
        });
        // SAFETY: bytes 2..34 of `ob` take the two 16-byte halves.
        unsafe {
            _mm_storeu_si128(ob.as_mut_ptr().add(2) as *mut __m128i, q[0]);
            _mm_storeu_si128(ob.as_mut_ptr().add(18) as *mut __m128i, q[1]);
        }
    }
}

/// Bytes of a dense matrix's Q8_0 form.
pub fn matrix_bytes(m: &DenseMatrix<'_>) -> usize {
    m.rows * (m.k / BLOCK * BLOCK_BYTES)
}

/// Quantizes a whole dense matrix, rows in parallel on the installed kernel pool
/// ([`crate::kernels::Kernels::install`]), serially without one.
pub fn quantize_matrix(m: &DenseMatrix<'_>) -> Vec<u8> {
    let mut out = vec![0u8; matrix_bytes(m)];
    quantize_matrix_into(m, &mut out);
    out
}

/// [`quantize_matrix`] into `out` ([`matrix_bytes`] long).
pub fn quantize_matrix_into(m: &DenseMatrix<'_>, out: &mut [u8]) {
    let rb = m.k / BLOCK * BLOCK_BYTES;
    assert_eq!(out.len(), m.rows * rb);
    if rb == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let simd = m.ty == crate::gguf::GgmlType::F16
        && m.k.is_multiple_of(BLOCK)
        && crate::kernels::Isa::from_env() == crate::kernels::Isa::Avx512Vnni;
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    crate::kernels::pool::for_each_chunk_mut(out, rb * 64, &|c, chunk| {
        let mut row = vec![0f32; m.k];
        for (i, o) in chunk.chunks_exact_mut(rb).enumerate() {
            let r = c * 64 + i;
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX-512 F/BW were detected; row r is 2k bytes of F16 and `o`
                // is its k / 32 blocks.
                unsafe { quantize_f16_row_avx512(&m.data[r * 2 * m.k..(r + 1) * 2 * m.k], o) };
                continue;
            }
            m.row_f32(r, &mut row);
            quantize_row(&row, o);
        }
    });
}
