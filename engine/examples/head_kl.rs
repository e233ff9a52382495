//! How far a quantized token embedding / output head moves the next-token distribution:
//! `cargo run --release -p bitnet-engine --example head_kl -- MODEL [PROMPTS] [STEPS]`.
//!
//! Loads MODEL with its own head (F16 for BitNet b1.58) and with the head converted at load
//! to Q8_0, Q6_K and Q4_0 (a tied embedding reads the converted copy too: the same model as
//! `bitnet prepare --head ...` writes). Feeds each of PROMPTS random prompts (8 tokens,
//! fixed seeds), then STEPS tokens of the F16 model's greedy continuation, to all three, and
//! reports over every position the KL divergence KL(P_f16 || P_quantized) in nats and how
//! often the argmax agrees; also each load time.
use std::time::Instant;

use bitnet_engine::generate::sampler::argmax;
use bitnet_engine::{HeadPrecision, LoadOptions, Model};

fn softmax_f64(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p / q.max(1e-300)).ln())
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("MODEL");
    let prompts: usize = args.next().map_or(8, |v| v.parse().expect("PROMPTS"));
    let steps: usize = args.next().map_or(24, |v| v.parse().expect("STEPS"));
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
    let (base, base_ms) = load(HeadPrecision::File);
    let heads = [HeadPrecision::Q8_0, HeadPrecision::Q6K, HeadPrecision::Q4_0].map(|h| {
        let (m, ms) = load(h);
        println!("load: file's head {base_ms:.0} ms, {h:?} {ms:.0} ms");
        (h, m)
    });
    let n_vocab = base.config().n_vocab as u64;
    let mut kls: Vec<Vec<f64>> = vec![Vec::new(); heads.len()];
    let mut agree = vec![0usize; heads.len()];
    let mut positions = 0usize;
    for p in 0..prompts {
        // A fixed pseudo-random prompt after BOS (xorshift, seed per prompt).
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (p as u64 + 1);
        let mut prompt = vec![128000u32];
        for _ in 0..7 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            prompt.push((x % n_vocab.min(128000)) as u32);
        }
        let cap = prompt.len() + steps + 1;
        let mut sb = base.new_session(cap);
        let mut sq: Vec<_> = heads.iter().map(|(_, m)| m.new_session(cap)).collect();
        let mut feed = prompt;
        for _ in 0..=steps {
            let lb = base.forward(&mut sb, &feed).expect("forward");
            let pb = softmax_f64(&lb);
            let top = argmax(&lb);
            for (i, (_, m)) in heads.iter().enumerate() {
                let lq = m.forward(&mut sq[i], &feed).expect("forward");
                kls[i].push(kl(&pb, &softmax_f64(&lq)));
                agree[i] += (argmax(&lq) == top) as usize;
            }
            positions += 1;
            feed = vec![top];
        }
    }
    for (i, (h, _)) in heads.iter().enumerate() {
        let v = &mut kls[i];
        v.sort_by(|a, b| a.total_cmp(b));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let pct = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "{h:?}: KL(f16 || q) over {positions} positions: mean {mean:.5}, median {:.5}, \
             p99 {:.5}, max {:.5} nats; argmax agrees {:.1} %",
            pct(0.5),
            pct(0.99),
            v[v.len() - 1],
            100.0 * agree[i] as f64 / positions as f64
        );
    }
}
