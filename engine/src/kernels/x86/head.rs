//! The quantized output head (Q8_0 and Q4_0 rows against [`HeadActs`]) with AVX-512 VNNI
//! and with AVX2: SIMD twins of [`crate::quant::head::dot_scalar`].
//!
//! One kernel per instruction set computes a tile of `R` rows by `V` input vectors, and the
//! operations for one (row, vector) pair are the same whatever `R` and `V` are: a sequence's
//! logits do not depend on the batch it is decoded in (one vector with many rows in flight
//! when decoding alone, a few rows by a few vectors when batched).
//!
//! The weight codes are read as unsigned bytes: Q4_0's codes are 0..15 (value + 8); Q8_0's
//! are flipped to value + 128 (AVX-512) so that `vpdpbusd` takes them, the integer dot then
//! starting from [`HeadActs::corr`]. AVX2 has no such instruction: Q8_0 goes through
//! `vpmaddubsw` with the sign moved to the inputs, Q4_0 adds the correction after.

use std::arch::x86_64::*;

use crate::gguf::GgmlType;
use crate::quant::head::HeadActs;

/// How far ahead of the current weight bytes to prefetch (in rows read in lockstep).
const PREFETCH: usize = 1024;

/// Which quantized head type a kernel reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HeadType {
    Q8_0,
    Q6K,
    Q4_0,
}

impl HeadType {
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q8_0 => Some(Self::Q8_0),
            GgmlType::Q6K => Some(Self::Q6K),
            GgmlType::Q4_0 => Some(Self::Q4_0),
            _ => None,
        }
    }

    /// Bytes per 32-value block (Q6_K's 256-value blocks have their own kernels).
    const fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => crate::quant::q8_0::BLOCK_BYTES,
            Self::Q6K => 0,
            Self::Q4_0 => crate::quant::q4_0::BLOCK_BYTES,
        }
    }
}

/// Two consecutive blocks of a row as 64 unsigned codes in value order, and their scales
/// (lanes 0-7 the first block's, 8-15 the second's).
///
/// # Safety
/// AVX-512 F/BW and F16C; `p` points at two whole blocks of type `ty`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn load_pair_avx512(ty: HeadType, p: *const u8) -> (__m512i, __m512) {
    let bb = ty.block_bytes();
    // SAFETY: the caller guarantees two blocks from p.
    unsafe {
        let d0 = (p as *const i16).read_unaligned();
        let d1 = (p.add(bb) as *const i16).read_unaligned();
        let d = _mm512_cvtph_ps(_mm256_set_m128i(_mm_set1_epi16(d1), _mm_set1_epi16(d0)));
        let codes = match ty {
            HeadType::Q8_0 => {
                let lo = _mm256_loadu_si256(p.add(2) as *const __m256i);
                let hi = _mm256_loadu_si256(p.add(bb + 2) as *const __m256i);
                let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                _mm512_xor_si512(w, _mm512_set1_epi8(-128))
            }
            HeadType::Q4_0 => {
                let a = _mm_loadu_si128(p.add(2) as *const __m128i);
                let b = _mm_loadu_si128(p.add(bb + 2) as *const __m128i);
                let y = _mm256_set_m128i(b, a);
                let both =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y), _mm256_srli_epi16::<4>(y));
                let nibbles = _mm512_and_si512(both, _mm512_set1_epi8(15));
                // 128-bit lanes [a low, b low, a high, b high] to [a low, a high, b low, b high].
                _mm512_shuffle_i64x2::<0b11_01_10_00>(nibbles, nibbles)
            }
            HeadType::Q6K => unreachable!("Q6_K has its own kernel"),
        };
        (codes, d)
    }
}

/// `out[r][v] = rows[r] · acts[v]` with AVX-512 VNNI.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VNNI and F16C; every `acts[v]` holds `k` values with `k` a
/// multiple of 64, and every row `k / 32` blocks of type `ty`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
pub unsafe fn tile_avx512<const R: usize, const V: usize>(
    ty: HeadType,
    rows: [&[u8]; R],
    acts: [&HeadActs; V],
) -> [[f32; V]; R] {
    if ty == HeadType::Q6K {
        // SAFETY: the caller's guarantees (k is a multiple of 256 for Q6_K rows).
        return unsafe { q6k_tile_avx512(rows, acts) };
    }
    let k = acts[0].len();
    let bb = ty.block_bytes();
    debug_assert!(k.is_multiple_of(64));
    debug_assert!(rows.iter().all(|r| r.len() >= k / 32 * bb));
    debug_assert!(acts.iter().all(|a| a.len() == k));
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for pair in 0..k / 64 {
        // Loops rather than closures here and below: a closure does not inherit the target
        // features, and its intrinsics would not be inlined.
        let mut w = [(_mm512_setzero_si512(), _mm512_setzero_ps()); R];
        for r in 0..R {
            // SAFETY: block pair `pair` is within every row (k / 32 blocks each).
            w[r] = unsafe {
                let p = rows[r].as_ptr().add(pair * 2 * bb);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                load_pair_avx512(ty, p)
            };
        }
        for (v, a) in acts.iter().enumerate() {
            // SAFETY: values 64 * pair .. + 64 are within the vector.
            let (q, corr, dl) = unsafe { acts_avx512(a, 64 * pair) };
            for (r, (codes, dw)) in w.iter().enumerate() {
                let isum = _mm512_dpbusd_epi32(corr, *codes, q);
                let scale = _mm512_mul_ps(*dw, dl);
                acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[r][v]);
            }
        }
    }
    sums_avx512(&acc)
}

