//! A prepared file (`output.weight` stored as Q8_0) serves exactly what converting the head
//! at load does, and leaves every other tensor and key as it was.

mod common;

use std::sync::Arc;

use bitnet_engine::gguf::{GgmlType, GgufFile};
use bitnet_engine::model::prepare::{PreparedModel, write_with_q8_0_head};
use bitnet_engine::{HeadPrecision, LoadOptions, Model};

#[test]
fn prepared_q8_0_head_matches_conversion_at_load() {
    let original = common::fixture_bytes("tiny", GgmlType::I2S, 5);
    let src = GgufFile::from_backing(original.clone()).expect("parse");
    let mut prepared = Vec::new();
    write_with_q8_0_head(&src, &mut prepared).expect("prepare");
    // The size announced before writing (what `bitnet prepare`'s progress bar counts to).
    let announced = PreparedModel::new(&src).expect("prepare").file_size();
    assert_eq!(announced, prepared.len() as u64);
    let prepared = Arc::new(prepared);
    let g = GgufFile::from_backing(prepared.clone()).expect("parse prepared");

    assert_eq!(g.tensor("output.weight").expect("head").ty, GgmlType::Q8_0);
    assert_eq!(g.metadata, src.metadata);
    for t in &src.tensors {
        let p = g.tensor(&t.name).expect("tensor kept");
        assert_eq!((p.ty, &p.dims), (t.ty, &t.dims), "{}", t.name);
        assert_eq!(g.tensor_data(p), src.tensor_data(t), "{}", t.name);
    }

    let opts = |head| LoadOptions {
        threads: Some(2),
        head,
        ..Default::default()
    };
    let at_load = Model::from_backing(original.clone(), &opts(HeadPrecision::Q8_0)).expect("load");
    let from_file = Model::from_backing(prepared, &opts(HeadPrecision::File)).expect("load");
    let f16 = Model::from_backing(original, &opts(HeadPrecision::File)).expect("load");
    let prompt = [128000u32, 791, 6864, 315, 9822, 374];
    let logits = |m: &Model| {
        let mut s = m.new_session(prompt.len());
        m.forward(&mut s, &prompt).expect("forward")
    };
    let (a, b, c) = (logits(&at_load), logits(&from_file), logits(&f16));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    // The Q8_0 head is a different head: close to the F16 one, not equal.
    assert!(a.iter().zip(&c).any(|(x, y)| x != y));
    let max_diff = a
        .iter()
        .zip(&c)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = c.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        max_diff < 0.05 * scale,
        "Q8_0 head moved logits by {max_diff} (max |logit| {scale})"
    );
}
