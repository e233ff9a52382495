//! Attention's dots and weighted sums: f32 values accumulated in f64, one query or a group
//! of query heads sharing a KV head.

use std::arch::x86_64::*;

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

/// The grouped attention kernels for one element type of the cached keys and values:
/// `$load8` widens 8 of them to f64 (exactly: f16 and f32 values are f64 values), so the two
/// instantiations do the same arithmetic on the same numbers.
macro_rules! grouped_kv_kernels {
    ($dot:ident, $weighted:ident, $elem:ty, $features:literal, $load8:ident) => {
        /// [`dot_rows_f32_f64_avx512`] for the `G` queries of a grouped-query head (`qs`: G * k
        /// f32, query g at g * k) against the same rows: each key row is loaded and widened once for
        /// all G queries. `out[g * rows + j]` is computed exactly as [`dot_f32_f64_avx512`] computes
        /// query g against row j (the same two chains, the same final sum).
        ///
        /// # Safety
        /// The CPU supports AVX-512 F; k is a multiple of 16; `v` holds every row read:
        /// `v.len() >= (rows - 1) * stride + offset + k` when rows > 0, rows = `out.len() / G`.
        #[target_feature(enable = $features)]
        pub unsafe fn $dot<const G: usize>(
            qs: &[f32],
            v: &[$elem],
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
                        let b00 = $load8(pb);
                        let b01 = $load8(pb.add(8));
                        let (b10, b11) = if two {
                            let pb1 = pb.add(stride);
                            ($load8(pb1), $load8(pb1.add(8)))
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
                        out[g * rows + j + 1] =
                            _mm512_reduce_add_pd(_mm512_add_pd(a[1][0], a[1][1]));
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
        #[target_feature(enable = $features)]
        pub unsafe fn $weighted<const G: usize>(
            w: &[f64],
            v: &[$elem],
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
                        *xi = unsafe { $load8(row.add(8 * i)) };
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
    };
}

/// 8 cached f32 values widened to f64.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load8_f32(p: *const f32) -> __m512d {
    // SAFETY: the caller's row bounds cover p .. p + 8.
    _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(p) })
}

/// 8 cached f16 values widened to f64.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn load8_f16(p: *const half::f16) -> __m512d {
    // SAFETY: the caller's row bounds cover p .. p + 8 (16 bytes).
    _mm512_cvtps_pd(_mm256_cvtph_ps(unsafe {
        _mm_loadu_si128(p as *const __m128i)
    }))
}

grouped_kv_kernels!(
    dot_rows_group_f32_f64_avx512,
    weighted_rows_group_f64_avx512,
    f32,
    "avx512f",
    load8_f32
);
grouped_kv_kernels!(
    dot_rows_group_f16_f64_avx512,
    weighted_rows_group_f16_f64_avx512,
    half::f16,
    "avx512f,f16c",
    load8_f16
);

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
