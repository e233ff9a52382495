//! Continuous batching on synthetic models: a sequence's output does not depend on the batch
//! it runs in, the chunking of its prompt or the prefix cache; each sequence's client, stops,
//! limits and interrupts act on it alone.

mod common;

use common::greedy;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitnet_engine::gguf::GgmlType;
use bitnet_engine::model::{BatchEntry, LogitRows, StepBuffers};
use bitnet_engine::{
    EngineError, Event, GenerateOutput, GenerateParams, Interrupt, KvPrecision, LoadOptions, Model,
    SamplingParams, Scheduler, SchedulerConfig, StopReason,
};

fn model(ty: GgmlType) -> Arc<Model> {
    model_kv(ty, KvPrecision::F32)
}

fn model_kv(ty: GgmlType, kv: KvPrecision) -> Arc<Model> {
    let opts = LoadOptions {
        threads: Some(2),
        kv,
        ..Default::default()
    };
    Arc::new(Model::from_backing(common::fixture_bytes("tiny", ty, 11), &opts).expect("model"))
}

/// Prompts of different lengths (one a single token, one longer than a prefill chunk).
fn prompts(m: &Model) -> Vec<Vec<u32>> {
    let t = m.tokenizer();
    vec![
        vec![128000],
        t.encode("The capital of France is", true),
        t.encode(
            "Once upon a time, in a land far away, there lived a king who had three daughters \
             and a very large library full of old maps.",
            true,
        ),
        t.encode("1, 2, 3, 4, 5,", true),
    ]
}

fn alone(m: &Model, prompt: &[u32], params: &GenerateParams) -> GenerateOutput {
    m.generate(prompt, params, &Interrupt::new(), &mut |_| {
        ControlFlow::Continue(())
    })
    .expect("generate")
}

/// Submits every prompt at once and collects each one's streamed text and result.
fn together(
    s: &Scheduler,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
) -> Vec<(String, GenerateOutput)> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = mpsc::sync_channel(1024);
            s.submit(p.clone(), params.clone(), Interrupt::new(), Box::new(tx))
                .expect("submit");
            rx
        })
        .collect();
    rxs.into_iter().map(collect).collect()
}

fn collect(rx: mpsc::Receiver<Event>) -> (String, GenerateOutput) {
    let mut text = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).expect("event") {
            Event::Token { text: t, .. } => text.push_str(&t),
            Event::Done(r) => return (text, r.expect("generation")),
        }
    }
}

fn scheduler(m: &Arc<Model>, parallel: usize, chunk: usize, prefix: usize) -> Scheduler {
    Scheduler::new(
        m.clone(),
        SchedulerConfig {
            parallel,
            prefill_chunk: chunk,
            prefix_cache_bytes: prefix,
            ..Default::default()
        },
    )
}

