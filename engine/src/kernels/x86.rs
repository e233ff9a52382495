//! x86-64 SIMD twins of the scalar kernels in `crate::quant` (AVX2 baseline, AVX-512 with
//! VNNI where present). Each function computes the exact integer dots `sum code * q` for
//! one weight row against `T` tokens; the caller turns them into `(D / s) * scale` exactly as
//! the scalar reference does, so results are bit-identical to it.
//!
//! Activations come pre-permuted (`QuantizedActs::perm2` / `perm1`) so that each decoded
//! code plane lines up with contiguous activation bytes.

use std::arch::x86_64::*;

use crate::quant::act::PERM1_BLOCK;

/// How far ahead of the current weight bytes to prefetch.
const PREFETCH: usize = 1024;

/// Rows of a ternary matrix read at once when decoding one token.
const GEMV_STREAMS: usize = 8;
const GEMV_STREAMS_TQ1_0: usize = 4;
const GEMV_STREAMS_AVX2: usize = 4;

/// Which 2-bit layout: I2_S stores plane n at shift `6 - 2n` in 64-byte chunks (two
/// 128-blocks); TQ2_0 at shift `2n` in the first 64 bytes of each 66-byte block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TwoBit {
    I2s,
    Tq2_0,
    /// TQ1_0 rows decoded by [`decode_tq1_0_rows`]: 64 bytes per 256 weights, plane n at
    /// shift `2n`, against `perm1p` activations.
    Codes,
}

impl TwoBit {
    /// Bytes from one 256-weight block to the next.
    #[inline(always)]
    pub(super) fn stride(self) -> usize {
        match self {
            TwoBit::I2s | TwoBit::Codes => 64,
            TwoBit::Tq2_0 => 66,
        }
    }

    /// Bit shift of code plane `n` (0..4) within each byte.
    #[inline(always)]
    pub(super) fn shift(self, n: usize) -> usize {
        match self {
            TwoBit::I2s => 6 - 2 * n,
            TwoBit::Tq2_0 | TwoBit::Codes => 2 * n,
        }
    }
}

/// # Safety
/// The CPU supports AVX2. `row` holds `k / 256` chunks of `kind.stride()` bytes (the last
/// chunk needs only its first 64 bytes); each `q[t]` holds `k` bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn dot2_avx2<const T: usize>(
    kind: TwoBit,
    row: &[u8],
    q: [&[i8]; T],
    k: usize,
    out: &mut [i32; T],
) {
    let nb = k / 256;
    debug_assert!(row.len() >= (nb - 1) * kind.stride() + 64);
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); T];
    for c in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(
            row.as_ptr().wrapping_add(c * kind.stride() + PREFETCH) as *const i8
        );
        // SAFETY: chunk c spans bytes c*stride .. c*stride+64 of `row` (checked above).
        let (lo, hi) = unsafe {
            let p = row.as_ptr().add(c * kind.stride());
            (
                _mm256_loadu_si256(p as *const __m256i),
                _mm256_loadu_si256(p.add(32) as *const __m256i),
            )
        };
        let mut acc16 = [_mm256_setzero_si256(); T];
        for n in 0..4 {
            let shc = _mm_cvtsi32_si128(kind.shift(n) as i32);
            let cl = _mm256_and_si256(_mm256_srl_epi16(lo, shc), mask);
            let ch = _mm256_and_si256(_mm256_srl_epi16(hi, shc), mask);
            for t in 0..T {
                // SAFETY: q[t] has k bytes; this reads c*256 + 64n .. +64 < k.
                let (ql, qh) = unsafe {
                    let p = q[t].as_ptr().add(c * 256 + 64 * n);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(32) as *const __m256i),
                    )
                };
                // u8 codes (0..2) x i8: pair sums fit i16 (|2*128*2| = 512); eight per chunk
                // stay below 4096.
                acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(cl, ql));
                acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(ch, qh));
            }
        }
        for t in 0..T {
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(acc16[t], ones));
        }
    }
    for t in 0..T {
        out[t] = hsum256(acc[t]);
    }
}

/// [`dot2_avx2`] against one token for `S` rows at once, their chunks read in lockstep (`S`
/// weight streams in flight; see [`dot_f16_rows_avx512`]). Exact integer sums, so the
/// results equal the one-row kernel's.
///
/// # Safety
/// As [`dot2_avx2`], for every row.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn dot2_rows_avx2_gemv<const S: usize>(
    kind: TwoBit,
    rows: [&[u8]; S],
    q: &[i8],
    k: usize,
) -> [i32; S] {
    let nb = k / 256;
    debug_assert!(
        rows.iter()
            .all(|r| r.len() >= (nb - 1) * kind.stride() + 64)
    );
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); S];
    for c in 0..nb {
        for row in &rows {
            _mm_prefetch::<_MM_HINT_T0>(
                row.as_ptr().wrapping_add(c * kind.stride() + PREFETCH) as *const i8
            );
        }
        let mut acc16 = [_mm256_setzero_si256(); S];
        for n in 0..4 {
            let shc = _mm_cvtsi32_si128(kind.shift(n) as i32);
            // SAFETY: q has k bytes; this reads c*256 + 64n .. +64 <= k.
            let (ql, qh) = unsafe {
                let p = q.as_ptr().add(c * 256 + 64 * n);
                (
                    _mm256_loadu_si256(p as *const __m256i),
                    _mm256_loadu_si256(p.add(32) as *const __m256i),
                )
            };
            for (row, a) in rows.iter().zip(acc16.iter_mut()) {
                // SAFETY: chunk c spans bytes c*stride .. c*stride+64 of the row.
                let (lo, hi) = unsafe {
                    let p = row.as_ptr().add(c * kind.stride());
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(32) as *const __m256i),
                    )
                };
                let cl = _mm256_and_si256(_mm256_srl_epi16(lo, shc), mask);
                let ch = _mm256_and_si256(_mm256_srl_epi16(hi, shc), mask);
                // As in `dot2_avx2`: the i16 pair sums cannot overflow.
                *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(cl, ql));
                *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(ch, qh));
            }
        }
        for (a, a16) in acc.iter_mut().zip(&acc16) {
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(*a16, ones));
        }
    }
    std::array::from_fn(|s| hsum256(acc[s]))
}

