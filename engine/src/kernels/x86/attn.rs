//! Attention in f32 for one query row's heads that share a KV head: AVX-512 (one register
//! per 16 lanes of the specified order) and AVX2 (two registers per 16 lanes). Both do the
//! operations of `kernels::attention::attend_spec` in its order, so they are bit-identical
//! to it; the module's comments give the order.

use std::arch::x86_64::*;

use crate::kernels::attention::{
    EXP_MIN, EXP_POLY, KvElem, LANES, LN2_HI, LN2_LO, Queries, RowSpan, exp_spec, halving_sum,
};

/// Round to nearest, ties to even, no exceptions (`_mm*_round*_ps`).
const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// Query heads per score tile: as many of the `rest` heads as fit `max`, a power of two.
fn head_tile(rest: usize, max: usize) -> usize {
    if rest >= 4 && max >= 4 {
        4
    } else if rest >= 2 && max >= 2 {
        2
    } else {
        1
    }
}

// ---------------------------------------------------------------------------------------
// AVX-512

/// 16 cached elements widened to f32 (exact).
///
/// # Safety
/// 16 elements from `p` are readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load16<E: KvElem>(p: *const E) -> __m512 {
    // SAFETY: the caller guarantees 16 elements (32 or 64 bytes) from p.
    unsafe {
        if E::F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// Lane L of the result is `halving_sum` of accumulator L's lanes: four transposing steps,
/// each adding lane i to lane i + 8 (then 4, 2, 1) of every accumulator at once. The steps
/// leave accumulator s in lane `SIGMA[s]` (an involution), so they are fed in that order.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce16(acc: &[__m512; 16]) -> __m512 {
    const SIGMA: [usize; 16] = [0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15];
    let mut a = [_mm512_setzero_ps(); 16];
    for s in 0..16 {
        a[s] = acc[SIGMA[s]];
    }
    // Lanes i < 8 of accumulators j and j + 8: 256-bit halves.
    let mut b = [_mm512_setzero_ps(); 8];
    for j in 0..8 {
        let lo = _mm512_shuffle_f32x4::<0x44>(a[j], a[j + 8]);
        let hi = _mm512_shuffle_f32x4::<0xEE>(a[j], a[j + 8]);
        b[j] = _mm512_add_ps(lo, hi);
    }
    // i + 4: 128-bit blocks.
    let mut c = [_mm512_setzero_ps(); 4];
    for j in 0..4 {
        let lo = _mm512_shuffle_f32x4::<0x88>(b[j], b[j + 4]);
        let hi = _mm512_shuffle_f32x4::<0xDD>(b[j], b[j + 4]);
        c[j] = _mm512_add_ps(lo, hi);
    }
    // i + 2: 64-bit pairs within blocks.
    let mut d = [_mm512_setzero_ps(); 2];
    for j in 0..2 {
        let (x, y) = (_mm512_castps_pd(c[j]), _mm512_castps_pd(c[j + 2]));
        d[j] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        );
    }
    // i + 1.
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(d[0], d[1]),
        _mm512_shuffle_ps::<0xDD>(d[0], d[1]),
    )
}

/// `exp_spec` of 16 values.
#[inline]
#[target_feature(enable = "avx512f,fma")]
fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN));
    let n = _mm512_roundscale_ps::<ROUND_NEAREST>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
    let mut y = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(y, _mm512_castsi512_ps(e))
}

