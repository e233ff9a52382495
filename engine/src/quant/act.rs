//! Per-token int8 absmax activation quantization (BitLinear's input side, section 4 of
//! bitnet-format.md): `s = 127 / max(1e-5, max|x|)`, `q = clamp(round_half_even(x * s))`.

/// Quantizes one token row; returns the scale `s` (so that `x ≈ q / s`).
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected.
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
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, abs_mask));
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
    /// Per row: `k` bytes; empty when `k` is not a multiple of 256.
    pub perm2: Vec<i8>,
    /// Per row: `k / 256 * 320` bytes; empty when `k` is not a multiple of 256.
    pub perm1: Vec<i8>,
}

/// Bytes of TQ1_0-ordered activations per 256-weight block (5 planes of 64).
pub const PERM1_BLOCK: usize = 320;

impl QuantizedActs {
    pub fn n_rows(&self) -> usize {
        self.scales.len()
    }

    pub fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.k..(t + 1) * self.k]
    }

    /// Quantizes `x` (`n` rows of `k`) in place of the previous contents (no allocation once
    /// the buffers have grown to size).
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        let n = x.len() / k;
        self.k = k;
        self.q.resize(n * k, 0);
        self.scales.resize(n, 0.0);
        self.sums.resize(n, 0);
        let one = |q: &mut [i8], x: &[f32]| {
            let s = quantize_row(x, q);
            (s, q.iter().map(|&v| v as i32).sum::<i32>())
        };
        if n > 1 {
            // Prefill: rows in parallel (decode, n = 1, stays allocation-free).
            use rayon::prelude::*;
            let done: Vec<(f32, i32)> = self
                .q
                .par_chunks_exact_mut(k)
                .zip(x.par_chunks_exact(k))
                .map(|(q, x)| one(q, x))
                .collect();
            for (t, (s, sum)) in done.into_iter().enumerate() {
                self.scales[t] = s;
                self.sums[t] = sum;
            }
        } else if n == 1 {
            let (s, sum) = one(&mut self.q[..k], &x[..k]);
            self.scales[0] = s;
            self.sums[0] = sum;
        }
        if !k.is_multiple_of(256) {
            self.perm2.clear();
            self.perm1.clear();
            return;
        }
        let nb = k / 256;
        self.perm2.resize(n * k, 0);
        self.perm1.resize(n * nb * PERM1_BLOCK, 0);
        for t in 0..n {
            let q = &self.q[t * k..(t + 1) * k];
            let p2 = &mut self.perm2[t * k..(t + 1) * k];
            let p1 = &mut self.perm1[t * nb * PERM1_BLOCK..(t + 1) * nb * PERM1_BLOCK];
            for b in 0..nb {
                let qb = &q[b * 256..(b + 1) * 256];
                // 2-bit planes: plane n of a 64-byte chunk covers weights 32n.. of the first
                // 128 and 128 + 32n.. of the second.
                for n in 0..4 {
                    let dst = &mut p2[b * 256 + 64 * n..b * 256 + 64 * n + 64];
                    dst[..32].copy_from_slice(&qb[32 * n..32 * n + 32]);
                    dst[32..].copy_from_slice(&qb[128 + 32 * n..128 + 32 * n + 32]);
                }
                // TQ1_0 trit planes: bytes 0..32 -> m + 32n, 32..48 -> 160 + m + 16n,
                // 48..52 -> 240 + j + 4n (n < 4), the rest zero.
                for n in 0..5 {
                    let dst = &mut p1[b * PERM1_BLOCK + 64 * n..b * PERM1_BLOCK + 64 * n + 64];
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
    }

    pub fn perm2_row(&self, t: usize) -> &[i8] {
        &self.perm2[t * self.k..(t + 1) * self.k]
    }

    pub fn perm1_row(&self, t: usize) -> &[i8] {
        let w = self.k / 256 * PERM1_BLOCK;
        &self.perm1[t * w..(t + 1) * w]
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
        for len in [1usize, 7, 8, 33, 256, 2560] {
            for mode in 0..3 {
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
                            _ => r * 1e-7,
                        }
                    })
                    .collect();
                let (mut a, mut b) = (vec![0i8; len], vec![0i8; len]);
                let sa = quantize_row(&x, &mut a);
                let sb = quantize_row_scalar(&x, &mut b);
                assert_eq!(sa.to_bits(), sb.to_bits());
                assert_eq!(a, b, "len {len} mode {mode}");
            }
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
