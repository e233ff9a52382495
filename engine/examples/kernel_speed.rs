//! Compute throughput of the BitLinear kernels on a cache-resident matrix (1 thread):
//! `cargo run --release -p bitnet-engine --example kernel_speed`.
use std::time::Instant;

use bitnet_engine::fixture::encode_ternary;
use bitnet_engine::gguf::GgmlType;
use bitnet_engine::kernels::{Isa, Kernels};
use bitnet_engine::quant::{QuantizedActs, TernaryMatrix};

fn main() {
    let (rows, k) = (512, 2560);
    let values: Vec<i8> = (0..rows * k).map(|i| ((i * 7919) % 3) as i8 - 1).collect();
    let x: Vec<f32> = (0..8 * k).map(|i| ((i as f32) * 0.37).sin()).collect();
    let mut kern = Kernels::new(Some(1));
    for ty in [GgmlType::I2S, GgmlType::Tq2_0, GgmlType::Tq1_0] {
        let data = encode_ternary(ty, &values, k, 0.5);
        let w = TernaryMatrix {
            ty,
            rows,
            k,
            data: &data,
            scale: TernaryMatrix::detect_scale(ty, rows, k, &data),
        };
        for isa in [Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|&i| i <= Isa::detect())
        {
            kern.isa = isa;
            // The per-row kernels planned for one token, then for eight.
            let mut acts1 = QuantizedActs::default();
            acts1.quantize_for(&x[..k], k, kern.act_orders(&[&w], 1));
            let mut acts8 = QuantizedActs::default();
            acts8.quantize_for(&x, k, kern.act_orders(&[&w], 8));
            let reps = 200;
            let t = Instant::now();
            let mut sink = 0f32;
            for _ in 0..reps {
                for m in 0..rows {
                    let mut y = [0f32; 1];
                    kern.bitlinear_row::<1>(&w, m, &acts1, 0, &mut y);
                    sink += y[0];
                }
            }
            let gemv = (reps * rows * k) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = Instant::now();
            for _ in 0..reps / 4 {
                for m in 0..rows {
                    let mut y = [0f32; 8];
                    kern.bitlinear_row::<8>(&w, m, &acts8, 0, &mut y);
                    sink += y[0];
                }
            }
            let gemm = (reps / 4 * rows * k * 8) as f64 / t.elapsed().as_secs_f64() / 1e9;
            // The whole matrix through `bitlinear` (the row-block kernels, several rows per
            // activation load), eight tokens.
            let mut out = vec![0f32; 8 * rows];
            let t = Instant::now();
            for _ in 0..reps / 4 {
                kern.bitlinear(&w, &acts8, &mut out);
                sink += out[0];
            }
            let blocks = (reps / 4 * rows * k * 8) as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!(
                "{ty:6} {isa:?}: GEMV {gemv:6.2} Gweights/s, GEMM(8 tokens) per row {gemm:6.2}, \
                 row blocks {blocks:6.2} G MAC/s ({sink:.0})"
            );
        }
    }
}