/// [`dot_f16_rows_avx512`] for AVX2: `S` F16 rows at once in lockstep, each row summed the
/// same way whatever `S` is (two 8-lane chains, one fixed reduction, then the scalar tail).
///
/// # Safety
/// The CPU supports AVX2, F16C and FMA; every row holds `x.len()` f16 values.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn dot_f16_rows_avx2<const S: usize>(rows: [&[u8]; S], x: &[f32]) -> [f32; S] {
    let k = x.len();
    debug_assert!(rows.iter().all(|r| r.len() >= 2 * k));
    let main = k / 16 * 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; S];
    let mut i = 0;
    while i < main {
        // SAFETY: i + 16 <= main <= k: within `x` and within every row (2k bytes).
        unsafe {
            let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
            let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
            for (row, a) in rows.iter().zip(acc.iter_mut()) {
                let p = row.as_ptr().add(2 * i);
                if i % 32 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                }
                let h0 = _mm_loadu_si128(p as *const __m128i);
                let h1 = _mm_loadu_si128(p.add(16) as *const __m128i);
                a[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h0), x0, a[0]);
                a[1] = _mm256_fmadd_ps(_mm256_cvtph_ps(h1), x1, a[1]);
            }
        }
        i += 16;
    }
    let mut out = [0f32; S];
    for ((o, a), row) in out.iter_mut().zip(&acc).zip(&rows) {
        let v = _mm256_add_ps(a[0], a[1]);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
        for j in main..k {
            sum += half::f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * x[j];
        }
        *o = sum;
    }
    out
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI. Same layout requirements as [`dot2_avx2`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot2_avx512<const T: usize>(
    kind: TwoBit,
    row: &[u8],
    q: [&[i8]; T],
    k: usize,
    out: &mut [i32; T],
) {
    let nb = k / 256;
    debug_assert!(row.len() >= (nb - 1) * kind.stride() + 64);
    let mask = _mm512_set1_epi8(3);
    // One token has a single chain of dependent dpbusd (latency ~5): give it four.
    let chains = if T == 1 { 4 } else { 1 };
    let mut acc = [[_mm512_setzero_si512(); 4]; T];
    for c in 0..nb {
        // Prefetch across page boundaries, which the hardware prefetcher does not cross
        // (prefetching past the row is harmless: it never faults).
        _mm_prefetch::<_MM_HINT_T0>(
            row.as_ptr().wrapping_add(c * kind.stride() + PREFETCH) as *const i8
        );
        // SAFETY: chunk c spans bytes c*stride .. c*stride+64 of `row`.
        let v =
            unsafe { _mm512_loadu_si512(row.as_ptr().add(c * kind.stride()) as *const __m512i) };
        for n in 0..4 {
            let sh = _mm_cvtsi32_si128(kind.shift(n) as i32);
            let codes = _mm512_and_si512(_mm512_srl_epi16(v, sh), mask);
            for t in 0..T {
                // SAFETY: q[t] has k bytes; this reads c*256 + 64n .. +64 <= k.
                let qv = unsafe {
                    _mm512_loadu_si512(q[t].as_ptr().add(c * 256 + 64 * n) as *const __m512i)
                };
                acc[t][n % chains] = _mm512_dpbusd_epi32(acc[t][n % chains], codes, qv);
            }
        }
    }
    reduce_chains(&acc, out);
}

/// [`dot2_avx512`] for `R` rows at once: each activation vector loaded feeds `R` dot
/// products instead of one, so prefill is no longer bound by loading activations (from L2,
/// once a tile of tokens outgrows L1) but by the dot products themselves.
///
/// # Safety
/// As [`dot2_avx512`], for each of the `R` rows; `out.len() >= R`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot2_rows_avx512<const R: usize, const T: usize>(
    kind: TwoBit,
    rows: [&[u8]; R],
    q: [&[i8]; T],
    k: usize,
    out: &mut [[i32; T]],
) {
    let nb = k / 256;
    debug_assert!(
        rows.iter()
            .all(|r| r.len() >= (nb - 1) * kind.stride() + 64)
    );
    let mask = _mm512_set1_epi8(3);
    let mut acc = [[_mm512_setzero_si512(); T]; R];
    // Plain loops, no `array::from_fn` closures: a closure does not inherit this function's
    // target features, so intrinsics inside one are not inlined (measured 2.4x on a head
    // kernel).
    for c in 0..nb {
        let mut v = [_mm512_setzero_si512(); R];
        for r in 0..R {
            let p = rows[r].as_ptr().wrapping_add(c * kind.stride());
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            // SAFETY: chunk c spans bytes c*stride .. c*stride+64 of each row.
            v[r] = unsafe { _mm512_loadu_si512(p as *const __m512i) };
        }
        for n in 0..4 {
            let sh = _mm_cvtsi32_si128(kind.shift(n) as i32);
            let mut codes = [_mm512_setzero_si512(); R];
            for r in 0..R {
                codes[r] = _mm512_and_si512(_mm512_srl_epi16(v[r], sh), mask);
            }
            for t in 0..T {
                // SAFETY: q[t] has k bytes; this reads c*256 + 64n .. +64 <= k.
                let qv = unsafe {
                    _mm512_loadu_si512(q[t].as_ptr().add(c * 256 + 64 * n) as *const __m512i)
                };
                for r in 0..R {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], codes[r], qv);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            out[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
        }
    }
}

/// `out[t]` = the sum of every lane of token t's four accumulator chains.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce_chains<const T: usize>(acc: &[[__m512i; 4]; T], out: &mut [i32; T]) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_epi32(_mm512_add_epi32(
            _mm512_add_epi32(a[0], a[1]),
            _mm512_add_epi32(a[2], a[3]),
        ));
    }
}

/// `3 * x mod 256` per byte, as two byte adds. The result passes through an empty `asm`
/// block so that LLVM cannot fold a chain of these into byte multiplications by 9, 27 and
/// 81, which x86 lacks and which it emulates with several multiplies and permutes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn times3(x: __m512i) -> __m512i {
    let mut y = _mm512_add_epi8(x, _mm512_add_epi8(x, x));
    // SAFETY: the template is empty: no instruction runs, no memory or flags are touched;
    // the register keeps its value.
    unsafe {
        std::arch::asm!("/* {0} */", inout(zmm_reg) y, options(pure, nomem, nostack, preserves_flags))
    };
    y
}

/// # Safety
/// The CPU supports AVX2. `row` holds `k / 256` TQ1_0 blocks of 54 bytes; each `q[t]` holds
/// `k / 256 * 320` bytes of TQ1_0-ordered activations.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn dot1_avx2<const T: usize>(row: &[u8], q: [&[i8]; T], k: usize, out: &mut [i32; T]) {
    let nb = k / 256;
    debug_assert!(row.len() >= nb * 54);
    let ones = _mm256_set1_epi16(1);
    let offset = _mm256_set1_epi8(-128);
    // The trits as in `dot1_rows_avx2_gemv`: two compares against y - 128.
    let (t1, t2) = (_mm256_set1_epi8(-43), _mm256_set1_epi8(42));
    // Bytes 32..52 of a block: five dwords.
    let tail_mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, 0, 0, 0);
    let mut acc = [_mm256_setzero_si256(); T];
    for b in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(b * 54 + PREFETCH) as *const i8);
        // SAFETY: block b spans bytes 54b .. 54b+54 of `row`; the masked load reads only
        // bytes 32..52 of it and suppresses the rest.
        let mut y = unsafe {
            let p = row.as_ptr().add(b * 54);
            [
                _mm256_xor_si256(_mm256_loadu_si256(p as *const __m256i), offset),
                _mm256_xor_si256(
                    _mm256_maskload_epi32(p.add(32) as *const i32, tail_mask),
                    offset,
                ),
            ]
        };
        let mut acc16 = [_mm256_setzero_si256(); T];
        for n in 0..5 {
            let mut planes = [_mm256_setzero_si256(); 2];
            for h in 0..2 {
                if n > 0 {
                    y[h] = times3_avx2(y[h]);
                }
                let m1 = _mm256_cmpgt_epi8(y[h], t1);
                let m2 = _mm256_cmpgt_epi8(y[h], t2);
                planes[h] = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2);
            }
            for t in 0..T {
                // SAFETY: q[t] has nb*320 bytes; this reads b*320 + 64n .. +64.
                let (ql, qh) = unsafe {
                    let p = q[t].as_ptr().add(b * PERM1_BLOCK + 64 * n);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(32) as *const __m256i),
                    )
                };
                acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(planes[0], ql));
                acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(planes[1], qh));
            }
        }
        for t in 0..T {
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(acc16[t], ones));
        }
    }
    for t in 0..T {
        out[t] = hsum256(acc[t]);
    }
}