/// `attend_spec` with AVX-512.
///
/// # Safety
/// The CPU supports AVX-512 F, FMA and F16C; hd = `out.len() / groups` is a multiple of 16;
/// the rows `rows` names (`keys` > 0 of them, hd elements each) lie within `k` and `v`.
#[target_feature(enable = "avx512f,fma,f16c")]
pub unsafe fn attend_avx512<E: KvElem>(
    Queries { qs, groups, scale }: Queries<'_>,
    (k, v): (&[E], &[E]),
    rows: RowSpan,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, keys) = (out.len() / groups, rows.keys);
    scores.clear();
    scores.resize(groups * keys, 0.0);
    let mut h0 = 0;
    while h0 < groups {
        let h = head_tile(groups - h0, 4);
        // SAFETY: the caller's bounds; heads h0..h0 + h exist.
        unsafe {
            match h {
                4 => dots16::<E, 4, 4>(qs, h0, hd, k, rows, scale, scores),
                2 => dots16::<E, 2, 8>(qs, h0, hd, k, rows, scale, scores),
                _ => dots16::<E, 1, 16>(qs, h0, hd, k, rows, scale, scores),
            }
        }
        h0 += h;
    }
    let mut sums = [0f32; 4];
    h0 = 0;
    while h0 < groups {
        let h = head_tile(groups - h0, 4);
        for (g, sum) in (h0..h0 + h).zip(&mut sums) {
            *sum = softmax16(&mut scores[g * keys..(g + 1) * keys]);
        }
        // Columns per pass: 16 x C with H x C <= 16 accumulators, C dividing hd / 16.
        let c = if (hd / LANES).is_multiple_of(4) {
            4
        } else if (hd / LANES).is_multiple_of(2) {
            2
        } else {
            1
        };
        // SAFETY: the caller's bounds; hd is a multiple of 16 x c.
        unsafe {
            match (h, c) {
                (4, 4) => weighted16::<E, 4, 4>(scores, h0, v, rows, out),
                (4, 2) => weighted16::<E, 4, 2>(scores, h0, v, rows, out),
                (4, _) => weighted16::<E, 4, 1>(scores, h0, v, rows, out),
                (2, 4) => weighted16::<E, 2, 4>(scores, h0, v, rows, out),
                (2, 2) => weighted16::<E, 2, 2>(scores, h0, v, rows, out),
                (2, _) => weighted16::<E, 2, 1>(scores, h0, v, rows, out),
                (_, 4) => weighted16::<E, 1, 4>(scores, h0, v, rows, out),
                (_, 2) => weighted16::<E, 1, 2>(scores, h0, v, rows, out),
                _ => weighted16::<E, 1, 1>(scores, h0, v, rows, out),
            }
        }
        for (o, &sum) in out[h0 * hd..(h0 + h) * hd].chunks_exact_mut(hd).zip(&sums) {
            o.iter_mut().for_each(|o| *o /= sum);
        }
        h0 += h;
    }
}

/// Scores of heads `h0..h0 + H` against every key, H x KJ (= 16) dots per tile.
///
/// # Safety
/// As [`attend_avx512`].
#[inline]
#[target_feature(enable = "avx512f,fma,f16c")]
unsafe fn dots16<E: KvElem, const H: usize, const KJ: usize>(
    qs: &[f32],
    h0: usize,
    hd: usize,
    k: &[E],
    RowSpan {
        stride,
        offset,
        keys,
    }: RowSpan,
    scale: f32,
    scores: &mut [f32],
) {
    let sv = _mm512_set1_ps(scale);
    let (q, kp) = (qs.as_ptr(), k.as_ptr());
    let mut lanes = [0f32; LANES];
    let mut j0 = 0;
    while j0 + KJ <= keys {
        let mut acc = [_mm512_setzero_ps(); 16];
        for c in (0..hd).step_by(LANES) {
            let mut qv = [_mm512_setzero_ps(); H];
            for (h, qv) in qv.iter_mut().enumerate() {
                // SAFETY: head h0 + h's query holds hd values.
                *qv = unsafe { _mm512_loadu_ps(q.add((h0 + h) * hd + c)) };
            }
            for kk in 0..KJ {
                // SAFETY: key j0 + kk < keys lies within k (the caller's bounds).
                let kv = unsafe { load16(kp.add((j0 + kk) * stride + offset + c)) };
                for h in 0..H {
                    acc[h * KJ + kk] = _mm512_fmadd_ps(qv[h], kv, acc[h * KJ + kk]);
                }
            }
        }
        let r = _mm512_mul_ps(reduce16(&acc), sv);
        // SAFETY: `lanes` holds 16 f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), r) };
        for h in 0..H {
            for kk in 0..KJ {
                scores[(h0 + h) * keys + j0 + kk] = lanes[h * KJ + kk];
            }
        }
        j0 += KJ;
    }
    for j in j0..keys {
        for h in 0..H {
            let mut acc = _mm512_setzero_ps();
            for c in (0..hd).step_by(LANES) {
                // SAFETY: as in the tiles above.
                unsafe {
                    let kv = load16(kp.add(j * stride + offset + c));
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.add((h0 + h) * hd + c)), kv, acc);
                }
            }
            // SAFETY: `lanes` holds 16 f32.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
            scores[(h0 + h) * keys + j] = halving_sum(&lanes) * scale;
        }
    }
}

/// `softmax_weights_spec` of one head's scores.
#[inline]
#[target_feature(enable = "avx512f,fma")]
fn softmax16(row: &mut [f32]) -> f32 {
    let main = row.len() / LANES * LANES;
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in row[..main].chunks_exact(LANES) {
        // SAFETY: c holds 16 f32. (max(x, m) returns m for a NaN x, as f32::max.)
        m = _mm512_max_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, m);
    }
    let mut max = _mm512_reduce_max_ps(m);
    for &s in &row[main..] {
        max = max.max(s);
    }
    let mv = _mm512_set1_ps(max);
    let mut acc = _mm512_setzero_ps();
    for c in row[..main].chunks_exact_mut(LANES) {
        // SAFETY: c holds 16 f32.
        unsafe {
            let p = exp16(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), mv));
            _mm512_storeu_ps(c.as_mut_ptr(), p);
            acc = _mm512_add_ps(acc, p);
        }
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    for (j, s) in row.iter_mut().enumerate().skip(main) {
        *s = exp_spec(*s - max);
        lanes[j % LANES] += *s;
    }
    halving_sum(&lanes)
}