/// One block of a row as 32 codes for `vpmaddubsw`'s unsigned operand, and the inputs `q`
/// with the sign it needs (Q4_0's lanes still need [`HeadActs::corr`] added).
///
/// # Safety
/// AVX2; `p` points at a whole block of type `ty`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(ty: HeadType, p: *const u8, q: __m256i) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees one block from p.
    unsafe {
        match ty {
            HeadType::Q8_0 => {
                let w = _mm256_loadu_si256(p.add(2) as *const __m256i);
                // |w| * (q with w's sign) = w * q; |-128| reads as 128 unsigned.
                (_mm256_abs_epi8(w), _mm256_sign_epi8(q, w))
            }
            HeadType::Q4_0 => {
                let x = _mm_loadu_si128(p.add(2) as *const __m128i);
                let y = _mm256_set_m128i(_mm_srli_epi16::<4>(x), x);
                (_mm256_and_si256(y, _mm256_set1_epi8(15)), q)
            }
            HeadType::Q6K => unreachable!("Q6_K has its own kernel"),
        }
    }
}

/// [`tile_avx512`] with AVX2, block by block.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; otherwise as [`tile_avx512`] (k a multiple of 32
/// suffices).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_avx2<const R: usize, const V: usize>(
    ty: HeadType,
    rows: [&[u8]; R],
    acts: [&HeadActs; V],
) -> [[f32; V]; R] {
    if ty == HeadType::Q6K {
        // SAFETY: the caller's guarantees (k is a multiple of 256 for Q6_K rows).
        return unsafe { q6k_tile_avx2(rows, acts) };
    }
    let k = acts[0].len();
    let bb = ty.block_bytes();
    debug_assert!(k.is_multiple_of(32));
    debug_assert!(rows.iter().all(|r| r.len() >= k / 32 * bb));
    debug_assert!(acts.iter().all(|a| a.len() == k));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for b in 0..k / 32 {
        let mut ps = [std::ptr::null::<u8>(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: block b is within every row; its scale is its first two bytes.
            unsafe {
                ps[r] = rows[r].as_ptr().add(b * bb);
                _mm_prefetch::<_MM_HINT_T0>(ps[r].wrapping_add(PREFETCH) as *const i8);
                dw[r] = _mm256_cvtph_ps(_mm_set1_epi16((ps[r] as *const i16).read_unaligned()));
            }
        }
        for (v, a) in acts.iter().enumerate() {
            // SAFETY: values 32b .. 32b + 32 are within the vector.
            let (q, corr, dl) = unsafe { acts_avx2(a, 32 * b) };
            for r in 0..R {
                // SAFETY: ps[r] points at block b of row r.
                let (codes, signed) = unsafe { block_avx2(ty, ps[r], q) };
                // Pairs of byte products fit i16: |code| <= 128 and |q| <= 127.
                let mut isum = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, signed), ones);
                if ty == HeadType::Q4_0 {
                    isum = _mm256_add_epi32(isum, corr);
                }
                let scale = _mm256_mul_ps(dw[r], dl);
                acc[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r][v]);
            }
        }
    }
    sums_avx2(&acc)
}

/// The 64 input values from value `at` of `a`, with their lanes' corrections and scales.
///
/// # Safety
/// AVX-512 F; `at + 64 <= a.len()`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn acts_avx512(a: &HeadActs, at: usize) -> (__m512i, __m512i, __m512) {
    debug_assert!(at + 64 <= a.len());
    // SAFETY: values at .. at + 64 and lanes at / 4 .. + 16 are within the vector.
    unsafe {
        (
            _mm512_loadu_si512(a.q.as_ptr().add(at) as *const __m512i),
            _mm512_loadu_si512(a.corr.as_ptr().add(at / 4) as *const __m512i),
            _mm512_loadu_ps(a.d_lanes.as_ptr().add(at / 4)),
        )
    }
}