/// `3 * x mod 256` per byte for AVX2, kept from being folded into multiplications as in
/// [`times3`].
#[inline]
#[target_feature(enable = "avx2")]
fn times3_avx2(x: __m256i) -> __m256i {
    let mut y = _mm256_add_epi8(x, _mm256_add_epi8(x, x));
    // SAFETY: the template is empty: no instruction runs, no memory or flags are touched;
    // the register keeps its value.
    unsafe {
        std::arch::asm!("/* {0} */", inout(ymm_reg) y, options(pure, nomem, nostack, preserves_flags))
    };
    y
}

/// TQ1_0 against one token for `S` rows at once, their blocks read in lockstep (`S` weight
/// streams in flight), without multiplications: with `y = (b * 3^n) mod 256` the trit is
/// `(3y) >> 8`, which is `[y >= 86] + [y >= 171]`: two signed byte compares once the bytes
/// carry an offset of 128. The offset survives the step `y -> 3y` (`3 * 128 = 128 mod 256`),
/// so it is applied once per block. The dots are exact integers, equal to [`dot1_avx2`]'s.
///
/// # Safety
/// The CPU supports AVX2; as [`dot1_avx2`] for every row, with one token.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn dot1_rows_avx2_gemv<const S: usize>(
    rows: [&[u8]; S],
    q: &[i8],
    k: usize,
) -> [i32; S] {
    let nb = k / 256;
    debug_assert!(rows.iter().all(|r| r.len() >= nb * 54) && q.len() >= nb * PERM1_BLOCK);
    let ones = _mm256_set1_epi16(1);
    let offset = _mm256_set1_epi8(-128);
    // y >= 86 and y >= 171, as y - 128 > -43 and y - 128 > 42.
    let (t1, t2) = (_mm256_set1_epi8(-43), _mm256_set1_epi8(42));
    // Bytes 32..52 of a block: five dwords.
    let tail_mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, 0, 0, 0);
    let mut acc = [_mm256_setzero_si256(); S];
    for b in 0..nb {
        let mut y = [[_mm256_setzero_si256(); 2]; S];
        for s in 0..S {
            let p = rows[s].as_ptr().wrapping_add(b * 54);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            // SAFETY: block b spans bytes 54b .. 54b+54 of the row; the masked load reads
            // only bytes 32..52 of it and suppresses the rest (its lanes 20..32 are zero and
            // meet zero activations).
            unsafe {
                y[s][0] = _mm256_xor_si256(_mm256_loadu_si256(p as *const __m256i), offset);
                y[s][1] = _mm256_xor_si256(
                    _mm256_maskload_epi32(p.add(32) as *const i32, tail_mask),
                    offset,
                );
            }
        }
        let mut acc16 = [_mm256_setzero_si256(); S];
        for n in 0..5 {
            // SAFETY: q has nb*320 bytes; this reads b*320 + 64n .. +64.
            let (ql, qh) = unsafe {
                let p = q.as_ptr().add(b * PERM1_BLOCK + 64 * n);
                (
                    _mm256_loadu_si256(p as *const __m256i),
                    _mm256_loadu_si256(p.add(32) as *const __m256i),
                )
            };
            for s in 0..S {
                for (h, qv) in [(0, ql), (1, qh)] {
                    if n > 0 {
                        y[s][h] = times3_avx2(y[s][h]);
                    }
                    let m1 = _mm256_cmpgt_epi8(y[s][h], t1);
                    let m2 = _mm256_cmpgt_epi8(y[s][h], t2);
                    // 0 - m1 - m2: the trit, 0..2.
                    let trit = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2);
                    // Pair sums of trit * q stay within i16 (|.| <= 2 * 2 * 128), ten of them too.
                    acc16[s] = _mm256_add_epi16(acc16[s], _mm256_maddubs_epi16(trit, qv));
                }
            }
        }
        for s in 0..S {
            acc[s] = _mm256_add_epi32(acc[s], _mm256_madd_epi16(acc16[s], ones));
        }
    }
    let mut out = [0i32; S];
    for s in 0..S {
        out[s] = hsum256(acc[s]);
    }
    out
}

/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI. Same layout requirements as [`dot1_avx2`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot1_avx512<const T: usize>(row: &[u8], q: [&[i8]; T], k: usize, out: &mut [i32; T]) {
    let nb = k / 256;
    debug_assert!(row.len() >= nb * 54);
    // One token has a single chain of dependent dpbusd (latency ~5): give it four.
    let chains = if T == 1 { 4 } else { 1 };
    let mut acc = [[_mm512_setzero_si512(); 4]; T];
    for b in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(b * 54 + PREFETCH) as *const i8);
        // SAFETY: block b spans bytes 54b .. 54b+54 of `row`.
        let planes = unsafe { tq1_0_planes(row.as_ptr().add(b * 54)) };
        for (n, &plane) in planes.iter().enumerate() {
            for t in 0..T {
                // SAFETY: q[t] has nb*320 bytes; this reads b*320 + 64n .. +64.
                let qv = unsafe {
                    _mm512_loadu_si512(q[t].as_ptr().add(b * PERM1_BLOCK + 64 * n) as *const __m512i)
                };
                acc[t][n % chains] = _mm512_dpbusd_epi32(acc[t][n % chains], plane, qv);
            }
        }
    }
    reduce_chains(&acc, out);
}

