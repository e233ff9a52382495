//! What a model load refuses up front: headers that would size allocations past what the file
//! holds, weights the kernels cannot run, and a context longer than the configured cap.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use bitnet_engine::gguf::{GgmlType, GgufFile, Value};
use bitnet_engine::{EngineError, GenerateParams, Interrupt, LoadOptions, Model, SamplingParams};

fn validating() -> LoadOptions {
    LoadOptions {
        validate_weights: true,
        ..Default::default()
    }
}

fn load(bytes: Arc<Vec<u8>>, opts: &LoadOptions) -> Result<Model, EngineError> {
    Model::from_backing(bytes, opts)
}

/// `bytes` with the byte at `at` of tensor `name`'s data replaced by `value`.
fn patch_tensor(bytes: &Arc<Vec<u8>>, name: &str, at: usize, value: u8) -> Arc<Vec<u8>> {
    let g = GgufFile::from_backing(bytes.clone()).unwrap();
    let t = g.tensor(name).unwrap();
    let mut out = bytes.as_ref().clone();
    out[t.offset as usize + at] = value;
    Arc::new(out)
}

#[test]
fn a_header_with_a_huge_block_count_is_refused_without_allocating() {
    let base = common::fixture_bytes("tiny", GgmlType::I2S, 1);
    for n in [1u32 << 30, u32::MAX / 2, 1000] {
        let bytes = common::rewrite_metadata(&base, |k, v| {
            if k.ends_with(".block_count") {
                Value::U32(n)
            } else {
                v.clone()
            }
        });
        match load(bytes, &Default::default()) {
            Err(EngineError::InvalidModel(m)) => assert!(m.contains("block_count"), "{m}"),
            other => panic!("block_count {n}: {other:?}"),
        }
    }
}

#[test]
fn the_context_is_capped_by_the_configured_limit() {
    let base = common::fixture_bytes("tiny", GgmlType::I2S, 1);
    let bytes = common::rewrite_metadata(&base, |k, v| {
        if k.ends_with(".context_length") {
            Value::U32(1 << 30)
        } else {
            v.clone()
        }
    });
    let uncapped = load(bytes.clone(), &Default::default()).unwrap();
    assert_eq!(uncapped.n_ctx(), 1 << 30);
    let m = load(
        bytes,
        &LoadOptions {
            max_context: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.n_ctx(), 64);
    assert!(m.kv_bytes_per_token() > 0);
    let params = GenerateParams {
        max_tokens: 64,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    assert!(matches!(
        m.generate(&[128000, 40], &params, &Interrupt::new(), &mut |_| {
            ControlFlow::Continue(())
        }),
        Err(EngineError::ContextOverflow { n_ctx: 64, .. })
    ));
}

#[test]
fn weights_the_kernels_cannot_run_fail_the_load_when_validating() {
    // I2_S code 3 (reserved): 0xff holds four of them.
    let base = common::fixture_bytes("tiny", GgmlType::I2S, 1);
    let bad = patch_tensor(&base, "blk.1.ffn_down.weight", 5, 0xff);
    load(bad.clone(), &Default::default()).expect("found only at first use without validation");
    match load(bad, &validating()) {
        Err(EngineError::InvalidModel(m)) => {
            assert!(
                m.contains("blk.1.ffn_down.weight") && m.contains("code 3"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // TQ2_0: an infinite block scale (f16 0x7c00; its high byte is at 64 + 1 of block 0).
    let base = common::fixture_bytes("tiny", GgmlType::Tq2_0, 1);
    let bad = patch_tensor(&base, "blk.0.attn_k.weight", 65, 0x7c);
    match load(bad, &validating()) {
        Err(EngineError::InvalidModel(m)) => {
            assert!(
                m.contains("blk.0.attn_k.weight") && m.contains("not finite"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The unpatched files validate.
    load(
        common::fixture_bytes("tiny", GgmlType::Tq1_0, 1),
        &validating(),
    )
    .unwrap();
    load(base, &validating()).unwrap();
}
