//! Times the phases of loading a model, medians of `REPS` (default 15) loads:
//! `cargo run --release --example load_phases -- FILE`.
use std::time::{Duration, Instant};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args().nth(1).expect("FILE");
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    let (mut parse, mut tok, mut model, mut total) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let t = Instant::now();
        let g = bitnet_engine::gguf::GgufFile::open(path.as_ref()).unwrap();
        parse.push(t.elapsed());
        let t2 = Instant::now();
        let tk = bitnet_engine::Tokenizer::from_gguf(&g).unwrap();
        tok.push(t2.elapsed());
        let t3 = Instant::now();
        let m = bitnet_engine::Model::from_gguf(g, &Default::default()).unwrap();
        model.push(t3.elapsed());
        total.push(t.elapsed());
        drop((tk, m));
    }
    println!(
        "medians of {reps}: parse {:?}, tokenizer {:?}, model (includes its own tokenizer) {:?}, total {:?}",
        median(&mut parse),
        median(&mut tok),
        median(&mut model),
        median(&mut total)
    );
}