/// `out[s] = rows[s] · x` for `S` F16 rows at once, reading their 64-byte lines in lockstep:
/// `S` sequential streams in flight instead of one. One stream per thread leaves memory
/// bandwidth unused here (a plain read of the page-cached model: 23 GB/s with one stream per
/// thread, 27 with two, 30 with eight, at 2 threads). Each row is summed the same way
/// whatever `S` is (two 16-lane chains, one fixed reduction, then the scalar tail in order), so
/// a row's result does not depend on how rows are grouped.
///
/// # Safety
/// The CPU supports AVX-512 F, F16C and FMA; every row holds `x.len()` f16 values.
#[inline]
#[target_feature(enable = "avx512f,f16c,fma")]
pub unsafe fn dot_f16_rows_avx512<const S: usize>(rows: [&[u8]; S], x: &[f32]) -> [f32; S] {
    let k = x.len();
    debug_assert!(rows.iter().all(|r| r.len() >= 2 * k));
    let main = k / 32 * 32;
    let mut acc = [[_mm512_setzero_ps(); 2]; S];
    let mut i = 0;
    while i < main {
        // SAFETY: i + 32 <= main <= k: within `x` and within every row (2k bytes).
        unsafe {
            let x0 = _mm512_loadu_ps(x.as_ptr().add(i));
            let x1 = _mm512_loadu_ps(x.as_ptr().add(i + 16));
            for (row, a) in rows.iter().zip(acc.iter_mut()) {
                let p = row.as_ptr().add(2 * i);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                let h0 = _mm256_loadu_si256(p as *const __m256i);
                let h1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
                a[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(h0), x0, a[0]);
                a[1] = _mm512_fmadd_ps(_mm512_cvtph_ps(h1), x1, a[1]);
            }
        }
        i += 32;
    }
    let mut out = [0f32; S];
    for ((o, a), row) in out.iter_mut().zip(&acc).zip(&rows) {
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
        for j in main..k {
            sum += half::f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * x[j];
        }
        *o = sum;
    }
    out
}

/// Accumulators of [`f16_tile_avx512`]: per row (up to 2) and vector (up to 4), the two
/// 16-lane chains of [`dot_f16_rows_avx512`].
pub type F16TileAcc = [[[__m512; 2]; 4]; 2];

/// Zeroed accumulators for [`f16_tile_avx512`].
///
/// # Safety
/// The CPU supports AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn f16_tile_acc_zero() -> F16TileAcc {
    [[[_mm512_setzero_ps(); 2]; 4]; 2]
}

/// `R` F16 rows (≤ 2) against `V` vectors (≤ 4) over the values `k0..k1` (multiples of 32):
/// each row's 32 values are converted once and used for every vector; the chains continue in
/// `acc`, so a row is summed slice after slice exactly as [`dot_f16_rows_avx512`] sums it in
/// one go (the head of a batch of sequences, with the vectors' slices kept in L1).
///
/// # Safety
/// The CPU supports AVX-512 F, F16C and FMA; every row holds at least `k1` f16 values and
/// every vector at least `k1` f32 values; `k0` and `k1` are multiples of 32.
#[inline]
#[target_feature(enable = "avx512f,f16c,fma")]
pub unsafe fn f16_tile_avx512<const R: usize, const V: usize>(
    rows: [&[u8]; R],
    xs: [&[f32]; V],
    (k0, k1): (usize, usize),
    acc: &mut F16TileAcc,
) {
    debug_assert!(R <= 2 && V <= 4 && k0 % 32 == 0 && k1 % 32 == 0);
    debug_assert!(rows.iter().all(|r| r.len() >= 2 * k1));
    debug_assert!(xs.iter().all(|x| x.len() >= k1));
    let mut a = [[[_mm512_setzero_ps(); 2]; V]; R];
    for r in 0..R {
        for v in 0..V {
            a[r][v] = acc[r][v];
        }
    }
    let mut i = k0;
    while i < k1 {
        // SAFETY: i + 32 <= k1: within every vector and every row (2 * k1 bytes).
        unsafe {
            let mut w = [[_mm512_setzero_ps(); 2]; R];
            for r in 0..R {
                let p = rows[r].as_ptr().add(2 * i);
                w[r][0] = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
                w[r][1] = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
            }
            for v in 0..V {
                let x0 = _mm512_loadu_ps(xs[v].as_ptr().add(i));
                let x1 = _mm512_loadu_ps(xs[v].as_ptr().add(i + 16));
                for r in 0..R {
                    a[r][v][0] = _mm512_fmadd_ps(w[r][0], x0, a[r][v][0]);
                    a[r][v][1] = _mm512_fmadd_ps(w[r][1], x1, a[r][v][1]);
                }
            }
        }
        i += 32;
    }
    for r in 0..R {
        for v in 0..V {
            acc[r][v] = a[r][v];
        }
    }
}

/// The end of [`dot_f16_rows_avx512`] for one row and vector: the chains reduced, then the
/// values past the last multiple of 32 in order.
///
/// # Safety
/// The CPU supports AVX-512 F; `row` holds `x.len()` f16 values.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn f16_tile_finish(chains: [__m512; 2], row: &[u8], x: &[f32]) -> f32 {
    let main = x.len() / 32 * 32;
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(chains[0], chains[1]));
    for j in main..x.len() {
        sum += half::f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * x[j];
    }
    sum
}

/// `sum a[i] * b[i]` with f32 inputs, products and sum in f64 (AVX2 + FMA).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_f64_avx2(a: &[f32], b: &[f32]) -> f64 {
    let k = a.len().min(b.len());
    let mut acc0 = _mm256_setzero_pd();
    let mut acc1 = _mm256_setzero_pd();
    let main = k / 8 * 8;
    let mut i = 0;
    while i < main {
        // SAFETY: i + 8 <= k.
        unsafe {
            let a0 = _mm256_cvtps_pd(_mm_loadu_ps(a.as_ptr().add(i)));
            let b0 = _mm256_cvtps_pd(_mm_loadu_ps(b.as_ptr().add(i)));
            let a1 = _mm256_cvtps_pd(_mm_loadu_ps(a.as_ptr().add(i + 4)));
            let b1 = _mm256_cvtps_pd(_mm_loadu_ps(b.as_ptr().add(i + 4)));
            acc0 = _mm256_fmadd_pd(a0, b0, acc0);
            acc1 = _mm256_fmadd_pd(a1, b1, acc1);
        }
        i += 8;
    }
    let mut lanes = [0f64; 4];
    // SAFETY: `lanes` is 4 f64.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(acc0, acc1)) };
    let mut sum: f64 = lanes.iter().sum();
    for j in main..k {
        sum += a[j] as f64 * b[j] as f64;
    }
    sum
}

/// [`dot_f32_f64_avx2`] with AVX-512 (16 values per step).
///
/// # Safety
/// The CPU supports AVX-512 F.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f32_f64_avx512(a: &[f32], b: &[f32]) -> f64 {
    let k = a.len().min(b.len());
    let (mut acc0, mut acc1) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    let main = k / 16 * 16;
    let mut i = 0;
    while i < main {
        // SAFETY: i + 16 <= k.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            let a0 = _mm512_cvtps_pd(_mm256_loadu_ps(pa));
            let b0 = _mm512_cvtps_pd(_mm256_loadu_ps(pb));
            let a1 = _mm512_cvtps_pd(_mm256_loadu_ps(pa.add(8)));
            let b1 = _mm512_cvtps_pd(_mm256_loadu_ps(pb.add(8)));
            acc0 = _mm512_fmadd_pd(a0, b0, acc0);
            acc1 = _mm512_fmadd_pd(a1, b1, acc1);
        }
        i += 16;
    }
    let mut sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    for j in main..k {
        sum += a[j] as f64 * b[j] as f64;
    }
    sum
}

