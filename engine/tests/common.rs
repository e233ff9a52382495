//! Shared helpers for the engine's integration tests.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use bitnet_engine::Tokenizer;
use bitnet_engine::fixture::{self, FixtureSpec};
use bitnet_engine::gguf::GgmlType;
use bitnet_engine::tokenizer::TokenizerParts;

pub fn tokenizer_parts() -> &'static TokenizerParts {
    static P: OnceLock<TokenizerParts> = OnceLock::new();
    P.get_or_init(|| fixture::llama3_tokenizer_parts().expect("shipped tokenizer"))
}

pub fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_parts(tokenizer_parts().clone()).expect("tokenizer"))
}

pub fn default_split_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let mut p = tokenizer_parts().clone();
        p.pre = bitnet_engine::tokenizer::PreTokenizer::LlamaCppDefault;
        Tokenizer::from_parts(p).expect("tokenizer")
    })
}

/// A synthetic model's bytes, in memory (an embedding preset gets the Qwen2 tokenizer).
pub fn fixture_bytes(preset: &str, ty: GgmlType, seed: u64) -> Arc<Vec<u8>> {
    let preset = fixture::preset(preset).expect("preset");
    let spec = FixtureSpec {
        preset,
        ty,
        seed,
        arch: "bitnet-b1.58".into(),
    };
    let mut buf = Vec::new();
    let tok = if preset.embedding {
        qwen2_parts()
    } else {
        tokenizer_parts()
    };
    fixture::write_fixture(&spec, tok, &mut buf).expect("fixture");
    Arc::new(buf)
}

pub fn qwen2_parts() -> &'static TokenizerParts {
    static P: OnceLock<TokenizerParts> = OnceLock::new();
    P.get_or_init(|| fixture::qwen2_tokenizer_parts().expect("shipped Qwen2 vocabulary"))
}

/// A synthetic model with a tiny vocabulary (the 256 byte tokens + 4 specials), small
/// enough to corrupt at every header byte.
pub fn mini_vocab_parts() -> TokenizerParts {
    let full = tokenizer_parts();
    let mut tokens: Vec<String> = full.tokens.iter().take(256).map(str::to_owned).collect();
    let mut types = vec![1; 256];
    for s in [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|x|>",
        "<|eot_id|>",
    ] {
        tokens.push(s.into());
        types.push(3);
    }
    TokenizerParts {
        tokens: tokens.iter().collect(),
        token_types: types,
        merges: Default::default(),
        bos: 256,
        eos: 257,
        eot: Some(259),
        add_bos: true,
        pre: Default::default(),
    }
}

/// A copy of a GGUF file with every metadata value passed through `f` (tensors unchanged).
pub fn rewrite_metadata(
    bytes: &Arc<Vec<u8>>,
    f: impl Fn(&str, &bitnet_engine::gguf::Value) -> bitnet_engine::gguf::Value,
) -> Arc<Vec<u8>> {
    let src = bitnet_engine::gguf::GgufFile::from_backing(bytes.clone()).expect("parse");
    let mut w = bitnet_engine::gguf::GgufWriter::new();
    for (k, v) in &src.metadata {
        w.add(k.clone(), f(k, v));
    }
    for t in &src.tensors {
        w.add_tensor(t.name.clone(), &t.dims, t.ty);
    }
    let mut out = Vec::new();
    w.write_header(&mut out).expect("header");
    for t in &src.tensors {
        w.write_tensor(&mut out, src.tensor_data(t))
            .expect("tensor");
    }
    Arc::new(out)
}

/// Greedy sampling of exactly `max_tokens` tokens (no stop ids, no stop strings).
pub fn greedy(max_tokens: usize) -> bitnet_engine::GenerateParams {
    bitnet_engine::GenerateParams {
        max_tokens,
        sampling: bitnet_engine::SamplingParams::greedy(),
        stop_ids: Some(vec![]),
        stop_strings: vec![],
        ..Default::default()
    }
}
