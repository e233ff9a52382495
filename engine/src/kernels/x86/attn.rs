//! Attention in f32 for one query row's heads that share a KV head: AVX-512 (one register
//! per 16 lanes of the specified order) and AVX2 (two registers per 16 lanes). Both do the
//! operations of `kernels::attention::attend_spec` in its order, so they are bit-identical
//! to it; the module's comments give the order.

use std::arch::x86_64::*;

use crate::kernels::attention::{
    CHAINS, EXP_MIN, EXP_POLY, KEY_BLOCK, KvElem, LANES, LN2_HI, LN2_LO, Queries, exp_spec,
    halving_sum,
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

/// Scores stored from a tile's register: its 16 lanes are the scores of keys `j .. j + 16`
/// of one head (`row` starts at key `j`), the lanes past the row's end dropped.
#[inline]
#[target_feature(enable = "avx512f")]
fn store_scores16(row: &mut [f32], x: __m512) {
    let n = row.len().min(LANES);
    // SAFETY: the mask selects the first n <= row.len() lanes; masked lanes are not written.
    unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr(), ((1u32 << n) - 1) as u16, x) };
}

/// `attend_spec` with AVX-512, `k` and `v` from the KV head's first element.
///
/// # Safety
/// The CPU supports AVX-512 F, FMA and F16C; hd = `out.len() / groups` is a multiple of 16;
/// `k` holds `keys.div_ceil(16)` whole key blocks and `v` `keys` (> 0) value rows.
#[target_feature(enable = "avx512f,fma,f16c")]
pub unsafe fn attend_avx512<E: KvElem>(
    Queries { qs, groups, scale }: Queries<'_>,
    (k, v): (&[E], &[E]),
    keys: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = out.len() / groups;
    scores.clear();
    scores.resize(groups * keys, 0.0);
    let blocks = keys.div_ceil(KEY_BLOCK);
    let mut h0 = 0;
    while h0 < groups {
        let h = head_tile(groups - h0, 4);
        // H x B x CHAINS = 16 accumulators per tile.
        let (q, sc) = (
            &qs[h0 * hd..(h0 + h) * hd],
            &mut scores[h0 * keys..(h0 + h) * keys],
        );
        // SAFETY: the caller's bounds; the blocks are the span's.
        unsafe {
            match h {
                4 => dots16::<E, 4, { 16 / (4 * CHAINS) }>(q, hd, k, 0..blocks, scale, sc),
                2 => dots16::<E, 2, { 16 / (2 * CHAINS) }>(q, hd, k, 0..blocks, scale, sc),
                _ => dots16::<E, 1, { 16 / CHAINS }>(q, hd, k, 0..blocks, scale, sc),
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
                (4, 4) => weighted16::<E, 4, 4>(scores, h0, v, keys, out),
                (4, 2) => weighted16::<E, 4, 2>(scores, h0, v, keys, out),
                (4, _) => weighted16::<E, 4, 1>(scores, h0, v, keys, out),
                (2, 4) => weighted16::<E, 2, 4>(scores, h0, v, keys, out),
                (2, 2) => weighted16::<E, 2, 2>(scores, h0, v, keys, out),
                (2, _) => weighted16::<E, 2, 1>(scores, h0, v, keys, out),
                (_, 4) => weighted16::<E, 1, 4>(scores, h0, v, keys, out),
                (_, 2) => weighted16::<E, 1, 2>(scores, h0, v, keys, out),
                _ => weighted16::<E, 1, 1>(scores, h0, v, keys, out),
            }
        }
        for (o, &sum) in out[h0 * hd..(h0 + h) * hd].chunks_exact_mut(hd).zip(&sums) {
            o.iter_mut().for_each(|o| *o /= sum);
        }
        h0 += h;
    }
}

/// Scores of H heads (queries `q`, scores rows `scores`, `keys` each) against the keys of
/// blocks `blocks`, B blocks per tile and the blocks left over one at a time: H x B x CHAINS
/// accumulators, each the 16 lanes of one chain of one head's dots with one block's keys
/// (the specification's chains, lane by lane).
///
/// # Safety
/// As [`attend_avx512`]; `blocks` ends at most at `keys.div_ceil(16)`.
#[inline]
#[target_feature(enable = "avx512f,fma,f16c")]
unsafe fn dots16<E: KvElem, const H: usize, const B: usize>(
    q: &[f32],
    hd: usize,
    k: &[E],
    blocks: std::ops::Range<usize>,
    scale: f32,
    scores: &mut [f32],
) {
    let keys = scores.len() / H;
    let sv = _mm512_set1_ps(scale);
    let (qp, kp) = (q.as_ptr(), k.as_ptr());
    let block = KEY_BLOCK * hd;
    let mut b = blocks.start;
    while b + B <= blocks.end {
        let mut acc = [[[_mm512_setzero_ps(); CHAINS]; B]; H];
        for d0 in (0..hd).step_by(CHAINS) {
            for c in 0..CHAINS {
                let d = d0 + c;
                let mut kt = [_mm512_setzero_ps(); B];
                for (i, kt) in kt.iter_mut().enumerate() {
                    // SAFETY: block b + i is one of the span's whole blocks (the caller's
                    // bounds).
                    *kt = unsafe { load16(kp.add((b + i) * block + d * KEY_BLOCK)) };
                }
                for (h, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: head h's query holds hd values.
                    let qb = _mm512_set1_ps(unsafe { *qp.add(h * hd + d) });
                    for i in 0..B {
                        acc[i][c] = _mm512_fmadd_ps(qb, kt[i], acc[i][c]);
                    }
                }
            }
        }
        for (row, acc) in scores.chunks_exact_mut(keys).zip(&acc) {
            for (i, a) in acc.iter().enumerate() {
                let dot = chains_sum16(a);
                store_scores16(&mut row[(b + i) * KEY_BLOCK..], _mm512_mul_ps(dot, sv));
            }
        }
        b += B;
    }
    if B > 1 && b < blocks.end {
        // SAFETY: as above, for the remaining blocks.
        unsafe { dots16::<E, H, 1>(q, hd, k, b..blocks.end, scale, scores) };
    }
}