/// [`acts_avx512`] for 32 values.
///
/// # Safety
/// AVX2; `at + 32 <= a.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn acts_avx2(a: &HeadActs, at: usize) -> (__m256i, __m256i, __m256) {
    debug_assert!(at + 32 <= a.len());
    // SAFETY: values at .. at + 32 and lanes at / 4 .. + 8 are within the vector.
    unsafe {
        (
            _mm256_loadu_si256(a.q.as_ptr().add(at) as *const __m256i),
            _mm256_loadu_si256(a.corr.as_ptr().add(at / 4) as *const __m256i),
            _mm256_loadu_ps(a.d_lanes.as_ptr().add(at / 4)),
        )
    }
}

/// Each accumulator's lanes summed.
#[inline]
#[target_feature(enable = "avx512f")]
fn sums_avx512<const R: usize, const V: usize>(acc: &[[__m512; V]; R]) -> [[f32; V]; R] {
    let mut out = [[0f32; V]; R];
    for r in 0..R {
        for v in 0..V {
            out[r][v] = _mm512_reduce_add_ps(acc[r][v]);
        }
    }
    out
}

/// [`sums_avx512`] with [`hsum_avx2`].
#[inline]
#[target_feature(enable = "avx")]
fn sums_avx2<const R: usize, const V: usize>(acc: &[[__m256; V]; R]) -> [[f32; V]; R] {
    let mut out = [[0f32; V]; R];
    for r in 0..R {
        for v in 0..V {
            out[r][v] = hsum_avx2(acc[r][v]);
        }
    }
    out
}

/// The eight lanes of `x` summed in a fixed order.
#[inline]
#[target_feature(enable = "avx")]
fn hsum_avx2(x: __m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

/// Q6_K block layout (see `crate::quant::q6_k`): `ql` at 0, `qh` at 128, the 16 scales at
/// 192, `d` at 208.
const Q6K_BYTES: usize = 210;

/// A Q6_K block's 16 sub-block scales as `d * scale` in f32 (lane s: sub-block s).
///
/// # Safety
/// AVX-512 F and F16C; `p` points at a whole block.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn q6k_scales_avx512(p: *const u8) -> __m512 {
    // SAFETY: the scales are bytes 192..208 of the block, d bytes 208..210.
    unsafe {
        let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            p.add(192) as *const __m128i
        )));
        let d = _mm512_cvtph_ps(_mm256_set1_epi16(
            (p.add(208) as *const i16).read_unaligned(),
        ));
        _mm512_mul_ps(d, sc)
    }
}

/// The codes (0..64) of values 64 * s .. 64 * s + 64 of a Q6_K block (s in 0..4), in order.
///
/// # Safety
/// AVX-512 F/BW; `p` points at a whole block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q6k_codes_avx512(p: *const u8, s: usize) -> __m512i {
    let (half, upper) = (s / 2, s % 2 == 1);
    // SAFETY: ql of this half is 64 bytes at 64 * half, qh 32 bytes at 128 + 32 * half.
    unsafe {
        let ql = _mm512_loadu_si512(p.add(64 * half) as *const __m512i);
        let qh = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
        let m = _mm256_set1_epi8(0x30);
        // Bits 2t, 2t + 1 of qh are the high bits of the half's values 32t .. 32t + 32, moved
        // to bits 4 and 5.
        let (h0, h1) = if upper {
            (
                _mm256_and_si256(qh, m),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m),
            )
        } else {
            (
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m),
            )
        };
        let high = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h0), h1);
        let low = if upper {
            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), _mm512_set1_epi8(15))
        } else {
            _mm512_and_si512(ql, _mm512_set1_epi8(15))
        };
        _mm512_or_si512(low, high)
    }
}