/// [`dot_f32_f64_avx512`] of `a` with `out.len()` rows of `v` (row j at `j * stride +
/// offset`), four rows at a time so that eight accumulator chains overlap instead of two;
/// each result is computed exactly as [`dot_f32_f64_avx512`] computes it.
///
/// # Safety
/// The CPU supports AVX-512 F.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_rows_f32_f64_avx512(
    a: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f64],
) {
    let k = a.len();
    assert!(k.is_multiple_of(16));
    assert!(out.is_empty() || v.len() >= (out.len() - 1) * stride + offset + k);
    let mut j = 0;
    while j + 4 <= out.len() {
        let (mut acc0, mut acc1) = ([_mm512_setzero_pd(); 4], [_mm512_setzero_pd(); 4]);
        for i in (0..k).step_by(16) {
            // SAFETY: i + 16 <= k = a.len(); row j + r spans (j + r) * stride + offset .. + k
            // within `v` (asserted above).
            unsafe {
                let pa = a.as_ptr().add(i);
                let a0 = _mm512_cvtps_pd(_mm256_loadu_ps(pa));
                let a1 = _mm512_cvtps_pd(_mm256_loadu_ps(pa.add(8)));
                for r in 0..4 {
                    let pb = v.as_ptr().add((j + r) * stride + offset + i);
                    let b0 = _mm512_cvtps_pd(_mm256_loadu_ps(pb));
                    let b1 = _mm512_cvtps_pd(_mm256_loadu_ps(pb.add(8)));
                    acc0[r] = _mm512_fmadd_pd(a0, b0, acc0[r]);
                    acc1[r] = _mm512_fmadd_pd(a1, b1, acc1[r]);
                }
            }
        }
        for r in 0..4 {
            out[j + r] = _mm512_reduce_add_pd(_mm512_add_pd(acc0[r], acc1[r]));
        }
        j += 4;
    }
    for (j, o) in out.iter_mut().enumerate().skip(j) {
        let at = j * stride + offset;
        // SAFETY: AVX-512 F, as the caller guarantees.
        *o = unsafe { dot_f32_f64_avx512(a, &v[at..at + k]) };
    }
}

/// `out[d] = sum_j w[j] * v[j * stride + offset + d]`, each element accumulated in key order
/// with one fused multiply-add per key, as [`super::weighted_rows_f64`] specifies: 64 output
/// values stay in eight registers across all keys (no load and store of the accumulator per
/// key).
///
/// # Safety
/// The CPU supports AVX-512 F; `out.len()` is a multiple of 8; `v` holds every row read:
/// `v.len() >= (w.len() - 1) * stride + offset + out.len()` when `w` is not empty.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_rows_f64_avx512(
    w: &[f64],
    v: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f64],
) {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn chunk<const N: usize>(w: &[f64], v: *const f32, stride: usize, out: *mut f64) {
        let mut acc = [_mm512_setzero_pd(); N];
        for (j, &p) in w.iter().enumerate() {
            let pv = _mm512_set1_pd(p);
            // SAFETY: the caller's bound: row j holds N*8 values from `v + j*stride`.
            let row = unsafe { v.add(j * stride) };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let x = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(row.add(8 * i)) });
                *a = _mm512_fmadd_pd(pv, x, *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds N*8 values.
            unsafe { _mm512_storeu_pd(out.add(8 * i), *a) };
        }
    }
    let hd = out.len();
    debug_assert!(hd.is_multiple_of(8));
    debug_assert!(w.is_empty() || v.len() >= (w.len() - 1) * stride + offset + hd);
    let mut c = 0;
    while c < hd {
        // SAFETY: the caller's bounds, for columns c.. of every row.
        unsafe {
            let (vp, op) = (v.as_ptr().add(offset + c), out.as_mut_ptr().add(c));
            if hd - c >= 64 {
                chunk::<8>(w, vp, stride, op);
                c += 64;
            } else {
                chunk::<1>(w, vp, stride, op);
                c += 8;
            }
        }
    }
}

/// [`dot_rows_f32_f64_avx512`] for the `G` queries of a grouped-query head (`qs`: G * k
/// f32, query g at g * k) against the same rows: each key row is loaded and widened once for
/// all G queries. `out[g * rows + j]` is computed exactly as [`dot_f32_f64_avx512`] computes
/// query g against row j (the same two chains, the same final sum).
///
/// # Safety
/// The CPU supports AVX-512 F; k is a multiple of 16; `v` holds every row read:
/// `v.len() >= (rows - 1) * stride + offset + k` when rows > 0, rows = `out.len() / G`.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_rows_group_f32_f64_avx512<const G: usize>(
    qs: &[f32],
    v: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f64],
) {
    let k = qs.len() / G;
    let rows = out.len() / G;
    assert!(k.is_multiple_of(16) && qs.len() == G * k && out.len() == G * rows);
    assert!(rows == 0 || v.len() >= (rows - 1) * stride + offset + k);
    // The queries widened once (exact), read from L1 by every key.
    let q64: Vec<f64> = qs.iter().map(|&x| x as f64).collect();
    let mut j = 0;
    while j < rows {
        // Two key rows at a time: 2 x G x 2 chains.
        let two = j + 1 < rows;
        let mut acc = [[[_mm512_setzero_pd(); 2]; 2]; G];
        for i in (0..k).step_by(16) {
            // SAFETY: i + 16 <= k; rows j and j + 1 (when `two`) span .. + k within `v`
            // (asserted above); q64 holds G * k values.
            unsafe {
                let pb = v.as_ptr().add(j * stride + offset + i);
                let b00 = _mm512_cvtps_pd(_mm256_loadu_ps(pb));
                let b01 = _mm512_cvtps_pd(_mm256_loadu_ps(pb.add(8)));
                let (b10, b11) = if two {
                    let pb1 = pb.add(stride);
                    (
                        _mm512_cvtps_pd(_mm256_loadu_ps(pb1)),
                        _mm512_cvtps_pd(_mm256_loadu_ps(pb1.add(8))),
                    )
                } else {
                    (_mm512_setzero_pd(), _mm512_setzero_pd())
                };
                for (g, a) in acc.iter_mut().enumerate() {
                    let pa = q64.as_ptr().add(g * k + i);
                    let (a0, a1) = (_mm512_loadu_pd(pa), _mm512_loadu_pd(pa.add(8)));
                    a[0][0] = _mm512_fmadd_pd(a0, b00, a[0][0]);
                    a[0][1] = _mm512_fmadd_pd(a1, b01, a[0][1]);
                    a[1][0] = _mm512_fmadd_pd(a0, b10, a[1][0]);
                    a[1][1] = _mm512_fmadd_pd(a1, b11, a[1][1]);
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            out[g * rows + j] = _mm512_reduce_add_pd(_mm512_add_pd(a[0][0], a[0][1]));
            if two {
                out[g * rows + j + 1] = _mm512_reduce_add_pd(_mm512_add_pd(a[1][0], a[1][1]));
            }
        }
        j += if two { 2 } else { 1 };
    }
}

/// [`weighted_rows_f64_avx512`] for `G` weight vectors over the same rows (`w`: G * keys,
/// `out`: G * hd): each row is loaded and widened once for all G. Every output element is
/// accumulated in key order with one fused multiply-add per key, as the specification.
///
/// # Safety
/// The CPU supports AVX-512 F; hd = `out.len() / G` is a multiple of 8; `v` holds every
/// row read: `v.len() >= (keys - 1) * stride + offset + hd` when keys > 0.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_rows_group_f64_avx512<const G: usize>(
    w: &[f64],
    v: &[f32],
    stride: usize,
    offset: usize,
    out: &mut [f64],
) {
    /// Columns per pass: G x 4 accumulators.
    const COLS: usize = 32;
    let keys = w.len() / G;
    let hd = out.len() / G;
    assert!(hd.is_multiple_of(8) && w.len() == G * keys && out.len() == G * hd);
    assert!(keys == 0 || v.len() >= (keys - 1) * stride + offset + hd);
    let mut c = 0;
    while c < hd {
        let n = ((hd - c) / 8).min(COLS / 8);
        let mut acc = [[_mm512_setzero_pd(); COLS / 8]; G];
        for j in 0..keys {
            // SAFETY: row j holds hd values from j * stride + offset (asserted above).
            let row = unsafe { v.as_ptr().add(j * stride + offset + c) };
            let mut x = [_mm512_setzero_pd(); COLS / 8];
            for (i, xi) in x.iter_mut().enumerate().take(n) {
                // SAFETY: columns c + 8i .. + 8 are within the row's hd values.
                *xi = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(row.add(8 * i)) });
            }
            for (g, a) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_pd(w[g * keys + j]);
                for i in 0..n {
                    a[i] = _mm512_fmadd_pd(p, x[i], a[i]);
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (i, ai) in a.iter().enumerate().take(n) {
                // SAFETY: out holds G * hd values; c + 8i + 8 <= hd.
                unsafe { _mm512_storeu_pd(out.as_mut_ptr().add(g * hd + c + 8 * i), *ai) };
            }
        }
        c += 8 * n;
    }
}

