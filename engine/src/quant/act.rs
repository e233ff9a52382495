//! Per-token int8 absmax activation quantization (BitLinear's input side, section 4 of
//! bitnet-format.md): `s = 127 / max(1e-5, max|x|)`, `q = clamp(round_half_even(x * s))`.

/// Quantizes one token row; returns the scale `s` (so that `x ≈ q / s`).
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::Isa::from_env() == crate::kernels::Isa::Avx512Vnni {
        // SAFETY: AVX-512 F/BW were detected.
        return unsafe { quantize_row_avx512(x, q) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::Isa::from_env() >= crate::kernels::Isa::Avx2 {
        // SAFETY: AVX2 was detected (`Isa::Avx2` requires it).
        return unsafe { quantize_row_avx2(x, q) };
    }
    quantize_row_scalar(x, q)
}

/// The same arithmetic compiled for AVX2, so that rounding is one `vroundps` instead of a
/// libm call per element; max and the per-element operations are order-independent, so the
/// result is bit-identical to [`quantize_row_scalar`].
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    let mut vmax = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds exactly 8 f32.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // A NaN operand first: `max_ps` then returns the running maximum, ignoring the NaN
        // as `f32::max` does.
        vmax = _mm256_max_ps(_mm256_and_ps(v, abs_mask), vmax);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    let amax = lanes
        .iter()
        .chain(rest)
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1e-5);
    let s = 127.0f32 / amax;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// [`quantize_row_avx2`] with AVX-512: 16 values per step, rounded, clamped and narrowed
