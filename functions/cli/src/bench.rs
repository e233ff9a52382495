//! `bitnet bench`: prompt and generation throughput, start-up time and peak memory, as
//! medians over repetitions (llama-bench's pp/tg convention).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bitnet_engine::{LoadOptions, Model};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    /// Worker threads (default: $BITNET_THREADS, else all available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Prompt length for the prefill measurement (0 skips it).
    #[arg(long, default_value_t = 128)]
    pp: usize,
    /// Tokens generated for the decode measurement (0 skips it).
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Output head: f16 (the file's), or q8_0 / q6_k / q4_0 (quantized at load; opt-in,
    /// lower precision).
    #[arg(long, default_value = "f16")]
    head: String,
    /// KV cache: f16 (the default: half the memory and reads; values rounded to f16), or
    /// f32.
    #[arg(long, default_value = "f16", value_parser = ["f32", "f16"])]
    kv: String,
    /// Decode after this many tokens of context (llama-bench's depth): attention then reads
    /// a cache of that length for every generated token.
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// Check every weight at load, as the servers do (otherwise at first use).
    #[arg(long)]
    validate_weights: bool,
    /// Also decode this many sequences together (comma-separated batch sizes): aggregate
    /// generated tokens/s of one batched forward step per token, as the server's scheduler
    /// runs them.
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    #[arg(long)]
    json: bool,
    /// Internal: load the model, print "ready", exit (used to time process start to ready).
    #[arg(long, hide = true)]
    load_probe: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set (VmHWM) of this process, in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn load_options(a: &BenchArgs) -> Result<LoadOptions> {
    Ok(LoadOptions {
        threads: a.threads,
        head: a.head.parse().map_err(anyhow::Error::msg)?,
        max_context: None,
        validate_weights: a.validate_weights,
        kv: a.kv.parse().map_err(anyhow::Error::msg)?,
    })
}

/// Spawns `bitnet bench --load-probe` and times exec to its "ready" line.
fn time_process_start_to_ready(a: &BenchArgs) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--load-probe", "--head", &a.head, "--model"])
        .arg(&a.model);
    if let Some(t) = a.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    if a.validate_weights {
        cmd.arg("--validate-weights");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let status = child.wait()?;
    if !status.success() || line.trim() != "ready" {
        bail!("load probe failed ({status})");
    }
    Ok(ms)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.load_probe {
        let model = Model::load(&a.model, &load_options(&a)?)?;
        std::hint::black_box(&model);
        println!("ready");
        return Ok(());
    }
    let reps = a.reps.max(1);
    let mut load_ms: Vec<f64> = (0..reps)
        .map(|_| time_process_start_to_ready(&a))
        .collect::<Result<_>>()?;
    let model = Model::load(&a.model, &load_options(&a)?)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let n_vocab = model.n_vocab() as u64;
    // Fixed pseudo-random prompt ids (not special tokens).
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let prompt: Vec<u32> = (0..a.pp.max(a.depth).max(1))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab.min(128_000)) as u32
        })
        .collect();
    // Warm-up: first use validates the tensors and faults the pages in.
    let mut s = model.new_session(2);
    model.forward(&mut s, &prompt[..1])?;

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..reps {
        if a.pp > 0 {
            let mut s = model.new_session(a.pp);
            let t = Instant::now();
            model.forward(&mut s, &prompt[..a.pp])?;
            pp.push(a.pp as f64 / t.elapsed().as_secs_f64());
        }
        if a.tg > 0 {
            let mut s = model.new_session(a.depth.max(1) + a.tg);
            let mut logits = vec![0f32; model.n_vocab()];
            model.forward_into(&mut s, &prompt[..a.depth.max(1)], &mut logits)?;
            let t = Instant::now();
            for _ in 0..a.tg {
                let next = bitnet_engine::generate::sampler::argmax(&logits);
                model.forward_into(&mut s, &[next], &mut logits)?;
            }
            tg.push(a.tg as f64 / t.elapsed().as_secs_f64());
        }
    }
    let mut batched = Vec::new();
    for &b in a.batch.iter().filter(|&&b| b > 0) {
        let tg_b = a.tg.max(1);
        let mut samples = Vec::new();
        for _ in 0..reps {
            samples.push(b as f64 * tg_b as f64 / decode_batch(&model, &prompt, b, tg_b)?);
        }
        batched.push((b, median(&mut samples)));
    }
    let (pp_med, tg_med, load_med) = (median(&mut pp), median(&mut tg), median(&mut load_ms));
    let rss = peak_rss_mb();
    let file_mb = std::fs::metadata(&a.model)?.len() as f64 / (1024.0 * 1024.0);
    let head_type = model
        .head_type()
        .map_or_else(|| "none".to_string(), |t| t.to_string());
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "threads": model.threads(), "isa": format!("{:?}", model.isa()), "head": a.head, "head_type": head_type,
            "pp": a.pp, "tg": a.tg, "depth": a.depth, "kv": a.kv, "reps": reps,
            "pp_tok_s": pp_med, "tg_tok_s": tg_med, "load_ms": load_med, "peak_rss_mb": rss, "file_mb": file_mb,
            "pp_samples": pp, "tg_samples": tg, "load_samples_ms": load_ms,
            "batch_tg_tok_s": batched.iter().map(|&(b, t)| serde_json::json!({"batch": b, "tok_s": t})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "model {} ({file_mb:.0} MB), {} threads, {:?}, head {}, KV {}",
            a.model.display(),
            model.threads(),
            model.isa(),
            head_type,
            a.kv
        );
        println!("pp{:<5} {:>9.2} tok/s   (median of {reps})", a.pp, pp_med);
        println!(
            "tg{:<5} {:>9.2} tok/s   (after {} tokens)",
            a.tg,
            tg_med,
            a.depth.max(1)
        );
        for (b, t) in &batched {
            println!(
                "tg{:<5} {:>9.2} tok/s   ({b} sequences decoding together)",
                a.tg, t
            );
        }
        println!("load     {:>9.1} ms (process start to ready)", load_med);
        println!("peak RSS {:>9.1} MB", rss);
    }
    Ok(())
}

