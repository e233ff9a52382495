//! The 2-bit ternary layouts (I2_S, TQ2_0, and TQ1_0 rows decoded to 2-bit codes): per-row
//! dots for AVX2 and AVX-512 VNNI, one token or several.

use std::arch::x86_64::*;

use super::*;

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
pub(super) unsafe fn dot2_rows_avx512<const R: usize, const T: usize>(
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