/// `y[i] += a * x[i]` with an f64 accumulator and f32 input (AVX2 + FMA).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f64_avx2(y: &mut [f64], a: f64, x: &[f32]) {
    let k = y.len().min(x.len());
    let av = _mm256_set1_pd(a);
    let main = k / 4 * 4;
    let mut i = 0;
    while i < main {
        // SAFETY: i + 4 <= k.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let xv = _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i)));
            _mm256_storeu_pd(p, _mm256_fmadd_pd(av, xv, _mm256_loadu_pd(p)));
        }
        i += 4;
    }
    for j in main..k {
        y[j] += a * x[j] as f64;
    }
}

/// TQ1_0 against one token without extracting trits: with `x_n = b * 3^n mod 256` and
/// `x_{n+1} = 3 * x_n mod 256`, trit n is exactly `(3 * x_n - x_{n+1}) / 256`, so
/// `sum trit * q = (3 * sum x_n * q - sum x_{n+1} * q) / 256`: two dpbusd on the raw bytes per
/// plane and two byte adds, instead of compares and masks (decode is one token at a time).
///
/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI. Same layout requirements as [`dot1_avx2`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot1_avx512_gemv(row: &[u8], q: &[i8], k: usize) -> i32 {
    let nb = k / 256;
    debug_assert!(row.len() >= nb * 54 && q.len() >= nb * PERM1_BLOCK);
    // Sums of x_n * q_n (a) and x_{n+1} * q_n (b), split in two chains each.
    let (mut a0, mut a1, mut b0, mut b1) = (
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
    );
    for blk in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(blk * 54 + PREFETCH) as *const i8);
        // SAFETY: block `blk` spans 54 bytes from 54*blk; the masked load touches only its
        // first 52 (qs and qh) and suppresses faults on the rest.
        let mut x = unsafe {
            _mm512_maskz_loadu_epi8(
                0x000F_FFFF_FFFF_FFFF,
                row.as_ptr().add(blk * 54) as *const i8,
            )
        };
        for n in 0..5 {
            let next = times3(x);
            // SAFETY: q has nb*320 bytes; this reads blk*320 + 64n .. +64.
            let qv = unsafe {
                _mm512_loadu_si512(q.as_ptr().add(blk * PERM1_BLOCK + 64 * n) as *const __m512i)
            };
            if n % 2 == 0 {
                a0 = _mm512_dpbusd_epi32(a0, x, qv);
                b0 = _mm512_dpbusd_epi32(b0, next, qv);
            } else {
                a1 = _mm512_dpbusd_epi32(a1, x, qv);
                b1 = _mm512_dpbusd_epi32(b1, next, qv);
            }
            x = next;
        }
    }
    // Per-element exactness makes the totals exact too (|sums| < 2^31 for k < 2^14 · 5).
    let a = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
    let b = _mm512_reduce_add_epi32(_mm512_add_epi32(b0, b1));
    (3 * a - b) / 256
}

/// [`dot1_avx512_gemv`] for `S` rows at once, their blocks read in lockstep (`S` weight
/// streams in flight; see [`dot_f16_rows_avx512`]). The sums are exact integers, so the
/// results equal the one-row kernel's.
///
/// # Safety
/// As [`dot1_avx512_gemv`], for every row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot1_rows_avx512_gemv<const S: usize>(
    rows: [&[u8]; S],
    q: &[i8],
    k: usize,
) -> [i32; S] {
    let nb = k / 256;
    debug_assert!(rows.iter().all(|r| r.len() >= nb * 54) && q.len() >= nb * PERM1_BLOCK);
    let mut a = [_mm512_setzero_si512(); S];
    let mut b = [_mm512_setzero_si512(); S];
    for blk in 0..nb {
        // Plain loops (no `array::from_fn` closures, which do not inherit target features).
        let mut x = [_mm512_setzero_si512(); S];
        for s in 0..S {
            let p = rows[s].as_ptr().wrapping_add(blk * 54);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            // SAFETY: as in `dot1_avx512_gemv`: only the block's first 52 bytes are read.
            x[s] = unsafe { _mm512_maskz_loadu_epi8(0x000F_FFFF_FFFF_FFFF, p as *const i8) };
        }
        for n in 0..5 {
            // SAFETY: q has nb*320 bytes; this reads blk*320 + 64n .. +64.
            let qv = unsafe {
                _mm512_loadu_si512(q.as_ptr().add(blk * PERM1_BLOCK + 64 * n) as *const __m512i)
            };
            for s in 0..S {
                let next = times3(x[s]);
                a[s] = _mm512_dpbusd_epi32(a[s], x[s], qv);
                b[s] = _mm512_dpbusd_epi32(b[s], next, qv);
                x[s] = next;
            }
        }
    }
    let mut out = [0i32; S];
    for s in 0..S {
        out[s] = (3 * _mm512_reduce_add_epi32(a[s]) - _mm512_reduce_add_epi32(b[s])) / 256;
    }
    out
}

