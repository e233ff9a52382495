//! Fuzzes the GGUF reader and, when a file parses, the model and tokenizer loaders on it:
//! any input must give `Ok` or a typed `Err`, never a panic or an out-of-bounds read.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = bitnet_engine::gguf::GgufFile::from_backing(Arc::new(data.to_vec())) {
        for t in &g.tensors {
            let _ = g.tensor_data(t).len();
        }
        let _ = bitnet_engine::Tokenizer::from_gguf(&g);
        let _ = bitnet_engine::Model::from_gguf(g, &Default::default());
    }
});
