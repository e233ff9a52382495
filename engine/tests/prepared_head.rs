//! A prepared file (token embedding and head stored as Q4_0, Q6_K or Q8_0) serves exactly what
//! converting the head at load does, and leaves every other tensor and key as it was.

mod common;

use std::sync::Arc;

use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::model::prepare::{PrepareOptions, PreparedModel};
use bitnet_engine::quant::{DenseMatrix, head};
use bitnet_engine::{HeadPrecision, KvPrecision, LoadOptions, Model};

#[test]
fn prepared_head_matches_conversion_at_load() {
    let original = common::fixture_bytes("tiny", GgmlType::I2S, 5);
    let src = GgufFile::from_backing(original.clone()).expect("parse");
    assert!(src.tensor("output.weight").is_none(), "the fixture is tied");
    for (ty, at_load) in [
        (GgmlType::Q4_0, HeadPrecision::Q4_0),
        (GgmlType::Q6K, HeadPrecision::Q6K),
        (GgmlType::Q8_0, HeadPrecision::Q8_0),
    ] {
        let prepared = PreparedModel::new(
            &src,
            &PrepareOptions {
                head: ty,
                ternary: None,
            },
        )
        .expect("prepare");
        // The size announced before writing (what `bitnet prepare`'s progress bar counts to).
        let announced = prepared.file_size();
        let mut bytes = Vec::new();
        prepared.write(&mut bytes).expect("write");
        assert_eq!(announced, bytes.len() as u64);
        let bytes = Arc::new(bytes);
        let g = GgufFile::from_backing(bytes.clone()).expect("parse prepared");

        // Tied stays tied: one tensor, quantized, read by the lookup and the head.
        assert!(g.tensor("output.weight").is_none());
        assert_eq!(g.metadata, src.metadata);
        assert_eq!(g.tensors.len(), src.tensors.len());
        for t in &src.tensors {
            let p = g.tensor(&t.name).expect("tensor kept");
            if t.name == "token_embd.weight" {
                let m = DenseMatrix {
                    ty: t.ty,
                    rows: t.dims[1] as usize,
                    k: t.dims[0] as usize,
                    data: src.tensor_data(t),
                };
                let mut want = vec![0u8; head::matrix_bytes(ty, &m)];
                head::quantize_matrix_into(ty, &m, &mut want);
                assert_eq!((p.ty, &p.dims), (ty, &t.dims));
                assert_eq!(g.tensor_data(p), &want[..]);
                continue;
            }
            assert_eq!((p.ty, &p.dims), (t.ty, &t.dims), "{}", t.name);
            assert_eq!(g.tensor_data(p), src.tensor_data(t), "{}", t.name);
        }

        // An f32 cache, so that the heads are the only difference between the models (the
        // bounds below were set with it; an f16 cache moves logits by itself).
        let opts = |head| LoadOptions {
            threads: Some(2),
            head,
            kv: KvPrecision::F32,
            ..Default::default()
        };
        let converted = Model::from_backing(original.clone(), &opts(at_load)).expect("load");
        let from_file = Model::from_backing(bytes, &opts(HeadPrecision::File)).expect("load");
        let f16 = Model::from_backing(original.clone(), &opts(HeadPrecision::File)).expect("load");
        let prompt = [128000u32, 791, 6864, 315, 9822, 374];
        let logits = |m: &Model| {
            let mut s = m.new_session(prompt.len());
            m.forward(&mut s, &prompt).expect("forward")
        };
        let (a, b, c) = (logits(&converted), logits(&from_file), logits(&f16));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{ty}: converting at load differs from the prepared file"
        );
        // A quantized head is a different head: close to the F16 one, not equal.
        assert!(a.iter().zip(&c).any(|(x, y)| x != y));
        let max_diff = a
            .iter()
            .zip(&c)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = c.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let bound = match ty {
            GgmlType::Q4_0 => 0.25,
            GgmlType::Q6K => 0.1,
            _ => 0.05,
        };
        assert!(
            max_diff < bound * scale,
            "{ty} head moved logits by {max_diff} (max |logit| {scale})"
        );
    }
}

