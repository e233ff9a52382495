//! `bitnet`: the command-line front door (fixtures, inspection, tokenization, generation,
//! evaluation, benchmarks, model fetching and the local HTTP server).

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bitnet_engine::fixture::{self, FixtureSpec};
use bitnet_engine::gguf::{GgmlType, GgufFile, Value};
use bitnet_engine::tokenizer::PreTokenizer;
use bitnet_engine::{
    ChatMessage, GenerateParams, Grammar, Interrupt, LoadOptions, Model, SamplingParams, Tokenizer,
};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod chat;
mod fetch;
mod progress;
mod serve;

#[derive(Parser)]
#[command(
    name = "bitnet",
    version,
    about = "Serve and run BitNet b1.58 ternary models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the OpenAI-compatible HTTP API (model from a path or s3://, az://, https://, hf://).
    #[command(after_help = "Examples:
  bitnet serve                                    # the official 2B4T model from Hugging Face
  bitnet serve --model ./ggml-model-i2_s.gguf --port 8080
  API_KEY=secret bitnet serve --host 0.0.0.0 --model s3://bucket/model.gguf
  curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \\
    -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'")]
    Serve(serve::ServeArgs),
    /// Chat with a model in the terminal (streaming, multi-turn, line editing).
    #[command(after_help = "Examples:
  bitnet chat                                     # the official 2B4T model from Hugging Face
  bitnet chat --model ./ggml-model-i2_s.gguf --system 'Answer in one sentence.'
  printf 'Hi\\nAnd then?\\n' | bitnet chat --model m.gguf   # one turn per line, answers on stdout

