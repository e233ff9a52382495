//! The GGUF reader on valid, truncated and corrupted files: always a typed error, never a
//! panic, and the ternary tensors decode back to the generator's codes.

mod common;

use std::sync::Arc;

use bitnet_engine::fixture::{self, FixtureSpec};
use bitnet_engine::gguf::{GgmlType, GgufFile, GgufWriter, Value, parse_header};
use bitnet_engine::quant::TernaryMatrix;

fn mini_model(ty: GgmlType) -> Vec<u8> {
    let spec = FixtureSpec {
        preset: fixture::preset("tiny").unwrap(),
        ty,
        seed: 5,
        arch: "bitnet-b1.58".into(),
    };
    let mut buf = Vec::new();
    fixture::write_fixture(&spec, &common::mini_vocab_parts(), &mut buf).unwrap();
    buf
}

#[test]
fn truncation_at_every_header_byte_is_an_error() {
    let buf = mini_model(GgmlType::I2S);
    let h = parse_header(&buf).expect("valid file parses");
    // Every byte of the header, metadata and tensor infos, plus points inside the data.
    let mut cuts: Vec<usize> = (0..h.data_offset as usize).collect();
    cuts.extend((h.data_offset as usize..buf.len()).step_by(997));
    cuts.push(buf.len() - 1);
    for cut in cuts {
        let r = parse_header(&buf[..cut]);
        assert!(r.is_err(), "truncated at {cut} of {} parsed", buf.len());
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let buf = mini_model(GgmlType::Tq2_0);
    let h = parse_header(&buf).unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = buf.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % h.data_offset) as usize;
            b[at] ^= (1 + next() % 255) as u8;
        }
        // Either a clean error or a file that still parses (a flip inside a string's bytes);
        // loading the model from it must not panic either.
        match GgufFile::from_backing(Arc::new(b)) {
            Err(_) => errors += 1,
            Ok(g) => {
                let _ = bitnet_engine::Model::from_gguf(g, &Default::default());
            }
        }
    }
    assert!(
        errors > 1000,
        "only {errors} of 3000 corruptions were detected"
    );
}

#[test]
fn errors_name_the_field_and_offset() {
    let buf = mini_model(GgmlType::I2S);
    let e = parse_header(&buf[..30]).unwrap_err().to_string();
    assert!(e.contains("byte") && e.contains("metadata"), "{e}");
    let mut bad = buf.clone();
    bad[0] = b'X';
    assert!(
        parse_header(&bad)
            .unwrap_err()
            .to_string()
            .contains("magic")
    );
    let mut v1 = buf.clone();
    v1[4] = 1;
    assert!(
        parse_header(&v1)
            .unwrap_err()
            .to_string()
            .contains("version 1")
    );
}

#[test]
fn huge_counts_do_not_allocate() {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    b.extend(b"key");
    b.extend(9u32.to_le_bytes()); // array
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend(u64::MAX.to_le_bytes());
    let e = parse_header(&b).unwrap_err().to_string();
    assert!(e.contains("array"), "{e}");
}

#[test]
fn unknown_type_and_i2s_outside_bitnet_are_named() {
    let write = |arch: &str, ty_id: u32| {
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String(arch.into()));
        w.add_tensor("t", &[256, 1], GgmlType::F32);
        let mut out = Vec::new();
        w.write_header(&mut out).unwrap();
        w.write_tensor(&mut out, &[0u8; 1024]).unwrap();
        // Patch the type id of the single tensor: name (8 + 1), n_dims (4), two dims (16).
        let name = [1u8, 0, 0, 0, 0, 0, 0, 0, b't'];
        let pos = out.windows(9).position(|w| w == name).unwrap() + 9 + 4 + 16;
        out[pos..pos + 4].copy_from_slice(&ty_id.to_le_bytes());
        out
    };
    let e = parse_header(&write("llama", 77)).unwrap_err().to_string();
    assert!(e.contains("\"t\"") && e.contains("77"), "{e}");
    let e = parse_header(&write("llama", 36)).unwrap_err().to_string();
    assert!(e.contains("I2_S") && e.contains("llama"), "{e}");
}

