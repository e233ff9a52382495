//! Attention for one query row: the query heads that share a KV head against that head's
//! cached keys and values, in f32. Every instruction set follows one order of operations
//! (the specification below), so the SIMD kernels in `x86::attn` are bit-identical to it
//! and a row's result never depends on the CPU's vector width:
//!
//! - a dot product accumulates element `i` into lane `i % 16` with one fused multiply-add,
//!   then sums the 16 lanes pairwise, halving (`lane i + lane i + 8`, then `+ 4`, `+ 2`, `+ 1`);
//! - a score is that dot times `scale`; the weights are `exp(score - max)` by [`exp_spec`];
//! - their sum accumulates key `j` into lane `j % 16`, then halves as a dot does;
//! - the output accumulates each column over the keys in order, one fused multiply-add per
//!   key, and is divided by the sum.
//!
//! The scores of a row are kept (`groups x keys` f32, 64 KiB at 4,096 keys for 4 heads), so
//! the keys and the values are each read once per row, and the softmax needs no rescaling.

use super::{Isa, KvRows};

/// Lanes of the specified order (one AVX-512 register, two AVX2 ones).
pub(crate) const LANES: usize = 16;

/// The query side of one attention call: `groups` query heads that share one KV head, head
/// g's query at `qs[g * hd ..]` (hd = `qs.len() / groups`), and the scale of their dots.
#[derive(Clone, Copy, Debug)]
pub struct Queries<'a> {
    pub qs: &'a [f32],
    pub groups: usize,
    pub scale: f32,
}

/// Where a KV head's cached rows `0..keys` lie in its key and value slices: row j at
/// `j * stride + offset`.
#[derive(Clone, Copy, Debug)]
pub struct RowSpan {
    pub stride: usize,
    pub offset: usize,
    pub keys: usize,
}

impl RowSpan {
    /// Index of row `j`'s first element.
    #[inline(always)]
    pub(crate) fn at(&self, j: usize) -> usize {
        j * self.stride + self.offset
    }
}

thread_local! {
    /// A thread's scores (`groups x keys`), kept between calls: no allocation per call.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A cached key or value element: f32, or f16 widened exactly to f32.
pub(crate) trait KvElem: Copy + Send + Sync {
    const F16: bool;
    fn widen(self) -> f32;
}

impl KvElem for f32 {
    const F16: bool = false;
    #[inline]
    fn widen(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    const F16: bool = true;
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// The 16 lanes summed pairwise, halving: the one final reduction every kernel uses.
#[inline]
pub(crate) fn halving_sum(lanes: &[f32; LANES]) -> f32 {
    let mut s = *lanes;
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            s[i] += s[i + w];
        }
        w /= 2;
    }
    s[0]
}

/// `sum a[i] * b[i]` in the specified order.
pub(crate) fn dot_spec<E: KvElem>(a: &[f32], b: &[E]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        lanes[i % LANES] = x.mul_add(y.widen(), lanes[i % LANES]);
    }
    halving_sum(&lanes)
}

/// Cephes' single-precision exp, in fused multiply-adds: `x <= 0` (a score minus the row's
/// maximum) gives `e^x` within 2 ulp; below -87 it gives `e^-87` (1.6e-38, nothing beside
/// the maximum's weight of 1). The SIMD versions do these operations in this order.
#[inline]
pub(crate) fn exp_spec(x: f32) -> f32 {
    let x = x.max(EXP_MIN);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut y = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        y = y.mul_add(r, c);
    }
    let y = y.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Lower clamp of [`exp_spec`]'s argument: 2^n stays a normal f32 (n >= -126).
pub(crate) const EXP_MIN: f32 = -87.0;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// `e^r ~ 1 + r + r^2 * P(r)` on |r| <= ln2 / 2 (Cephes expf), highest degree first.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // Cephes' 5.0000001201e-1, which rounds to 0.5 in f32
];

/// The specification: `out[g * hd ..]` (hd = `out.len() / groups`) is query head g's
/// attention over the rows of `k` and `v` that `rows` names. `scores` is scratch.
pub(crate) fn attend_spec<E: KvElem>(
    Queries { qs, groups, scale }: Queries<'_>,
    (k, v): (&[E], &[E]),
    rows: RowSpan,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, keys) = (out.len() / groups, rows.keys);
    scores.clear();
    for q in qs.chunks_exact(hd) {
        scores.extend((0..keys).map(|j| {
            let at = rows.at(j);
            dot_spec(q, &k[at..at + hd]) * scale
        }));
    }
    for (g, o) in out.chunks_exact_mut(hd).enumerate() {
        let row = &mut scores[g * keys..(g + 1) * keys];
        let sum = softmax_weights_spec(row);
        o.fill(0.0);
        for (j, &p) in row.iter().enumerate() {
            let at = rows.at(j);
            for (o, &x) in o.iter_mut().zip(&v[at..at + hd]) {
                *o = p.mul_add(x.widen(), *o);
            }
        }
        o.iter_mut().for_each(|o| *o /= sum);
    }
}

