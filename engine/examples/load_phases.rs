//! Times the phases of loading a model: `cargo run --release --example load_phases -- FILE`.
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("FILE");
    for _ in 0..3 {
        let t = Instant::now();
        let g = bitnet_engine::gguf::GgufFile::open(path.as_ref()).unwrap();
        let t_parse = t.elapsed();
        let t2 = Instant::now();
        let tok = bitnet_engine::Tokenizer::from_gguf(&g).unwrap();
        let t_tok = t2.elapsed();
        let t3 = Instant::now();
        let m = bitnet_engine::Model::from_gguf(g, &Default::default()).unwrap();
        let t_model = t3.elapsed();
        println!(
            "parse {:?} tokenizer {:?} model(incl tokenizer) {:?} total {:?}",
            t_parse,
            t_tok,
            t_model,
            t.elapsed()
        );
        drop((tok, m));
    }
}
