//! Runs one prefill of N pseudo-random tokens (for profiling):
//! `cargo run --release -p bitnet-engine --example prefill -- MODEL [N] [REPS]`.
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("MODEL");
    let n: usize = args.next().map_or(128, |s| s.parse().expect("N"));
    let reps: usize = args.next().map_or(3, |s| s.parse().expect("REPS"));
    // Threads: BITNET_THREADS, else every core.
    let opts = bitnet_engine::LoadOptions::default();
    let model = bitnet_engine::Model::load(path.as_ref(), &opts).expect("load");
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 11) % 128_000).collect();
    for _ in 0..reps {
        let mut s = model.new_session(n);
        let t = Instant::now();
        model.forward(&mut s, &ids).expect("forward");
        println!("pp{n}: {:.1} tok/s", n as f64 / t.elapsed().as_secs_f64());
    }
}