/// The chains of a dot summed in the specified order: `(c0 + c1) + (c2 + c3)`.
#[inline]
#[target_feature(enable = "avx512f")]
fn chains_sum16(a: &[__m512; CHAINS]) -> __m512 {
    const { assert!(CHAINS == 4) };
    _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))
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
    keys: usize,
    out: &mut [f32],
) {
    // p holds groups x keys weights, out groups x hd values.
    let hd = out.len() / (p.len() / keys);
    let mut col = 0;
    while col < hd {
        let mut acc = [[_mm512_setzero_ps(); C]; H];
        for j in 0..keys {
            // SAFETY: row j's columns col .. col + 16C lie within v (the caller's bounds).
            let row = unsafe { v.as_ptr().add(j * hd + col) };
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
    keys: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = out.len() / groups;
    scores.clear();
    scores.resize(groups * keys, 0.0);
    let blocks = keys.div_ceil(KEY_BLOCK);
    // One head at a time: CHAINS x 2 registers of accumulators.
    for (q, sc) in qs.chunks_exact(hd).zip(scores.chunks_exact_mut(keys)) {
        // SAFETY: the caller's bounds.
        unsafe { dots8::<E>(q, hd, k, blocks, scale, sc) };
    }
    let mut sums = [0f32; 2];
    let mut h0 = 0;
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
                (2, true) => weighted8::<E, 2, 4>(scores, h0, v, keys, out),
                (2, false) => weighted8::<E, 2, 2>(scores, h0, v, keys, out),
                (_, true) => weighted8::<E, 1, 4>(scores, h0, v, keys, out),
                (_, false) => weighted8::<E, 1, 2>(scores, h0, v, keys, out),
            }
        }
        for (o, &sum) in out[h0 * hd..(h0 + h) * hd].chunks_exact_mut(hd).zip(&sums) {
            o.iter_mut().for_each(|o| *o /= sum);
        }
        h0 += h;
    }
}

/// [`dots16`] with AVX2 for one head (query `q`, scores row `scores`) and the `blocks` key
/// blocks: each chain's accumulator is two registers (lanes 0-7, 8-15 of a block), 8 of 16.
///
/// # Safety
/// As [`attend_avx2`]; `blocks` is `scores.len().div_ceil(16)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots8<E: KvElem>(
    q: &[f32],
    hd: usize,
    k: &[E],
    blocks: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let sv = _mm256_set1_ps(scale);
    let kp = k.as_ptr();
    let mut lanes = [0f32; LANES];
    for b in 0..blocks {
        let mut acc = [[_mm256_setzero_ps(); 2]; CHAINS];
        for d0 in (0..hd).step_by(CHAINS) {
            for (c, acc) in acc.iter_mut().enumerate() {
                let d = d0 + c;
                let qb = _mm256_set1_ps(q[d]);
                // SAFETY: block b is one of the span's whole blocks (the caller's bounds).
                let kt = unsafe {
                    let p = kp.add(b * KEY_BLOCK * hd + d * KEY_BLOCK);
                    [load8(p), load8(p.add(8))]
                };
                for half in 0..2 {
                    acc[half] = _mm256_fmadd_ps(qb, kt[half], acc[half]);
                }
            }
        }
        for half in 0..2 {
            let dot = chains_sum8(acc.map(|a| a[half]));
            // SAFETY: `lanes` holds 16 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * half), _mm256_mul_ps(dot, sv)) };
        }
        let row = &mut scores[b * KEY_BLOCK..];
        let n = row.len().min(LANES);
        row[..n].copy_from_slice(&lanes[..n]);
    }
}

/// [`chains_sum16`] for 8 lanes.
#[inline]
#[target_feature(enable = "avx")]
fn chains_sum8(a: [__m256; CHAINS]) -> __m256 {
    const { assert!(CHAINS == 4) };
    _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))
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
    keys: usize,
    out: &mut [f32],
) {
    let hd = out.len() / (p.len() / keys);
    let mut col = 0;
    while col < hd {
        let mut acc = [[_mm256_setzero_ps(); C]; H];
        for j in 0..keys {
            // SAFETY: row j's columns col .. col + 8C lie within v (the caller's bounds).
            let row = unsafe { v.as_ptr().add(j * hd + col) };
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