/// Permute indices that pack TQ1_0's five trit planes into four vectors: vector v takes
/// bytes from plane v (index < 64) and plane v+1 (index >= 64): 52 + 12, 40 + 24, 28 + 36,
/// 16 + 48 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn packed_plane_indices() -> [__m512i; 4] {
    std::array::from_fn(|v| {
        let from = 12 * v; // first byte of plane v not yet packed
        let tail = 52 - from; // its bytes left
        let bytes: [u8; 64] = std::array::from_fn(|i| {
            if i < tail {
                (from + i) as u8
            } else {
                (64 + i - tail) as u8
            }
        });
        // SAFETY: `bytes` is 64 readable bytes.
        unsafe { _mm512_loadu_si512(bytes.as_ptr() as *const __m512i) }
    })
}

/// The five trit planes of one TQ1_0 block: plane n holds trit n of each of the 52 bytes
/// (`qs` and `qh`; bytes 52..64 are zero trits).
///
/// # Safety
/// `block` points at a 54-byte TQ1_0 block (only its first 52 bytes are read).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn tq1_0_planes(block: *const u8) -> [__m512i; 5] {
    let c86 = _mm512_set1_epi8(86);
    let c171 = _mm512_set1_epi8(171u8 as i8);
    let one = _mm512_set1_epi8(1);
    // SAFETY: the masked load touches only the block's first 52 bytes and suppresses faults
    // on the rest, which read as zero.
    let mut x = unsafe { _mm512_maskz_loadu_epi8(0x000F_FFFF_FFFF_FFFF, block as *const i8) };
    // Trit n of byte b is floor(3 * x_n / 256) with x_n = b * 3^n mod 256, that is
    // (x_n >= 86) + (x_n >= 171); x_{n+1} = 3 * x_n mod 256 is two wrapping byte adds.
    // Single-cycle byte operations only, no 16-bit multiplies.
    std::array::from_fn(|n| {
        let m1 = _mm512_cmpge_epu8_mask(x, c86);
        let m2 = _mm512_cmpge_epu8_mask(x, c171);
        let t1 = _mm512_maskz_mov_epi8(m1, one);
        let plane = _mm512_mask_add_epi8(t1, m2, t1, one);
        if n < 4 {
            x = times3(x);
        }
        plane
    })
}

/// The 256 codes (trit values 0..2) of one TQ1_0 block, in `TQ1_0_PACKED_ORDER`.
///
/// # Safety
/// `block` points at a 54-byte TQ1_0 block (only its first 52 bytes are read).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn tq1_0_packed_codes(block: *const u8, idx: &[__m512i; 4]) -> [__m512i; 4] {
    // SAFETY: the caller's guarantee.
    let planes = unsafe { tq1_0_planes(block) };
    std::array::from_fn(|v| _mm512_permutex2var_epi8(planes[v], idx[v], planes[v + 1]))
}

/// Decodes `rows` TQ1_0 rows of `k` weights into [`TwoBit::Codes`]: byte j of each 64-byte
/// chunk holds packed positions j, 64+j, 128+j, 192+j at shifts 0, 2, 4, 6. Prefill decodes a
/// block of rows once and runs the 2-bit kernel over every token tile, instead of
/// extracting trits again for each tile.
///
/// # Safety
/// The CPU supports AVX-512 F/BW and VBMI; `src` holds `rows` rows of `k / 256` blocks of
/// 54 bytes; `dst` holds `rows * k / 4` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub unsafe fn decode_tq1_0_rows(src: &[u8], rows: usize, k: usize, dst: &mut [u8]) {
    let nb = k / 256;
    assert!(src.len() >= rows * nb * 54 && dst.len() >= rows * nb * 64);
    let idx = packed_plane_indices();
    for blk in 0..rows * nb {
        // SAFETY: block `blk` spans 54 bytes within `src` (asserted above).
        let codes = unsafe { tq1_0_two_bit_codes(src.as_ptr().add(blk * 54), &idx) };
        // SAFETY: bytes 64*blk .. +64 are within `dst` (asserted above).
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(blk * 64) as *mut __m512i, codes) };
    }
}

/// One TQ1_0 block as [`TwoBit::Codes`]: the four packed code vectors two bits apart.
///
/// # Safety
/// `block` points at a 54-byte TQ1_0 block (only its first 52 bytes are read).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(super) unsafe fn tq1_0_two_bit_codes(block: *const u8, idx: &[__m512i; 4]) -> __m512i {
    // SAFETY: the caller's guarantee.
    let c = unsafe { tq1_0_packed_codes(block, idx) };
    // Codes are at most 2, so 16-bit shifts never carry into the neighbouring byte.
    let lo = _mm512_or_si512(c[0], _mm512_slli_epi16(c[1], 2));
    let hi = _mm512_or_si512(_mm512_slli_epi16(c[2], 4), _mm512_slli_epi16(c[3], 6));
    _mm512_or_si512(lo, hi)
}

/// [`dot1_avx512`] with the five trit planes packed into four vectors by byte permutes
/// (planes hold 52 weights each, 48 for the last), so each token costs 4 dot products per
/// block instead of 5; the activations come in `TQ1_0_PACKED_ORDER`.
///
/// # Safety
/// The CPU supports AVX-512 F/BW, VNNI and VBMI. `row` holds `k / 256` TQ1_0 blocks of 54
/// bytes; each `q[t]` holds `k` bytes in `TQ1_0_PACKED_ORDER` per block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn dot1p_avx512<const T: usize>(
    row: &[u8],
    q: [&[i8]; T],
    k: usize,
    out: &mut [i32; T],
) {
    let nb = k / 256;
    debug_assert!(row.len() >= nb * 54 && q.iter().all(|q| q.len() >= k));
    let idx = packed_plane_indices();
    let chains = if T == 1 { 4 } else { 1 };
    let mut acc = [[_mm512_setzero_si512(); 4]; T];
    for b in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(b * 54 + PREFETCH) as *const i8);
        // SAFETY: block b spans bytes 54b .. 54b+54 of `row`.
        let codes = unsafe { tq1_0_packed_codes(row.as_ptr().add(b * 54), &idx) };
        for (v, &codes) in codes.iter().enumerate() {
            for t in 0..T {
                // SAFETY: q[t] has k bytes; this reads b*256 + 64v .. +64.
                let qv = unsafe {
                    _mm512_loadu_si512(q[t].as_ptr().add(b * 256 + 64 * v) as *const __m512i)
                };
                acc[t][v % chains] = _mm512_dpbusd_epi32(acc[t][v % chains], codes, qv);
            }
        }
    }
    reduce_chains(&acc, out);
}

/// Which ternary layout a row block holds (and which activation order goes with it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    TwoBit(TwoBit),
    /// TQ1_0 against `perm1` activations.
    Tq1_0,
    /// TQ1_0 against `perm1p` activations; needs AVX-512 VBMI.
    Tq1_0Packed,
}

