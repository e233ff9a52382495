//! Prefill GEMM for AVX-512 VNNI on row-interleaved codes.
//!
//! A block of rows is first decoded into groups of [`GROUP`] rows whose codes are
//! interleaved four at a time: one 64-byte vector holds, for one *step* of four inputs, the
//! four codes of each of the 16 rows (one row per 32-bit lane). One VPDPBUSD then multiplies
//! 16 rows by four activation bytes of one token broadcast to every lane, and each lane
//! accumulates one (row, token) dot product. Compared with the per-row kernels in
//! [`super`] this removes the horizontal sums at the end of every row, the code
//! extraction inside the token loop, and a third of the loads per dot product (a weight
//! vector serves `T` tokens, a broadcast serves `G` row groups). The decode costs a few
//! percent of a 128-token prefill, so short batches keep the per-row kernels.
//!
//! Steps follow the activation order of the layout (`perm2` for the 2-bit types, `perm1p`
//! for TQ1_0): code vector `n` of a 256-weight block pairs byte `j` with activation byte
//! `64 n + j` of the block, so dword `d` of vector `n` is step `16 n + d` and the four
//! activation bytes of a step are contiguous. Sums are exact integers, so the results are
//! bit-identical to the scalar specification whatever the order.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{TwoBit, packed_plane_indices, tq1_0_two_bit_codes};

/// Rows per interleaved group: one per 32-bit lane of a 512-bit vector.
pub const GROUP: usize = 16;

/// Interleaved bytes of one row group: `k` (one byte per weight).
#[inline]
pub fn group_bytes(k: usize) -> usize {
    GROUP * k
}

/// Interleaves one 256-weight block of 16 rows. `raw[r]` is row r's block as 64 bytes of
/// 2-bit codes, code vector `n` at bit shift `kind.shift(n)`; the step vector `s = 16 n + d` (the
/// codes of bytes `4d .. 4d + 4` of code vector `n`, for every row) goes to `dst + 64 s`. The 16 x 16 transpose of dwords runs on the packed codes, before
/// the four code vectors are split out: a quarter of the shuffles of transposing each one.
///
/// # Safety
/// AVX-512 F/BW is available; `dst .. dst + 4096` is writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn store_interleaved(raw: &[__m512i; GROUP], kind: TwoBit, dst: *mut u8) {
    let a: [__m512i; 16] = std::array::from_fn(|i| {
        let (x, y) = (raw[i & !1], raw[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    // b[4q + e], 128-bit lane l: dword 4l + e of rows 4q .. 4q + 4.
    let b: [__m512i; 16] = std::array::from_fn(|i| {
        let (q, e) = (i / 4, i % 4);
        let (x, y) = (a[4 * q + e / 2], a[4 * q + 2 + e / 2]);
        if e % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    });
    let mask = _mm512_set1_epi8(3);
    for e in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x44>(b[e], b[4 + e]);
        let c1 = _mm512_shuffle_i32x4::<0xEE>(b[e], b[4 + e]);
        let c2 = _mm512_shuffle_i32x4::<0x44>(b[8 + e], b[12 + e]);
        let c3 = _mm512_shuffle_i32x4::<0xEE>(b[8 + e], b[12 + e]);
        // Dword 4l + e of all 16 rows, rows in lane order.
        let packed = [
            _mm512_shuffle_i32x4::<0x88>(c0, c2),
            _mm512_shuffle_i32x4::<0xDD>(c0, c2),
            _mm512_shuffle_i32x4::<0x88>(c1, c3),
            _mm512_shuffle_i32x4::<0xDD>(c1, c3),
        ];
        for (l, v) in packed.into_iter().enumerate() {
            for n in 0..4 {
                let sh = _mm_cvtsi32_si128(kind.shift(n) as i32);
                let codes = _mm512_and_si512(_mm512_srl_epi16(v, sh), mask);
                let s = 16 * n + 4 * l + e;
                // SAFETY: s < 64, within the caller's guarantee.
                unsafe { _mm512_storeu_si512(dst.add(s * 64) as *mut __m512i, codes) };
            }
        }
    }
}

/// Decodes blocks `blocks` (256 weights each) of rows `0..16 * groups` of a 2-bit layout
/// into the interleaved form: group g at `g * group_bytes(256 * blocks.len())`.
///
/// # Safety
/// AVX-512 F/BW is available; `data` holds `16 * groups` rows of `row_bytes` bytes in
/// `kind`'s layout, each with at least `blocks.end` blocks; `dst` holds
/// `groups * group_bytes(256 * blocks.len())` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn interleave_two_bit(
    kind: TwoBit,
    data: &[u8],
    row_bytes: usize,
    groups: usize,
    blocks: Range<usize>,
    dst: &mut [u8],
) {
    let stride = group_bytes(256 * blocks.len());
    assert!(data.len() >= GROUP * groups * row_bytes && dst.len() >= groups * stride);
    assert!(blocks.is_empty() || row_bytes >= (blocks.end - 1) * kind.stride() + 64);
    for g in 0..groups {
        for (i, c) in blocks.clone().enumerate() {
            let raw: [__m512i; GROUP] = std::array::from_fn(|r| {
                let at = (g * GROUP + r) * row_bytes + c * kind.stride();
                // The same block of the next slab, needed once this slab's GEMM is done (a
                // prefetch past the rows never faults).
                let next = data
                    .as_ptr()
                    .wrapping_add(at + blocks.len() * kind.stride());
                _mm_prefetch::<_MM_HINT_T1>(next as *const i8);
                // SAFETY: bytes at .. at + 64 lie within row g*16+r (asserted above).
                unsafe { _mm512_loadu_si512(data.as_ptr().add(at) as *const __m512i) }
            });
            let at = g * stride + i * 4096;
            // SAFETY: the 64 steps of block i of group g: at + 4096 <= groups * stride.
            unsafe { store_interleaved(&raw, kind, dst.as_mut_ptr().add(at)) };
        }
    }
}

/// [`interleave_two_bit`] for TQ1_0 (codes in the packed trit order).
///
/// # Safety
/// AVX-512 F/BW and VBMI are available; `data` holds `16 * groups` rows of `k / 256`
/// TQ1_0 blocks of 54 bytes, `blocks.end <= k / 256`; `dst` holds
/// `groups * group_bytes(256 * blocks.len())` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub unsafe fn interleave_tq1_0(
    data: &[u8],
    groups: usize,
    k: usize,
    blocks: Range<usize>,
    dst: &mut [u8],
) {
    let row_bytes = k / 256 * 54;
    let stride = group_bytes(256 * blocks.len());
    assert!(data.len() >= GROUP * groups * row_bytes && dst.len() >= groups * stride);
    assert!(blocks.end <= k / 256);
    let idx = packed_plane_indices();
    for g in 0..groups {
        for (i, c) in blocks.clone().enumerate() {
            // A plain loop, not a closure: a closure here is compiled without VBMI and
            // would call the trit decoder instead of inlining it.
            let mut raw = [_mm512_setzero_si512(); GROUP];
            for (r, raw) in raw.iter_mut().enumerate() {
                let at = (g * GROUP + r) * row_bytes + c * 54;
                // The same block of the next slab (54 bytes: up to two cache lines).
                let next = data.as_ptr().wrapping_add(at + blocks.len() * 54);
                _mm_prefetch::<_MM_HINT_T1>(next as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(53) as *const i8);
                // SAFETY: the 54-byte block at `at` lies within `data` (asserted above).
                *raw = unsafe { tq1_0_two_bit_codes(data.as_ptr().add(at), &idx) };
            }
            let at = g * stride + i * 4096;
            // SAFETY: as in `interleave_two_bit`.
            unsafe { store_interleaved(&raw, TwoBit::Codes, dst.as_mut_ptr().add(at)) };
        }
    }
}

