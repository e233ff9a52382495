//! The tokenizer against llama.cpp's Llama 3 test vectors, round trips, and special text.

mod common;

use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    // llama.cpp's vectors, copied into the repository.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Every vector of llama.cpp's `NAME.inp` / `NAME.out` (inputs separated by
/// `__ggml_vocab_test__`, expected ids a line each), encoded without BOS; decoding gives the
/// text back.
fn check_vectors(tok: &bitnet_engine::Tokenizer, name: &str) {
    let dir = fixture_dir();
    let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap();
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<&str> = out.lines().collect();
    // The .inp file ends with a separator, leaving an empty last element.
    let inputs = &inputs[..expected.len()];
    let mut failures = Vec::new();
    for (text, want) in inputs.iter().zip(&expected) {
        let want: Vec<u32> = want
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let got = tok.encode(text, false);
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(tok.decode(&got), *text, "round trip");
    }
    assert!(expected.len() > 20, "too few vectors read");
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        expected.len(),
        failures.join("\n")
    );
    eprintln!("{} {name} tokenizer vectors pass", expected.len());
}

#[test]
fn every_llama_bpe_vector_matches() {
    check_vectors(common::tokenizer(), "llama-bpe");
}

/// Qwen2 / Qwen3 (the embedding model's tokenizer): llama.cpp's `ggml-vocab-qwen2.gguf`
/// vectors against that very file (shipped gzip, read as a GGUF without tensors).
#[test]
fn every_qwen2_vector_matches() {
    let bytes = bitnet_engine::fixture::qwen2_vocab_gguf().expect("shipped");
    let g = bitnet_engine::gguf::GgufFile::from_backing(std::sync::Arc::new(bytes)).expect("gguf");
    let tok = bitnet_engine::Tokenizer::from_gguf(&g).expect("tokenizer");
    assert!(!tok.add_bos, "Qwen2 vocabularies start without BOS");
    assert_eq!(tok.eos, 151643);
    check_vectors(&tok, "qwen2");
    // Digits one by one (Llama 3 groups three).
    assert_eq!(tok.encode("12345", false).len(), 5);
}

#[test]
fn special_token_text_in_user_input_stays_plain_text() {
    let tok = common::tokenizer();
    let ids = tok.encode("<|begin_of_text|>hi<|eot_id|>", false);
    assert!(ids.iter().all(|&i| i < 128000), "special id in {ids:?}");
    assert_eq!(tok.decode(&ids), "<|begin_of_text|>hi<|eot_id|>");
}

#[test]
fn chat_format_is_role_colon_content_eot_then_assistant() {
    let tok = common::tokenizer();
    let msgs = [bitnet_engine::ChatMessage {
        role: "user".into(),
        content: "Hi <|eot_id|>".into(),
    }];
    let ids = tok.encode_chat(&msgs);
    assert_eq!(ids[0], 128000);
    assert_eq!(
        ids.iter().filter(|&&i| i == 128009).count(),
        1,
        "only the real terminator is eot"
    );
    let mut want = vec![128000];
    want.extend(tok.encode("User: ", false));
    want.extend(tok.encode("Hi <|eot_id|>", false));
    want.push(128009);
    want.extend(tok.encode("Assistant: ", false));
    assert_eq!(ids, want);
}

#[test]
fn a_conversation_continued_turn_by_turn_is_the_whole_chat_encoded_at_once() {
    let tok = common::tokenizer();
    let msg = |role: &str, content: &str| bitnet_engine::ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let whole = [
        msg("system", "Be brief."),
        msg("user", "Hello there"),
        msg("assistant", "Hi! How can I help?"),
        msg("user", "Count to 3."),
    ];
    // What `bitnet chat` does: the first turn, then the answer's ids and eot, then the next.
    let mut ids = tok.encode_chat(&whole[..2]);
    ids.extend(tok.encode(&whole[2].content, false));
    ids.push(tok.eot);
    tok.append_chat(&mut ids, &whole[3..]);
    assert_eq!(ids, tok.encode_chat(&whole));
}

#[test]
fn streaming_decoder_never_splits_a_character() {
    let tok = common::tokenizer();
    let text = "naïve 日本語 🎉🎉 ok";
    let ids = tok.encode(text, false);
    let mut dec = bitnet_engine::tokenizer::StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = dec.push(tok, id);
        assert!(
            !piece.contains('\u{FFFD}'),
            "replacement char in piece {piece:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
}

mod props {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn decode_encode_round_trips(s in "\\PC{0,40}") {
            let tok = super::common::tokenizer();
            prop_assert_eq!(tok.decode(&tok.encode(&s, false)), s);
        }

        #[test]
        fn decode_encode_round_trips_any_unicode(s in any::<String>()) {
            let tok = super::common::tokenizer();
            prop_assert_eq!(tok.decode(&tok.encode(&s, false)), s.clone());
            let d = super::common::default_split_tokenizer();
            prop_assert_eq!(d.decode(&d.encode(&s, false)), s);
        }
    }
}