/// `out[h] = sum_j p[h][j] * v_j` (not yet divided) for heads `h0..h0 + H`, 16 x C columns
/// per pass: each value chunk is loaded once for the H heads.
///
/// # Safety
/// As [`attend_avx512`], and hd is a multiple of 16 x C.
#[inline]
#[target_feature(enable = "avx512f,fma,f16c")]
unsafe fn weighted16<E: KvElem, const H: usize, const C: usize>(
    p: &[f32],
    h0: usize,
    v: &[E],
    RowSpan {
        stride,
        offset,
        keys,
    }: RowSpan,
    out: &mut [f32],
) {
    // p holds groups x keys weights, out groups x hd values.
    let hd = out.len() / (p.len() / keys);
    let mut col = 0;
    while col < hd {
        let mut acc = [[_mm512_setzero_ps(); C]; H];
        for j in 0..keys {
            // SAFETY: row j's columns col .. col + 16C lie within v (the caller's bounds).
            let row = unsafe { v.as_ptr().add(j * stride + offset + col) };
            let mut x = [_mm512_setzero_ps(); C];
            for (i, x) in x.iter_mut().enumerate() {
                // SAFETY: as above.
                *x = unsafe { load16(row.add(LANES * i)) };
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let ph = _mm512_set1_ps(p[(h0 + h) * keys + j]);
                for i in 0..C {
                    acc[i] = _mm512_fmadd_ps(ph, x[i], acc[i]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                let at = (h0 + h) * hd + col + LANES * i;
                // SAFETY: head h0 + h's output holds hd values; at + 16 <= its end.
                unsafe { _mm512_storeu_ps(out[at..at + LANES].as_mut_ptr(), *a) };
            }
        }
        col += LANES * C;
    }
}

// ---------------------------------------------------------------------------------------
// AVX2: the 16 lanes are two registers (lanes 0-7, 8-15).

/// 8 cached elements widened to f32 (exact).
///
/// # Safety
/// 8 elements from `p` are readable.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8<E: KvElem>(p: *const E) -> __m256 {
    // SAFETY: the caller guarantees 8 elements (16 or 32 bytes) from p.
    unsafe {
        if E::F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// `halving_sum` of the 16 lanes held as (lanes 0-7, lanes 8-15).
#[inline]
#[target_feature(enable = "avx2")]
fn reduce_pair(lo: __m256, hi: __m256) -> f32 {
    let s1 = _mm256_add_ps(lo, hi);
    let s2 = _mm_add_ps(_mm256_castps256_ps128(s1), _mm256_extractf128_ps::<1>(s1));
    let s3 = _mm_add_ps(s2, _mm_movehl_ps(s2, s2));
    _mm_cvtss_f32(_mm_add_ss(s3, _mm_shuffle_ps::<1>(s3, s3)))
}

/// `exp_spec` of 8 values.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
    let n = _mm256_round_ps::<ROUND_NEAREST>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    let mut y = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(
        _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r),
        _mm256_set1_ps(1.0),
    );
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

/// `attend_spec` with AVX2.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; otherwise as [`attend_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend_avx2<E: KvElem>(
    Queries { qs, groups, scale }: Queries<'_>,
    (k, v): (&[E], &[E]),
    rows: RowSpan,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, keys) = (out.len() / groups, rows.keys);
    scores.clear();
    scores.resize(groups * keys, 0.0);
    let mut h0 = 0;
    while h0 < groups {
        let h = head_tile(groups - h0, 2);
        // SAFETY: the caller's bounds; heads h0..h0 + h exist.
        unsafe {
            match h {
                2 => dots8::<E, 2, 2>(qs, h0, hd, k, rows, scale, scores),
                _ => dots8::<E, 1, 4>(qs, h0, hd, k, rows, scale, scores),
            }
        }
        h0 += h;
    }
    let mut sums = [0f32; 2];
    h0 = 0;
    while h0 < groups {
        let h = head_tile(groups - h0, 2);
        for (g, sum) in (h0..h0 + h).zip(&mut sums) {
            *sum = softmax8(&mut scores[g * keys..(g + 1) * keys]);
        }
        // 8 x C columns per pass with H x C <= 8 accumulators; hd / 8 is even.
        let four = (hd / 8).is_multiple_of(4);
        // SAFETY: the caller's bounds; hd is a multiple of 8 x C.
        unsafe {
            match (h, four) {
                (2, true) => weighted8::<E, 2, 4>(scores, h0, v, rows, out),
                (2, false) => weighted8::<E, 2, 2>(scores, h0, v, rows, out),
                (_, true) => weighted8::<E, 1, 4>(scores, h0, v, rows, out),
                (_, false) => weighted8::<E, 1, 2>(scores, h0, v, rows, out),
            }
        }
        for (o, &sum) in out[h0 * hd..(h0 + h) * hd].chunks_exact_mut(hd).zip(&sums) {
            o.iter_mut().for_each(|o| *o /= sum);
        }
        h0 += h;
    }
}