#[test]
fn logits_are_bit_identical_alone_and_inside_any_batch() {
    let kvs = [KvPrecision::F32, KvPrecision::F16];
    for (ty, kv) in [GgmlType::I2S, GgmlType::Tq2_0, GgmlType::Tq1_0]
        .into_iter()
        .flat_map(|t| kvs.map(|kv| (t, kv)))
    {
        let m = model_kv(ty, kv);
        let ps = prompts(&m);
        let n_vocab = m.n_vocab();
        let solo: Vec<Vec<f32>> = ps
            .iter()
            .map(|p| {
                let mut s = m.new_session(p.len());
                m.forward(&mut s, p).expect("forward")
            })
            .collect();
        // Every prompt in one step, then again in chunks of 3 tokens mixed together.
        let mut caches: Vec<_> = ps.iter().map(|p| m.new_cache(p.len())).collect();
        let mut buffers = StepBuffers::default();
        let mut logits = vec![0f32; ps.len() * n_vocab];
        let mut batch: Vec<BatchEntry<'_>> = caches
            .iter_mut()
            .zip(&ps)
            .map(|(cache, p)| BatchEntry {
                cache,
                tokens: p,
                logits: LogitRows::Last,
            })
            .collect();
        m.forward_batch(&mut batch, &mut buffers, &mut logits, &Interrupt::new())
            .expect("batch");
        for (i, want) in solo.iter().enumerate() {
            let got = &logits[i * n_vocab..(i + 1) * n_vocab];
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?} {kv:?}: prompt {i} differs inside a batch"
            );
        }
        let mut caches: Vec<_> = ps.iter().map(|p| m.new_cache(p.len())).collect();
        let mut last = vec![Vec::new(); ps.len()];
        while caches.iter().zip(&ps).any(|(c, p)| c.len() < p.len()) {
            let mut batch = Vec::new();
            let mut who = Vec::new();
            for (i, (c, p)) in caches.iter_mut().zip(&ps).enumerate() {
                let at = c.len();
                if at < p.len() {
                    let end = (at + 3).min(p.len());
                    who.push((i, end == p.len()));
                    batch.push(BatchEntry {
                        cache: c,
                        tokens: &p[at..end],
                        logits: LogitRows::last_if(end == p.len()),
                    });
                }
            }
            let wanted = who.iter().filter(|w| w.1).count();
            let mut logits = vec![0f32; wanted * n_vocab];
            m.forward_batch(&mut batch, &mut buffers, &mut logits, &Interrupt::new())
                .expect("chunk");
            let mut j = 0;
            for (i, done) in who {
                if done {
                    last[i] = logits[j * n_vocab..(j + 1) * n_vocab].to_vec();
                    j += 1;
                }
            }
        }
        for (i, want) in solo.iter().enumerate() {
            assert!(
                last[i]
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty:?} {kv:?}: prompt {i} differs when read in chunks"
            );
        }
    }
}

#[test]
fn greedy_output_is_the_same_alone_in_any_batch_and_with_any_chunking() {
    let m = model(GgmlType::I2S);
    let ps = prompts(&m);
    let params = greedy(24);
    let want: Vec<GenerateOutput> = ps.iter().map(|p| alone(&m, p, &params)).collect();
    for (parallel, chunk) in [(4, 64), (4, 3), (2, 5), (3, 1)] {
        let s = scheduler(&m, parallel, chunk, 0);
        let got = together(&s, &ps, &params);
        for (i, ((text, out), w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                out.token_ids, w.token_ids,
                "prompt {i}, {parallel} slots, chunks of {chunk}"
            );
            assert_eq!(&out.text, &w.text);
            assert_eq!(text, &w.text, "streamed text is the result's text");
            assert_eq!(out.stop_reason, StopReason::Length);
        }
        let st = s.stats();
        assert_eq!(st.generated_tokens, 4 * 24);
        assert!(
            st.steps < 4 * 24,
            "{} steps for 96 tokens: sequences were not batched",
            st.steps
        );
    }
}

#[test]
fn stop_strings_and_ids_end_each_sequence_as_they_do_alone() {
    let m = model(GgmlType::Tq2_0);
    let ps = prompts(&m);
    // Stops taken from each prompt's own greedy text so that they do hit.
    let free = greedy(30);
    let texts: Vec<GenerateOutput> = ps.iter().map(|p| alone(&m, p, &free)).collect();
    let s = scheduler(&m, 4, 4, 0);
    for (i, p) in ps.iter().enumerate() {
        let chars: Vec<char> = texts[i].text.chars().collect();
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let mut params = free.clone();
        params.stop_strings = vec![stop];
        params.stop_ids = Some(vec![texts[(i + 1) % 4].token_ids[5]]);
        let want = alone(&m, p, &params);
        // Run it beside the others so that it shares steps.
        let mut all = ps.clone();
        all[i] = p.clone();
        let rxs: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(j, q)| {
                let (tx, rx) = mpsc::sync_channel(1024);
                let pr = if j == i { params.clone() } else { free.clone() };
                s.submit(q.clone(), pr, Interrupt::new(), Box::new(tx))
                    .unwrap();
                rx
            })
            .collect();
        let got: Vec<_> = rxs.into_iter().map(collect).collect();
        assert_eq!(got[i].1.token_ids, want.token_ids, "prompt {i}");
        assert_eq!(got[i].1.text, want.text);
        assert_eq!(got[i].0, want.text);
        assert_eq!(got[i].1.stop_reason, want.stop_reason);
        assert_eq!(want.stop_reason, StopReason::Stop);
    }
}

