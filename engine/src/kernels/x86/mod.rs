//! x86-64 SIMD twins of the scalar kernels in `crate::quant` (AVX2 baseline, AVX-512 with
//! VNNI where present). Each function computes the exact integer dots `sum code * q` for
//! one weight row against `T` tokens; the caller turns them into `(D / s) * scale` exactly as
//! the scalar reference does, so results are bit-identical to it.
//!
//! Activations come pre-permuted (`QuantizedActs::perm2` / `perm1`) so that each decoded
//! code plane lines up with contiguous activation bytes.

use std::arch::x86_64::*;

use crate::quant::act::PERM1_BLOCK;

mod attn;
mod dense;
pub mod gemm;
pub mod head;
mod tq1;
mod two_bit;

pub use attn::*;
pub use dense::*;
pub use tq1::*;
pub use two_bit::*;

/// How far ahead of the current weight bytes to prefetch.
const PREFETCH: usize = 1024;

/// Rows of a ternary matrix read at once when decoding one token.
const GEMV_STREAMS: usize = 8;
const GEMV_STREAMS_TQ1_0: usize = 4;
const GEMV_STREAMS_AVX2: usize = 4;

#[inline]
#[target_feature(enable = "avx2")]
fn hsum256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
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
                // Never planned without AVX-512 VBMI (see `Kernels::ternary_plan`).
                Layout::Tq1_0Packed => unreachable!("packed TQ1_0 needs AVX-512 VBMI"),
            }
        }
    }
}