/// Scores in place to `exp(score - max)`; returns their sum (specified order).
pub(crate) fn softmax_weights_spec(row: &mut [f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut lanes = [0f32; LANES];
    for (j, s) in row.iter_mut().enumerate() {
        *s = exp_spec(*s - max);
        lanes[j % LANES] += *s;
    }
    halving_sum(&lanes)
}

/// Attention of the query heads `q` (which share one KV head) over that head's cached keys
/// and values `(k, v)` (both of one precision), rows `rows`: `out[g * hd ..]` for head g.
/// Computed by `isa`'s kernels (lowered to what the CPU has), bit-identical to
/// [`attend_spec`].
pub fn attend(
    isa: Isa,
    q: Queries<'_>,
    (k, v): (KvRows<'_>, KvRows<'_>),
    rows: RowSpan,
    out: &mut [f32],
) {
    assert!(q.groups > 0 && q.qs.len() == out.len() && out.len().is_multiple_of(q.groups));
    let hd = out.len() / q.groups;
    if rows.keys == 0 || hd == 0 {
        out.fill(0.0);
        return;
    }
    SCORES.with_borrow_mut(|scores| match (k, v) {
        (KvRows::F32(k), KvRows::F32(v)) => attend_rows(isa, q, (k, v), rows, scores, out),
        (KvRows::F16(k), KvRows::F16(v)) => attend_rows(isa, q, (k, v), rows, scores, out),
        _ => panic!("keys and values of different precisions"),
    })
}

fn attend_rows<E: KvElem>(
    isa: Isa,
    q: Queries<'_>,
    (k, v): (&[E], &[E]),
    rows: RowSpan,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = out.len() / q.groups;
    // The last row's end, checked: the SIMD kernels read every row below it unchecked, so
    // a span whose arithmetic wraps must fail here rather than pass as a small `end`.
    let end = (rows.keys - 1)
        .checked_mul(rows.stride)
        .and_then(|e| e.checked_add(rows.offset)?.checked_add(hd));
    assert!(
        end.is_some_and(|end| k.len() >= end && v.len() >= end),
        "rows out of bounds"
    );
    let isa = isa.min(Isa::detect());
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(LANES) && isa >= Isa::Avx2 {
        if isa == Isa::Avx512Vnni {
            // SAFETY: the CPU has AVX-512 F, FMA and F16C (`isa` is at most what it has); hd
            // is a multiple of 16; every row read lies within `k` and `v` (asserted above).
            unsafe { super::x86::attend_avx512(q, (k, v), rows, scores, out) };
        } else {
            // SAFETY: as above, with AVX2, FMA and F16C.
            unsafe { super::x86::attend_avx2(q, (k, v), rows, scores, out) };
        }
        return;
    }
    let _ = isa;
    attend_spec(q, (k, v), rows, scores, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-scale, scale).
    fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Every instruction set this CPU has, the specification's included.
    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|&i| i <= Isa::detect())
            .collect()
    }

    /// The same attention in f64 from the same (f32 or widened f16) values.
    fn attend_f64(
        qs: &[f32],
        groups: usize,
        k: &[f32],
        v: &[f32],
        rows: (usize, usize, usize),
        scale: f32,
    ) -> Vec<f64> {
        let (stride, offset, keys) = rows;
        let hd = qs.len() / groups;
        let mut out = vec![0f64; qs.len()];
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            let q = &qs[g * hd..(g + 1) * hd];
            let s: Vec<f64> = (0..keys)
                .map(|j| {
                    let r = &k[j * stride + offset..][..hd];
                    q.iter()
                        .zip(r)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|&x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for (j, &p) in p.iter().enumerate() {
                for (o, &x) in o.iter_mut().zip(&v[j * stride + offset..][..hd]) {
                    *o += p * x as f64 / sum;
                }
            }
        }
        out
    }

    /// Each SIMD kernel gives the specification's bits, for f32 and f16 caches, every tile
    /// shape (1, 2, 4 and 5 heads per KV head; keys around the tile and lane sizes; head
    /// sizes 16 to 128), and the specification is within f32 rounding of exact attention.
    #[test]
    fn simd_kernels_are_bit_identical_to_the_specification() {
        let mut checked = 0;
        for (case, &(groups, hd, keys)) in [
            (1, 16, 1),
            (4, 128, 1),
            (4, 128, 3),
            (4, 128, 17),
            (4, 128, 100),
            (2, 64, 15),
            (2, 32, 16),
            (1, 128, 33),
            (5, 48, 31),
            (3, 16, 64),
            (4, 8, 9), // not a multiple of 16: every ISA runs the specification
        ]
        .iter()
        .enumerate()
        {
            let n_kv = 3;
            let (stride, offset) = (n_kv * hd, hd); // the second of three KV heads
            let qs = values(case as u64, groups * hd, 1.0);
            // Scores spread over a few units, as trained attention's are.
            let k32 = values(100 + case as u64, keys * stride, 4.0);
            let v32 = values(200 + case as u64, keys * stride, 1.0);
            let k16: Vec<half::f16> = k32.iter().map(|&x| half::f16::from_f32(x)).collect();
            let v16: Vec<half::f16> = v32.iter().map(|&x| half::f16::from_f32(x)).collect();
            let scale = (1.0 / (hd as f64).sqrt()) as f32;
            let rows = RowSpan {
                stride,
                offset,
                keys,
            };
            let q = Queries {
                qs: &qs,
                groups,
                scale,
            };
            let mut scores = Vec::new();
            for kvs in [
                (KvRows::F32(&k32), KvRows::F32(&v32)),
                (KvRows::F16(&k16), KvRows::F16(&v16)),
            ] {
                let mut want = vec![0f32; groups * hd];
                match kvs {
                    (KvRows::F32(k), KvRows::F32(v)) => {
                        attend_spec(q, (k, v), rows, &mut scores, &mut want)
                    }
                    (KvRows::F16(k), KvRows::F16(v)) => {
                        attend_spec(q, (k, v), rows, &mut scores, &mut want)
                    }
                    _ => unreachable!(),
                }
                let (kw, vw): (Vec<f32>, Vec<f32>) = match kvs {
                    (KvRows::F32(k), KvRows::F32(v)) => (k.to_vec(), v.to_vec()),
                    (KvRows::F16(k), KvRows::F16(v)) => (
                        k.iter().map(|h| h.to_f32()).collect(),
                        v.iter().map(|h| h.to_f32()).collect(),
                    ),
                    _ => unreachable!(),
                };
                // f16 rows give exactly what their values widened to f32 give.
                let mut widened = vec![0f32; groups * hd];
                attend_spec(q, (&kw[..], &vw[..]), rows, &mut scores, &mut widened);
                assert!(
                    widened
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
                let exact = attend_f64(&qs, groups, &kw, &vw, (stride, offset, keys), scale);
                let err = want
                    .iter()
                    .zip(&exact)
                    .map(|(&a, &b)| (a as f64 - b).abs())
                    .fold(0f64, f64::max);
                assert!(
                    err < 2e-6,
                    "case {case}: specification off exact attention by {err}"
                );
                for isa in isas() {
                    let mut got = vec![f32::NAN; groups * hd];
                    attend(isa, q, kvs, rows, &mut got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "case {case} {isa:?} {kvs:?}: {got:?} != {want:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 22);
    }

    /// A span past the cache, or one whose index arithmetic would wrap, is refused before
    /// any kernel reads a row.
    #[test]
    fn a_span_out_of_bounds_or_wrapping_is_refused() {
        let (k, v) = (vec![0f32; 64], vec![0f32; 64]);
        let qs = vec![0f32; 16];
        let q = Queries {
            qs: &qs,
            groups: 1,
            scale: 1.0,
        };
        for rows in [
            RowSpan {
                stride: 16,
                offset: 0,
                keys: 5,
            },
            RowSpan {
                stride: usize::MAX / 2 + 1,
                offset: 0,
                keys: 3,
            },
            RowSpan {
                stride: 16,
                offset: usize::MAX - 8,
                keys: 1,
            },
        ] {
            for isa in isas() {
                let mut out = vec![0f32; 16];
                let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    attend(isa, q, (KvRows::F32(&k), KvRows::F32(&v)), rows, &mut out)
                }));
                let message = refused.expect_err("an out-of-bounds span was accepted");
                assert_eq!(
                    message.downcast_ref::<&str>(),
                    Some(&"rows out of bounds"),
                    "{rows:?} {isa:?}"
                );
            }
        }
        // The span that fits is accepted.
        let mut out = vec![0f32; 16];
        let fits = RowSpan {
            stride: 16,
            offset: 0,
            keys: 4,
        };
        attend(
            Isa::detect(),
            q,
            (KvRows::F32(&k), KvRows::F32(&v)),
            fits,
            &mut out,
        );
    }

    /// [`exp_spec`] against f64's exp over the softmax range, and its clamp.
    #[test]
    fn exp_spec_is_within_two_ulp() {
        let mut x = 0f32;
        while x > -87.0 {
            let got = exp_spec(x);
            let want = (x as f64).exp();
            let ulp = (want as f32).to_bits().abs_diff(got.to_bits());
            assert!(ulp <= 2, "exp({x}) = {got}, want {want} ({ulp} ulp)");
            x -= 0.0137;
        }
        assert_eq!(exp_spec(0.0), 1.0);
        assert_eq!(exp_spec(-1e9), exp_spec(EXP_MIN));
        assert!(exp_spec(EXP_MIN) < 1e-37);
    }

    /// The halving order is the one documented: (l0 + l8) + (l4 + l12) + ... differs from a
    /// left-to-right sum on values chosen to expose the order.
    #[test]
    fn halving_sum_adds_lane_i_to_lane_i_plus_8_first() {
        let mut lanes = [0f32; LANES];
        lanes[0] = 1.0;
        lanes[8] = -1.0;
        lanes[1] = 1e-8;
        assert_eq!(halving_sum(&lanes), 1e-8);
        let left_to_right: f32 = lanes.iter().sum();
        assert_ne!(left_to_right, 1e-8);
    }
}
