//! The ternary half of one decode step on 2B4T's shapes: 30 layers of seven BitLinears (q,
//! k, v, o, gate, up, down), each in its own memory as in a loaded model, against one token.
//! For each ternary type and instruction set, passes alternate between the instruction sets
//! so that both see the same memory conditions: `cargo run --release -p bitnet-engine
//! --example gemv_speed [THREADS]`. Prints the median pass time and its read rate.
use std::time::Instant;

use bitnet_engine::fixture::encode_ternary;
use bitnet_engine::gguf::GgmlType;
use bitnet_engine::kernels::{Isa, Kernels};
use bitnet_engine::quant::{QuantizedActs, TernaryMatrix};

const LAYERS: usize = 30;
/// (rows, k) of q, k, v, o, gate, up, down.
const SHAPES: [(usize, usize); 7] = [
    (2560, 2560),
    (640, 2560),
    (640, 2560),
    (2560, 2560),
    (6912, 2560),
    (6912, 2560),
    (2560, 6912),
];

fn main() {
    let threads = std::env::args().nth(1).and_then(|t| t.parse().ok());
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|&i| i <= Isa::detect())
        .collect();
    let x: Vec<f32> = (0..6912).map(|i| ((i as f32) * 0.37).sin()).collect();
    for ty in [GgmlType::I2S, GgmlType::Tq2_0, GgmlType::Tq1_0] {
        // One layer encoded, copied into every layer's own buffer.
        let layer: Vec<Vec<u8>> = SHAPES
            .iter()
            .enumerate()
            .map(|(s, &(rows, k))| {
                let values: Vec<i8> = (0..rows * k)
                    .map(|i| (((i + s).wrapping_mul(2_654_435_761) >> 7) % 3) as i8 - 1)
                    .collect();
                encode_ternary(ty, &values, k, 0.5)
            })
            .collect();
        let data: Vec<Vec<u8>> = (0..LAYERS).flat_map(|_| layer.clone()).collect();
        let bytes: usize = data.iter().map(Vec::len).sum();
        let mats: Vec<TernaryMatrix<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (rows, k) = SHAPES[i % SHAPES.len()];
                TernaryMatrix {
                    ty,
                    rows,
                    k,
                    data: d,
                    scale: TernaryMatrix::detect_scale(ty, rows, k, d),
                }
            })
            .collect();
        let mut kern = Kernels::new(threads);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); isas.len()];
        let mut out = vec![0f32; 6912];
        for _ in 0..9 {
            for (i, &isa) in isas.iter().enumerate() {
                kern.isa = isa;
                let orders = kern.act_orders(&[&mats[0], &mats[6]], 1);
                let mut a2560 = QuantizedActs::default();
                a2560.quantize_for(&x[..2560], 2560, orders);
                let mut a6912 = QuantizedActs::default();
                a6912.quantize_for(&x, 6912, orders);
                let t = Instant::now();
                kern.install(|| {
                    for w in &mats {
                        let acts = if w.k == 2560 { &a2560 } else { &a6912 };
                        kern.bitlinear(w, acts, &mut out[..w.rows]);
                    }
                });
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
        for (i, isa) in isas.iter().enumerate() {
            times[i].sort_by(f64::total_cmp);
            let med = times[i][times[i].len() / 2];
            println!(
                "{:<6} {:<12} {:>7.2} ms  {:>5.1} GB/s  ({} MB, {} threads)",
                ty.to_string(),
                format!("{isa:?}"),
                med * 1e3,
                bytes as f64 / med / 1e9,
                bytes / 1_000_000,
                kern.threads()
            );
        }
    }
}