/// [`dots16`] with AVX2: H x KJ (= 4) dots per tile, each as two register chains.
///
/// # Safety
/// As [`attend_avx2`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots8<E: KvElem, const H: usize, const KJ: usize>(
    qs: &[f32],
    h0: usize,
    hd: usize,
    k: &[E],
    RowSpan {
        stride,
        offset,
        keys,
    }: RowSpan,
    scale: f32,
    scores: &mut [f32],
) {
    let (q, kp) = (qs.as_ptr(), k.as_ptr());
    let mut j0 = 0;
    while j0 < keys {
        // A full tile of KJ keys, else one key at a time (same chains).
        let kj = if j0 + KJ <= keys { KJ } else { 1 };
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for c in (0..hd).step_by(LANES) {
            for half in 0..2 {
                let at = c + 8 * half;
                let mut qv = [_mm256_setzero_ps(); H];
                for (h, qv) in qv.iter_mut().enumerate() {
                    // SAFETY: head h0 + h's query holds hd values.
                    *qv = unsafe { _mm256_loadu_ps(q.add((h0 + h) * hd + at)) };
                }
                for kk in 0..kj {
                    // SAFETY: key j0 + kk < keys lies within k.
                    let kv = unsafe { load8(kp.add((j0 + kk) * stride + offset + at)) };
                    for h in 0..H {
                        let a = &mut acc[h * KJ + kk][half];
                        *a = _mm256_fmadd_ps(qv[h], kv, *a);
                    }
                }
            }
        }
        for h in 0..H {
            for kk in 0..kj {
                let [lo, hi] = acc[h * KJ + kk];
                scores[(h0 + h) * keys + j0 + kk] = reduce_pair(lo, hi) * scale;
            }
        }
        j0 += kj;
    }
}

/// `softmax_weights_spec` of one head's scores with AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn softmax8(row: &mut [f32]) -> f32 {
    let main = row.len() / LANES * LANES;
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in row[..main].chunks_exact(8) {
        // SAFETY: c holds 8 f32. (max(x, m) returns m for a NaN x, as f32::max.)
        m = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, m);
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds 16 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let mut max = lanes[..8].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &s in &row[main..] {
        max = max.max(s);
    }
    let mv = _mm256_set1_ps(max);
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in row[..main].chunks_exact_mut(LANES) {
        // SAFETY: c holds 16 f32.
        unsafe {
            let p = c.as_mut_ptr();
            let a = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
            let b = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8)), mv));
            _mm256_storeu_ps(p, a);
            _mm256_storeu_ps(p.add(8), b);
            lo = _mm256_add_ps(lo, a);
            hi = _mm256_add_ps(hi, b);
        }
    }
    // SAFETY: `lanes` holds 16 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
    }
    for (j, s) in row.iter_mut().enumerate().skip(main) {
        *s = exp_spec(*s - max);
        lanes[j % LANES] += *s;
    }
    halving_sum(&lanes)
}

/// [`weighted16`] with AVX2: 8 x C columns per pass.
///
/// # Safety
/// As [`attend_avx2`], and hd is a multiple of 8 x C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted8<E: KvElem, const H: usize, const C: usize>(
    p: &[f32],
    h0: usize,
    v: &[E],
    RowSpan {
        stride,
        offset,
        keys,
    }: RowSpan,
    out: &mut [f32],
) {
    let hd = out.len() / (p.len() / keys);
    let mut col = 0;
    while col < hd {
        let mut acc = [[_mm256_setzero_ps(); C]; H];
        for j in 0..keys {
            // SAFETY: row j's columns col .. col + 8C lie within v (the caller's bounds).
            let row = unsafe { v.as_ptr().add(j * stride + offset + col) };
            let mut x = [_mm256_setzero_ps(); C];
            for (i, x) in x.iter_mut().enumerate() {
                // SAFETY: as above.
                *x = unsafe { load8(row.add(8 * i)) };
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let ph = _mm256_set1_ps(p[(h0 + h) * keys + j]);
                for i in 0..C {
                    acc[i] = _mm256_fmadd_ps(ph, x[i], acc[i]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                let at = (h0 + h) * hd + col + 8 * i;
                // SAFETY: head h0 + h's output holds hd values; at + 8 <= its end.
                unsafe { _mm256_storeu_ps(out[at..at + 8].as_mut_ptr(), *a) };
            }
        }
        col += 8 * C;
    }
}
