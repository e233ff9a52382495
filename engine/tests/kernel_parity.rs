//! Every SIMD kernel against its scalar twin: bit-identical BitLinear outputs over random
//! shapes, random and extreme activations, for I2_S, TQ2_0 and TQ1_0.
#![allow(clippy::needless_range_loop)]

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::kernels::{Isa, Kernels, dense_rows, has_vbmi};
use bitnet_engine::quant::head::{self, HeadActs};
use bitnet_engine::quant::{DenseMatrix, QuantizedActs, TernaryMatrix, i2s, tq1_0, tq2_0};
use half::f16;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn isas() -> Vec<Isa> {
    let best = Isa::detect();
    let all = [Isa::Avx2, Isa::Avx512Vnni];
    let v: Vec<Isa> = all.into_iter().filter(|&i| i <= best).collect();
    if v.is_empty() {
        eprintln!("no SIMD instruction set on this CPU: only the scalar kernels run");
    }
    v
}

/// A kernel set for every instruction set this CPU runs: AVX2, AVX-512 VNNI as on a CPU
/// without VBMI, and with VBMI where this CPU has it (each plans different TQ1_0 kernels).
fn kernel_sets(threads: usize) -> Vec<(Kernels, String)> {
    let mut sets = Vec::new();
    for isa in isas() {
        for vbmi in [false, true] {
            if vbmi && !(isa == Isa::Avx512Vnni && has_vbmi()) {
                continue;
            }
            let mut kern = Kernels::new(Some(threads));
            kern.isa = isa;
            kern.vbmi = vbmi;
            sets.push((kern, format!("{isa:?}{}", if vbmi { "+VBMI" } else { "" })));
        }
    }
    sets
}

fn pack(ty: GgmlType, values: &[i8], k: usize, scale: f32, per_block: Option<&mut Rng>) -> Vec<u8> {
    let blocks = values.len() / 256;
    let scales: Vec<f16> = match per_block {
        Some(r) => (0..blocks)
            .map(|_| f16::from_f32(0.5 + r.f().abs()))
            .collect(),
        None => vec![f16::from_f32(scale); blocks],
    };
    match ty {
        GgmlType::I2S => i2s::pack(values, k, scale),
        GgmlType::Tq2_0 => tq2_0::pack(values, &scales),
        GgmlType::Tq1_0 => tq1_0::pack(values, &scales),
        _ => unreachable!(),
    }
}

fn activations(r: &mut Rng, n: usize, k: usize, mode: usize) -> Vec<f32> {
    (0..n * k)
        .map(|i| match mode {
            // plain random
            0 => r.f() * 3.0,
            // extreme: huge outliers, exact zeros, values on .5 boundaries after scaling
            1 => match r.next() % 5 {
                0 => 1e6,
                1 => -1e6,
                2 => 0.0,
                _ => r.f() * 1e-3,
            },
            // all equal magnitude (every q is ±127)
            2 => {
                if i % 3 == 0 {
                    -7.0
                } else {
                    7.0
                }
            }
            // all zero (scale floor)
            _ => 0.0,
        })
        .collect()
}

/// Row `m` for all `n` tokens in tiles of 8, 4 and 1, against the scalar specification.
fn check_row(
    kern: &Kernels,
    w: &TernaryMatrix<'_>,
    m: usize,
    acts: &QuantizedActs,
    n: usize,
    what: &str,
) {
    fn tiles<const T: usize>(
        kern: &Kernels,
        w: &TernaryMatrix<'_>,
        m: usize,
        acts: &QuantizedActs,
        t0: usize,
        what: &str,
    ) {
        let mut y = [0f32; T];
        kern.bitlinear_row::<T>(w, m, acts, t0, &mut y);
        for t in 0..T {
            let want = w.row_dot_scalar(m, acts.row(t0 + t), acts.scales[t0 + t]);
            assert_eq!(
                y[t].to_bits(),
                want.to_bits(),
                "{what} row {m} token {} (tile {T})",
                t0 + t
            );
        }
    }
    let mut t0 = 0;
    while t0 + 8 <= n {
        tiles::<8>(kern, w, m, acts, t0, what);
        t0 += 8;
    }
    while t0 + 4 <= n {
        tiles::<4>(kern, w, m, acts, t0, what);
        t0 += 4;
    }
    while t0 < n {
        tiles::<1>(kern, w, m, acts, t0, what);
        t0 += 1;
    }
}

