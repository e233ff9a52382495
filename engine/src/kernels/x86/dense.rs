//! F16 rows (the output head in the file's type): one vector against several rows, and the
//! row x vector tiles of a batch.

use std::arch::x86_64::*;

use super::*;

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