/// Adds the integer dots of `16 * G` interleaved rows with `T` tokens over `k` inputs to
/// `acc`: `acc[t][r] +=` the sum of code * activation for row `r` and token `t`.
///
/// # Safety
/// AVX-512 F/BW and VNNI are available; `codes` is an interleaved block of exactly `G`
/// groups for `k` inputs; each `q[t]` holds `k` activation bytes in the order the codes
/// were interleaved against.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_groups<const G: usize, const T: usize>(
    codes: &[u8],
    q: [&[i8]; T],
    k: usize,
    acc: &mut [[i32; 4 * GROUP]],
) {
    let stride = group_bytes(k);
    assert!(G <= 4 && acc.len() >= T && codes.len() >= G * stride);
    assert!(q.iter().all(|q| q.len() >= k));
    let w = codes.as_ptr();
    let mut sum: [[__m512i; G]; T] = std::array::from_fn(|t| {
        std::array::from_fn(|g| {
            // SAFETY: acc[t] has 4 * 16 lanes; group g < 4 reads lanes 16g .. 16g + 16.
            unsafe { _mm512_loadu_si512(acc[t].as_ptr().add(GROUP * g) as *const __m512i) }
        })
    });
    for s in 0..k / 4 {
        let wv: [__m512i; G] = std::array::from_fn(|g| {
            // SAFETY: step s of group g is at g * stride + 64 s < G * stride (asserted).
            unsafe { _mm512_loadu_si512(w.add(g * stride + 64 * s) as *const __m512i) }
        });
        for t in 0..T {
            // SAFETY: bytes 4s .. 4s + 4 of q[t] lie within its k bytes.
            let a = _mm512_set1_epi32(unsafe {
                (q[t].as_ptr().add(4 * s) as *const i32).read_unaligned()
            });
            for g in 0..G {
                sum[t][g] = _mm512_dpbusd_epi32(sum[t][g], wv[g], a);
            }
        }
    }
    for t in 0..T {
        for g in 0..G {
            // SAFETY: acc[t] has 4 * 16 lanes; group g < 4 writes lanes 16g .. 16g + 16.
            unsafe {
                _mm512_storeu_si512(
                    acc[t].as_mut_ptr().add(GROUP * g) as *mut __m512i,
                    sum[t][g],
                )
            };
        }
    }
}