#[test]
fn a_shared_prefix_is_reused_and_gives_the_same_output() {
    for kv in [KvPrecision::F32, KvPrecision::F16] {
        shared_prefix_with(kv);
    }
}

fn shared_prefix_with(kv: KvPrecision) {
    let m = model_kv(GgmlType::I2S, kv);
    let t = m.tokenizer();
    let system = "You are a helpful assistant who answers in one short sentence. ".repeat(4);
    let a = t.encode(&format!("{system}What is the capital of France?"), true);
    let b = t.encode(&format!("{system}Name a large river."), true);
    let params = greedy(12);
    let want_a = alone(&m, &a, &params);
    let want_b = alone(&m, &b, &params);
    let s = scheduler(&m, 2, 16, 64 << 20);
    let (_, got_a) = together(&s, std::slice::from_ref(&a), &params).remove(0);
    assert_eq!(got_a.cached_prompt_tokens, 0);
    let (_, got_b) = together(&s, std::slice::from_ref(&b), &params).remove(0);
    assert_eq!(got_a.token_ids, want_a.token_ids);
    assert_eq!(
        got_b.token_ids, want_b.token_ids,
        "output from the cached prefix"
    );
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(shared > 40, "prompts share {shared} tokens");
    assert_eq!(got_b.cached_prompt_tokens, shared);
    // The same request again: everything but its last prompt token comes from the cache
    // (the cached entry holds A's prompt and the tokens generated after it).
    let (_, again) = together(&s, std::slice::from_ref(&a), &params).remove(0);
    assert_eq!(again.token_ids, want_a.token_ids);
    assert_eq!(again.cached_prompt_tokens, a.len() - 1);
    // The next turn of a conversation: prompt A, its answer, and more.
    let mut turn = a.clone();
    turn.extend(&want_a.token_ids);
    turn.extend(t.encode(" And of Spain?", false));
    let want_turn = alone(&m, &turn, &params);
    let (_, got_turn) = together(&s, std::slice::from_ref(&turn), &params).remove(0);
    assert_eq!(got_turn.token_ids, want_turn.token_ids);
    assert!(got_turn.cached_prompt_tokens >= a.len() + want_a.token_ids.len() - 1);
    let st = s.stats();
    assert_eq!(st.prefix_hits, 3);
    assert_eq!(st.prefix_misses, 1);
    assert!(st.prefix_entries >= 1 && st.prefix_bytes > 0);
    // With the cache off nothing is reused.
    let off = scheduler(&m, 2, 16, 0);
    let _ = together(&off, std::slice::from_ref(&a), &params);
    let (_, cold) = together(&off, std::slice::from_ref(&b), &params).remove(0);
    assert_eq!(cold.cached_prompt_tokens, 0);
    assert_eq!(cold.token_ids, want_b.token_ids);
}