In the chat: /reset, /system TEXT, /exit (or Ctrl-D); Ctrl-C stops the answer being written.")]
    Chat(chat::ChatArgs),
    /// Generate text from a prompt, a chat or token ids.
    #[command(after_help = "Examples:
  bitnet generate --model m.gguf --prompt 'The capital of France is' --max-tokens 16
  bitnet generate --model m.gguf --chat messages.json --temperature 0 --json
  bitnet generate --model m.gguf --ids 128000,791,6864 --ignore-eos --max-tokens 64")]
    Generate(GenerateArgs),
    /// Download a model (s3://, az://, https://, hf://, path) into the cache; print its path.
    #[command(after_help = "Examples:
  bitnet fetch hf://microsoft/BitNet-b1.58-2B-4T-gguf/ggml-model-i2_s.gguf
  bitnet fetch s3://bucket/models/model.gguf --sha256 <hex> --cache-dir /tmp/models
  bitnet fetch https://example.com/model.gguf --bench   # parallel vs single-stream rate")]
    Fetch(fetch::FetchArgs),
    /// Write a copy of a model with its token embedding and output head quantized (Q8_0 by
    /// default: a smaller file and faster decoding, no conversion at load).
    #[command(after_help = "Examples:
  bitnet prepare ggml-model-i2_s.gguf -o bitnet-2b4t-prepared.gguf
  bitnet prepare ggml-model-i2_s.gguf -o model-q4head.gguf --head q4_0   # smallest, fastest, less exact")]
    Prepare(PrepareArgs),
    /// Measure prompt and generation tokens/s, start-up time and peak RSS.
    #[command(after_help = "Examples:
  bitnet bench --model m.gguf
  bitnet bench --model m.gguf --batch 1,2,4,8     # tokens/s of concurrent streams")]
    Bench(bench::BenchArgs),
    /// Write a synthetic BitNet model (random ternary weights, real Llama 3 tokenizer).
    #[command(after_help = "Examples:
  bitnet fixture --preset tiny -o tiny.gguf
  bitnet fixture --preset 2b4t --type tq2_0 -o 2b4t-tq2_0.gguf")]
    Fixture(FixtureArgs),
    /// Print a GGUF file's metadata and tensor table.
    #[command(after_help = "Examples:
  bitnet inspect model.gguf
  bitnet inspect model.gguf --json | jq .metadata")]
    Inspect(InspectArgs),
    /// Print the token ids of TEXT as one JSON array.
    #[command(after_help = "Examples:
  bitnet tokenize --model m.gguf 'Hello world'
  echo 'Hello world' | bitnet tokenize --model m.gguf --no-bos -")]
    Tokenize(TokenizeArgs),
    /// Run token ids through the model and write the last position's logits (raw f32 LE).
    #[command(after_help = "Example:
  bitnet eval --model m.gguf --ids 128000,791,6864 --logits-out logits.f32")]
    Eval(EvalArgs),
    /// Embeddings from an embedding model (bitnet-embedding-0.6b): L2-normalised vectors.
    #[command(after_help = "Examples:
  bitnet embed --model bitnet-embedding-0.6b.gguf --text 'What is BitNet?'
  bitnet embed --model e.gguf --text one --text two --json
  bitnet embed --model e.gguf --ids 785,6722,374,151643       # ids as given (end with EOS)
  bitnet embed --model e.gguf --bench 32x64 --reps 5          # embeddings/s, 32 inputs of 64 tokens")]
    Embed(EmbedArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:
  bitnet completions bash > ~/.local/share/bash-completion/completions/bitnet
  bitnet completions zsh > \"${fpath[1]}/_bitnet\"
  bitnet completions fish > ~/.config/fish/completions/bitnet.fish")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, ValueEnum)]
enum FixtureType {
    #[value(name = "i2_s")]
    I2s,
    #[value(name = "tq2_0")]
    Tq2_0,
    #[value(name = "tq1_0")]
    Tq1_0,
    F16,
    F32,
}

#[derive(clap::Args)]
struct FixtureArgs {
    /// tiny (2 layers of 256), small (4 layers of 512) or 2b4t (the official shapes); the
    /// embedding model: embed-tiny (2 layers of 256) or embed-0.6b (bitnet-embedding-0.6b's).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Storage type of the ternary projections.
    #[arg(long = "type", value_enum, default_value = "i2_s")]
    ty: FixtureType,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `general.architecture`: bitnet-b1.58 (official) or bitnet (upstream llama.cpp).
    #[arg(long, default_value = "bitnet-b1.58")]
    arch: String,
    /// Hugging Face tokenizer.json (default: the Llama 3 tokenizer shipped in the engine).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct InspectArgs {
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PrepareArgs {
    /// The model to copy.
    file: PathBuf,
    /// Where to write the prepared model.
    #[arg(short, long)]
    output: PathBuf,
    /// Type of the token embedding and output head: q8_0 (53 % of F16's bytes, next-token
    /// distributions closest to F16's), q6_k (41 %, as close, slower with several streams) or
    /// q4_0 (28 %, fastest, measurably less exact).
    #[arg(long, default_value = "q8_0", value_parser = ["q8_0", "q6_k", "q4_0"])]
    head: String,
    /// Type of the ternary weights: keep (as in the source) or tq1_0 (the same values in 1.69
    /// bits instead of 2; I2_S's scale rounded to f16).
    #[arg(long, default_value = "keep", value_parser = ["keep", "tq1_0"])]
    ternary: String,
}

#[derive(clap::Args)]
struct TokenizeArgs {
    #[arg(long)]
    model: PathBuf,
    /// Do not prepend BOS.
    #[arg(long)]
    no_bos: bool,
    /// Use llama.cpp's default pre-tokenizer (what bitnet.cpp does on the official file).
    #[arg(long)]
    llamacpp_default_split: bool,
    /// Time N encodings of TEXT instead; print {"bytes","tokens","mb_per_s"} (median).
    #[arg(long, value_name = "N")]
    bench: Option<usize>,
    /// The text; `-` reads standard input.
    text: String,
}

#[derive(clap::Args)]
struct ModelArgs {
    #[arg(long)]
    model: PathBuf,
    /// Worker threads (default: $BITNET_THREADS, else all available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache: f16 (the default: half the memory and reads; values rounded to f16), or
    /// f32.
    #[arg(long, default_value = "f16", value_parser = ["f32", "f16"])]
    kv: String,
}

#[derive(clap::Args)]
#[group(id = "input", required = true, multiple = false)]
struct InputArgs {
    /// Plain text prompt (BOS is prepended).
    #[arg(long, group = "input")]
    prompt: Option<String>,
    /// A JSON file with a list of {"role","content"} messages (or {"messages": [...]}).
    #[arg(long, group = "input")]
    chat: Option<PathBuf>,
    /// Comma-separated token ids, used as they are.
    #[arg(long, group = "input", value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Several prompts of token ids (`1,2,3;4,5`), generated together by the server's
    /// scheduler (one batched forward pass per step); one JSON line per prompt, in order.
    #[arg(long, group = "input", value_name = "IDS;IDS...")]
    batch_ids: Option<String>,
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(clap::Args, Clone)]
struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Stop token ids (default 128001,128009).
    #[arg(long, value_delimiter = ',')]
    stop_ids: Option<Vec<u32>>,
    /// Never stop on a stop id: generate exactly --max-tokens tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (text, ids, timings) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// With --batch-ids: prompt tokens read per step, across the prompts being read.
    #[arg(long, default_value_t = 64)]
    prefill_chunk: usize,
    /// The output follows this GBNF grammar (llama.cpp's format; start rule `root`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json_schema", "json_object"])]
    grammar: Option<PathBuf>,
    /// The output is an instance of this JSON Schema.
    #[arg(long, value_name = "FILE", conflicts_with = "json_object")]
    json_schema: Option<PathBuf>,
    /// The output is a JSON object.
    #[arg(long)]
    json_object: bool,
    /// Speculative decoding by prompt lookup: up to N draft tokens per step (0: off). The
    /// output is the same either way.
    #[arg(long, default_value_t = bitnet_engine::generate::DEFAULT_DRAFT_MAX)]
    draft_max: usize,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("embed_input").required(true).args(["text", "ids", "bench"])))]
