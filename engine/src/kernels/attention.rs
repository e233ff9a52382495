//! Attention for one query row: the query heads that share a KV head against that head's
//! cached keys and values, in f32. Every instruction set follows one order of operations
//! (the specification below), so the SIMD kernels in `x86::attn` are bit-identical to it
//! and a row's result never depends on the CPU's vector width:
//!
//! - a score is the dot of the query and a key in four chains: element `d` goes to chain
//!   `d % 4` with one fused multiply-add, in order, each chain from 0; the chains are summed
//!   `(c0 + c1) + (c2 + c3)` and multiplied by `scale` (one sequential chain of 128 made the
//!   long parity prompts' f16-cache logits drift off the float64 reference by 0.03-0.06 std);
//!   the weights are `exp(score - max)` by [`exp_spec`];
//! - their sum accumulates key `j` into lane `j % 16`, then sums the 16 lanes pairwise,
//!   halving (`lane i + lane i + 8`, then `+ 4`, `+ 2`, `+ 1`);
//! - the output accumulates each column over the keys in order, one fused multiply-add per
//!   key, and is divided by the sum.
//!
//! The keys are stored in blocks of [`KEY_BLOCK`] positions, dimension-major (element `d` of
//! the block's 16 keys side by side, see [`key_index`]): a vector register then holds one
//! element of 16 keys, and 16 scores come out of the same chains of fused multiply-adds with
//! no reduction across lanes. The values are rows, one per position.
//!
//! The scores of a row are kept (`groups x keys` f32, 64 KiB at 4,096 keys for 4 heads), so
//! the keys and the values are each read once per row, and the softmax needs no rescaling.

use super::{Isa, KvRows};

/// Lanes of the specified order (one AVX-512 register, two AVX2 ones).
pub(crate) const LANES: usize = 16;

/// Chains of a score's dot: element `d` goes to chain `d % 4` (the SIMD kernels' register
/// tiles are sized from it).
pub(crate) const CHAINS: usize = 4;

/// Positions per block of cached keys.
pub const KEY_BLOCK: usize = LANES;

/// Where element `d` of key `j` lies among a KV head's keys (head size `hd`), counted from
/// the head's first element: keys `16b .. 16b + 16` fill `16 * hd` elements, element `d` of
/// all 16 at `16 * d ..`. The same positions' value rows fill the same span of the values.
#[inline(always)]
pub fn key_index(hd: usize, j: usize, d: usize) -> usize {
    (j - j % KEY_BLOCK) * hd + d * KEY_BLOCK + j % KEY_BLOCK
}

/// The query side of one attention call: `groups` query heads that share one KV head, head
/// g's query at `qs[g * hd ..]` (hd = `qs.len() / groups`), and the scale of their dots.
#[derive(Clone, Copy, Debug)]
pub struct Queries<'a> {
    pub qs: &'a [f32],
    pub groups: usize,
    pub scale: f32,
}

/// Where a KV head's cached positions `0..keys` lie: from `offset` in its keys (in blocks,
/// [`key_index`]; the last block whole, its lanes past `keys` read and ignored) and from
/// `offset` in its values (row j at `offset + j * hd`).
#[derive(Clone, Copy, Debug)]
pub struct HeadSpan {
    pub offset: usize,
    pub keys: usize,
}

