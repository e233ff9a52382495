//! The BitNet embedding model (Qwen3 backbone with per-projection norms) on a synthetic
//! `embed-tiny` file: unit vectors, batching and chunking that change nothing, the input
//! made from text, and the refusals. The numbers themselves are checked against the numpy
//! reference in tests/test_reference_parity.py.

mod common;

use std::sync::OnceLock;

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::{EngineError, GenerateParams, Interrupt, Model};

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::from_backing(
            common::fixture_bytes("embed-tiny", GgmlType::I2S, 5),
            &Default::default(),
        )
        .expect("embedding model")
    })
}

fn embed(inputs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    model().embed(inputs, &Interrupt::new()).expect("embed")
}

#[test]
fn embeddings_are_unit_vectors_of_the_model_width() {
    let m = model();
    assert!(m.is_embedding());
    assert_eq!(m.embedding_dim(), Some(256));
    let ids = m.embedding_input("The capital of France is Paris.");
    // Qwen2: no BOS; the end-of-text token last (its state is pooled).
    assert_eq!(*ids.last().unwrap(), 151643);
    assert_ne!(ids[0], 151643);
    let e = &embed(std::slice::from_ref(&ids))[0];
    assert_eq!(e.len(), 256);
    let norm: f64 = e
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    // Different texts, different vectors; the same text, the same vector.
    let other = &embed(&[m.embedding_input("A recipe for bread.")])[0];
    assert_ne!(e, other);
    assert_eq!(e, &embed(&[ids])[0]);
}

#[test]
fn batching_and_chunking_change_nothing() {
    let m = model();
    let texts = [
        "short",
        "a somewhat longer sentence about embeddings",
        "12345 67890",
    ];
    let inputs: Vec<Vec<u32>> = texts.iter().map(|t| m.embedding_input(t)).collect();
    let together = embed(&inputs);
    for (input, e) in inputs.iter().zip(&together) {
        assert_eq!(&embed(std::slice::from_ref(input))[0], e);
    }
    // An input longer than one pass reads (512 tokens) is read in chunks: the same vector as
    // one forward pass over all of it.
    let long: Vec<u32> = (0..700u32)
        .map(|i| 1000 + (i * 37) % 5000)
        .chain([151643])
        .collect();
    let chunked = &embed(std::slice::from_ref(&long))[0];
    let mut s = m.new_session(long.len());
    let whole = m.forward(&mut s, &long).expect("forward");
    assert_eq!(chunked, &whole);
}

#[test]
fn bad_inputs_are_refused_naming_the_input() {
    let m = model();
    let ok = m.embedding_input("fine");
    type Case = (Vec<Vec<u32>>, usize, fn(&EngineError) -> bool);
    let cases: [Case; 3] = [
        (vec![ok.clone(), vec![]], 1, |e| {
            matches!(e, EngineError::EmptyPrompt)
        }),
        (vec![vec![999_999], ok.clone()], 0, |e| {
            matches!(e, EngineError::TokenOutOfRange { id: 999_999, .. })
        }),
        (vec![ok.clone(), ok.clone(), vec![5; 5000]], 2, |e| {
            matches!(e, EngineError::ContextOverflow { .. })
        }),
    ];
    for (inputs, index, kind) in cases {
        let e = m.embed(&inputs, &Interrupt::new()).unwrap_err();
        assert_eq!(e.index, Some(index), "{e}");
        assert!(kind(&e.error), "{e}");
    }
    // An embedding model does not generate, and a generative one does not embed.
    assert!(
        m.check_request(
            &ok,
            &GenerateParams {
                max_tokens: 1,
                ..Default::default()
            }
        )
        .is_err()
    );
    let chat = Model::from_backing(
        common::fixture_bytes("tiny", GgmlType::I2S, 1),
        &Default::default(),
    )
    .expect("chat model");
    assert!(chat.embed(&[vec![1, 2]], &Interrupt::new()).is_err());
    assert_eq!(chat.embedding_dim(), None);
}
