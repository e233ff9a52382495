//! TQ1_0 (five base-3 digits per byte): trit extraction without multiplies, the per-row
//! dots for AVX2 and AVX-512 VNNI, and the decode to 2-bit codes that prefill uses (VBMI).

use std::arch::x86_64::*;

use super::*;

/// `3 * x mod 256` per byte, as two byte adds. The result passes through an empty `asm`
/// block so that LLVM cannot fold a chain of these into byte multiplications by 9, 27 and
/// 81, which x86 lacks and which it emulates with several multiplies and permutes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn times3(x: __m512i) -> __m512i {
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
    let mut acc = [_mm256_setzero_si256(); T];
    for b in 0..nb {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(b * 54 + PREFETCH) as *const i8);
        // SAFETY: block b spans bytes 54b .. 54b+54 of `row`.
        let mut y = unsafe { tq1_0_block_avx2(row.as_ptr().add(b * 54)) };
        let mut acc16 = [_mm256_setzero_si256(); T];
        for n in 0..5 {
            let mut planes = [_mm256_setzero_si256(); 2];
            for h in 0..2 {
                if n > 0 {
                    y[h] = times3_avx2(y[h]);
                }
                planes[h] = trits_avx2(y[h]);
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
pub(super) fn times3_avx2(x: __m256i) -> __m256i {
    let mut y = _mm256_add_epi8(x, _mm256_add_epi8(x, x));
    // SAFETY: the template is empty: no instruction runs, no memory or flags are touched;
    // the register keeps its value.
    unsafe {
        std::arch::asm!("/* {0} */", inout(ymm_reg) y, options(pure, nomem, nostack, preserves_flags))
    };
    y
}

/// A TQ1_0 block's code bytes as two vectors carrying the offset 128 that [`trits_avx2`]
/// reads: bytes 0..32, and bytes 32..52 followed by zeros (which meet zero activations).
///
/// # Safety
/// The CPU supports AVX2; `p` points at a whole 54-byte block (the masked load reads only
/// its bytes 32..52 and suppresses the rest).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tq1_0_block_avx2(p: *const u8) -> [__m256i; 2] {
    let offset = _mm256_set1_epi8(-128);
    // Bytes 32..52 of a block: five dwords.
    let tail_mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, 0, 0, 0);
    // SAFETY: the caller's block spans p .. p + 54.
    unsafe {
        [
            _mm256_xor_si256(_mm256_loadu_si256(p as *const __m256i), offset),
            _mm256_xor_si256(
                _mm256_maskload_epi32(p.add(32) as *const i32, tail_mask),
                offset,
            ),
        ]
    }
}

/// The trits (0, 1, 2) of a byte plane `y = (b * 3^n) mod 256` carrying the offset 128: the
/// trit is `(3y) >> 8`, which is `[y >= 86] + [y >= 171]`, two signed compares of y - 128
/// (> -43, > 42). The offset survives the step `y -> 3y` ([`times3_avx2`]) because
/// `3 * 128 = 128 mod 256`, so it is applied once per block.
#[inline]
#[target_feature(enable = "avx2")]
fn trits_avx2(y: __m256i) -> __m256i {
    let m1 = _mm256_cmpgt_epi8(y, _mm256_set1_epi8(-43));
    let m2 = _mm256_cmpgt_epi8(y, _mm256_set1_epi8(42));
    _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), m1), m2)
}

/// TQ1_0 against one token for `S` rows at once, their blocks read in lockstep (`S` weight
/// streams in flight), the trits extracted without multiplications ([`trits_avx2`]). The
/// dots are exact integers, equal to [`dot1_avx2`]'s.
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
    let mut acc = [_mm256_setzero_si256(); S];
    for b in 0..nb {
        let mut y = [[_mm256_setzero_si256(); 2]; S];
        for s in 0..S {
            let p = rows[s].as_ptr().wrapping_add(b * 54);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            // SAFETY: block b spans bytes 54b .. 54b+54 of the row.
            y[s] = unsafe { tq1_0_block_avx2(p) };
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
                    let trit = trits_avx2(y[s][h]);
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
pub(super) unsafe fn tq1_0_planes(block: *const u8) -> [__m512i; 5] {
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
pub(super) unsafe fn tq1_0_packed_codes(block: *const u8, idx: &[__m512i; 4]) -> [__m512i; 4] {
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