#[test]
fn simd_bitlinear_is_bit_identical_to_scalar() {
    let sets = kernel_sets(1);
    let mut r = Rng(0x5eed_1234_abcd_ef01);
    let mut cases = 0;
    for ty in [GgmlType::I2S, GgmlType::Tq2_0, GgmlType::Tq1_0] {
        for &k in &[256usize, 512, 768, 2560, 6912] {
            for mode in 0..4 {
                for per_block in [false, true] {
                    if per_block && ty == GgmlType::I2S {
                        continue;
                    }
                    let rows = 1 + (r.next() % 7) as usize;
                    let n = 1 + (r.next() % 13) as usize;
                    let values: Vec<i8> = (0..rows * k).map(|_| (r.next() % 3) as i8 - 1).collect();
                    let scale = f16::from_f32(0.01 + r.f().abs()).to_f32();
                    let data = pack(
                        ty,
                        &values,
                        k,
                        scale,
                        if per_block { Some(&mut r) } else { None },
                    );
                    let w = TernaryMatrix {
                        ty,
                        rows,
                        k,
                        data: &data,
                        scale: TernaryMatrix::detect_scale(ty, rows, k, &data),
                    };
                    let x = activations(&mut r, n, k, mode);
                    for (kern, name) in &sets {
                        // The orders this kernel set's plan reads for n tokens.
                        let orders = kern.act_orders(&[&w], n);
                        let mut acts = QuantizedActs::default();
                        acts.quantize_for(&x, k, orders);
                        for m in 0..rows {
                            check_row(
                                kern,
                                &w,
                                m,
                                &acts,
                                n,
                                &format!("{ty} k={k} mode={mode} {name} {orders:?}"),
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!("{cases} row x ISA cases compared");
}

#[test]
fn i2s_rows_of_128_fall_back_to_scalar_correctly() {
    let k = 384;
    let values: Vec<i8> = (0..2 * k).map(|i| (i % 3) as i8 - 1).collect();
    let data = i2s::pack(&values, k, 0.5);
    let w = TernaryMatrix {
        ty: GgmlType::I2S,
        rows: 2,
        k,
        data: &data,
        scale: TernaryMatrix::detect_scale(GgmlType::I2S, 2, k, &data),
    };
    let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut acts = QuantizedActs::default();
    acts.quantize(&x, k);
    // Reference by hand: sum (v * q) exactly, then (D / s) * scale.
    let d: i32 = values[..k]
        .iter()
        .zip(&acts.q)
        .map(|(&v, &q)| v as i32 * q as i32)
        .sum();
    let want = (d as f32 / acts.scales[0]) * 0.5;
    for (kern, name) in kernel_sets(1) {
        let mut y = [0f32; 1];
        kern.bitlinear_row::<1>(&w, 0, &acts, 0, &mut y);
        assert_eq!(y[0].to_bits(), want.to_bits(), "{name}");
    }
}

/// Every ISA's `dense_rows` against the scalar matvec: different summation order only, so a
/// relative error of a few ulps of the row norm.
fn assert_dense_rows_match_scalar(w: &DenseMatrix<'_>, x: &[f32]) {
    let mut want = vec![0f32; w.rows];
    w.matvec_scalar(x, 0..w.rows, &mut want);
    for isa in isas() {
        let mut got = vec![0f32; w.rows];
        dense_rows(isa, w, x, 0, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{isa:?}: {g} vs {w}"
            );
        }
    }
}

/// `rows` x `k` random F16 weights, then `k` random inputs.
fn random_f16_rows(r: &mut Rng, rows: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let data = (0..rows * k)
        .flat_map(|_| f16::from_f32(r.f()).to_le_bytes())
        .collect();
    (data, (0..k).map(|_| r.f()).collect())
}

#[test]
fn f16_head_matches_scalar_within_summation_order() {
    let mut r = Rng(77);
    let (rows, k) = (37, 2560 + 24);
    let (data, x) = random_f16_rows(&mut r, rows, k);
    let w = DenseMatrix {
        ty: GgmlType::F16,
        rows,
        k,
        data: &data,
    };
    assert_dense_rows_match_scalar(&w, &x);
}

#[test]
fn threaded_matmul_is_bit_identical_to_scalar() {
    // The prefill shapes below reach the interleaved GEMM only while this holds.
    const _: () = assert!(bitnet_engine::kernels::INTERLEAVE_MIN_TOKENS <= 32);
    let mut r = Rng(4242);
    // Every instruction set this CPU runs, each with its own row-block kernels.
    let sets = kernel_sets(2);
    for ((kern, name), ty) in sets
        .iter()
        .flat_map(|s| [GgmlType::I2S, GgmlType::Tq2_0, GgmlType::Tq1_0].map(|t| (s, t)))
    {
        for &(rows, k, n) in &[
            (37usize, 512usize, 11usize),
            (130, 768, 1),
            // Decode: row blocks of up to 512 rows, read eight (TQ1_0: four) rows at a time,
            // spread over the block, plus the rows left over.
            (1100, 512, 1),
            (64, 256, 8),
            (200, 2560, 5),
            // Prefill sizes: TQ1_0 rows decoded once per row block (AVX-512 VBMI).
            (150, 2560, 19),
            (64, 6912, 8),
            // The interleaved GEMM (INTERLEAVE_MIN_TOKENS = 32 tokens and more): whole 64-row
            // chunks, a chunk of two groups plus rows past the last group, token tiles of 6
            // and what is left, and an odd number of 256-input blocks (a last slab of one).
            (96, 512, 32),
            (64, 6912, 35),
            (40, 768, 37),
            (150, 2560, 33),
        ] {
            let values: Vec<i8> = (0..rows * k).map(|_| (r.next() % 3) as i8 - 1).collect();
            let data = pack(ty, &values, k, 0.75, None);
            let w = TernaryMatrix {
                ty,
                rows,
                k,
                data: &data,
                scale: TernaryMatrix::detect_scale(ty, rows, k, &data),
            };
            let mode = (r.next() % 3) as usize;
            let x = activations(&mut r, n, k, mode);
            // The orders the forward pass asks for.
            let mut acts = QuantizedActs::default();
            acts.quantize_for(&x, k, kern.act_orders(&[&w], n));
            // Rows quantized on the pool's threads match the serial pass.
            let mut on_pool = QuantizedActs::default();
            kern.install(|| on_pool.quantize_for(&x, k, kern.act_orders(&[&w], n)));
            for t in 0..n {
                assert_eq!(on_pool.row(t), acts.row(t), "token {t}");
                assert_eq!(on_pool.scales[t].to_bits(), acts.scales[t].to_bits());
                assert_eq!(on_pool.sums[t], acts.sums[t]);
            }
            let mut out = vec![0f32; n * rows];
            kern.bitlinear(&w, &acts, &mut out);
            for t in 0..n {
                for m in 0..rows {
                    let want = w.row_dot_scalar(m, acts.row(t), acts.scales[t]);
                    assert_eq!(
                        out[t * rows + m].to_bits(),
                        want.to_bits(),
                        "{ty} rows {rows} k {k} n {n} token {t} row {m} ({name})"
                    );
                }
            }
        }
    }
}

#[test]
fn threaded_head_matches_one_thread_exactly() {
    // Rows are split over the threads, never within a row: the same sums in the same order.
    let mut r = Rng(99);
    let (rows, k) = (1000, 256);
    let (data, x) = random_f16_rows(&mut r, rows, k);
    let w = DenseMatrix {
        ty: GgmlType::F16,
        rows,
        k,
        data: &data,
    };
    for isa in isas() {
        let mut one = bitnet_engine::kernels::Kernels::new(Some(1));
        one.isa = isa;
        let mut want = vec![0f32; rows];
        one.matvec(&w, &x, &mut want);
        for threads in [2, 3] {
            let mut kern = bitnet_engine::kernels::Kernels::new(Some(threads));
            kern.isa = isa;
            let mut got = vec![f32::NAN; rows];
            kern.matvec(&w, &x, &mut got);
            let same = got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "{isa:?}, {threads} threads");
        }
    }
}

fn f16_matrix(r: &mut Rng, rows: usize, k: usize) -> Vec<u8> {
    (0..rows * k)
        .flat_map(|i| {
            let v = match (i / 32) % 7 {
                // an all-zero block
                0 => 0.0,
                // values that land on .5 after scaling (ties round away from zero)
                1 => ((r.next() % 255) as f32 - 127.0) * 0.5,
                // a non-finite block now and then
                2 if i % 97 == 0 => f32::INFINITY,
                3 if i % 89 == 0 => f32::NAN,
                4 => r.f() * 6e4,
                _ => r.f(),
            };
            f16::from_f32(v).to_le_bytes()
        })
        .collect()
}

#[test]
fn q8_0_head_conversion_is_bit_identical_to_scalar() {
    let mut r = Rng(31337);
    let (rows, k) = (70, 2560);
    let data = f16_matrix(&mut r, rows, k);
    let m = DenseMatrix {
        ty: GgmlType::F16,
        rows,
        k,
        data: &data,
    };
    let got = bitnet_engine::quant::q8_0::quantize_matrix(&m);
    let rb = k / 32 * 34;
    let mut row = vec![0f32; k];
    let mut want = vec![0u8; rb];
    for i in 0..rows {
        m.row_f32(i, &mut row);
        bitnet_engine::quant::q8_0::quantize_row(&row, &mut want);
        assert_eq!(
            &got[i * rb..(i + 1) * rb],
            &want[..],
            "row {i} ({:?})",
            Isa::detect()
        );
    }
}

/// `rows` x `k` random weights quantized to `ty` (Q8_0 or Q4_0) from F16, with a few
/// all-zero blocks and a block holding -128 (Q8_0's code that quantizing never makes).
fn quantized_rows(r: &mut Rng, ty: GgmlType, rows: usize, k: usize) -> Vec<u8> {
    let (data, _) = random_f16_rows(r, rows, k);
    let m = DenseMatrix {
        ty: GgmlType::F16,
        rows,
        k,
        data: &data,
    };
    let mut q = vec![0u8; head::matrix_bytes(ty, &m)];
    head::quantize_matrix_into(ty, &m, &mut q);
    let (_, bb) = head::block_shape(ty);
    q[3 * bb..4 * bb].fill(0);
    if ty == GgmlType::Q8_0 {
        q[5 * bb + 7] = 0x80;
    }
    q
}

#[test]
fn quantized_head_matches_scalar_within_summation_order() {
    let mut r = Rng(4711);
    // 2560: AVX-512 pairs of blocks; 2560 + 32: an odd number of blocks (AVX2 kernels).
    for ty in [GgmlType::Q8_0, GgmlType::Q6K, GgmlType::Q4_0] {
        let ks: &[usize] = if ty == GgmlType::Q6K {
            &[2560, 256]
        } else {
            &[2560, 2560 + 32, 64]
        };
        for &k in ks {
            let rows = 37;
            let q = quantized_rows(&mut r, ty, rows, k);
            let w = DenseMatrix {
                ty,
                rows,
                k,
                data: &q,
            };
            for mode in 0..2 {
                let x: Vec<f32> = activations(&mut r, 1, k, mode);
                let acts = HeadActs::new(&x, ty);
                let rb = q.len() / rows;
                let want: Vec<f32> = (0..rows)
                    .map(|m| head::dot_scalar(ty, &q[m * rb..(m + 1) * rb], &acts))
                    .collect();
                for isa in isas() {
                    let mut got = vec![0f32; rows];
                    dense_rows(isa, &w, &x, 0, &mut got);
                    for (m, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * head_magnitude(ty, &q[m * rb..(m + 1) * rb], &acts);
                        assert!(
                            (g - w).abs() <= tol,
                            "{ty} k {k} mode {mode} {isa:?} row {m}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

/// `sum over groups of |w_i * q_i| * |scale|`: what float rounding in any order is relative
/// to (from the dequantized row: |w_i| = |code| * |scale of its group|).
fn head_magnitude(ty: GgmlType, row: &[u8], x: &HeadActs) -> f32 {
    let k = x.len();
    let m = DenseMatrix {
        ty,
        rows: 1,
        k,
        data: row,
    };
    let mut w = vec![0f32; k];
    m.row_f32(0, &mut w);
    1e-30
        + (0..k)
            .map(|i| (w[i] * x.q[i] as f32 * x.d[i / 32]).abs())
            .sum::<f32>()
}

#[test]
fn quantized_head_is_close_to_the_float_dot() {
    // The input's quantization error (half a step of 8 bits per block) and the weights'
    // are what separates the quantized head from the float one: bounded here.
    let mut r = Rng(99);
    let k = 2560;
    for ty in [GgmlType::Q8_0, GgmlType::Q6K, GgmlType::Q4_0] {
        let q = quantized_rows(&mut r, ty, 8, k);
        let rb = q.len() / 8;
        let w = DenseMatrix {
            ty,
            rows: 8,
            k,
            data: &q,
        };
        let x: Vec<f32> = (0..k).map(|_| r.f()).collect();
        let acts = HeadActs::new(&x, ty);
        let mut wrow = vec![0f32; k];
        for m in 0..8 {
            w.row_f32(m, &mut wrow);
            let float: f32 = wrow.iter().zip(&x).map(|(a, b)| a * b).sum();
            let norm = wrow.iter().map(|v| v * v).sum::<f32>().sqrt()
                * x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let got = head::dot_scalar(ty, &q[m * rb..(m + 1) * rb], &acts);
            assert!(
                (got - float).abs() <= 0.01 * norm,
                "{ty} row {m}: {got} vs {float} (|w||x| {norm})"
            );
        }
    }
}

#[test]
fn a_non_finite_input_gives_non_finite_logits_in_every_head() {
    // A diverged hidden state must not turn into finite logits: NaN or infinity in the input
    // reaches the output as with the F16 head.
    let mut r = Rng(8);
    let k = 256;
    let kern = bitnet_engine::kernels::Kernels::new(Some(1));
    for ty in [GgmlType::Q8_0, GgmlType::Q6K, GgmlType::Q4_0] {
        let q = quantized_rows(&mut r, ty, 4, k);
        let w = DenseMatrix {
            ty,
            rows: 4,
            k,
            data: &q,
        };
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x: Vec<f32> = (0..k).map(|_| r.f()).collect();
            x[37] = bad;
            let mut out = vec![0f32; 4];
            kern.install(|| kern.matvec(&w, &x, &mut out));
            assert!(
                out.iter().all(|v| !v.is_finite()),
                "{ty} with {bad}: {out:?}"
            );
        }
    }
}

#[test]
fn q6_k_round_trip_is_close_and_its_layout_holds() {
    use bitnet_engine::quant::q6_k;
    let mut r = Rng(5);
    let x: Vec<f32> = (0..512).map(|_| r.f() * 2.0).collect();
    let mut q = vec![0u8; 2 * q6_k::BLOCK_BYTES];
    q6_k::quantize_row(&x, &mut q);
    let mut back = vec![0f32; 512];
    q6_k::dequantize_row(&q, &mut back);
    // Six bits per value with a scale per 16: the error is at most half a step of the
    // sub-block's quantized scale (plus the scale's own 8-bit rounding), here below 3 % of
    // the block's largest value.
    for (i, (a, b)) in x.iter().zip(&back).enumerate() {
        assert!((a - b).abs() <= 0.03 * 2.0, "value {i}: {a} vs {b}");
    }
    // Plain rounding on a grid of step 2 / 32 would give an rms error of step / sqrt(12).
    let rms = (x
        .iter()
        .zip(&back)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        / 512.0)
        .sqrt();
    assert!(rms < 2.0 / 32.0 / 12f32.sqrt(), "rms error {rms}");
    // The layout: codes written through `code()` come back where the format puts them.
    let blk = &q[..q6_k::BLOCK_BYTES];
    for i in 0..256 {
        let (half, j) = (i / 128, i % 128);
        let ql = blk[64 * half + j % 64];
        let low = if j < 64 { ql & 15 } else { ql >> 4 };
        let high = (blk[128 + 32 * half + j % 32] >> (2 * (j / 32))) & 3;
        assert_eq!(q6_k::code(blk, i), low | (high << 4));
    }
    // A block of zeros stays zero.
    q6_k::quantize_row(&[0f32; 256], &mut q[..q6_k::BLOCK_BYTES]);
    q6_k::dequantize_row(&q[..q6_k::BLOCK_BYTES], &mut back[..256]);
    assert!(back[..256].iter().all(|&v| v == 0.0));
}

#[test]
fn q4_0_quantization_follows_ggml() {
    // The value of largest magnitude (-3.2 here) becomes code 0: d = -3.2 / -8 = 0.4.
    let mut x = [0f32; 32];
    x[0] = -3.2;
    x[1] = 3.0;
    x[2] = 0.2;
    x[16] = 0.19;
    x[17] = -0.21;
    let mut out = [0u8; 18];
    bitnet_engine::quant::q4_0::quantize_row(&x, &mut out);
    assert_eq!(
        f16::from_le_bytes([out[0], out[1]]).to_f32(),
        f16::from_f32(0.4).to_f32()
    );
    // x / d + 8.5, truncated, at most 15: -3.2 -> 0; 3.0 -> 16 -> 15; 0.2 -> 9;
    // 0.19 -> 8.975 -> 8; -0.21 -> 7.975 -> 7; zeros -> 8.
    assert_eq!(out[2], 8 << 4);
    assert_eq!(out[3], 15 | (7 << 4));
    assert_eq!(out[4], 9 | (8 << 4));
    let mut back = [0f32; 32];
    bitnet_engine::quant::q4_0::dequantize_row(&out, &mut back);
    let d = f16::from_f32(0.4).to_f32();
    assert_eq!(back[0], -8.0 * d);
    assert_eq!(back[1], 7.0 * d);
    assert_eq!(back[17], -d);
    // A block of zeros: d = 0 / -8 (negative zero, as in ggml), every code 8.
    bitnet_engine::quant::q4_0::quantize_row(&[0f32; 32], &mut out);
    assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 0.0);
    assert!(out[2..].iter().all(|&c| c == 0x88));
}

/// The head for a batch of vectors (the AVX-512 rows × vectors kernel, or per vector) gives
/// each vector exactly what one matvec gives it: a sequence's logits do not depend on its
/// batch. Odd row counts and a k with a scalar tail reach every kernel shape.
#[test]
fn batched_head_is_bit_identical_to_one_vector_at_a_time() {
    let mut r = Rng(91);
    let (rows, k) = (203, 2560 + 24);
    let (f16_data, _) = random_f16_rows(&mut r, rows, k);
    let q8 = quantized_rows(&mut r, GgmlType::Q8_0, rows, 2560);
    let q6 = quantized_rows(&mut r, GgmlType::Q6K, rows, 2560);
    let q4 = quantized_rows(&mut r, GgmlType::Q4_0, rows, 2560);
    let q4_odd = quantized_rows(&mut r, GgmlType::Q4_0, rows, 2560 + 32);
    let heads = [
        (GgmlType::F16, k, &f16_data[..]),
        (GgmlType::Q8_0, 2560, &q8[..]),
        (GgmlType::Q6K, 2560, &q6[..]),
        (GgmlType::Q4_0, 2560, &q4[..]),
        (GgmlType::Q4_0, 2560 + 32, &q4_odd[..]),
    ];
    let kern = bitnet_engine::kernels::Kernels::new(Some(2));
    for (ty, k, data) in heads {
        let w = DenseMatrix { ty, rows, k, data };
        for m in 1..=9 {
            let xs: Vec<f32> = (0..m * k).map(|_| r.f()).collect();
            let mut got = vec![0f32; m * rows];
            kern.install(|| kern.matmul_dense(&w, &xs, &mut got));
            for (j, x) in xs.chunks_exact(k).enumerate() {
                let mut want = vec![0f32; rows];
                kern.install(|| kern.matvec(&w, x, &mut want));
                let row = &got[j * rows..(j + 1) * rows];
                assert!(
                    row.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{ty} k {k}, {m} vectors: vector {j} differs"
                );
            }
        }
    }
}