#[test]
fn metadata_of_every_type_round_trips_through_the_writer() {
    let values = vec![
        ("u8", Value::U8(7)),
        ("i8", Value::I8(-7)),
        ("u16", Value::U16(700)),
        ("i16", Value::I16(-700)),
        ("u32", Value::U32(70000)),
        ("i32", Value::I32(-70000)),
        ("u64", Value::U64(1 << 40)),
        ("i64", Value::I64(-(1 << 40))),
        ("f32", Value::F32(1.5)),
        ("f64", Value::F64(-2.25)),
        ("bool", Value::Bool(true)),
        ("str", Value::String("héllo".into())),
        ("strs", Value::string_array(["a", "", "ü"])),
        ("i32s", Value::I32s(vec![-1, 0, 7, i32::MAX, i32::MIN])),
        (
            "nested",
            Value::Array {
                elem_type: 9,
                items: vec![
                    Value::Array {
                        elem_type: 4,
                        items: vec![Value::U32(1), Value::U32(2)],
                    },
                    Value::Strings(Default::default()),
                ],
            },
        ),
        ("general.alignment", Value::U32(64)),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w.add(*k, v.clone());
    }
    w.add_tensor("a", &[32, 2], GgmlType::Q8_0);
    w.add_tensor("b", &[4], GgmlType::Bf16);
    let mut out = Vec::new();
    w.write_header(&mut out).unwrap();
    w.write_tensor(&mut out, &[1u8; 68]).unwrap();
    w.write_tensor(&mut out, &[2u8; 8]).unwrap();
    let g = GgufFile::from_backing(Arc::new(out)).unwrap();
    assert_eq!(g.alignment, 64);
    for (k, v) in &values {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    // An INT32 array written item by item reads back in compact form.
    let mut w = GgufWriter::new();
    w.add(
        "t",
        Value::Array {
            elem_type: 5,
            items: vec![Value::I32(3), Value::I32(-4)],
        },
    );
    let mut one = Vec::new();
    w.write_header(&mut one).unwrap();
    let g1 = GgufFile::from_backing(Arc::new(one)).unwrap();
    assert_eq!(g1.get("t"), Some(&Value::I32s(vec![3, -4])));
    let b = g.tensor("b").unwrap();
    assert_eq!(b.offset % 64, 0);
    assert_eq!(g.tensor_data(b), &[2u8; 8]);
}

#[test]
fn reader_decodes_every_ternary_tensor_back_to_the_generator_codes() {
    let p = fixture::preset("tiny").unwrap();
    for ty in [GgmlType::I2S, GgmlType::Tq2_0, GgmlType::Tq1_0] {
        let g = GgufFile::from_backing(Arc::new(mini_model(ty))).unwrap();
        let mut checked = 0;
        for t in g.tensors.iter().filter(|t| t.ty == ty) {
            let (k, rows) = (t.dims[0] as usize, t.dims[1] as usize);
            let data = g.tensor_data(t);
            let m = TernaryMatrix {
                ty,
                rows,
                k,
                data,
                scale: TernaryMatrix::detect_scale(ty, rows, k, data),
            };
            let (want, scale) = fixture::ternary_weights(5, &t.name, rows, k);
            assert_eq!(
                m.scale,
                bitnet_engine::quant::TernaryScale::Uniform(scale),
                "{}",
                t.name
            );
            let mut row = vec![0i8; k];
            for r in 0..rows {
                m.decode_row(r, &mut row);
                assert_eq!(row, want[r * k..(r + 1) * k], "{} row {r} ({ty})", t.name);
            }
            checked += 1;
        }
        assert_eq!(checked, 7 * p.n_layer, "{ty}");
    }
}

#[test]
fn same_seed_same_bytes() {
    assert_eq!(mini_model(GgmlType::Tq1_0), mini_model(GgmlType::Tq1_0));
}

#[test]
fn string_arrays_name_the_string_that_is_not_utf8() {
    let mut w = GgufWriter::new();
    w.add("strs", Value::string_array(["aaaa", "bbbb", "cccc"]));
    let mut good = Vec::new();
    w.write_header(&mut good).unwrap();
    let at = |needle: &[u8]| good.windows(4).position(|w| w == needle).unwrap();
    let (a, b) = (at(b"aaaa"), at(b"bbbb"));
    let err = |buf: Vec<u8>| {
        GgufFile::from_backing(Arc::new(buf))
            .unwrap_err()
            .to_string()
    };

    // A byte that is never UTF-8, in the middle string.
    let mut bad = good.clone();
    bad[b + 1] = 0xff;
    let e = err(bad);
    assert!(e.contains("\"strs\"[1]") && e.contains("not UTF-8"), "{e}");

    // A two-byte character split across strings 0 and 1: the concatenation is valid UTF-8,
    // each string alone is not.
    let mut split = good.clone();
    split[a + 3] = 0xc3;
    split[b] = 0xa9;
    let e = err(split);
    assert!(e.contains("\"strs\"[0]") && e.contains("not UTF-8"), "{e}");

    let g = GgufFile::from_backing(Arc::new(good)).unwrap();
    assert_eq!(
        g.get("strs"),
        Some(&Value::string_array(["aaaa", "bbbb", "cccc"]))
    );
}