struct EmbedArgs {
    /// The embedding model: a path or a URI (s3://, az://, https://, hf://), through the
    /// model store's cache like `bitnet serve --model`.
    #[arg(long, value_name = "URI")]
    model: String,
    /// Worker threads (default: $BITNET_THREADS, else all available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Text to embed (repeatable: one vector each, read together); the end-of-text token is
    /// appended.
    #[arg(long)]
    text: Vec<String>,
    /// Token ids used as given (the caller appends the end-of-text token).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Benchmark: NxT embeds N inputs of T tokens at once, --reps times; prints the median
    /// embeddings per second.
    #[arg(long, value_name = "NxT")]
    bench: Option<String>,
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// One JSON object per input (embedding, tokens) instead of bare arrays.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// Where to write n_vocab little-endian f32 values.
    #[arg(long)]
    logits_out: PathBuf,
}

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve::run(a),
        Cmd::Fixture(a) => cmd_fixture(a),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::Prepare(a) => cmd_prepare(a),
        Cmd::Tokenize(a) => cmd_tokenize(a),
        Cmd::Generate(a) => cmd_generate(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Embed(a) => cmd_embed(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Fetch(a) => fetch::run(a),
        Cmd::Chat(a) => chat::run(a),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "bitnet",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn cmd_fixture(a: FixtureArgs) -> Result<()> {
    let preset = fixture::preset(&a.preset).with_context(|| {
        format!(
            "unknown preset {:?} (tiny, small, 2b4t, embed-tiny, embed-0.6b)",
            a.preset
        )
    })?;
    let ty = match a.ty {
        FixtureType::I2s => GgmlType::I2S,
        FixtureType::Tq2_0 => GgmlType::Tq2_0,
        FixtureType::Tq1_0 => GgmlType::Tq1_0,
        FixtureType::F16 => GgmlType::F16,
        FixtureType::F32 => GgmlType::F32,
    };
    let tok = match &a.tokenizer {
        Some(path) => fixture::tokenizer_parts_from_hf_json(path)?,
        #[cfg(feature = "bundled-tokenizer")]
        None if preset.embedding => fixture::qwen2_tokenizer_parts()?,
        #[cfg(feature = "bundled-tokenizer")]
        None => fixture::llama3_tokenizer_parts()?,
        #[cfg(not(feature = "bundled-tokenizer"))]
        None => bail!("this build has no bundled tokenizer: pass --tokenizer tokenizer.json"),
    };
    let spec = FixtureSpec {
        preset,
        ty,
        seed: a.seed,
        arch: a.arch,
    };
    let t0 = std::time::Instant::now();
    // Write to a temporary name, then rename: a failed run never leaves a file that looks valid.
    let tmp = a.output.with_extension("gguf.partial");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    fixture::write_fixture(&spec, &tok, &mut f)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &a.output)?;
    let size = std::fs::metadata(&a.output)?.len();
    eprintln!(
        "wrote {} ({} bytes, preset {}, {}, seed {}) in {:.2} s",
        a.output.display(),
        size,
        preset.name,
        ty,
        a.seed,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => s.clone().into(),
        Value::Bool(b) => (*b).into(),
        Value::F32(f) => (*f as f64).into(),
        Value::F64(f) => (*f).into(),
        Value::Array { items, .. } => {
            let head: Vec<_> = items.iter().take(8).map(value_json).collect();
            serde_json::json!({"len": items.len(), "head": head})
        }
        Value::I32s(a) => serde_json::json!({"len": a.len(), "head": &a[..a.len().min(8)]}),
        Value::Strings(a) => {
            let head: Vec<_> = a.iter().take(8).collect();
            serde_json::json!({"len": a.len(), "head": head})
        }
        other => other
            .as_u64()
            .map(Into::into)
            .unwrap_or_else(|| other.to_string().into()),
    }
}

fn cmd_prepare(a: PrepareArgs) -> Result<()> {
    use bitnet_engine::model::prepare::PreparedModel;
    let g = GgufFile::open(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let t0 = std::time::Instant::now();
    // Quantizes on every core.
    let head = match a.head.as_str() {
        "q4_0" => bitnet_engine::gguf::GgmlType::Q4_0,
        "q6_k" => bitnet_engine::gguf::GgmlType::Q6K,
        _ => bitnet_engine::gguf::GgmlType::Q8_0,
    };
    let ternary = (a.ternary == "tq1_0").then_some(bitnet_engine::gguf::GgmlType::Tq1_0);
    let opts = bitnet_engine::model::prepare::PrepareOptions { head, ternary };
    let spinner = progress::spinner(if ternary.is_some() {
        "quantizing the token embedding and output head, repacking the ternary weights"
    } else {
        "quantizing the token embedding and output head"
    });
    let prepared = bitnet_engine::kernels::Kernels::new(None)
        .install(|| PreparedModel::new(&g, &opts))
        .with_context(|| format!("preparing {}", a.file.display()))?;
    spinner.finish_and_clear();
    let size = prepared.file_size();
    // Written beside the destination, then renamed: never a half-written model at `output`.
    let tmp = a.output.with_extension("gguf.partial");
    let write = || -> Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let bar = progress::bytes("writing", size);
        let mut out = std::io::BufWriter::new(progress::Writer::new(file, bar));
        prepared.write(&mut out)?;
        let out = out.into_inner().map_err(|e| e.into_error())?;
        out.into_inner().sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", a.output.display())));
    }
    std::fs::rename(&tmp, &a.output)?;
    eprintln!(
        "wrote {} ({size} bytes, token embedding and output head as {head}{}) in {:.2} s",
        a.output.display(),
        if ternary.is_some() {
            ", ternary weights as TQ1_0"
        } else {
            ""
        },
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let g = GgufFile::open(&a.file)?;
    if a.json {
        let meta: serde_json::Map<_, _> = g
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect();
        let tensors: Vec<_> = g
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "dims": t.dims, "type": t.ty.name(), "offset": t.offset, "size": t.size}))
            .collect();
        let out = serde_json::json!({
            "version": g.version, "alignment": g.alignment, "data_offset": g.data_offset,
            "file_size": g.bytes().len(), "metadata": meta, "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "GGUF v{}, {} bytes, {} metadata keys, {} tensors, alignment {}",
        g.version,
        g.bytes().len(),
        g.metadata.len(),
        g.tensors.len(),
        g.alignment
    );
    for (k, v) in &g.metadata {
        println!("  {k:<45} {v}");
    }
    println!(
        "{:<32} {:>8} {:<20} {:>14} {:>12}",
        "tensor", "type", "dims", "offset", "bytes"
    );
    for t in &g.tensors {
        println!(
            "{:<32} {:>8} {:<20} {:>14} {:>12}",
            t.name,
            t.ty.name(),
            format!("{:?}", t.dims),
            t.offset,
            t.size
        );
    }
    Ok(())
}

fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    let g = GgufFile::open(&a.model)?;
    let mut tok = Tokenizer::from_gguf(&g)?;
    if a.llamacpp_default_split {
        tok.pre = PreTokenizer::LlamaCppDefault;
    }
    let text = if a.text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        a.text
    };
    if let Some(reps) = a.bench {
        let mut secs: Vec<f64> = Vec::new();
        let mut n = 0;
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            n = std::hint::black_box(tok.encode(&text, !a.no_bos)).len();
            secs.push(t.elapsed().as_secs_f64());
        }
        secs.sort_by(f64::total_cmp);
        let med = secs[secs.len() / 2];
        let v = serde_json::json!({"bytes": text.len(), "tokens": n, "reps": secs.len(), "mb_per_s": text.len() as f64 / med / 1e6});
        println!("{v}");
        return Ok(());
    }
    let ids = tok.encode(&text, !a.no_bos);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn load(m: &ModelArgs) -> Result<Model> {
    Model::load(
        &m.model,
        &LoadOptions {
            threads: m.threads,
            kv: m.kv.parse().map_err(anyhow::Error::msg)?,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading {}", m.model.display()))
}

fn read_chat(path: &PathBuf) -> Result<Vec<ChatMessage>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let list = v.get("messages").cloned().unwrap_or(v);
    let msgs: Vec<ChatMessage> = serde_json::from_value(list)
        .context("expected a list of {\"role\", \"content\"} messages")?;
    if msgs.is_empty() {
        bail!("the chat has no messages");
    }
    Ok(msgs)
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    if let Some(batch) = &a.input.batch_ids {
        return generate_batch(&a, batch);
    }
    let model = load(&a.model)?;
    let tok = model.tokenizer();
    let prompt = if let Some(p) = &a.input.prompt {
        tok.encode(p, true)
    } else if let Some(c) = &a.input.chat {
        tok.encode_chat(&read_chat(c)?)
    } else {
        a.input.ids.clone().unwrap_or_default()
    };
    let params = generate_params(&a)?;
    let mut stdout = std::io::stdout().lock();
    let json = a.json;
    let out = model.generate(&prompt, &params, &Interrupt::new(), &mut |p| {
        if !json {
            // A closed stdout (e.g. `| head`) ends generation quietly.
            if stdout
                .write_all(p.text.as_bytes())
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if json {
        writeln!(stdout, "{}", output_json(&prompt, &out))?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}

fn output_json(prompt: &[u32], out: &bitnet_engine::GenerateOutput) -> serde_json::Value {
    serde_json::json!({
        "text": out.text, "token_ids": out.token_ids, "prompt_ids": prompt,
        "prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
        "stop_reason": out.stop_reason, "prompt_ms": out.prompt_ms, "decode_ms": out.decode_ms,
        "prompt_tok_s": out.prompt_tokens as f64 / (out.prompt_ms / 1e3),
        "decode_tok_s": if out.completion_tokens > 1 { (out.completion_tokens - 1) as f64 / (out.decode_ms / 1e3) } else { 0.0 },
        "draft_tokens": out.draft_tokens, "draft_accepted": out.draft_accepted,
    })
}

/// `--batch-ids`: every prompt submitted at once to a scheduler with a slot each.
fn generate_batch(a: &GenerateArgs, batch: &str) -> Result<()> {
    let prompts: Vec<Vec<u32>> = batch
        .split(';')
        .map(|p| {
            p.split(',')
                .map(|t| t.trim().parse::<u32>())
                .collect::<Result<Vec<u32>, _>>()
                .with_context(|| format!("--batch-ids: {p:?} is not a list of token ids"))
        })
        .collect::<Result<_>>()?;
    let model = Arc::new(load(&a.model)?);
    let scheduler = bitnet_engine::Scheduler::new(
        model,
        bitnet_engine::SchedulerConfig {
            parallel: prompts.len(),
            prefill_chunk: a.prefill_chunk,
            ..Default::default()
        },
    );
    let params = generate_params(a)?;
    let receivers = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = std::sync::mpsc::sync_channel(4096);
            scheduler.submit(p.clone(), params.clone(), Interrupt::new(), Box::new(tx))?;
            Ok(rx)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut stdout = std::io::stdout().lock();
    for (prompt, rx) in prompts.iter().zip(receivers) {
        let out = loop {
            match rx.recv().context("the engine stopped")? {
                bitnet_engine::Event::Token { .. } => {}
                bitnet_engine::Event::Done(result) => break result?,
            }
        };
        writeln!(stdout, "{}", output_json(prompt, &out))?;
    }
    Ok(())
}

fn generate_params(a: &GenerateArgs) -> Result<GenerateParams> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let grammar = if let Some(p) = &a.grammar {
        Some(Grammar::parse(&read(p)?).with_context(|| format!("grammar {}", p.display()))?)
    } else if let Some(p) = &a.json_schema {
        let schema: serde_json::Value =
            serde_json::from_str(&read(p)?).with_context(|| format!("parsing {}", p.display()))?;
        Some(
            Grammar::from_json_schema(&schema)
                .with_context(|| format!("JSON Schema {}", p.display()))?,
        )
    } else {
        a.json_object.then(Grammar::json_object)
    };
    Ok(GenerateParams {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(),
        stop_ids: if a.ignore_eos {
            Some(vec![])
        } else {
            a.stop_ids.clone()
        },
        stop_strings: a.stop.clone(),
        grammar: grammar.map(Arc::new),
        draft_max: a.draft_max,
        ..Default::default()
    })
}

fn cmd_embed(a: EmbedArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = LoadOptions {
        threads: a.threads,
        ..Default::default()
    };
    let (model, source) = fetch::load_model(&rt, Some(&a.model), &opts)?;
    if !model.is_embedding() {
        bail!("{source} is not an embedding model (its architecture generates text)");
    }
    let interrupt = Interrupt::new();
    if let Some(shape) = &a.bench {
        let (n, t) = shape
            .split_once('x')
            .and_then(|(n, t)| Some((n.parse::<usize>().ok()?, t.parse::<usize>().ok()?)))
            .filter(|&(n, t)| n > 0 && t > 0)
            .with_context(|| format!("--bench {shape:?}: expected NxT, e.g. 32x64"))?;
        let eos = model.tokenizer().eos;
        // Distinct inputs of exactly T tokens, the last one the end-of-text token.
        let inputs: Vec<Vec<u32>> = (0..n as u32)
            .map(|i| {
                (0..t as u32 - 1)
                    .map(|j| 1000 + (i * 7919 + j * 104_729) % 100_000)
                    .chain([eos])
                    .collect()
            })
            .collect();
        let mut secs = Vec::new();
        for _ in 0..a.reps.max(1) {
            let t0 = std::time::Instant::now();
            model.embed(&inputs, &interrupt)?;
            secs.push(t0.elapsed().as_secs_f64());
        }
        secs.sort_by(f64::total_cmp);
        let med = secs[secs.len() / 2];
        println!(
            "{}",
            serde_json::json!({
                "inputs": n, "tokens_per_input": t, "threads": model.threads(), "reps": secs.len(),
                "median_s": med, "embeddings_per_s": n as f64 / med,
                "tokens_per_s": (n * t) as f64 / med,
            })
        );
        return Ok(());
    }
    let inputs: Vec<Vec<u32>> = match &a.ids {
        Some(ids) => vec![ids.clone()],
        None => a.text.iter().map(|t| model.embedding_input(t)).collect(),
    };
    let vectors = model.embed(&inputs, &interrupt)?;
    let mut stdout = std::io::stdout().lock();
    for (ids, v) in inputs.iter().zip(&vectors) {
        let line = if a.json {
            serde_json::json!({"embedding": v, "tokens": ids.len(), "ids": ids})
        } else {
            serde_json::json!(v)
        };
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let model = load(&a.model)?;
    let mut session = model.new_session(a.ids.len());
    let logits = model.forward(&mut session, &a.ids)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&a.logits_out, bytes)
        .with_context(|| format!("writing {}", a.logits_out.display()))?;
    Ok(())
}