/// Integer dots `sum code * q` of rows `m0..m1` (each `row_bytes` long in `data`) against
/// `T` tokens, AVX-512 VNNI. One call per block of rows keeps dispatch out of the hot loop.
///
/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI (and VBMI for [`Layout::Tq1_0Packed`]); `data`
/// holds rows `m0..m1` in `layout`, each
/// `q[t]` is that layout's activation order for `k` inputs, `out.len() >= m1 - m0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn rows_avx512<const T: usize>(
    layout: Layout,
    data: &[u8],
    row_bytes: usize,
    (m0, m1): (usize, usize),
    q: [&[i8]; T],
    k: usize,
    out: &mut [[i32; T]],
) {
    let row = |m: usize| &data[m * row_bytes..(m + 1) * row_bytes];
    let mut m = m0;
    // Several tokens on a 2-bit layout: rows in groups (2 x 8 or 4 x 4 accumulators).
    if let Layout::TwoBit(kind) = layout {
        while T > 1 && m + 4 <= m1 {
            let o = &mut out[m - m0..];
            // SAFETY: the caller's guarantees, per row.
            unsafe {
                if T >= 8 {
                    dot2_rows_avx512::<2, T>(kind, [row(m), row(m + 1)], q, k, o);
                    dot2_rows_avx512::<2, T>(kind, [row(m + 2), row(m + 3)], q, k, &mut o[2..]);
                } else {
                    dot2_rows_avx512::<4, T>(
                        kind,
                        [row(m), row(m + 1), row(m + 2), row(m + 3)],
                        q,
                        k,
                        o,
                    );
                }
            }
            m += 4;
        }
    }
    // One token: several rows at once, spread over the block.
    if let Layout::TwoBit(kind) = layout
        && T == 1
    {
        m = spread::<_, GEMV_STREAMS>(&mut out[m - m0..], (m, m1), |ms| {
            let mut d = [[0i32; T]; GEMV_STREAMS];
            // SAFETY: the caller's guarantees, per row.
            unsafe { dot2_rows_avx512::<GEMV_STREAMS, T>(kind, ms.map(row), q, k, &mut d) };
            d
        });
    }
    if layout == Layout::Tq1_0 && T == 1 {
        m = spread::<_, GEMV_STREAMS_TQ1_0>(&mut out[m - m0..], (m, m1), |ms| {
            // SAFETY: the caller's guarantees, per row.
            let d = unsafe { dot1_rows_avx512_gemv(ms.map(row), q[0], k) };
            d.map(|v| std::array::from_fn(|_| v))
        });
    }
    let start = m;
    for i in 0..m1 - start {
        let m = start + two_streams::<T>(i, m1 - start);
        let o = &mut out[m - m0];
        let row = row(m);
        // SAFETY: the caller's guarantees, per row.
        unsafe {
            match layout {
                Layout::TwoBit(kind) => dot2_avx512::<T>(kind, row, q, k, o),
                Layout::Tq1_0 if T == 1 => o[0] = dot1_avx512_gemv(row, q[0], k),
                Layout::Tq1_0 => dot1_avx512::<T>(row, q, k, o),
                Layout::Tq1_0Packed => dot1p_avx512::<T>(row, q, k, o),
            }
        }
    }
}

/// The `i`-th row to visit of `n`: with one token (decode) the two halves of the block
/// alternate, so that two sequential streams of weights are in flight instead of one (a
/// single stream's prefetching does not cover the memory latency: +6-8 % decode here);
/// several tokens go in order.
#[inline(always)]
pub fn two_streams<const T: usize>(i: usize, n: usize) -> usize {
    if T > 1 {
        return i;
    }
    let half = n.div_ceil(2);
    if i.is_multiple_of(2) {
        i / 2
    } else {
        half + i / 2
    }
}

/// `out[m - m0] = v` for the rows `m` of groups of `S` spread evenly over `m0..m1` (row
/// `m0 + s * part + i` for `s < S`), each group computed by one `many` call that reads its rows
/// in lockstep: `S` weight streams in flight, where one stream per thread leaves memory
/// bandwidth unused (23 vs 30 GB/s at 2 threads here). Returns the first row left over (fewer
/// than `S`), for a one-row kernel.
#[inline(always)]
pub(super) fn spread<V, const S: usize>(
    out: &mut [V],
    (m0, m1): (usize, usize),
    mut many: impl FnMut([usize; S]) -> [V; S],
) -> usize {
    let part = (m1 - m0) / S;
    for i in 0..part {
        let d = many(std::array::from_fn(|s| m0 + s * part + i));
        for (s, v) in d.into_iter().enumerate() {
            out[s * part + i] = v;
        }
    }
    m0 + S * part
}

/// [`rows_avx512`] for AVX2.
///
/// # Safety
/// The CPU supports AVX2; otherwise as [`rows_avx512`].
#[target_feature(enable = "avx2")]
pub unsafe fn rows_avx2<const T: usize>(
    layout: Layout,
    data: &[u8],
    row_bytes: usize,
    (m0, m1): (usize, usize),
    q: [&[i8]; T],
    k: usize,
    out: &mut [[i32; T]],
) {
    let (mut m0, mut out) = (m0, out);
    // One token on a 2-bit layout: several rows at once, spread over the block.
    if let Layout::TwoBit(kind) = layout
        && T == 1
    {
        let row = |m: usize| &data[m * row_bytes..(m + 1) * row_bytes];
        let done = spread::<_, GEMV_STREAMS_AVX2>(out, (m0, m1), |ms| {
            // SAFETY: the caller's guarantees, per row.
            let d = unsafe { dot2_rows_avx2_gemv(kind, ms.map(row), q[0], k) };
            d.map(|v| std::array::from_fn(|_| v))
        });
        out = &mut out[done - m0..];
        m0 = done;
    }
    // One token on TQ1_0 likewise, with the compare-based trit extraction.
    if layout == Layout::Tq1_0 && T == 1 {
        let row = |m: usize| &data[m * row_bytes..(m + 1) * row_bytes];
        let done = spread::<_, GEMV_STREAMS_AVX2>(out, (m0, m1), |ms| {
            // SAFETY: the caller's guarantees, per row.
            let d = unsafe { dot1_rows_avx2_gemv(ms.map(row), q[0], k) };
            d.map(|v| std::array::from_fn(|_| v))
        });
        out = &mut out[done - m0..];
        m0 = done;
    }
    for i in 0..m1 - m0 {
        let m = m0 + two_streams::<T>(i, m1 - m0);
        let o = &mut out[m - m0];
        let row = &data[m * row_bytes..(m + 1) * row_bytes];
        // SAFETY: the caller's guarantees, per row.
        unsafe {
            match layout {
                Layout::TwoBit(kind) => dot2_avx2::<T>(kind, row, q, k, o),
                Layout::Tq1_0 => dot1_avx2::<T>(row, q, k, o),
                // Never chosen without AVX-512 VBMI (see `fast_rows`).
                Layout::Tq1_0Packed => unreachable!("packed TQ1_0 needs AVX-512 VBMI"),
            }
        }
    }
}