#[test]
fn a_client_that_leaves_or_stalls_loses_its_slot_without_slowing_the_others() {
    let m = model(GgmlType::I2S);
    let ps = prompts(&m);
    let s = Scheduler::new(
        m.clone(),
        SchedulerConfig {
            parallel: 3,
            prefill_chunk: 8,
            stall: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let long = greedy(3000);
    // Never read: room for two events.
    let (stalled_tx, stalled_rx) = mpsc::sync_channel(2);
    s.submit(
        ps[1].clone(),
        long.clone(),
        Interrupt::new(),
        Box::new(stalled_tx),
    )
    .unwrap();
    // Leaves at once.
    let (gone_tx, gone_rx) = mpsc::sync_channel(2);
    s.submit(
        ps[2].clone(),
        long.clone(),
        Interrupt::new(),
        Box::new(gone_tx),
    )
    .unwrap();
    drop(gone_rx);
    // Reads everything.
    let t0 = Instant::now();
    let (_, out) = together(&s, std::slice::from_ref(&ps[3]), &greedy(40)).remove(0);
    assert_eq!(out.completion_tokens, 40);
    assert_eq!(out.token_ids, alone(&m, &ps[3], &greedy(40)).token_ids);
    assert!(t0.elapsed() < Duration::from_secs(30));
    // The stalled one is cancelled after the stall limit: its slot is free again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.stats().active > 0 {
        assert!(Instant::now() < deadline, "stalled sequence still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It received two tokens, and nothing after.
    let got: Vec<Event> = stalled_rx.try_iter().collect();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| matches!(e, Event::Token { .. })));
}

#[test]
fn interrupts_and_deadlines_end_one_sequence_only() {
    let m = model(GgmlType::I2S);
    let ps = prompts(&m);
    let s = scheduler(&m, 2, 8, 0);
    let cancel = Interrupt::new();
    let (tx, rx) = mpsc::sync_channel(4096);
    s.submit(ps[1].clone(), greedy(3000), cancel.clone(), Box::new(tx))
        .unwrap();
    let (dtx, drx) = mpsc::sync_channel(4096);
    let soon = Interrupt::new().with_deadline(Some(Instant::now() + Duration::from_millis(150)));
    s.submit(ps[2].clone(), greedy(3000), soon, Box::new(dtx))
        .unwrap();
    let (_, other) = together(&s, std::slice::from_ref(&ps[3]), &greedy(20)).remove(0);
    assert_eq!(other.stop_reason, StopReason::Length);
    cancel.cancel();
    let (_, c) = collect(rx);
    assert_eq!(c.stop_reason, StopReason::Cancelled);
    let (text, d) = collect(drx);
    assert_eq!(d.stop_reason, StopReason::Deadline);
    assert!(d.completion_tokens < 3000);
    assert_eq!(text, d.text);
}

#[test]
fn bad_requests_are_refused_at_submission() {
    let m = model(GgmlType::I2S);
    let s = scheduler(&m, 2, 8, 0);
    let submit = |p: Vec<u32>, params: GenerateParams| {
        let (tx, _rx) = mpsc::sync_channel(4);
        s.submit(p, params, Interrupt::new(), Box::new(tx))
    };
    assert!(matches!(
        submit(vec![], greedy(4)),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(matches!(
        submit(vec![u32::MAX], greedy(4)),
        Err(EngineError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        submit(vec![1, 2], greedy(m.n_ctx())),
        Err(EngineError::ContextOverflow { .. })
    ));
    assert!(matches!(
        submit(vec![1, 2], greedy(0)),
        Err(EngineError::InvalidParam {
            param: "max_tokens",
            ..
        })
    ));
    // Nothing was queued: the engine is idle and serves the next request.
    assert_eq!(s.stats().waiting, 0);
    let out = s
        .generate_blocking(
            vec![128000, 791],
            greedy(3),
            Interrupt::new(),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(out.completion_tokens, 3);
}

#[test]
fn waiting_requests_are_served_in_order_within_the_kv_budget() {
    let m = model(GgmlType::I2S);
    let ps = prompts(&m);
    let params = greedy(8);
    // Room for about one sequence at a time: the others wait, then run.
    let one = (ps[2].len() + 8) * m.kv_bytes_per_token();
    let s = Scheduler::new(
        m.clone(),
        SchedulerConfig {
            parallel: 4,
            prefill_chunk: 16,
            kv_budget_bytes: one,
            ..Default::default()
        },
    );
    let want: Vec<_> = ps.iter().map(|p| alone(&m, p, &params).token_ids).collect();
    let got = together(&s, &ps, &params);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g.1.token_ids, w);
    }
    assert_eq!(s.stats().kv_bytes, 0, "caches released");
}

#[test]
fn several_choices_share_one_prompt_pass_and_sample_on_their_own() {
    let m = model(GgmlType::I2S);
    let prompt = prompts(&m)[2].clone();
    let mut params = greedy(10);
    params.sampling = SamplingParams {
        temperature: 0.9,
        seed: Some(42),
        ..SamplingParams::default()
    };
    let s = scheduler(&m, 4, 16, 0);
    let (sinks, rxs): (Vec<_>, Vec<_>) = (0..3)
        .map(|_| {
            let (tx, rx) = mpsc::sync_channel(1024);
            (Box::new(tx) as Box<dyn bitnet_engine::EventSink>, rx)
        })
        .unzip();
    s.submit_choices(prompt.clone(), params.clone(), Interrupt::new(), sinks)
        .unwrap();
    let got: Vec<_> = rxs.into_iter().map(collect).collect();
    // Choice i is what the request alone gives with seed 42 + i.
    for (i, (text, out)) in got.iter().enumerate() {
        let mut p = params.clone();
        p.sampling.seed = Some(42 + i as u64);
        let want = alone(&m, &prompt, &p);
        assert_eq!(out.token_ids, want.token_ids, "choice {i}");
        assert_eq!(text, &want.text);
    }
    assert_ne!(got[0].1.token_ids, got[1].1.token_ids, "choices differ");
    // The prompt was read once for the three.
    assert_eq!(s.stats().prompt_tokens_computed, prompt.len() as u64);
    assert_eq!(s.stats().generated_tokens, 30);
}

#[test]
fn requests_that_leave_while_queued_do_not_stay_in_the_queue() {
    let m = model(GgmlType::I2S);
    let ps = prompts(&m);
    // A stall limit past the test's 10 s: the running stream's client reads nothing, and with
    // the default 5 s the scheduler dropped it as stalled when the whole suite's load made
    // the queue take that long to drain (seen once).
    let s = Scheduler::new(
        m.clone(),
        SchedulerConfig {
            parallel: 1,
            prefill_chunk: 16,
            stall: Duration::from_secs(60),
            ..Default::default()
        },
    );
    // One long generation holds the only slot (its client reads nothing yet: it waits).
    let (tx, rx) = mpsc::sync_channel(1);
    let running = Interrupt::new();
    s.submit(ps[1].clone(), greedy(3000), running.clone(), Box::new(tx))
        .unwrap();
    // Fifty requests whose clients leave while they wait (the API cancels a departed
    // client's interrupt, and its channel closes).
    for _ in 0..50 {
        let (tx, rx) = mpsc::sync_channel(4);
        let gone = Interrupt::new();
        s.submit(ps[2].clone(), greedy(8), gone.clone(), Box::new(tx))
            .unwrap();
        gone.cancel();
        drop(rx);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stats().waiting > 0 {
        assert!(
            Instant::now() < deadline,
            "{} still queued",
            s.stats().waiting
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.stats().active, 1, "the running one is untouched");
    running.cancel();
    let (_, out) = collect(rx);
    assert_eq!(out.stop_reason, StopReason::Cancelled);
}

/// An f16 KV cache halves the cache's memory, and its logits stay close to the f32 cache's
/// (each key and value rounded to f16) without being the same numbers.
#[test]
fn an_f16_kv_cache_is_half_the_memory_and_close() {
    let (a, b) = (
        model(GgmlType::I2S),
        model_kv(GgmlType::I2S, KvPrecision::F16),
    );
    assert_eq!(2 * b.kv_bytes_per_token(), a.kv_bytes_per_token());
    assert_eq!(2 * b.new_cache(40).bytes(), a.new_cache(40).bytes());
    // What the scheduler budgets is what a cache holds: whole key blocks of 16 positions.
    for (m, capacity) in [(&a, 1), (&a, 16), (&a, 40), (&b, 17)] {
        let bytes = m.new_cache(capacity).bytes();
        assert_eq!(m.kv_cache_bytes(capacity), bytes);
        assert_eq!(
            bytes,
            capacity.next_multiple_of(16) * m.kv_bytes_per_token()
        );
    }
    let p = &prompts(&a)[2];
    let logits = |m: &Model| {
        let mut s = m.new_session(p.len());
        m.forward(&mut s, p).expect("forward")
    };
    let (x, y) = (logits(&a), logits(&b));
    assert!(
        x.iter().zip(&y).any(|(u, v)| u != v),
        "f16 rounding changes nothing?"
    );
    let scale = x.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let diff = x
        .iter()
        .zip(&y)
        .map(|(u, v)| (u - v).abs())
        .fold(0f32, f32::max);
    assert!(
        diff < 0.05 * scale,
        "max |d| {diff} against max |logit| {scale}"
    );
}
