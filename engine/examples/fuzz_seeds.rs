//! Writes the seed corpus of the GGUF reader's fuzz target:
//! `cargo run -p bitnet-engine --example fuzz_seeds -- engine/fuzz/corpus/gguf_reader`.

use bitnet_engine::fixture::{self, FixtureSpec};
use bitnet_engine::gguf::{GgmlType, GgufWriter, Value};
use bitnet_engine::tokenizer::TokenizerParts;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "engine/fuzz/corpus/gguf_reader".into());
    std::fs::create_dir_all(&dir)?;
    // Every metadata type and a few tensor types.
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("bitnet-b1.58".into()));
    w.add("u8", Value::U8(1))
        .add("i16", Value::I16(-2))
        .add("f64", Value::F64(0.5))
        .add("b", Value::Bool(true));
    w.add("strs", Value::string_array(["a", "bc"]));
    w.add(
        "nested",
        Value::Array {
            elem_type: 9,
            items: vec![Value::Array {
                elem_type: 4,
                items: vec![Value::U32(3)],
            }],
        },
    );
    w.add_tensor("f32", &[4], GgmlType::F32);
    w.add_tensor("i2s", &[128, 1], GgmlType::I2S);
    w.add_tensor("tq2", &[256, 1], GgmlType::Tq2_0);
    w.add_tensor("tq1", &[256, 1], GgmlType::Tq1_0);
    let mut out = Vec::new();
    w.write_header(&mut out)?;
    for n in [16, 64, 66, 54] {
        w.write_tensor(&mut out, &vec![0x55u8; n])?;
    }
    std::fs::write(format!("{dir}/types.gguf"), &out)?;
    // A whole (tiny-vocabulary) BitNet model in each ternary type.
    let mut tokens: Vec<String> = (0..256u32).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.push("<|begin_of_text|>".into());
    let parts = TokenizerParts {
        token_types: vec![1; 257],
        tokens: tokens.iter().collect(),
        merges: Default::default(),
        bos: 256,
        eos: 256,
        eot: None,
        add_bos: true,
        pre: Default::default(),
    };
    let mut preset = fixture::preset("tiny").expect("preset");
    preset.n_layer = 1;
    for (ty, name) in [
        (GgmlType::I2S, "i2_s"),
        (GgmlType::Tq2_0, "tq2_0"),
        (GgmlType::Tq1_0, "tq1_0"),
    ] {
        let mut out = Vec::new();
        fixture::write_fixture(
            &FixtureSpec {
                preset,
                ty,
                seed: 1,
                arch: "bitnet-b1.58".into(),
            },
            &parts,
            &mut out,
        )
        .map_err(std::io::Error::other)?;
        std::fs::write(format!("{dir}/model-{name}.gguf"), &out)?;
    }
    Ok(())
}