impl HeadSpan {
    /// Elements of the keys read: whole blocks.
    fn key_len(&self, hd: usize) -> Option<usize> {
        self.keys
            .div_ceil(KEY_BLOCK)
            .checked_mul(KEY_BLOCK)?
            .checked_mul(hd)
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
/// attention over the positions of `k` and `v` that `span` names. `scores` is scratch.
pub(crate) fn attend_spec<E: KvElem>(
    Queries { qs, groups, scale }: Queries<'_>,
    (k, v): (&[E], &[E]),
    span: HeadSpan,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (hd, keys) = (out.len() / groups, span.keys);
    let (k, v) = (&k[span.offset..], &v[span.offset..]);
    scores.clear();
    for q in qs.chunks_exact(hd) {
        scores.extend((0..keys).map(|j| {
            let mut chains = [0f32; CHAINS];
            for (d, &x) in q.iter().enumerate() {
                let c = &mut chains[d % CHAINS];
                *c = x.mul_add(k[key_index(hd, j, d)].widen(), *c);
            }
            ((chains[0] + chains[1]) + (chains[2] + chains[3])) * scale
        }));
    }
    for (g, o) in out.chunks_exact_mut(hd).enumerate() {
        let row = &mut scores[g * keys..(g + 1) * keys];
        let sum = softmax_weights_spec(row);
        o.fill(0.0);
        for (p, x) in row.iter().zip(v.chunks_exact(hd)) {
            for (o, &x) in o.iter_mut().zip(x) {
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
/// and values `(k, v)` (both of one precision), positions `span`: `out[g * hd ..]` for head g.
/// Computed by `isa`'s kernels (lowered to what the CPU has), bit-identical to
/// [`attend_spec`].
pub fn attend(
    isa: Isa,
    q: Queries<'_>,
    (k, v): (KvRows<'_>, KvRows<'_>),
    span: HeadSpan,
    out: &mut [f32],
) {
    assert!(q.groups > 0 && q.qs.len() == out.len() && out.len().is_multiple_of(q.groups));
    let hd = out.len() / q.groups;
    if span.keys == 0 || hd == 0 {
        out.fill(0.0);
        return;
    }
    SCORES.with_borrow_mut(|scores| match (k, v) {
        (KvRows::F32(k), KvRows::F32(v)) => attend_rows(isa, q, (k, v), span, scores, out),
        (KvRows::F16(k), KvRows::F16(v)) => attend_rows(isa, q, (k, v), span, scores, out),
        _ => panic!("keys and values of different precisions"),
    })
}

fn attend_rows<E: KvElem>(
    isa: Isa,
    q: Queries<'_>,
    (k, v): (&[E], &[E]),
    span: HeadSpan,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = out.len() / q.groups;
    // The ends of the keys and values read, checked: the SIMD kernels read every element
    // below them unchecked, so a span whose arithmetic wraps must fail here rather than pass
    // as a small end.
    let k_end = span.key_len(hd).and_then(|n| n.checked_add(span.offset));
    let v_end = span
        .keys
        .checked_mul(hd)
        .and_then(|n| n.checked_add(span.offset));
    assert!(
        k_end.is_some_and(|e| k.len() >= e) && v_end.is_some_and(|e| v.len() >= e),
        "rows out of bounds"
    );
    let isa = isa.min(Isa::detect());
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(LANES) && isa >= Isa::Avx2 {
        let (k, v) = (&k[span.offset..], &v[span.offset..]);
        if isa == Isa::Avx512Vnni {
            // SAFETY: the CPU has AVX-512 F, FMA and F16C (`isa` is at most what it has); hd
            // is a multiple of 16; `k` holds the span's whole key blocks and `v` its value
            // rows (asserted above).
            unsafe { super::x86::attend_avx512(q, (k, v), span.keys, scores, out) };
        } else {
            // SAFETY: as above, with AVX2, FMA and F16C.
            unsafe { super::x86::attend_avx2(q, (k, v), span.keys, scores, out) };
        }
        return;
    }
    let _ = isa;
    attend_spec(q, (k, v), span, scores, out);
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

    /// The same attention in f64 from one head's keys and values as rows (`keys x hd`
    /// each, f32 or widened f16 values).
    fn attend_f64(qs: &[f32], groups: usize, k: &[f32], v: &[f32], scale: f32) -> Vec<f64> {
        let hd = qs.len() / groups;
        let mut out = vec![0f64; qs.len()];
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            let q = &qs[g * hd..(g + 1) * hd];
            let s: Vec<f64> = k
                .chunks_exact(hd)
                .map(|r| {
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
            for (&p, r) in p.iter().zip(v.chunks_exact(hd)) {
                for (o, &x) in o.iter_mut().zip(r) {
                    *o += p * x as f64 / sum;
                }
            }
        }
        out
    }

    /// Three KV heads' caches of `cap` positions (a multiple of [`KEY_BLOCK`]) as the cache
    /// keeps them, head-major, the keys in blocks: the middle head holds rows `k` and `v`
    /// (`keys x hd`), and everything else (the other heads, the last block's lanes past
    /// `keys`) is NaN, which no result may read.
    fn three_heads(k: &[f32], v: &[f32], hd: usize, cap: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut kc, mut vc) = (vec![f32::NAN; 3 * cap * hd], vec![f32::NAN; 3 * cap * hd]);
        let offset = cap * hd;
        for (j, (kr, vr)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            for d in 0..hd {
                kc[offset + key_index(hd, j, d)] = kr[d];
            }
            vc[offset + j * hd..offset + (j + 1) * hd].copy_from_slice(vr);
        }
        (kc, vc)
    }

    /// Each SIMD kernel gives the specification's bits, for f32 and f16 caches, every tile
    /// shape (1 to 5 heads per KV head; keys around the block and tile sizes; head sizes 16
    /// to 128), reading no element outside the span's keys and values, and the specification
    /// is within f32 rounding of exact attention.
    #[test]
    fn simd_kernels_are_bit_identical_to_the_specification() {
        let mut checked = 0;
        for (case, &(groups, hd, keys)) in [
            (1usize, 16usize, 1usize),
            (4, 128, 1),
            (4, 128, 3),
            (4, 128, 17),
            (4, 128, 100),
            (4, 128, 130),
            (2, 64, 15),
            (2, 32, 16),
            (1, 128, 33),
            (1, 64, 80),
            (5, 48, 31),
            (3, 16, 64),
            (4, 8, 9), // not a multiple of 16: every ISA runs the specification
        ]
        .iter()
        .enumerate()
        {
            let cap = keys.next_multiple_of(KEY_BLOCK) + KEY_BLOCK;
            let qs = values(case as u64, groups * hd, 1.0);
            // Scores spread over a few units, as trained attention's are.
            let k = values(100 + case as u64, keys * hd, 4.0);
            let v = values(200 + case as u64, keys * hd, 1.0);
            let round = |x: &[f32]| -> Vec<f32> {
                x.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
            };
            let (k16, v16) = (round(&k), round(&v));
            let (k32c, v32c) = three_heads(&k, &v, hd, cap);
            let (k16c, v16c) = three_heads(&k16, &v16, hd, cap);
            let half = |x: &[f32]| -> Vec<half::f16> {
                x.iter().map(|&x| half::f16::from_f32(x)).collect()
            };
            let (k16c, v16c) = (half(&k16c), half(&v16c));
            let scale = (1.0 / (hd as f64).sqrt()) as f32;
            let span = HeadSpan {
                offset: cap * hd,
                keys,
            };
            let q = Queries {
                qs: &qs,
                groups,
                scale,
            };
            let mut scores = Vec::new();
            for (kvs, (kw, vw)) in [
                ((KvRows::F32(&k32c), KvRows::F32(&v32c)), (&k, &v)),
                ((KvRows::F16(&k16c), KvRows::F16(&v16c)), (&k16, &v16)),
            ] {
                let mut want = vec![0f32; groups * hd];
                match kvs {
                    (KvRows::F32(k), KvRows::F32(v)) => {
                        attend_spec(q, (k, v), span, &mut scores, &mut want)
                    }
                    (KvRows::F16(k), KvRows::F16(v)) => {
                        attend_spec(q, (k, v), span, &mut scores, &mut want)
                    }
                    _ => unreachable!(),
                }
                // f16 caches give exactly what their values widened to f32 give.
                if let (KvRows::F16(k), KvRows::F16(v)) = kvs {
                    let widen =
                        |x: &[half::f16]| -> Vec<f32> { x.iter().map(|h| h.to_f32()).collect() };
                    let mut widened = vec![0f32; groups * hd];
                    attend_spec(
                        q,
                        (&widen(k)[..], &widen(v)[..]),
                        span,
                        &mut scores,
                        &mut widened,
                    );
                    assert!(
                        widened
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    );
                }
                let exact = attend_f64(&qs, groups, kw, vw, scale);
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
                    attend(isa, q, kvs, span, &mut got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "case {case} {isa:?}: {got:?} != {want:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 26);
    }

    /// A span past the cache, or one whose index arithmetic would wrap, is refused before
    /// any kernel reads an element.
    #[test]
    fn a_span_out_of_bounds_or_wrapping_is_refused() {
        let (k, v) = (vec![0f32; 256], vec![0f32; 256]);
        let qs = vec![0f32; 16];
        let q = Queries {
            qs: &qs,
            groups: 1,
            scale: 1.0,
        };
        for span in [
            // 17 keys need two whole key blocks (512 elements of hd 16).
            HeadSpan {
                offset: 0,
                keys: 17,
            },
            HeadSpan {
                offset: 16,
                keys: 16,
            },
            HeadSpan {
                offset: 0,
                keys: usize::MAX / 2 + 1,
            },
            HeadSpan {
                offset: usize::MAX - 8,
                keys: 1,
            },
        ] {
            for isa in isas() {
                let mut out = vec![0f32; 16];
                let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    attend(isa, q, (KvRows::F32(&k), KvRows::F32(&v)), span, &mut out)
                }));
                let message = refused.expect_err("an out-of-bounds span was accepted");
                assert_eq!(
                    message.downcast_ref::<&str>(),
                    Some(&"rows out of bounds"),
                    "{span:?} {isa:?}"
                );
            }
        }
        // The span that fits (one whole block of 16 keys of 16 values) is accepted.
        let mut out = vec![0f32; 16];
        let fits = HeadSpan {
            offset: 0,
            keys: 16,
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