/// Seconds for `b` sequences (each started from one distinct prompt token) to decode `tg`
/// tokens each, one batched step per token.
fn decode_batch(model: &Model, prompt: &[u32], b: usize, tg: usize) -> Result<f64> {
    use bitnet_engine::model::{BatchEntry, LogitRows, StepBuffers};
    let n_vocab = model.n_vocab();
    let mut caches: Vec<_> = (0..b).map(|_| model.new_cache(tg + 1)).collect();
    let mut buffers = StepBuffers::default();
    let mut logits = vec![0f32; b * n_vocab];
    let mut next: Vec<u32> = (0..b).map(|i| prompt[i % prompt.len()]).collect();
    let interrupt = bitnet_engine::Interrupt::new();
    let mut step = |caches: &mut Vec<bitnet_engine::model::KvCache>, next: &mut Vec<u32>| {
        let mut batch: Vec<BatchEntry<'_>> = caches
            .iter_mut()
            .zip(next.iter())
            .map(|(cache, t)| BatchEntry {
                cache,
                tokens: std::slice::from_ref(t),
                logits: LogitRows::Last,
            })
            .collect();
        model.forward_batch(&mut batch, &mut buffers, &mut logits, &interrupt)?;
        for (i, t) in next.iter_mut().enumerate() {
            *t = bitnet_engine::generate::sampler::argmax(&logits[i * n_vocab..(i + 1) * n_vocab]);
        }
        anyhow::Ok(())
    };
    step(&mut caches, &mut next)?;
    let t = Instant::now();
    for _ in 1..tg {
        step(&mut caches, &mut next)?;
    }
    Ok(t.elapsed().as_secs_f64() * tg as f64 / (tg - 1).max(1) as f64)
}