/// to bytes in registers (NaN gives 0 and infinities clamp, as `as i8` after the clamp does).
///
/// # Safety
/// The CPU supports AVX-512 F/BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(x: &[f32], q: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), q.len());
    let mut vmax = _mm512_setzero_ps();
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds exactly 16 f32.
        let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        // NaN first: ignored, as in `quantize_row_avx2`.
        vmax = _mm512_max_ps(_mm512_abs_ps(v), vmax);
    }
    let amax = rest
        .iter()
        .fold(_mm512_reduce_max_ps(vmax), |m, v| m.max(v.abs()))
        .max(1e-5);
    let s = 127.0f32 / amax;
    let (vs, lo, hi) = (
        _mm512_set1_ps(s),
        _mm512_set1_ps(-128.0),
        _mm512_set1_ps(127.0),
    );
    let main = x.len() / 16 * 16;
    for (qc, xc) in q[..main].chunks_exact_mut(16).zip(x.chunks_exact(16)) {
        // SAFETY: `xc` holds 16 f32.
        let v = _mm512_mul_ps(unsafe { _mm512_loadu_ps(xc.as_ptr()) }, vs);
        let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r);
        let clamped = _mm512_max_ps(_mm512_min_ps(r, hi), lo);
        let ints = _mm512_maskz_cvtps_epi32(ordered, clamped);
        // SAFETY: `qc` holds 16 bytes.
        unsafe { _mm_storeu_si128(qc.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(ints)) };
    }
    for (qi, &xi) in q[main..].iter_mut().zip(&x[main..]) {
        *qi = (xi * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// The specification of the activation rule.
pub fn quantize_row_scalar(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-5);
    let s = 127.0f32 / amax;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// A byte buffer whose contents start on a 64-byte boundary, so that the kernels' 64-byte
/// activation loads never straddle two cache lines (each straddling load costs a second
/// cache access).
#[derive(Debug, Default)]
pub struct AlignedBytes {
    buf: Vec<i8>,
    off: usize,
    len: usize,
}

impl AlignedBytes {
    /// Sets the length to `len` (contents unspecified; no allocation once grown).
    pub fn resize(&mut self, len: usize) {
        if self.buf.len() < len + 63 {
            self.buf.resize(len + 63, 0);
        }
        // A reallocation may have moved the buffer: recompute where 64-byte alignment starts.
        self.off = self.buf.as_ptr().align_offset(64).min(63);
        self.len = len;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn as_slice(&self) -> &[i8] {
        &self.buf[self.off..self.off + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [i8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        let mut c = AlignedBytes::default();
        c.resize(self.len);
        c.as_mut_slice().copy_from_slice(self.as_slice());
        c
    }
}

/// Which kernel orders of the activations to prepare (each costs a pass over them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActOrders {
    /// The order of the 2-bit planes of I2_S / TQ2_0.
    pub perm2: bool,
    /// The order of TQ1_0's trit planes.
    pub perm1: bool,
    /// TQ1_0's trit planes packed into four 64-byte vectors (prefill with AVX-512 VBMI).
    pub perm1p: bool,
}

impl ActOrders {
    pub const ALL: ActOrders = ActOrders {
        perm2: true,
        perm1: true,
        perm1p: true,
    };

    pub fn union(self, o: ActOrders) -> ActOrders {
        ActOrders {
            perm2: self.perm2 || o.perm2,
            perm1: self.perm1 || o.perm1,
            perm1p: self.perm1p || o.perm1p,
        }
    }
}

/// Token rows quantized for one matmul: `n` rows of `k` int8 values and a scale per row,
/// plus the same values reordered for the SIMD kernels (see `kernels`): `perm2` in the
/// order of the 2-bit planes of I2_S / TQ2_0, `perm1` in the order of TQ1_0's trit planes.
#[derive(Debug, Default, Clone)]
pub struct QuantizedActs {
    pub k: usize,
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    /// Sum of each row's q (D = sum code*q - sum q, codes being unsigned 0..2).
    pub sums: Vec<i32>,
    /// Per row: `k` bytes; empty unless requested and `k` is a multiple of 256.
    perm2: AlignedBytes,
    /// Per row: `k / 256 * 320` bytes; empty unless requested and `k` is a multiple of 256.
    perm1: AlignedBytes,
    /// Per row: `k` bytes; empty unless requested and `k` is a multiple of 256.
    perm1p: AlignedBytes,
}

/// Bytes of TQ1_0-ordered activations per 256-weight block (5 planes of 64).
pub const PERM1_BLOCK: usize = 320;

/// Writes one row's 2-bit-plane order: plane n of a 64-byte chunk covers weights 32n.. of
/// the first 128 and 128 + 32n.. of the second.
fn permute2(q: &[i8], p2: &mut [i8]) {
    for (qb, pb) in q.chunks_exact(256).zip(p2.chunks_exact_mut(256)) {
        for n in 0..4 {
            let dst = &mut pb[64 * n..64 * n + 64];
            dst[..32].copy_from_slice(&qb[32 * n..32 * n + 32]);
            dst[32..].copy_from_slice(&qb[128 + 32 * n..128 + 32 * n + 32]);
        }
    }
}

/// Writes one row's TQ1_0 trit-plane order: bytes 0..32 -> m + 32n, 32..48 -> 160 + m + 16n,
/// 48..52 -> 240 + j + 4n (n < 4), the rest zero.
fn permute1(q: &[i8], p1: &mut [i8]) {
    for (qb, pb) in q.chunks_exact(256).zip(p1.chunks_exact_mut(PERM1_BLOCK)) {
        for n in 0..5 {
            let dst = &mut pb[64 * n..64 * n + 64];
            dst.fill(0);
            dst[..32].copy_from_slice(&qb[32 * n..32 * n + 32]);
            dst[32..48].copy_from_slice(&qb[160 + 16 * n..160 + 16 * n + 16]);
            if n < 4 {
                for j in 0..4 {
                    dst[48 + j] = qb[240 + j + 4 * n];
                }
            }
        }
    }
}

/// Weight index of each byte of TQ1_0's trit planes packed back to back: plane n
/// (n = 0..4) contributes its 52 decoded bytes (48 for the last plane, whose `qh` trit is a
/// zero pad), so 256 bytes hold the block's 256 weights in four 64-byte vectors.
pub const TQ1_0_PACKED_ORDER: [u16; 256] = {
    let mut order = [0u16; 256];
    let mut p = 0;
    let mut n = 0;
    while n < 5 {
        let mut j = 0;
        while j < 52 {
            if !(n == 4 && j >= 48) {
                order[p] = if j < 32 {
                    j + 32 * n
                } else if j < 48 {
                    160 + (j - 32) + 16 * n
                } else {
                    240 + (j - 48) + 4 * n
                } as u16;
                p += 1;
            }
            j += 1;
        }
        n += 1;
    }
    order
};

/// Writes one row in [`TQ1_0_PACKED_ORDER`].
fn permute1_packed(q: &[i8], p: &mut [i8]) {
    for (qb, pb) in q.chunks_exact(256).zip(p.chunks_exact_mut(256)) {
        for (d, &w) in pb.iter_mut().zip(TQ1_0_PACKED_ORDER.iter()) {
            *d = qb[w as usize];
        }
    }
}

impl QuantizedActs {
    pub fn n_rows(&self) -> usize {
        self.scales.len()
    }

    pub fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.k..(t + 1) * self.k]
    }

    /// [`Self::quantize_for`] with every kernel order.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        self.quantize_for(x, k, ActOrders::ALL);
    }

    /// Quantizes `x` (`n` rows of `k`) in place of the previous contents and prepares the
    /// requested kernel orders (no allocation once the buffers have grown to size, apart from
    /// the per-row results of a parallel prefill).
    pub fn quantize_for(&mut self, x: &[f32], k: usize, orders: ActOrders) {
        let n = x.len() / k;
        self.k = k;
        self.q.resize(n * k, 0);
        self.scales.resize(n, 0.0);
        self.sums.resize(n, 0);
        let permuted = k.is_multiple_of(256);
        let w1 = k / 256 * PERM1_BLOCK;
        let (want2, want1, want1p) = (
            permuted && orders.perm2,
            permuted && orders.perm1,
            permuted && orders.perm1p,
        );
        if want2 {
            self.perm2.resize(n * k);
        } else {
            self.perm2.clear();
        }
        if want1 {
            self.perm1.resize(n * w1);
        } else {
            self.perm1.clear();
        }
        if want1p {
            self.perm1p.resize(n * k);
        } else {
            self.perm1p.clear();
        }
        type Dsts<'a> = (
            Option<&'a mut [i8]>,
            Option<&'a mut [i8]>,
            Option<&'a mut [i8]>,
        );
        let one = |q: &mut [i8], x: &[f32], (p2, p1, p1p): Dsts<'_>| {
            let s = quantize_row(x, q);
            if let Some(p2) = p2 {
                permute2(q, p2);
            }
            if let Some(p1) = p1 {
                permute1(q, p1);
            }
            if let Some(p1p) = p1p {
                permute1_packed(q, p1p);
            }
            (s, q.iter().map(|&v| v as i32).sum::<i32>())
        };
        let (p2, p1, p1p) = (
            self.perm2.as_mut_slice(),
            self.perm1.as_mut_slice(),
            self.perm1p.as_mut_slice(),
        );
        if n > 1 {
            // Prefill: rows (with their reorderings) in parallel on the installed pool;
            // decode, n = 1, stays allocation-free.
            fn rows(p: &mut [i8], want: bool, w: usize, n: usize) -> Vec<Option<&mut [i8]>> {
                if want {
                    p.chunks_exact_mut(w).map(Some).collect()
                } else {
                    (0..n).map(|_| None).collect()
                }
            }
            type Row<'a> = (&'a mut [i8], &'a [f32], Dsts<'a>, &'a mut f32, &'a mut i32);
            let mut work: Vec<Row<'_>> = self
                .q
                .chunks_exact_mut(k)
                .zip(x.chunks_exact(k))
                .zip(rows(p2, want2, k, n))
                .zip(rows(p1, want1, w1, n))
                .zip(rows(p1p, want1p, k, n))
                .zip(self.scales.iter_mut().zip(self.sums.iter_mut()))
                .map(|(((((q, x), a), b), c), (s, sum))| (q, x, (a, b, c), s, sum))
                .collect();
            crate::kernels::pool::for_each_chunk_mut(&mut work, 1, &|_, row| {
                for (q, x, (a, b, c), s, sum) in row.iter_mut() {
                    let d = (a.as_deref_mut(), b.as_deref_mut(), c.as_deref_mut());
                    (**s, **sum) = one(q, x, d);
                }
            });
        } else if n == 1 {
            let (s, sum) = one(
                &mut self.q[..k],
                &x[..k],
                (
                    want2.then_some(p2),
                    want1.then_some(p1),
                    want1p.then_some(p1p),
                ),
            );
            self.scales[0] = s;
            self.sums[0] = sum;
        }
    }

    /// Row `t` in the 2-bit-plane order, if it was prepared.
    pub fn perm2_row(&self, t: usize) -> Option<&[i8]> {
        let p = self.perm2.as_slice();
        (p.len() >= (t + 1) * self.k).then(|| &p[t * self.k..(t + 1) * self.k])
    }

    /// Row `t` in [`TQ1_0_PACKED_ORDER`], if it was prepared.
    pub fn perm1p_row(&self, t: usize) -> Option<&[i8]> {
        let p = self.perm1p.as_slice();
        (p.len() >= (t + 1) * self.k).then(|| &p[t * self.k..(t + 1) * self.k])
    }

    /// Row `t` in the TQ1_0 order, if it was prepared.
    pub fn perm1_row(&self, t: usize) -> Option<&[i8]> {
        let w = self.k / 256 * PERM1_BLOCK;
        let p = self.perm1.as_slice();
        (w > 0 && p.len() >= (t + 1) * w).then(|| &p[t * w..(t + 1) * w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_clamps() {
        // amax = 127 -> s = 1, so q = round_half_even(x).
        let x = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0, 3.49];
        let mut q = [0i8; 8];
        let s = quantize_row(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, -127, 3]);
    }

    #[test]
    fn simd_quantization_matches_the_scalar_rule() {
        let mut state = 99u32;
        for len in [1usize, 7, 8, 17, 33, 256, 2560] {
            for mode in 0..4 {
                let x: Vec<f32> = (0..len)
                    .map(|i| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        let r = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                        match mode {
                            0 => r * 10.0,
                            // exact .5 boundaries once scaled by 1 (amax = 127)
                            1 => {
                                if i == 0 {
                                    127.0
                                } else {
                                    (i % 255) as f32 - 127.5
                                }
                            }
                            2 => r * 1e-7,
                            // NaN, which the maximum ignores and which quantizes to 0,
                            // among ordinary values
                            _ if i % 5 == 3 => f32::NAN,
                            _ => r * 3.0,
                        }
                    })
                    .collect();
                let (mut want, mut got) = (vec![0i8; len], vec![0i8; len]);
                let sw = quantize_row_scalar(&x, &mut want);
                // Every SIMD twin this CPU can run, then the dispatcher.
                type Quantizer = fn(&[f32], &mut [i8]) -> f32;
                let mut twins: Vec<(&str, Quantizer)> = vec![("dispatch", quantize_row)];
                #[cfg(target_arch = "x86_64")]
                {
                    if std::is_x86_feature_detected!("avx2") {
                        // SAFETY: AVX2 was detected.
                        twins.push(("avx2", |x, q| unsafe { quantize_row_avx2(x, q) }));
                    }
                    if std::is_x86_feature_detected!("avx512bw") {
                        // SAFETY: AVX-512 F/BW were detected.
                        twins.push(("avx512", |x, q| unsafe { quantize_row_avx512(x, q) }));
                    }
                }
                for (name, f) in twins {
                    got.fill(99);
                    let sg = f(&x, &mut got);
                    assert_eq!(sg.to_bits(), sw.to_bits(), "{name} len {len} mode {mode}");
                    assert_eq!(got, want, "{name} len {len} mode {mode}");
                }
            }
        }
    }

    #[test]
    fn kernel_orders_are_aligned_and_only_when_asked() {
        let k = 512;
        let x: Vec<f32> = (0..3 * k).map(|i| ((i as f32) * 0.7).sin()).collect();
        let mut all = QuantizedActs::default();
        all.quantize(&x, k);
        let mut only2 = QuantizedActs::default();
        only2.quantize_for(
            &x,
            k,
            ActOrders {
                perm2: true,
                ..Default::default()
            },
        );
        for t in 0..3 {
            let (a, b) = (all.perm2_row(t).unwrap(), only2.perm2_row(t).unwrap());
            assert_eq!(a, b);
            assert_eq!(a.as_ptr() as usize % 64, 0);
            assert_eq!(all.perm1_row(t).unwrap().as_ptr() as usize % 64, 0);
            assert!(only2.perm1_row(t).is_none() && only2.perm1p_row(t).is_none());
            assert_eq!(all.perm1p_row(t).unwrap().as_ptr() as usize % 64, 0);
            // Same multiset of values per 256-block as the plain row.
            let mut p: Vec<i8> = a[..256].to_vec();
            let mut q: Vec<i8> = all.row(t)[..256].to_vec();
            p.sort();
            q.sort();
            assert_eq!(p, q);
        }
        assert_eq!(only2.scales, all.scales);
        assert_eq!(only2.sums, all.sums);
        // A clone keeps its alignment.
        assert_eq!(all.clone().perm2_row(1).unwrap().as_ptr() as usize % 64, 0);
    }

    #[test]
    fn tq1_0_packed_order_is_a_permutation() {
        let mut seen = [false; 256];
        for &w in TQ1_0_PACKED_ORDER.iter() {
            assert!(!seen[w as usize], "weight {w} twice");
            seen[w as usize] = true;
        }
    }

    #[test]
    fn zero_row_uses_the_floor() {
        let mut q = [5i8; 4];
        let s = quantize_row(&[0.0; 4], &mut q);
        assert_eq!(s, 127.0 / 1e-5);
        assert_eq!(q, [0; 4]);
    }
}