/// [`tile_avx512`] for Q6_K rows: per 64 values one `vpdpbusd` from the inputs' correction
/// (codes are value + 32), the lanes scaled by their sub-block's `d * scale` times the input
/// block's scale.
///
/// # Safety
/// As [`tile_avx512`], k a multiple of 256.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
unsafe fn q6k_tile_avx512<const R: usize, const V: usize>(
    rows: [&[u8]; R],
    acts: [&HeadActs; V],
) -> [[f32; V]; R] {
    let k = acts[0].len();
    debug_assert!(k.is_multiple_of(256));
    debug_assert!(rows.iter().all(|r| r.len() >= k / 256 * Q6K_BYTES));
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for b in 0..k / 256 {
        for r in 0..R {
            // SAFETY: block b is within row r.
            unsafe {
                let p = rows[r].as_ptr().add(b * Q6K_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                let dsc = q6k_scales_avx512(p);
                macro_rules! slice {
                    ($S:literal) => {{
                        // Lane l of this slice belongs to sub-block 4S + l / 4.
                        let idx = _mm512_set_epi32(
                            4 * $S + 3,
                            4 * $S + 3,
                            4 * $S + 3,
                            4 * $S + 3,
                            4 * $S + 2,
                            4 * $S + 2,
                            4 * $S + 2,
                            4 * $S + 2,
                            4 * $S + 1,
                            4 * $S + 1,
                            4 * $S + 1,
                            4 * $S + 1,
                            4 * $S,
                            4 * $S,
                            4 * $S,
                            4 * $S,
                        );
                        let codes = q6k_codes_avx512(p, $S);
                        let sc = _mm512_permutexvar_ps(idx, dsc);
                        let at = b * 256 + 64 * $S;
                        for (v, a) in acts.iter().enumerate() {
                            // Values at .. at + 64 are within the vector.
                            let (q, corr, dl) = acts_avx512(a, at);
                            let isum = _mm512_dpbusd_epi32(corr, codes, q);
                            let scale = _mm512_mul_ps(sc, dl);
                            acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[r][v]);
                        }
                    }};
                }
                slice!(0);
                slice!(1);
                slice!(2);
                slice!(3);
            }
        }
    }
    sums_avx512(&acc)
}

/// The codes of values 128 * half + 32 * S .. + 32 of a Q6_K block, in order.
///
/// # Safety
/// AVX2; `p` points at a whole block.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_codes_avx2<const S: usize>(p: *const u8, half: usize) -> __m256i {
    // SAFETY: ql of this half is 64 bytes at 64 * half, qh 32 bytes at 128 + 32 * half.
    unsafe {
        let ql = _mm256_loadu_si256(p.add(64 * half + 32 * (S % 2)) as *const __m256i);
        let qh = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
        let low = if S >= 2 {
            _mm256_srli_epi16::<4>(ql)
        } else {
            ql
        };
        let high = match S {
            0 => _mm256_slli_epi16::<4>(qh),
            1 => _mm256_slli_epi16::<2>(qh),
            2 => qh,
            _ => _mm256_srli_epi16::<2>(qh),
        };
        _mm256_or_si256(
            _mm256_and_si256(low, _mm256_set1_epi8(15)),
            _mm256_and_si256(high, _mm256_set1_epi8(0x30)),
        )
    }
}

/// [`q6k_tile_avx512`] with AVX2, 32 values at a time.
///
/// # Safety
/// As [`tile_avx2`], k a multiple of 256.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_tile_avx2<const R: usize, const V: usize>(
    rows: [&[u8]; R],
    acts: [&HeadActs; V],
) -> [[f32; V]; R] {
    let k = acts[0].len();
    debug_assert!(k.is_multiple_of(256));
    debug_assert!(rows.iter().all(|r| r.len() >= k / 256 * Q6K_BYTES));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for b in 0..k / 256 {
        for r in 0..R {
            // SAFETY: block b is within row r; d is its bytes 208..210, the scales 192..208.
            unsafe {
                let p = rows[r].as_ptr().add(b * Q6K_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                let d =
                    _mm256_cvtph_ps(_mm_set1_epi16((p.add(208) as *const i16).read_unaligned()));
                for half in 0..2 {
                    let sc = _mm_loadl_epi64(p.add(192 + 8 * half) as *const __m128i);
                    let sc8 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
                    macro_rules! slice {
                        ($S:literal) => {{
                            // Lanes 0-3: sub-block 2S of this half, lanes 4-7: 2S + 1.
                            let idx = _mm256_setr_epi32(
                                2 * $S,
                                2 * $S,
                                2 * $S,
                                2 * $S,
                                2 * $S + 1,
                                2 * $S + 1,
                                2 * $S + 1,
                                2 * $S + 1,
                            );
                            let at = b * 256 + 128 * half + 32 * $S;
                            let codes = q6k_codes_avx2::<$S>(p, half);
                            let scl = _mm256_permutevar8x32_ps(sc8, idx);
                            for (v, a) in acts.iter().enumerate() {
                                // Values at .. at + 32 are within the vector.
                                let (q, corr, dl) = acts_avx2(a, at);
                                // Pairs of byte products fit i16: codes <= 63, |q| <= 127.
                                let isum = _mm256_add_epi32(
                                    _mm256_madd_epi16(_mm256_maddubs_epi16(codes, q), ones),
                                    corr,
                                );
                                let scale = _mm256_mul_ps(scl, dl);
                                acc[r][v] =
                                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[r][v]);
                            }
                        }};
                    }
                    slice!(0);
                    slice!(1);
                    slice!(2);
                    slice!(3);
                }
            }
        }
    }
    sums_avx2(&acc)
}
