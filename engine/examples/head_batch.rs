//! Time of the output head (2B4T shape: 128,256 × 2,560) in each head type (F16, Q8_0, Q6_K,
//! Q4_0) for 1, 2, 4, 8 and 16 vectors, with the bytes it reads and the rate that makes:
//! `cargo run --release -p bitnet-engine --example head_batch [TYPE...]` (`BITNET_ISA=avx2`
//! for the AVX2 kernels; types such as `q8_0 q4_0`, all four by default). Best of 7 runs each.
use std::time::Instant;

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::kernels::Kernels;
use bitnet_engine::quant::{DenseMatrix, head};

fn main() {
    let (rows, k) = (128_256usize, 2_560usize);
    let f16: Vec<u8> = (0..rows * k)
        .flat_map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes())
        .collect();
    let src = DenseMatrix {
        ty: GgmlType::F16,
        rows,
        k,
        data: &f16,
    };
    let kern = Kernels::new(None);
    println!("{:?}, {} threads", kern.isa, kern.threads());
    let all = [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q6K, GgmlType::Q4_0];
    let asked: Vec<String> = std::env::args().skip(1).map(|a| a.to_lowercase()).collect();
    for ty in all {
        if !asked.is_empty() && !asked.contains(&ty.to_string().to_lowercase()) {
            continue;
        }
        let data = if ty == GgmlType::F16 {
            f16.clone()
        } else {
            let mut q = vec![0u8; head::matrix_bytes(ty, &src)];
            kern.install(|| head::quantize_matrix_into(ty, &src, &mut q));
            q
        };
        let w = DenseMatrix {
            ty,
            rows,
            k,
            data: &data,
        };
        for m in [1usize, 2, 4, 8, 16] {
            let xs: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let mut out = vec![0f32; m * rows];
            kern.install(|| kern.matmul_dense(&w, &xs, &mut out));
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                kern.install(|| kern.matmul_dense(&w, &xs, &mut out));
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "{ty:>5} head, {m} vectors: {best:6.1} ms ({:5.1} ms per vector; {:.0} MB read, {:.1} GB/s)",
                best / m as f64,
                data.len() as f64 / 1e6,
                data.len() as f64 / best / 1e6
            );
        }
    }
}
