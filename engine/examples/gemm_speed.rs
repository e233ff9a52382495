//! Prefill GEMM throughput per matrix shape (1 thread unless BITNET_THREADS):
//! `cargo run --release -p bitnet-engine --example gemm_speed -- [TYPE] [TOKENS]`.
//! Prints VPDPBUSD-equivalents per second (rows * k * tokens / 64 per second).
use std::time::Instant;

use bitnet_engine::fixture::encode_ternary;
use bitnet_engine::gguf::GgmlType;
use bitnet_engine::kernels::Kernels;
use bitnet_engine::quant::{QuantizedActs, TernaryMatrix};

fn main() {
    let mut args = std::env::args().skip(1);
    let ty = match args.next().as_deref().unwrap_or("i2_s") {
        "tq2_0" => GgmlType::Tq2_0,
        "tq1_0" => GgmlType::Tq1_0,
        _ => GgmlType::I2S,
    };
    let n: usize = args.next().map_or(128, |s| s.parse().expect("TOKENS"));
    let kernels = Kernels::new(Some(
        bitnet_engine::kernels::threads_from_env().unwrap_or(1),
    ));
    // The 2B4T BitLinear shapes: q/o, k/v, gate/up, down.
    let shapes = match std::env::var("SHAPE") {
        Ok(s) => {
            let (r, k) = s.split_once('x').expect("SHAPE=ROWSxK");
            vec![(r.parse().expect("rows"), k.parse().expect("k"))]
        }
        Err(_) => vec![(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)],
    };
    for (rows, k) in shapes {
        let values: Vec<i8> = (0..rows * k)
            .map(|i| ((i * 7919 + i / 7) % 3) as i8 - 1)
            .collect();
        let data = encode_ternary(ty, &values, k, 0.5);
        let w = TernaryMatrix {
            ty,
            rows,
            k,
            data: &data,
            scale: TernaryMatrix::detect_scale(ty, rows, k, &data),
        };
        let x: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut acts = QuantizedActs::default();
        acts.quantize_for(&x, k, kernels.act_orders(&[&w], n));
        let mut out = vec![0f32; n * rows];
        let mut times = Vec::new();
        for _ in 0..std::env::var("REPS").map_or(7, |s| s.parse().expect("REPS")) {
            let t = Instant::now();
            kernels.bitlinear(&w, &acts, &mut out);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let ops = (rows * k * n / 64) as f64;
        println!(
            "{ty:?} {rows:>5} x {k:>5}, {n} tokens: {:7.2} ms, {:.2} G dpbusd/s",
            times[times.len() / 2] * 1e3,
            ops / times[times.len() / 2] / 1e9
        );
    }
}
