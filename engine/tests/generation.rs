//! Generation on a synthetic `tiny` model: determinism, seeds, stops, cancellation, limits,
//! and incremental decoding against a single prefill.

mod common;

use common::greedy;

use std::ops::ControlFlow;
use std::sync::OnceLock;

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::{EngineError, GenerateParams, Interrupt, Model, SamplingParams, StopReason};

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::from_backing(
            common::fixture_bytes("tiny", GgmlType::I2S, 3),
            &Default::default(),
        )
        .expect("model")
    })
}

fn run(p: &[u32], params: &GenerateParams) -> bitnet_engine::GenerateOutput {
    model()
        .generate(p, params, &Interrupt::new(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("generate")
}

const PROMPT: [u32; 6] = [128000, 791, 6864, 315, 9822, 374];

#[test]
fn greedy_is_deterministic_and_streams_the_same_text() {
    let a = run(&PROMPT, &greedy(12));
    let mut streamed = String::new();
    let mut ids = Vec::new();
    let b = model()
        .generate(&PROMPT, &greedy(12), &Interrupt::new(), &mut |p| {
            streamed.push_str(p.text);
            ids.push(p.token_id);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_eq!(a.token_ids.len(), 12);
    assert_eq!(a.stop_reason, StopReason::Length);
    assert_eq!(streamed, b.text);
    assert_eq!(b.text, model().tokenizer().decode(&b.token_ids));
}

#[test]
fn seeds_reproduce_sampling() {
    let p = |seed| GenerateParams {
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 1.2,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..Default::default()
        },
        stop_ids: Some(vec![]),
        stop_strings: vec![],
        ..Default::default()
    };
    assert_eq!(run(&PROMPT, &p(5)).token_ids, run(&PROMPT, &p(5)).token_ids);
    assert_ne!(run(&PROMPT, &p(5)).token_ids, run(&PROMPT, &p(6)).token_ids);
}

#[test]
fn stop_ids_end_generation_without_emitting_the_stop() {
    let first = run(&PROMPT, &greedy(16)).token_ids;
    // The last position whose id has not appeared before it (0 if the model repeats one token).
    let j = (0..first.len())
        .rev()
        .find(|&j| !first[..j].contains(&first[j]))
        .unwrap_or(0);
    let params = GenerateParams {
        stop_ids: Some(vec![first[j]]),
        ..greedy(16)
    };
    let out = run(&PROMPT, &params);
    assert_eq!(out.stop_reason, StopReason::Stop);
    assert_eq!(out.token_ids, first[..j], "first {first:?} j {j}");
}

#[test]
fn stop_strings_cut_the_text() {
    let full = run(&PROMPT, &greedy(16));
    let text = full.text.clone();
    // A stop string starting in the middle of the text.
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= text.len() / 2)
        .unwrap();
    let stop: String = text[cut..].chars().take(3).collect();
    let first_hit = text.find(&stop).unwrap();
    let out = run(
        &PROMPT,
        &GenerateParams {
            stop_strings: vec![stop.clone()],
            ..greedy(16)
        },
    );
    assert_eq!(out.stop_reason, StopReason::Stop);
    assert_eq!(out.text, text[..first_hit], "stop {stop:?}");
}

#[test]
fn cancellation_stops_after_the_callback_says_so() {
    let mut seen = 0;
    let out = model()
        .generate(&PROMPT, &greedy(20), &Interrupt::new(), &mut |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    assert_eq!(out.token_ids.len(), 3);
}

#[test]
fn limits_give_clear_errors() {
    let n_ctx = model().n_ctx();
    match model().generate(&PROMPT, &greedy(n_ctx), &Interrupt::new(), &mut |_| {
        ControlFlow::Continue(())
    }) {
        Err(e @ EngineError::ContextOverflow { .. }) => {
            assert!(e.to_string().contains("context length"))
        }
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert!(matches!(
        model().generate(&[], &greedy(4), &Interrupt::new(), &mut |_| {
            ControlFlow::Continue(())
        }),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(matches!(
        model().generate(
            &[128000, 999_999],
            &greedy(4),
            &Interrupt::new(),
            &mut |_| { ControlFlow::Continue(()) }
        ),
        Err(EngineError::TokenOutOfRange { id: 999_999, .. })
    ));
}

#[test]
fn incremental_decode_matches_one_prefill() {
    let m = model();
    let mut whole = m.new_session(PROMPT.len());
    let a = m.forward(&mut whole, &PROMPT).unwrap();
    let mut step = m.new_session(PROMPT.len());
    m.forward(&mut step, &PROMPT[..3]).unwrap();
    m.forward(&mut step, &PROMPT[3..5]).unwrap();
    let b = m.forward(&mut step, &PROMPT[5..]).unwrap();
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-4 * std, "max |diff| {max} vs std {std}");
}

#[test]
fn same_weights_in_every_ternary_type_give_identical_logits() {
    let logits = |ty| {
        let m =
            Model::from_backing(common::fixture_bytes("tiny", ty, 9), &Default::default()).unwrap();
        let mut s = m.new_session(PROMPT.len());
        m.forward(&mut s, &PROMPT).unwrap()
    };
    let i2s = logits(GgmlType::I2S);
    for ty in [GgmlType::Tq2_0, GgmlType::Tq1_0, GgmlType::F16] {
        let other = logits(ty);
        assert!(
            i2s.iter()
                .zip(&other)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty} differs from I2_S"
        );
    }
}

#[test]
fn an_interrupt_stops_the_prompt_between_layers_and_decoding_at_the_next_token() {
    let cancelled = Interrupt::new();
    cancelled.cancel();
    let mut pieces = 0;
    let out = model()
        .generate(&PROMPT, &greedy(8), &cancelled, &mut |_| {
            pieces += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    assert_eq!((out.completion_tokens, pieces), (0, 0));

    // A deadline already past: the prompt pass stops before its first layer.
    let past = Interrupt::new().with_deadline(Some(std::time::Instant::now()));
    let out = model()
        .generate(&PROMPT, &greedy(8), &past, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Deadline);
    assert_eq!(out.completion_tokens, 0);

    // Cancelled from the callback's side after two tokens: the flag ends it at the next token.
    let flag = Interrupt::new();
    let mut seen = 0;
    let out = model()
        .generate(&PROMPT, &greedy(8), &flag, &mut |_| {
            seen += 1;
            if seen == 2 {
                flag.cancel();
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Cancelled);
    assert_eq!(out.completion_tokens, 2);

    // And a forward pass alone reports the interruption as an error.
    let mut s = model().new_session(PROMPT.len());
    let mut logits = vec![0f32; model().n_vocab()];
    assert!(matches!(
        model().forward_interruptible(&mut s, &PROMPT, &mut logits, &cancelled),
        Err(EngineError::Interrupted(StopReason::Cancelled))
    ));
}

#[test]
fn default_stop_ids_come_from_the_files_eos_and_eot() {
    let m = model();
    let t = m.tokenizer();
    assert_eq!(m.end_of_generation_ids(), vec![t.eos, t.eot]);
    // A file whose eos is another id stops there by default.
    let first = run(&PROMPT, &greedy(16)).token_ids;
    let j = (0..first.len())
        .rev()
        .find(|&j| !first[..j].contains(&first[j]))
        .unwrap_or(0);
    let bytes =
        common::rewrite_metadata(&common::fixture_bytes("tiny", GgmlType::I2S, 3), |k, v| {
            if k == "tokenizer.ggml.eos_token_id" {
                bitnet_engine::gguf::Value::U32(first[j])
            } else {
                v.clone()
            }
        });
    let other = Model::from_backing(bytes, &Default::default()).unwrap();
    assert_eq!(other.end_of_generation_ids()[0], first[j]);
    let params = GenerateParams {
        stop_ids: None,
        ..greedy(16)
    };
    let out = other
        .generate(&PROMPT, &params, &Interrupt::new(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Stop);
    assert_eq!(out.token_ids, first[..j]);
}

#[test]
fn parameters_that_cannot_be_computed_are_named() {
    let bad = [
        (
            "max_tokens",
            GenerateParams {
                max_tokens: 0,
                ..greedy(1)
            },
        ),
        (
            "stop",
            GenerateParams {
                stop_strings: vec!["x".repeat(bitnet_engine::generate::MAX_STOP_STRING_BYTES + 1)],
                ..greedy(4)
            },
        ),
        (
            "stop",
            GenerateParams {
                stop_strings: vec!["a".into(); bitnet_engine::generate::MAX_STOP_STRINGS + 1],
                ..greedy(4)
            },
        ),
        (
            "repeat_penalty",
            GenerateParams {
                sampling: SamplingParams {
                    repeat_penalty: 0.0,
                    ..SamplingParams::greedy()
                },
                ..greedy(4)
            },
        ),
    ];
    for (name, params) in bad {
        match model().generate(&PROMPT, &params, &Interrupt::new(), &mut |_| {
            ControlFlow::Continue(())
        }) {
            Err(EngineError::InvalidParam { param, .. }) => assert_eq!(param, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}