#[test]
fn an_embedding_model_has_no_head_to_prepare() {
    let original = common::fixture_bytes("embed-tiny", GgmlType::I2S, 5);
    let src = GgufFile::from_backing(original).expect("parse");
    let err = PreparedModel::new(&src, &PrepareOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no output head"), "{err}");
}

/// Logits of the last position of a fixed prompt.
fn last_logits(bytes: Arc<Vec<u8>>) -> Vec<f32> {
    let opts = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let m = Model::from_backing(bytes, &opts).expect("load");
    let prompt = [128000u32, 791, 6864, 315, 9822, 374];
    let mut s = m.new_session(prompt.len());
    m.forward(&mut s, &prompt).expect("forward")
}

fn prepare(src: &GgufFile, opts: &PrepareOptions) -> Arc<Vec<u8>> {
    let mut bytes = Vec::new();
    let prepared = PreparedModel::new(src, opts).expect("prepare");
    let announced = prepared.file_size();
    prepared.write(&mut bytes).expect("write");
    assert_eq!(announced, bytes.len() as u64);
    Arc::new(bytes)
}

#[test]
fn ternary_weights_repack_to_tq1_0_with_the_same_values() {
    // The synthetic models' scales are f16 values, so the repacked tensors must be exactly
    // the TQ1_0 fixture's, from an I2_S source and from a TQ2_0 one.
    let want = GgufFile::from_backing(common::fixture_bytes("tiny", GgmlType::Tq1_0, 5)).unwrap();
    for source in [GgmlType::I2S, GgmlType::Tq2_0] {
        let src = GgufFile::from_backing(common::fixture_bytes("tiny", source, 5)).unwrap();
        let g = GgufFile::from_backing(prepare(&src, &tq1_0_options())).expect("parse prepared");
        let mut repacked = 0;
        for t in &src.tensors {
            let p = g.tensor(&t.name).expect("tensor kept");
            assert_eq!(p.dims, t.dims, "{}", t.name);
            if t.ty.is_ternary() {
                let w = want.tensor(&t.name).expect("in the TQ1_0 fixture");
                assert_eq!(p.ty, GgmlType::Tq1_0, "{}", t.name);
                assert_eq!(g.tensor_data(p), want.tensor_data(w), "{source} {}", t.name);
                repacked += 1;
            } else if t.name != "token_embd.weight" {
                assert_eq!(g.tensor_data(p), src.tensor_data(t), "{}", t.name);
            }
        }
        assert!(repacked >= 7, "{source}: {repacked} ternary tensors");
    }

    // Same values, same (uniform) scale: the model computes exactly what the I2_S one does.
    let src = GgufFile::from_backing(common::fixture_bytes("tiny", GgmlType::I2S, 5)).unwrap();
    let kept = last_logits(prepare(&src, &PrepareOptions::default()));
    let tq1 = last_logits(prepare(&src, &tq1_0_options()));
    assert!(
        kept.iter()
            .zip(&tq1)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

/// What `prepare --ternary tq1_0` says about the tiny `ty` fixture with `patch` written over
/// its first ternary tensor, `at(rows, k)` bytes into its data: (that tensor's name, the error).
fn repack_refusal(ty: GgmlType, at: fn(usize, usize) -> usize, patch: &[u8]) -> (String, String) {
    let bytes = common::fixture_bytes("tiny", ty, 5);
    let src = GgufFile::from_backing(bytes.clone()).unwrap();
    let t = src
        .tensors
        .iter()
        .find(|t| t.ty == ty)
        .expect("a ternary tensor");
    let (k, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    let at = src.tensor_data(t).as_ptr() as usize - src.bytes().as_ptr() as usize + at(rows, k);
    let mut patched = bytes.to_vec();
    patched[at..at + patch.len()].copy_from_slice(patch);
    let src = GgufFile::from_backing(Arc::new(patched)).unwrap();
    let err = PreparedModel::new(&src, &tq1_0_options())
        .err()
        .expect("refused");
    (t.name.clone(), err.to_string())
}

fn tq1_0_options() -> PrepareOptions {
    PrepareOptions {
        ternary: Some(GgmlType::Tq1_0),
        ..PrepareOptions::default()
    }
}

#[test]
fn an_i2s_scale_without_an_f16_value_is_refused() {
    // The tensor's scale follows its codes; 1e-9 is far below f16's smallest value.
    let (name, err) = repack_refusal(
        GgmlType::I2S,
        |rows, k| rows * k / 4,
        &1e-9f32.to_le_bytes(),
    );
    assert!(err.contains(&name) && err.contains("f16"), "{err}");
}

#[test]
fn a_non_finite_block_scale_is_refused_not_repacked() {
    // The first block's f16 scale (bytes 64..66 of 66) becomes a NaN.
    let (name, err) = repack_refusal(GgmlType::Tq2_0, |_, _| 64, &0x7e00u16.to_le_bytes());
    assert!(err.contains(&name) && err.contains("NaN"), "{err}");
}
