//! Effect and cost of the opt-in Q8_0 output head against the file's F16 head:
//! `cargo run --release -p bitnet-engine --example head_q8 -- MODEL`.
//! Prints load times of both, and for a few prompts the max |Δlogit| / std and whether the
//! argmax is the same.
use std::time::Instant;

use bitnet_engine::{HeadPrecision, LoadOptions, Model};

fn main() {
    let path = std::env::args().nth(1).expect("MODEL");
    let load = |head| {
        let t = Instant::now();
        let m = Model::load(
            path.as_ref(),
            &LoadOptions {
                head,
                ..Default::default()
            },
        )
        .expect("load");
        (m, t.elapsed().as_secs_f64() * 1e3)
    };
    let (f16, f16_ms) = load(HeadPrecision::File);
    let (q8, q8_ms) = load(HeadPrecision::Q8_0);
    println!(
        "load: f16 head {f16_ms:.0} ms, q8_0 head {q8_ms:.0} ms (conversion {:.0} ms)",
        q8_ms - f16_ms
    );
    let prompts: [&[u32]; 4] = [
        &[128000],
        &[128000, 791, 6864, 315, 9822, 374],
        &[128000, 9906, 1917, 11, 420, 374, 264, 1296],
        &[128000, 40, 1093, 311, 2873, 922, 279, 9282, 13],
    ];
    for p in prompts {
        let run = |m: &Model| {
            let mut s = m.new_session(p.len());
            m.forward(&mut s, p).expect("forward")
        };
        let (a, b) = (run(&f16), run(&q8));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let rms =
            (a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        let am = |v: &[f32]| bitnet_engine::generate::sampler::argmax(v);
        println!(
            "{} tokens: max|Δ|/std {:.4}, rms|Δ|/std {:.4}, same argmax {}",
            p.len(),
            max / std,
            rms / std,
            am(&a) == am(&b)
        );
    }
}
