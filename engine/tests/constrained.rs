//! Log-probabilities and grammars on a synthetic `tiny` model: the values against the
//! log-softmax of plain forward passes, the same through the batching scheduler, and output
//! that follows its grammar.

mod common;

use common::greedy;

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock, mpsc};

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::grammar::Matcher;
use bitnet_engine::{
    Event, GenerateOutput, GenerateParams, Grammar, Interrupt, Model, SamplingParams, Scheduler,
    SchedulerConfig, StopReason,
};

fn model() -> &'static Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        Arc::new(
            Model::from_backing(
                common::fixture_bytes("tiny", GgmlType::I2S, 3),
                &Default::default(),
            )
            .expect("model"),
        )
    })
}

fn run(p: &[u32], params: &GenerateParams) -> GenerateOutput {
    model()
        .generate(p, params, &Interrupt::new(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("generate")
}

const PROMPT: [u32; 9] = [128000, 791, 6864, 315, 9822, 374, 12366, 13, 578];

/// log-softmax of the logits after `ids`, in f64, from a fresh session (what `bitnet eval`
/// computes).
fn reference(ids: &[u32]) -> Vec<f64> {
    let m = model();
    let mut s = m.new_session(ids.len());
    let logits = m.forward(&mut s, ids).expect("forward");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

fn close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() < 1e-3
}

#[test]
fn generated_logprobs_are_the_models_log_softmax() {
    // Sampled at a high temperature with penalties: the values must still be the raw model's.
    let params = GenerateParams {
        logprobs: Some(5),
        sampling: SamplingParams {
            temperature: 1.5,
            repeat_penalty: 1.3,
            seed: Some(7),
            ..Default::default()
        },
        ..greedy(6)
    };
    let out = run(&PROMPT, &params);
    assert_eq!(out.logprobs.len(), out.token_ids.len());
    let mut ids = PROMPT.to_vec();
    for (lp, &id) in out.logprobs.iter().zip(&out.token_ids) {
        assert_eq!(lp.token_id, id);
        let r = reference(&ids);
        assert!(
            close(lp.logprob, r[id as usize]),
            "{} vs {}",
            lp.logprob,
            r[id as usize]
        );
        assert_eq!(lp.top.len(), 5);
        let mut order: Vec<usize> = (0..r.len()).collect();
        order.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
        for (k, &(t, l)) in lp.top.iter().enumerate() {
            assert!(close(l, r[t as usize]));
            // The k-th most likely (ties within rounding aside).
            assert!((r[order[k]] - r[t as usize]).abs() < 1e-4, "rank {k}");
        }
        ids.push(id);
    }
    // Greedy: the chosen token is the most likely one.
    let g = run(
        &PROMPT,
        &GenerateParams {
            logprobs: Some(1),
            ..greedy(4)
        },
    );
    for lp in &g.logprobs {
        assert_eq!(lp.top[0].0, lp.token_id);
        assert_eq!(lp.top[0].1, lp.logprob);
    }
    // Not asked for: none.
    assert!(run(&PROMPT, &greedy(2)).logprobs.is_empty());
}

#[test]
fn prompt_logprobs_score_every_token_after_the_first() {
    let params = GenerateParams {
        logprobs: Some(2),
        prompt_logprobs: true,
        ..greedy(0)
    };
    let out = run(&PROMPT, &params);
    assert_eq!(out.completion_tokens, 0);
    assert_eq!(out.stop_reason, StopReason::Length);
    assert_eq!(out.prompt_logprobs.len(), PROMPT.len() - 1);
    for (j, lp) in out.prompt_logprobs.iter().enumerate() {
        let r = reference(&PROMPT[..j + 1]);
        assert_eq!(lp.token_id, PROMPT[j + 1]);
        assert!(
            close(lp.logprob, r[PROMPT[j + 1] as usize]),
            "position {}",
            j + 1
        );
    }
    // Without prompt scoring, max_tokens 0 stays refused.
    let refused = model().check_request(
        &PROMPT,
        &GenerateParams {
            logprobs: Some(0),
            ..greedy(0)
        },
    );
    assert!(refused.is_err());

    // Through the scheduler, beside another request and in chunks of a long prompt (the
    // prefix cache holds this prompt from a first run: scoring must not take it from there).
    let sched = Scheduler::new(
        model().clone(),
        SchedulerConfig {
            parallel: 2,
            prefill_chunk: 4,
            ..Default::default()
        },
    );
    let long: Vec<u32> = (0..40)
        .map(|i| PROMPT[i % PROMPT.len()] + i as u32)
        .collect();
    let plain = sched
        .generate_blocking(long.clone(), greedy(2), Interrupt::new(), &mut |_, _| {})
        .expect("plain");
    assert_eq!(plain.completion_tokens, 2);
    let (tx, rx) = mpsc::sync_channel(64);
    sched
        .submit(PROMPT.to_vec(), greedy(8), Interrupt::new(), Box::new(tx))
        .expect("submit");
    let scored = sched
        .generate_blocking(
            long.clone(),
            GenerateParams {
                logprobs: Some(0),
                prompt_logprobs: true,
                ..greedy(3)
            },
            Interrupt::new(),
            &mut |_, _| {},
        )
        .expect("scored");
    assert_eq!(scored.cached_prompt_tokens, 0);
    assert_eq!(scored.prompt_logprobs.len(), long.len() - 1);
    for j in [1usize, 5, 16, 17, 38] {
        let r = reference(&long[..j + 1]);
        let lp = &scored.prompt_logprobs[j];
        assert!(
            close(lp.logprob, r[long[j + 1] as usize]),
            "position {}",
            j + 1
        );
    }
    assert_eq!(scored.logprobs.len(), 3);
    // Scoring does not change what is generated.
    assert_eq!(scored.token_ids[..2], plain.token_ids[..]);
    while let Ok(ev) = rx.recv() {
        if let Event::Done(r) = ev {
            r.expect("the other request");
            break;
        }
    }
}

fn follows(g: &Arc<Grammar>, text: &str) -> bool {
    let mut m = Matcher::new(g.clone());
    m.advance(text.as_bytes()) && m.is_complete()
}

#[test]
fn grammar_output_follows_the_grammar() {
    let g = Arc::new(
        Grammar::parse(r##"root ::= "The answer is " ("yes" | "no" | [0-9]{1,3}) ".""##)
            .expect("grammar"),
    );
    for seed in 0..6 {
        let params = GenerateParams {
            grammar: Some(g.clone()),
            max_tokens: 40,
            sampling: SamplingParams {
                seed: Some(seed),
                temperature: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = run(&PROMPT, &params);
        // Complete (nothing can follow the '.'), whether the model chose end of text or
        // the grammar ended it.
        assert_eq!(out.stop_reason, StopReason::Stop, "{:?}", out.text);
        assert!(follows(&g, &out.text), "{:?}", out.text);
    }
}

#[test]
fn json_schema_output_parses_and_streams_the_same() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "n": {"type": "integer"},
            "ok": {"type": "boolean"}
        },
        "required": ["city", "n", "ok"]
    });
    let g = Arc::new(Grammar::from_json_schema(&schema).expect("schema"));
    let params = GenerateParams {
        grammar: Some(g.clone()),
        max_tokens: 120,
        sampling: SamplingParams {
            seed: Some(3),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = model()
        .generate(&PROMPT, &params, &Interrupt::new(), &mut |p| {
            streamed.push_str(p.text);
            ControlFlow::Continue(())
        })
        .expect("generate");
    assert_eq!(streamed, out.text);
    if out.stop_reason == StopReason::Stop {
        let v: serde_json::Value = serde_json::from_str(&out.text).expect(&out.text);
        assert!(
            v["city"].as_str().is_some_and(|c| c.chars().count() <= 12),
            "{v}"
        );
        assert!(v["n"].is_i64() && v["ok"].is_boolean(), "{v}");
    } else {
        // Cut by max_tokens: still a prefix of some instance.
        assert_eq!(out.stop_reason, StopReason::Length);
        let mut m = Matcher::new(g);
        assert!(m.advance(out.text.as_bytes()), "{:?}", out.text);
    }
}

/// Speculative decoding by prompt lookup changes nothing in the output: greedy and seeded
/// sampling, with a grammar, logprobs and stop strings, alone and through the scheduler.
#[test]
fn drafts_never_change_the_output() {
    // A prompt that repeats itself, so that lookups find matches.
    let prompt: Vec<u32> = [128000u32]
        .into_iter()
        .chain((0..6).flat_map(|_| [791u32, 6864, 315, 9822, 374, 12366, 13]))
        .collect();
    let cases = [
        greedy(48),
        GenerateParams {
            sampling: SamplingParams {
                seed: Some(9),
                temperature: 0.7,
                repeat_penalty: 1.1,
                ..Default::default()
            },
            logprobs: Some(2),
            stop_strings: vec!["zzz".into()],
            ..greedy(40)
        },
        GenerateParams {
            grammar: Some(Arc::new(
                Grammar::parse(r#"root ::= ([a-z ]{1,40} "." " "?){1,8}"#).expect("grammar"),
            )),
            sampling: SamplingParams {
                seed: Some(4),
                ..Default::default()
            },
            ..greedy(40)
        },
    ];
    let (mut drafted, mut accepted) = (0, 0);
    for (k, params) in cases.into_iter().enumerate() {
        let plain = run(&prompt, &params);
        let spec_params = GenerateParams {
            draft_max: 8,
            ..params.clone()
        };
        let spec = run(&prompt, &spec_params);
        assert_eq!(spec.token_ids, plain.token_ids, "case {k}");
        assert_eq!(spec.text, plain.text, "case {k}");
        assert_eq!(spec.logprobs, plain.logprobs, "case {k}");
        assert_eq!(spec.stop_reason, plain.stop_reason, "case {k}");
        assert!(spec.draft_accepted <= spec.draft_tokens);
        assert_eq!(plain.draft_tokens, 0);
        drafted += spec.draft_tokens;
        accepted += spec.draft_accepted;
        // Through the scheduler (alone: it drafts there too).
        let sched = Scheduler::new(model().clone(), SchedulerConfig::default());
        let mut streamed = String::new();
        let s = sched
            .generate_blocking(
                prompt.clone(),
                spec_params,
                Interrupt::new(),
                &mut |t, _| streamed.push_str(t),
            )
            .expect("scheduler");
        assert_eq!(s.token_ids, plain.token_ids, "case {k}, scheduler");
        assert_eq!(streamed, plain.text, "case {k}, scheduler");
    }
    assert!(drafted > 0, "the repeated prompt gave drafts");
    assert!(accepted > 0, "and some were right");
}
