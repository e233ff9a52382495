//! A prepared file (token embedding and head stored as Q4_0, Q6_K or Q8_0) serves exactly what
//! converting the head at load does, and leaves every other tensor and key as it was.

mod common;

use std::sync::Arc;

use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::model::prepare::{PrepareOptions, PreparedModel};
use bitnet_engine::quant::{DenseMatrix, head};
use bitnet_engine::{HeadPrecision, LoadOptions, Model};

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
        let prepared = PreparedModel::new(&src, &PrepareOptions { head: ty }).expect("prepare");
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

        let opts = |head| LoadOptions {
            threads: Some(2),
            head,
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
