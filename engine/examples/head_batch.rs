//! Time of the F16 output head (2B4T shape: 128,256 × 2,560) for a batch of vectors, against
//! the same vectors one by one: `cargo run --profile ci -p bitnet-engine --example head_batch`.
use std::time::Instant;

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::kernels::Kernels;
use bitnet_engine::quant::DenseMatrix;

fn main() {
    let (rows, k) = (128_256usize, 2_560usize);
    let data: Vec<u8> = (0..rows * k)
        .flat_map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes())
        .collect();
    let w = DenseMatrix {
        ty: GgmlType::F16,
        rows,
        k,
        data: &data,
    };
    let kern = Kernels::new(None);
    for m in [1usize, 2, 4, 8] {
        let xs: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 97) as f32 / 97.0).collect();
        let mut out = vec![0f32; m * rows];
        kern.install(|| kern.matmul_dense(&w, &xs, &mut out));
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            kern.install(|| kern.matmul_dense(&w, &xs, &mut out));
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "head, {m} vectors: {best:.1} ms ({:.1} ms per vector)",
            best / m as f64
        );
    }
}
