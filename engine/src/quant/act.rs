//! Per-token int8 absmax activation quantization (BitLinear's input side, section 4 of
//! bitnet-format.md): `s = 127 / max(1e-5, max|x|)`, `q = clamp(round_half_even(x * s))`.

/// Quantizes one token row; returns the scale `s` (so that `x ≈ q / s`).
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-5);
    let s = 127.0f32 / amax;
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// Token rows quantized for one matmul: `n` rows of `k` int8 values and a scale per row.
#[derive(Debug, Default, Clone)]
pub struct QuantizedActs {
    pub k: usize,
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
}

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
        for t in 0..n {
            self.scales[t] = quantize_row(&x[t * k..(t + 1) * k], &mut self.q[t * k..(t + 1) * k]);
        }
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
    fn zero_row_uses_the_floor() {
        let mut q = [5i8; 4];
        let s = quantize_row(&[0.0; 4], &mut q);
        assert_eq!(s, 127.0 / 1e-5);
        assert_eq!(q, [0; 4]);
    }
}
