//! This machine's instruction throughput, the ceilings the kernels are measured against:
//! `cargo run --release -p bitnet-engine --example peak [THREADS]`. With `--vnni` after
//! THREADS it prints only billions of `vpdpbusd` per second, all threads together (0 without
//! AVX-512 VNNI): `bench/compare.sh`'s prefill ceiling.
//!
//! - the clock, from a chain of dependent integer adds (one cycle each);
//! - f32 FMA on 512-bit and 256-bit registers (what attention and the F16 head run on);
//! - `vpdpbusd` on 512-bit registers (64 u8 x i8 products: the AVX-512 ternary GEMM);
//! - `vpmaddubsw` + `vpaddw` on 256-bit registers (32 products: the AVX2 ternary GEMM).
//!
//! Each is timed on `THREADS` threads at once (default 2) with twelve independent
//! accumulators, so that latency never limits it; the figure is per thread and in total.
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

const ROUNDS: u64 = 40_000_000;

#[cfg(target_arch = "x86_64")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: usize = args
        .first()
        .map(|a| a.parse().expect("THREADS must be a number"))
        .unwrap_or(2);
    if args.get(1).is_some_and(|a| a == "--vnni") {
        let g = if is_x86_feature_detected!("avx512vnni") {
            on_threads(threads, || {
                // SAFETY: AVX-512 F and VNNI were detected just above.
                unsafe { dpbusd512() }
            }) / 1e9
        } else {
            0.0
        };
        println!("{g:.3}");
        return;
    }
    let ghz = clock_ghz();
    println!("clock ~{ghz:.2} GHz (dependent adds), {threads} threads");
    type Kernel = fn() -> f64;
    // (instruction, its FLOP or MAC, which of the two, the timed loop)
    let mut rows: Vec<(&str, f64, &str, Kernel)> = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        rows.push(("f32 FMA, 256-bit", 16.0, "FLOP", || {
            // SAFETY: AVX2 and FMA were detected just above.
            unsafe { fma256() }
        }));
        rows.push(("vpmaddubsw+vpaddw, 256-bit", 32.0, "MAC", || {
            // SAFETY: AVX2 was detected just above.
            unsafe { maddubs256() }
        }));
    }
    if is_x86_feature_detected!("avx512f") {
        rows.push(("f32 FMA, 512-bit", 32.0, "FLOP", || {
            // SAFETY: AVX-512 F was detected just above.
            unsafe { fma512() }
        }));
    }
    if is_x86_feature_detected!("avx512vnni") {
        rows.push(("vpdpbusd, 512-bit", 64.0, "MAC", || {
            // SAFETY: AVX-512 F and VNNI were detected just above.
            unsafe { dpbusd512() }
        }));
    }
    for (name, per_op, unit, kernel) in rows {
        let all = on_threads(threads, kernel);
        let per_thread = all / threads as f64;
        println!(
            "{name:28} {:5.2} per cycle per thread; {:6.1} G instructions/s, {:6.1} G {unit}/s \
             in all",
            per_thread / (ghz * 1e9),
            all / 1e9,
            all * per_op / 1e9,
        );
    }
}

/// Instructions per second of `kernel` run on `threads` threads at once, all together.
#[cfg(target_arch = "x86_64")]
fn on_threads(threads: usize, kernel: fn() -> f64) -> f64 {
    let t = Instant::now();
    let sink: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|_| s.spawn(kernel)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    std::hint::black_box(sink);
    (ROUNDS * 12 * threads as u64) as f64 / t.elapsed().as_secs_f64()
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}

/// Cycles per second: a loop of eight dependent one-cycle adds per iteration.
#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> f64 {
    let iterations: u64 = 100_000_000;
    let (mut x, mut n) = (0u64, iterations);
    let t = Instant::now();
    // SAFETY: the loop reads and writes only the two registers it is given, touches no
    // memory and ends when `n` reaches zero (it starts above zero).
    unsafe {
        std::arch::asm!(
            "2:",
            "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
            "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
            "dec {n}",
            "jnz 2b",
            x = inout(reg) x,
            n = inout(reg) n,
            options(nomem, nostack),
        );
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!((x, n), (8 * iterations, 0));
    (8 * iterations) as f64 / secs / 1e9
}

/// Twelve independent accumulators `v`, each stepped `ROUNDS` times by `$step`, then summed
/// with `$sum` (so that the work is not optimised away). A macro, not closures: a closure
/// does not inherit its caller's target features, and its intrinsics would not be inlined.
macro_rules! twelve {
    ($zero:expr, |$v:ident| $step:expr, |$w:ident| $sum:expr) => {{
        let mut a = [$zero; 12];
        for _ in 0..ROUNDS {
            for x in a.iter_mut() {
                let $v = *x;
                *x = $step;
            }
        }
        let mut total = 0f64;
        for &$w in &a {
            total += $sum;
        }
        total
    }};
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256() -> f64 {
    let (m, c) = std::hint::black_box((_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4)));
    twelve!(
        _mm256_set1_ps(1.0),
        |v| _mm256_fmadd_ps(v, m, c),
        |v| _mm256_cvtss_f32(v) as f64
    )
}

/// # Safety
/// The CPU supports AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512() -> f64 {
    let (m, c) = std::hint::black_box((_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4)));
    twelve!(
        _mm512_set1_ps(1.0),
        |v| _mm512_fmadd_ps(v, m, c),
        |v| _mm512_reduce_add_ps(v) as f64
    )
}

/// # Safety
/// The CPU supports AVX-512 F and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd512() -> f64 {
    let (a, b) = std::hint::black_box((_mm512_set1_epi8(1), _mm512_set1_epi8(-1)));
    twelve!(
        _mm512_setzero_si512(),
        |v| _mm512_dpbusd_epi32(v, a, b),
        |v| _mm512_reduce_add_epi32(v) as f64
    )
}

/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn maddubs256() -> f64 {
    // The products read the accumulator (so they cannot be hoisted out of the loop): a
    // chain of 4 cycles per accumulator, twelve of them.
    let b = std::hint::black_box(_mm256_set1_epi8(-1));
    twelve!(
        _mm256_setzero_si256(),
        |v| _mm256_add_epi16(v, _mm256_maddubs_epi16(v, b)),
        |v| _mm256_extract_epi16::<0>(v) as f64
    )
}
