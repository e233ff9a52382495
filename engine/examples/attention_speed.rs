//! Attention alone on 2B4T's shapes (30 layers, 20 query heads over 5 KV heads of 128): one
//! decode step after DEPTH cached tokens, every layer's keys and values in their own memory
//! as in a session's cache, for f32 and f16 caches and each instruction set (passes
//! alternate between them so that both see the same memory conditions), single-threaded:
//! `cargo run --release -p bitnet-engine --example attention_speed [DEPTH]`. Prints the median
//! pass time and the rate at which it read the cache. The cache is laid out as `KvCache`
//! keeps it: head-major, each head's keys in blocks of `KEY_BLOCK` positions.
use std::time::Instant;

use bitnet_engine::kernels::{HeadSpan, Isa, KEY_BLOCK, KvRows, Queries, attend};

const LAYERS: usize = 30;
const HEADS: usize = 20;
const KV_HEADS: usize = 5;
const HD: usize = 128;
const PASSES: usize = 9;

fn main() {
    let depth: usize = std::env::args()
        .nth(1)
        .and_then(|d| d.parse().ok())
        .unwrap_or(2048);
    let kv = KV_HEADS * HD;
    // Positions stored per head: whole key blocks.
    let cap = depth.next_multiple_of(KEY_BLOCK);
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|&i| i <= Isa::detect())
        .collect();
    let q: Vec<f32> = (0..HEADS * HD).map(|i| ((i as f32) * 0.37).sin()).collect();
    let vals = |l: usize| -> Vec<f32> {
        (0..cap * kv)
            .map(|i| (((i + l) as f32) * 0.013).cos())
            .collect()
    };
    let f32_layers: Vec<(Vec<f32>, Vec<f32>)> =
        (0..LAYERS).map(|l| (vals(l), vals(l + 7))).collect();
    let f16_layers: Vec<(Vec<half::f16>, Vec<half::f16>)> = f32_layers
        .iter()
        .map(|(k, v)| {
            let h = |x: &Vec<f32>| x.iter().map(|&x| half::f16::from_f32(x)).collect();
            (h(k), h(v))
        })
        .collect();
    let mut out = vec![0f32; HEADS * HD];
    let scale = (1.0 / (HD as f64).sqrt()) as f32;
    let group = HEADS / KV_HEADS;
    for (name, elem_bytes) in [("f32", 4), ("f16", 2)] {
        let mut times = vec![Vec::new(); isas.len()];
        for _ in 0..PASSES {
            for (i, &isa) in isas.iter().enumerate() {
                let t = Instant::now();
                for l in 0..LAYERS {
                    let rows = match elem_bytes {
                        4 => (KvRows::F32(&f32_layers[l].0), KvRows::F32(&f32_layers[l].1)),
                        _ => (KvRows::F16(&f16_layers[l].0), KvRows::F16(&f16_layers[l].1)),
                    };
                    for h in 0..KV_HEADS {
                        let r = h * group * HD..(h + 1) * group * HD;
                        let queries = Queries {
                            qs: &q[r.clone()],
                            groups: group,
                            scale,
                        };
                        let span = HeadSpan {
                            offset: h * cap * HD,
                            keys: depth,
                        };
                        attend(isa, queries, rows, span, &mut out[r]);
                    }
                }
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
        let bytes = (LAYERS * 2 * depth * kv * elem_bytes) as f64;
        for (isa, mut t) in isas.iter().zip(times) {
            t.sort_by(f64::total_cmp);
            let med = t[t.len() / 2];
            println!(
                "{name} cache, depth {depth}, {isa:?}: {:.2} ms per decode step ({:.1} GB/s of cache read)",
                med * 1e3,
                bytes / med / 1e9
            );
        }
    }
    std::hint::black_box(&out);
}
