//! Matmul drivers: split work across the thread pool and pick the fastest kernel the CPU
//! has. Every fast path is checked against the scalar specification in `crate::quant`.

#[cfg(target_arch = "x86_64")]
mod x86;

mod attention;
pub mod pool;

pub use attention::{HeadSpan, KEY_BLOCK, Queries, attend, key_index};

use std::sync::OnceLock;

use crate::gguf::GgmlType;
use crate::quant::act::ActOrders;
use crate::quant::head::{self, HeadActs};
use crate::quant::{DenseMatrix, QuantizedActs, TernaryMatrix, TernaryScale};

/// Instruction sets the kernels can use, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C: the serverless baseline.
    Avx2,
    /// AVX-512 F/BW + VNNI (never AMX: it faults in these virtual machines).
    Avx512Vnni,
}

impl Isa {
    /// The best the CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// `detect()`, lowered by `BITNET_ISA=scalar|avx2|avx512` (never raised above the CPU).
    pub fn from_env() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::detect();
            let wanted = match std::env::var("BITNET_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                _ => best,
            };
            wanted.min(best)
        })
    }
}

/// `BITNET_THREADS`, the one place it is read: kernel threads when the caller names none
/// (`bitnet serve --threads`, `LoadOptions::threads`).
pub fn threads_from_env() -> Option<usize> {
    std::env::var("BITNET_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&t| t > 0)
}

/// AVX-512 VBMI (byte permutes), used by the TQ1_0 prefill kernel on top of
/// [`Isa::Avx512Vnni`].
pub fn has_vbmi() -> bool {
    static VBMI: OnceLock<bool> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    return *VBMI.get_or_init(|| is_x86_feature_detected!("avx512vbmi"));
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One layer's cached keys or values, as stored: f32, or f16 (half the memory and reads).
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

/// Largest row block handed to one kernel call.
const ROW_BLOCK: usize = DECODE_ROWS;

/// Row blocks when decoding one token: long weight streams (see `x86::GEMV_STREAMS`).
const DECODE_ROWS: usize = 512;

/// Row blocks for several tokens: a block's rows stay in cache across token tiles.
const PREFILL_ROWS: usize = 128;
const DECODE_MIN_ROWS: usize = 8;

/// Rows of the F16 head read at once (see [`x86::dot_f16_rows_avx512`]).
const HEAD_STREAMS: usize = 8;
const HEAD_STREAMS_AVX2: usize = 4;

/// How one BitLinear call runs, decided in one place ([`Kernels::ternary_plan`]) from the
/// CPU, the tensor (type, row length, scale) and the number of tokens, as ggml's type-traits
/// table does: the activation orders to prepare, the row blocks, the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TernaryPlan {
    /// The scalar specification, row by row: no SIMD, per-block TQ scales, or rows that are
    /// not whole 256-weight blocks.
    Scalar,
    /// Per-row kernels on the file's layout: the AVX-512 VNNI ones, or the AVX2 ones.
    #[cfg(target_arch = "x86_64")]
    Rows { layout: x86::Layout, avx512: bool },
    /// TQ1_0 with several tokens (AVX-512 VBMI): each block of rows decoded to 2-bit codes
    /// once, then the 2-bit kernels for every token tile (extracting trits per tile would
    /// cost more than the dots).
    #[cfg(target_arch = "x86_64")]
    DecodedTq1_0,
    /// Many tokens (AVX-512): rows interleaved per slab for the GEMM; the rows past the last
    /// whole group take [`TernaryPlan::row_kernel`].
    #[cfg(target_arch = "x86_64")]
    Interleaved(InterleavedSource),
}

/// Fewest tokens for which TQ1_0 rows are decoded to 2-bit codes per row block.
#[cfg(target_arch = "x86_64")]
const DECODE_TQ1_MIN_TOKENS: usize = 8;

impl TernaryPlan {
    /// The activation orders its kernels read.
    fn orders(self) -> ActOrders {
        #[cfg(target_arch = "x86_64")]
        {
            // Every plan's kernels read the order of its per-row kernel.
            let Some((layout, _)) = self.row_kernel() else {
                return ActOrders::default();
            };
            match layout {
                x86::Layout::TwoBit(x86::TwoBit::Codes) | x86::Layout::Tq1_0Packed => ActOrders {
                    perm1p: true,
                    ..Default::default()
                },
                x86::Layout::TwoBit(_) => ActOrders {
                    perm2: true,
                    ..Default::default()
                },
                x86::Layout::Tq1_0 => ActOrders {
                    perm1: true,
                    ..Default::default()
                },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        ActOrders::default()
    }

    /// The per-row kernel (layout, AVX-512) for rows outside the plan's main path: one row
    /// at a time, and the rows past the GEMM's last whole group.
    #[cfg(target_arch = "x86_64")]
    fn row_kernel(self) -> Option<(x86::Layout, bool)> {
        match self {
            TernaryPlan::Scalar => None,
            TernaryPlan::Rows { layout, avx512 } => Some((layout, avx512)),
            TernaryPlan::DecodedTq1_0 | TernaryPlan::Interleaved(InterleavedSource::Tq1_0) => {
                Some((x86::Layout::Tq1_0Packed, true))
            }
            TernaryPlan::Interleaved(InterleavedSource::TwoBit(kind)) => {
                Some((x86::Layout::TwoBit(kind), true))
            }
        }
    }
}

/// The activation row of token `t` in the order `layout` reads.
#[cfg(target_arch = "x86_64")]
fn layout_row(acts: &QuantizedActs, layout: x86::Layout, t: usize) -> Option<&[i8]> {
    match layout {
        x86::Layout::TwoBit(x86::TwoBit::Codes) | x86::Layout::Tq1_0Packed => acts.perm1p_row(t),
        x86::Layout::TwoBit(_) => acts.perm2_row(t),
        x86::Layout::Tq1_0 => acts.perm1_row(t),
    }
}

/// BitLinear outputs of rows `r0..r1` (at most [`ROW_BLOCK`]) for tokens `t0..t0+T`,
/// written to `dst` at `t * rows + m`.
#[allow(clippy::too_many_arguments)]
fn tile_rows<const T: usize>(
    plan: TernaryPlan,
    w: &TernaryMatrix<'_>,
    (r0, r1): (usize, usize),
    decoded: Option<&[u8]>,
    acts: &QuantizedActs,
    t0: usize,
    dst: SharedOut,
) {
    debug_assert!(r1 - r0 <= ROW_BLOCK);
    let (rows, nr) = (w.rows, r1 - r0);
    let mut d = [[0i32; T]; ROW_BLOCK];
    let fast = fast_rows::<T>(plan, w, (r0, r1), decoded, acts, t0, &mut d[..nr]);
    if let (true, TernaryScale::Uniform(scale)) = (fast, w.scale) {
        // Token by token: one division per value as the specification has it, but over a
        // contiguous run of rows (vectorised) and written out contiguously.
        let mut y = [0f32; ROW_BLOCK];
        for t in 0..T {
            let (sum, s) = (acts.sums[t0 + t], acts.scales[t0 + t]);
            for (v, di) in y.iter_mut().zip(&d[..nr]) {
                *v = (di[t] - sum) as f32;
            }
            for v in &mut y[..nr] {
                *v = (*v / s) * scale;
            }
            // SAFETY: indices (t0+t)*rows + r0 .. +nr are below n*rows = len; rows r0..r1
            // belong to this worker's chunk only, so no other worker writes them.
            unsafe { dst.write_run((t0 + t) * rows + r0, &y[..nr]) };
        }
        return;
    }
    for m in r0..r1 {
        for t in 0..T {
            let v = w.row_dot_scalar(m, acts.row(t0 + t), acts.scales[t0 + t]);
            // SAFETY: index (t0+t)*rows+m < n*rows = len; row m belongs to this worker's
            // chunk only, so no other worker writes it.
            unsafe { dst.write((t0 + t) * rows + m, v) };
        }
    }
}

/// Integer dots of a block of rows with the plan's per-row kernel in one SIMD call; false
/// when the plan has none (the caller then uses the scalar specification). `decoded`: the
/// rows `r0..r1` of a TQ1_0 matrix already decoded by `x86::decode_tq1_0_rows`.
#[allow(unused_variables)]
fn fast_rows<const T: usize>(
    plan: TernaryPlan,
    w: &TernaryMatrix<'_>,
    (r0, r1): (usize, usize),
    decoded: Option<&[u8]>,
    acts: &QuantizedActs,
    t0: usize,
    out: &mut [[i32; T]],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (layout, avx512, data, row_bytes, rows) = match (decoded, plan.row_kernel()) {
            (Some(codes), _) => (
                x86::Layout::TwoBit(x86::TwoBit::Codes),
                true,
                codes,
                w.k / 4,
                (0, r1 - r0),
            ),
            (None, Some((layout, avx512))) => (layout, avx512, w.data, w.row_bytes(), (r0, r1)),
            (None, None) => return false,
        };
        let q: [Option<&[i8]>; T] = std::array::from_fn(|t| layout_row(acts, layout, t0 + t));
        if q.iter().any(Option::is_none) {
            debug_assert!(false, "activations quantized without {layout:?}'s order");
            return false;
        }
        let q: [&[i8]; T] = std::array::from_fn(|t| q[t].unwrap_or_default());
        // SAFETY: the plan chose this kernel for the detected ISA (and VBMI for the packed
        // TQ1_0 order), k a multiple of 256 and a uniform scale; `data` holds the rows in
        // `layout` (the decoded codes: k / 4 bytes per row), each activation row is in that
        // layout's order for k inputs, `out` has r1 - r0 entries.
        unsafe {
            if avx512 {
                x86::rows_avx512::<T>(layout, data, row_bytes, rows, q, w.k, out);
            } else {
                x86::rows_avx2::<T>(layout, data, row_bytes, rows, q, w.k, out);
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

thread_local! {
    /// A worker's TQ1_0 rows decoded for prefill (reused: no allocation per call).
    static DECODED_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A worker's row groups interleaved for the prefill GEMM and its integer sums per token
    /// (reused likewise).
    #[allow(clippy::type_complexity)]
    static INTERLEAVED_ROWS: std::cell::RefCell<(Vec<u8>, Vec<[i32; GEMM_ROWS]>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Fewest tokens for which BitLinear decodes each block of rows into the interleaved
/// layout of [`x86::gemm`]: below this the decode costs more than the GEMM saves (measured
/// on 2B4T, 1 thread: pp16 60 vs 67 tok/s, pp24 76 vs 80, pp32 83 vs 82, pp48 92 vs 84).
pub const INTERLEAVE_MIN_TOKENS: usize = 32;

/// Tokens per call of the interleaved GEMM: 4 row groups x 6 tokens = 24 accumulators.
const GEMM_TOKENS: usize = 6;

/// Which decoder feeds the interleaved GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InterleavedSource {
    #[cfg(target_arch = "x86_64")]
    TwoBit(x86::TwoBit),
    #[cfg(target_arch = "x86_64")]
    Tq1_0,
}

/// Weight blocks (256 inputs) per slab of the interleaved GEMM: 64 rows x 512 inputs of
/// decoded codes (32 KiB) stay in L1 while every token tile runs over them.
const GEMM_SLAB_BLOCKS: usize = 2;

/// Rows per block of the interleaved GEMM: four groups of 16, one accumulator per group and
/// token.
const GEMM_ROWS: usize = 64;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(GEMM_ROWS == 4 * x86::gemm::GROUP);

/// BitLinear outputs of rows `r0 .. r0 + 16 * groups` (at most [`GEMM_ROWS`]) for every
/// token: slab by slab of inputs, decode the rows into `buf` once, then the GEMM per tile of
/// tokens, the integer sums kept in `sums`; the epilogue per token at the end.
#[cfg(target_arch = "x86_64")]
fn interleaved_rows(
    source: InterleavedSource,
    w: &TernaryMatrix<'_>,
    r0: usize,
    groups: usize,
    acts: &QuantizedActs,
    (buf, sums): (&mut Vec<u8>, &mut Vec<[i32; GEMM_ROWS]>),
    dst: SharedOut,
) {
    debug_assert!(groups * x86::gemm::GROUP <= GEMM_ROWS);
    let (n, rb, nb) = (acts.n_rows(), w.row_bytes(), w.k / 256);
    sums.clear();
    sums.resize(n, [0; GEMM_ROWS]);
    buf.resize(groups * x86::gemm::group_bytes(256 * GEMM_SLAB_BLOCKS), 0);
    let rows = &w.data[r0 * rb..];
    let mut b0 = 0;
    while b0 < nb {
        let blocks = b0..(b0 + GEMM_SLAB_BLOCKS).min(nb);
        let k = 256 * blocks.len();
        // SAFETY: the plan checked the ISA (AVX-512 F/BW/VNNI, and VBMI for
        // TQ1_0) and that k is a multiple of 256; `rows` starts at row r0 and holds
        // 16 * groups rows of nb blocks; `buf` holds groups * group_bytes(k) bytes or more.
        unsafe {
            match source {
                InterleavedSource::TwoBit(kind) => {
                    x86::gemm::interleave_two_bit(kind, rows, rb, groups, blocks.clone(), buf)
                }
                InterleavedSource::Tq1_0 => {
                    x86::gemm::interleave_tq1_0(rows, groups, w.k, blocks.clone(), buf)
                }
            }
        }
        let inputs = 256 * b0..256 * b0 + k;
        let mut t0 = 0;
        while t0 < n {
            let tile = (n - t0).min(GEMM_TOKENS);
            let (codes, sums) = (&buf[..], &mut sums[t0..]);
            let run = match tile {
                6 => interleaved_tile::<6>,
                5 => interleaved_tile::<5>,
                4 => interleaved_tile::<4>,
                3 => interleaved_tile::<3>,
                2 => interleaved_tile::<2>,
                _ => interleaved_tile::<1>,
            };
            run(source, acts, t0, inputs.clone(), groups, codes, sums);
            t0 += tile;
        }
        b0 = blocks.end;
    }
    let TernaryScale::Uniform(scale) = w.scale else {
        unreachable!("the plan checked the scale")
    };
    let nr = groups * x86::gemm::GROUP;
    for (t, d) in sums.iter().enumerate() {
        let (sum, s) = (acts.sums[t], acts.scales[t]);
        // SAFETY: indices t*rows + r0 .. +nr are below n*rows = len; rows r0..r0+nr belong
        // to this worker's chunk only, so no other worker reads or writes them.
        let out = unsafe { dst.run(t * w.rows + r0, nr) };
        // As the specification: (D - sum q) as f32, divided by the token's scale, times
        // the tensor's.
        for (o, &di) in out.iter_mut().zip(&d[..nr]) {
            *o = ((di - sum) as f32 / s) * scale;
        }
    }
}

/// One token tile of one slab of [`interleaved_rows`].
#[cfg(target_arch = "x86_64")]
fn interleaved_tile<const T: usize>(
    source: InterleavedSource,
    acts: &QuantizedActs,
    t0: usize,
    inputs: std::ops::Range<usize>,
    groups: usize,
    codes: &[u8],
    sums: &mut [[i32; GEMM_ROWS]],
) {
    let q: [&[i8]; T] = std::array::from_fn(|t| {
        let row = match source {
            InterleavedSource::TwoBit(_) => acts.perm2_row(t0 + t),
            InterleavedSource::Tq1_0 => acts.perm1p_row(t0 + t),
        };
        &row.expect("`plan_for` checked the activation order")[inputs.clone()]
    });
    let k = inputs.len();
    // SAFETY: the ISA and shapes were checked by the plan; `codes` holds
    // `groups` interleaved groups for these k inputs against this activation order.
    unsafe {
        match groups {
            4 => x86::gemm::dot_groups::<4, T>(codes, q, k, sums),
            3 => x86::gemm::dot_groups::<3, T>(codes, q, k, sums),
            2 => x86::gemm::dot_groups::<2, T>(codes, q, k, sums),
            _ => x86::gemm::dot_groups::<1, T>(codes, q, k, sums),
        }
    }
}

/// A raw output pointer shared by workers that write disjoint index sets.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32, usize);
// SAFETY: workers only write indices no other worker writes (each owns a disjoint set of
// output rows), and the owning slice outlives the parallel scope that uses the pointer.
unsafe impl Send for SharedOut {}
// SAFETY: as above; no index is read or written by two workers.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i < len`, and no other thread accesses index `i` during the parallel scope.
    #[inline]
    unsafe fn write(self, i: usize, v: f32) {
        debug_assert!(i < self.1);
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(i) = v }
    }

    /// The run `start .. start + len` as a slice.
    ///
    /// # Safety
    /// `start + len <= self.1`, and no other thread accesses those indices while the slice
    /// lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn run(&self, start: usize, len: usize) -> &mut [f32] {
        debug_assert!(start + len <= self.1);
        // SAFETY: guaranteed by the caller: in bounds of the live output, and exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// # Safety
    /// `start + v.len() <= len`, and no other thread accesses those indices during the
    /// parallel scope.
    #[inline]
    unsafe fn write_run(self, start: usize, v: &[f32]) {
        debug_assert!(start + v.len() <= self.1);
        // SAFETY: guaranteed by the caller; `v` is a separate stack buffer.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.0.add(start), v.len()) }
    }
}

/// Thread pool plus kernel choice, built once per model.
pub struct Kernels {
    pool: pool::Pool,
    pub isa: Isa,
    /// AVX-512 VBMI (byte permutes) may be used: detected with [`Isa::Avx512Vnni`]; tests
    /// turn it off to run the kernels of CPUs without it.
    pub vbmi: bool,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Kernels {
    /// `threads` workers (the caller included); `None`: [`threads_from_env`], else every
    /// available core.
    pub fn new(threads: Option<usize>) -> Self {
        let threads = threads
            .filter(|&t| t > 0)
            .or_else(threads_from_env)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let isa = Isa::from_env();
        Self {
            pool: pool::Pool::new(threads),
            isa,
            vbmi: isa == Isa::Avx512Vnni && has_vbmi(),
        }
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Runs `f` on this thread with this pool current: [`pool::for_each`] inside it (and the
    /// kernels) run on the pool.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        self.pool.install(f)
    }

    /// How BitLinear runs for `w` and `n` tokens: the one place that decides it.
    fn ternary_plan(&self, w: &TernaryMatrix<'_>, n: usize) -> TernaryPlan {
        #[cfg(target_arch = "x86_64")]
        if self.isa >= Isa::Avx2
            && w.k.is_multiple_of(256)
            && matches!(w.scale, TernaryScale::Uniform(_))
        {
            use x86::{Layout, TwoBit};
            let avx512 = self.isa == Isa::Avx512Vnni;
            let vbmi = avx512 && self.vbmi;
            let many = n >= INTERLEAVE_MIN_TOKENS;
            let two_bit = match w.ty {
                GgmlType::I2S => Some(TwoBit::I2s),
                GgmlType::Tq2_0 => Some(TwoBit::Tq2_0),
                _ => None,
            };
            return match (w.ty, two_bit) {
                (_, Some(kind)) if avx512 && many => {
                    TernaryPlan::Interleaved(InterleavedSource::TwoBit(kind))
                }
                (_, Some(kind)) => TernaryPlan::Rows {
                    layout: Layout::TwoBit(kind),
                    avx512,
                },
                (GgmlType::Tq1_0, _) if vbmi && many => {
                    TernaryPlan::Interleaved(InterleavedSource::Tq1_0)
                }
                (GgmlType::Tq1_0, _) if vbmi && n >= DECODE_TQ1_MIN_TOKENS => {
                    TernaryPlan::DecodedTq1_0
                }
                // Several tokens: the packed trit planes (4 dot products per token and block
                // instead of 5) where the CPU can pack them.
                (GgmlType::Tq1_0, _) if vbmi && n > 1 => TernaryPlan::Rows {
                    layout: Layout::Tq1_0Packed,
                    avx512,
                },
                // One token: the plane-by-plane GEMV (no trit extraction with AVX-512).
                (GgmlType::Tq1_0, _) => TernaryPlan::Rows {
                    layout: Layout::Tq1_0,
                    avx512,
                },
                _ => TernaryPlan::Scalar,
            };
        }
        let _ = (w, n);
        TernaryPlan::Scalar
    }

    /// The activation orders to prepare for `n` tokens multiplied by every matrix of `ws`.
    pub fn act_orders(&self, ws: &[&TernaryMatrix<'_>], n: usize) -> ActOrders {
        ws.iter().fold(ActOrders::default(), |o, w| {
            o.union(self.ternary_plan(w, n).orders())
        })
    }

    /// The plan for `w` and `acts`, or the scalar specification when `acts` lacks an order
    /// the plan reads (quantized for other kernels: slower, never wrong).
    fn plan_for(&self, w: &TernaryMatrix<'_>, acts: &QuantizedActs) -> TernaryPlan {
        let n = acts.n_rows();
        let plan = self.ternary_plan(w, n);
        let o = plan.orders();
        let last = n.saturating_sub(1);
        let present = n == 0
            || ((!o.perm2 || acts.perm2_row(last).is_some())
                && (!o.perm1 || acts.perm1_row(last).is_some())
                && (!o.perm1p || acts.perm1p_row(last).is_some()));
        if present {
            plan
        } else {
            debug_assert!(
                false,
                "activations quantized without the orders of {plan:?}"
            );
            TernaryPlan::Scalar
        }
    }

    /// BitLinear outputs of row `m` for tokens `t0..t0+T` with the per-row kernel the plan
    /// has for all of `acts`' tokens, bit-identical to [`TernaryMatrix::row_dot_scalar`].
    pub fn bitlinear_row<const T: usize>(
        &self,
        w: &TernaryMatrix<'_>,
        m: usize,
        acts: &QuantizedActs,
        t0: usize,
        out: &mut [f32; T],
    ) {
        let plan = self.plan_for(w, acts);
        let mut d = [[0i32; T]; 1];
        if let (true, TernaryScale::Uniform(scale)) = (
            fast_rows(plan, w, (m, m + 1), None, acts, t0, &mut d),
            w.scale,
        ) {
            for t in 0..T {
                out[t] = ((d[0][t] - acts.sums[t0 + t]) as f32 / acts.scales[t0 + t]) * scale;
            }
        } else {
            for t in 0..T {
                out[t] = w.row_dot_scalar(m, acts.row(t0 + t), acts.scales[t0 + t]);
            }
        }
    }

    /// BitLinear: `out[t * rows + m] = (D(w_m, q_t) / s_t) * scale` for every token t.
    pub fn bitlinear(&self, w: &TernaryMatrix<'_>, acts: &QuantizedActs, out: &mut [f32]) {
        let n = acts.n_rows();
        let rows = w.rows;
        assert_eq!(out.len(), n * rows);
        assert_eq!(acts.k, w.k);
        if n == 0 {
            return;
        }
        let dst = SharedOut(out.as_mut_ptr(), out.len());
        let plan = self.plan_for(w, acts);
        #[cfg(target_arch = "x86_64")]
        let (interleaved, decode_tq1) = match plan {
            TernaryPlan::Interleaved(source) => (Some(source), false),
            TernaryPlan::DecodedTq1_0 => (None, true),
            _ => (None, false),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (interleaved, decode_tq1): (Option<InterleavedSource>, bool) = (None, false);
        // The interleaved GEMM takes whole groups of 16 rows, four at a time; the per-row
        // kernels blocks of rows that shrink toward the end so that the threads finish
        // together.
        let chunks = if interleaved.is_some() {
            pool::Guided::uniform(rows, GEMM_ROWS)
        } else if n == 1 {
            pool::Guided::new(rows, self.threads(), DECODE_MIN_ROWS, DECODE_ROWS)
        } else {
            pool::Guided::new(rows, self.threads(), 8, PREFILL_ROWS)
        };
        let run_tiles = |(r0, r1): (usize, usize), decoded: Option<&[u8]>| {
            let mut t0 = 0;
            // Token tiles share each decoded weight chunk: 8, then 4, then single tokens.
            while t0 < n {
                let tile = if n - t0 >= 8 {
                    8
                } else if n - t0 >= 4 {
                    4
                } else {
                    1
                };
                match tile {
                    8 => tile_rows::<8>(plan, w, (r0, r1), decoded, acts, t0, dst),
                    4 => tile_rows::<4>(plan, w, (r0, r1), decoded, acts, t0, dst),
                    _ => tile_rows::<1>(plan, w, (r0, r1), decoded, acts, t0, dst),
                }
                t0 += tile;
            }
        };
        self.pool.run(chunks.len(), &|c| {
            let (r0, r1) = chunks.range(c);
            #[cfg(target_arch = "x86_64")]
            if let Some(source) = interleaved {
                let groups = (r1 - r0) / x86::gemm::GROUP;
                if groups > 0 {
                    INTERLEAVED_ROWS.with_borrow_mut(|(buf, sums)| {
                        interleaved_rows(source, w, r0, groups, acts, (buf, sums), dst)
                    });
                }
                // Rows past the last whole group: the per-row kernels.
                let done = r0 + groups * x86::gemm::GROUP;
                if done < r1 {
                    run_tiles((done, r1), None);
                }
                return;
            }
            if !decode_tq1 {
                return run_tiles((r0, r1), None);
            }
            #[cfg(target_arch = "x86_64")]
            DECODED_ROWS.with_borrow_mut(|buf| {
                let rb = w.row_bytes();
                buf.resize((r1 - r0) * w.k / 4, 0);
                // SAFETY: the plan requires AVX-512 VBMI (detected) and k a multiple of
                // 256; rows r0..r1 are TQ1_0 rows of k weights in `w.data`; `buf` holds
                // (r1 - r0) * k / 4 bytes.
                unsafe { x86::decode_tq1_0_rows(&w.data[r0 * rb..r1 * rb], r1 - r0, w.k, buf) };
                run_tiles((r0, r1), Some(buf));
            });
        });
    }

    /// Row ranges of a dense matrix (the output head) for the workers: many small ones, so
    /// that the threads finish together.
    fn head_chunks(&self, rows: usize) -> pool::Guided {
        pool::Guided::new(rows, self.threads(), 64, rows.div_ceil(self.threads() * 16))
    }

    /// `out[r] = w_r · x` for every row r of a dense matrix (the output head).
    pub fn matvec(&self, w: &DenseMatrix<'_>, x: &[f32], out: &mut [f32]) {
        assert_eq!(out.len(), w.rows);
        if head::is_quantized_head(w.ty) {
            return self.quant_head(w, x, out);
        }
        let chunks = self.head_chunks(w.rows);
        let dst = SharedOut(out.as_mut_ptr(), out.len());
        self.pool.run(chunks.len(), &|c| {
            let (r0, r1) = chunks.range(c);
            // SAFETY: chunks are disjoint ranges of `out`, each run once.
            dense_rows(self.isa, w, x, r0, unsafe { dst.run(r0, r1 - r0) });
        });
    }

    /// [`Kernels::matmul_dense`] for a Q8_0 / Q6_K / Q4_0 matrix: each vector quantized
    /// once, then [`quant_head_rows`] on the workers.
    fn quant_head(&self, w: &DenseMatrix<'_>, xs: &[f32], out: &mut [f32]) {
        let acts: Vec<HeadActs> = xs
            .chunks_exact(w.k)
            .map(|x| HeadActs::new(x, w.ty))
            .collect();
        let chunks = self.head_chunks(w.rows);
        let dst = SharedOut(out.as_mut_ptr(), out.len());
        self.pool.run(chunks.len(), &|c| {
            // SAFETY: chunks are disjoint row ranges, each run once: this worker alone writes
            // rows r0..r1 of every output row.
            quant_head_rows(self.isa, w, &acts, chunks.range(c), |j, r, v| unsafe {
                dst.write(j * w.rows + r, v)
            });
        });
    }

    /// `out[j * rows + r] = w_r · x_j` for every vector `x_j` of `xs` (`k` floats each): the
    /// head for a batch of sequences. Each block of rows is read from memory once and dotted
    /// with every vector while it is in cache; each output is computed exactly as
    /// [`Kernels::matvec`] computes it, so a sequence's logits do not depend on the batch.
    pub fn matmul_dense(&self, w: &DenseMatrix<'_>, xs: &[f32], out: &mut [f32]) {
        let m = xs.len() / w.k;
        assert_eq!(xs.len(), m * w.k);
        assert_eq!(out.len(), m * w.rows);
        if head::is_quantized_head(w.ty) {
            return self.quant_head(w, xs, out);
        }
        if m == 1 {
            return self.matvec(w, xs, out);
        }
        let chunks = self.head_chunks(w.rows);
        let dst = SharedOut(out.as_mut_ptr(), out.len());
        self.pool.run(chunks.len(), &|c| {
            let (r0, r1) = chunks.range(c);
            #[cfg(target_arch = "x86_64")]
            if head_plan(self.isa, w) == (HeadPlan::F16 { avx512: true }) {
                // SAFETY: as below: this worker alone writes rows r0..r1 of every output row.
                return f16_rows_vectors_avx512(w, xs, (r0, r1), |j, r, v| unsafe {
                    dst.write(j * w.rows + r, v)
                });
            }
            let mut b0 = r0;
            while b0 < r1 {
                let b1 = (b0 + HEAD_BATCH_ROWS).min(r1);
                for (j, x) in xs.chunks_exact(w.k).enumerate() {
                    // SAFETY: chunks are disjoint row ranges, each run once; for vector j this
                    // worker alone writes rows b0..b1 of output row j.
                    dense_rows(self.isa, w, x, b0, unsafe {
                        dst.run(j * w.rows + b0, b1 - b0)
                    });
                }
                b0 = b1;
            }
        });
    }
}

/// Rows `r0..r1` of an F16 matrix against every vector of `xs`, `put(vector, row, value)` for
/// each output: blocks of [`HEAD_TILE_ROWS`] rows, slices of [`HEAD_TILE_K`] values (the
/// vectors' slices stay in L1 while every row of the block passes), two rows by four vectors
/// per kernel call with their chains kept between slices. Measured on 2B4T's head (2 threads,
/// Zen 4, noisy VM): 4 vectors in 33 ms and 8 in 55-62 ms, against 37 and 59 ms one vector
/// at a time and 22 ms for one (memory-bound).
#[cfg(target_arch = "x86_64")]
fn f16_rows_vectors_avx512(
    w: &DenseMatrix<'_>,
    xs: &[f32],
    (r0, r1): (usize, usize),
    put: impl Fn(usize, usize, f32),
) {
    let k = w.k;
    let main = k / 32 * 32;
    let row = |r: usize| &w.data[r * 2 * k..(r + 1) * 2 * k];
    let vectors: Vec<&[f32]> = xs.chunks_exact(k).collect();
    let groups = vectors.len().div_ceil(4);
    // SAFETY: AVX-512 F was detected (Isa::Avx512Vnni).
    let zero = unsafe { x86::f16_tile_acc_zero() };
    let mut acc = vec![zero; HEAD_TILE_ROWS.div_ceil(2) * groups];
    let mut b0 = r0;
    while b0 < r1 {
        let b1 = (b0 + HEAD_TILE_ROWS).min(r1);
        acc.iter_mut().for_each(|a| *a = zero);
        let mut k0 = 0;
        while k0 < main {
            let k1 = (k0 + HEAD_TILE_K).min(main);
            for (p, r) in (b0..b1).step_by(2).enumerate() {
                let two = r + 1 < b1;
                // The same slice of the next block's rows, on its way from memory while this
                // block computes (the slices of a block are strided, which the hardware
                // prefetchers follow poorly).
                for nr in (r + HEAD_TILE_ROWS..r1).take(2) {
                    let at = &w.data[nr * 2 * k + 2 * k0..nr * 2 * k + 2 * k1];
                    for line in at.chunks(64) {
                        // SAFETY: a prefetch hint on an address inside `w.data`.
                        unsafe {
                            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                                line.as_ptr() as *const i8,
                            )
                        };
                    }
                }
                for g in 0..groups {
                    let v0 = 4 * g;
                    let nv = (vectors.len() - v0).min(4);
                    let a = &mut acc[p * groups + g];
                    macro_rules! tile {
                        ($R:literal, $V:literal) => {{
                            let rs: [&[u8]; $R] = std::array::from_fn(|i| row(r + i));
                            let vs: [&[f32]; $V] = std::array::from_fn(|i| vectors[v0 + i]);
                            // SAFETY: AVX-512 F, F16C and FMA were detected (Isa::Avx512Vnni);
                            // rows hold k f16 values, vectors k f32 values; k0 and k1 are
                            // multiples of 32 within `main`.
                            unsafe { x86::f16_tile_avx512::<$R, $V>(rs, vs, (k0, k1), a) }
                        }};
                    }
                    match (two, nv) {
                        (true, 4) => tile!(2, 4),
                        (true, 3) => tile!(2, 3),
                        (true, 2) => tile!(2, 2),
                        (true, _) => tile!(2, 1),
                        (false, 4) => tile!(1, 4),
                        (false, 3) => tile!(1, 3),
                        (false, 2) => tile!(1, 2),
                        (false, _) => tile!(1, 1),
                    }
                }
            }
            k0 = k1;
        }
        for (p, r) in (b0..b1).step_by(2).enumerate() {
            for i in 0..(b1 - r).min(2) {
                for (j, x) in vectors.iter().enumerate() {
                    let chains = acc[p * groups + j / 4][i][j % 4];
                    // SAFETY: AVX-512 F was detected; the row holds k = x.len() f16 values.
                    let v = unsafe { x86::f16_tile_finish(chains, row(r + i), x) };
                    put(j, r + i, v);
                }
            }
        }
        b0 = b1;
    }
}

/// Rows per block of the batched head: their chains (8 KiB for 8 vectors) stay in L1.
#[cfg(target_arch = "x86_64")]
const HEAD_TILE_ROWS: usize = 8;
/// Values per slice of the batched head: 8 vectors' slices are 8 KiB.
#[cfg(target_arch = "x86_64")]
const HEAD_TILE_K: usize = 256;

/// Rows of the head a batch shares while they are in cache (16 rows of 2,560 F16 values:
/// 80 KiB, within L2 next to the vectors).
const HEAD_BATCH_ROWS: usize = 16;

/// `out[i] = dot(row(first + i))`: `S` rows at a time spread over the range
/// ([`x86::spread`]), then the rows left over one by one.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn spread_rows<'a, const S: usize>(
    out: &mut [f32],
    first: usize,
    row: impl Fn(usize) -> &'a [u8],
    many: impl Fn([&'a [u8]; S]) -> [f32; S],
    one: impl Fn(&'a [u8]) -> f32,
) {
    let end = first + out.len();
    let done = x86::spread(out, (first, end), |rs| many(rs.map(&row)));
    for m in done..end {
        out[m - first] = one(row(m));
    }
}

/// How a dense matrix (the output head) runs, decided in one place from the CPU and the
/// matrix, never from the batch (so a sequence's logits do not depend on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadPlan {
    /// Q8_0 / Q6_K / Q4_0 with the integer kernels: AVX-512 VNNI (rows of a multiple of 64
    /// values) or AVX2.
    #[cfg(target_arch = "x86_64")]
    Quantized {
        ty: x86::head::HeadType,
        avx512: bool,
    },
    /// F16 rows with F16C and FMA: AVX-512 or AVX2.
    #[cfg(target_arch = "x86_64")]
    F16 { avx512: bool },
    /// The scalar specification: `head::dot_scalar` for quantized rows, `matvec_scalar` for
    /// float ones.
    Scalar,
}

fn head_plan(isa: Isa, w: &DenseMatrix<'_>) -> HeadPlan {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = isa == Isa::Avx512Vnni;
        if let Some(ty) = x86::head::HeadType::of(w.ty) {
            if isa >= Isa::Avx2 {
                return HeadPlan::Quantized {
                    ty,
                    avx512: avx512 && w.k.is_multiple_of(64),
                };
            }
        } else if w.ty == GgmlType::F16 && isa >= Isa::Avx2 {
            return HeadPlan::F16 { avx512 };
        }
    }
    let _ = (isa, w);
    HeadPlan::Scalar
}

/// `out[i] = w_{r0+i} · x` with the kernels [`head_plan`] picks.
pub fn dense_rows(isa: Isa, w: &DenseMatrix<'_>, x: &[f32], r0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let HeadPlan::F16 { avx512 } = head_plan(isa, w) {
        let row_bytes = 2 * w.k;
        let row = |r: usize| &w.data[r * row_bytes..(r + 1) * row_bytes];
        if avx512 {
            // SAFETY: AVX-512 F, F16C and FMA were detected; each row holds k f16 values.
            let many = |rows| unsafe { x86::dot_f16_rows_avx512::<HEAD_STREAMS>(rows, x) };
            // SAFETY: as above.
            let one = |r| unsafe { x86::dot_f16_rows_avx512::<1>([r], x) }[0];
            return spread_rows(out, r0, row, many, one);
        }
        // SAFETY: AVX2, F16C and FMA were detected; each row holds k f16 values.
        let many = |rows| unsafe { x86::dot_f16_rows_avx2::<HEAD_STREAMS_AVX2>(rows, x) };
        // SAFETY: as above.
        let one = |r| unsafe { x86::dot_f16_rows_avx2::<1>([r], x) }[0];
        return spread_rows(out, r0, row, many, one);
    }
    if head::is_quantized_head(w.ty) {
        let acts = [HeadActs::new(x, w.ty)];
        let n = out.len();
        return quant_head_rows(isa, w, &acts, (r0, r0 + n), |_, r, v| out[r - r0] = v);
    }
    w.matvec_scalar(x, r0..r0 + out.len(), out);
}

/// Rows `r0..r1` of a Q8_0 / Q6_K / Q4_0 matrix against every vector of `acts` (quantized
/// for `w.ty`), `put(vector, row, value)` for each output; see [`x86::head`]. Every (row,
/// vector) pair is computed by the same operations whatever the tile it is in, so a
/// sequence's logits do not depend on the batch.
pub fn quant_head_rows(
    isa: Isa,
    w: &DenseMatrix<'_>,
    acts: &[HeadActs],
    (r0, r1): (usize, usize),
    mut put: impl FnMut(usize, usize, f32),
) {
    assert!(head::is_quantized_head(w.ty) && acts.iter().all(|a| a.len() == w.k));
    let rb = head::row_bytes(w.ty, w.k);
    assert!(w.data.len() >= r1 * rb, "rows out of bounds");
    let row = |r: usize| &w.data[r * rb..(r + 1) * rb];
    #[cfg(target_arch = "x86_64")]
    if let HeadPlan::Quantized { ty, avx512 } = head_plan(isa, w) {
        macro_rules! tile {
            ($R:expr, $V:expr, $rows:expr, $acts:expr) => {{
                let (rs, vs): ([&[u8]; $R], [&HeadActs; $V]) = ($rows, $acts);
                // SAFETY: the instruction set was detected (`isa` never exceeds the
                // CPU's); every row holds k / 32 blocks of `ty` (bounds asserted above)
                // and every vector k values, k a multiple of 64 for AVX-512.
                unsafe {
                    if avx512 {
                        x86::head::tile_avx512::<$R, $V>(ty, rs, vs)
                    } else {
                        x86::head::tile_avx2::<$R, $V>(ty, rs, vs)
                    }
                }
            }};
        }
        // Vectors in groups of up to `per_group` (eight with AVX-512 on Q8_0 / Q4_0, whose
        // 32 registers hold 2 x 8 accumulators: each row's blocks are unpacked once for
        // twice the vectors; four otherwise); for each group the rows are read in `S`
        // streams spread over the range (`x86::spread`: several weight streams in flight,
        // where one per thread leaves memory bandwidth unused), S shrinking as the group
        // grows so that the S x V accumulators stay in registers (Q6_K, which unpacks more:
        // 2). The rows left over go one at a time.
        let q6k = w.ty == GgmlType::Q6K;
        let per_group = if avx512 && !q6k { 8 } else { 4 };
        let mut out: Vec<[f32; 8]> = vec![[0f32; 8]; r1 - r0];
        for (g, vs) in acts.chunks(per_group).enumerate() {
            macro_rules! group {
                ($V:literal, $S:literal) => {{
                    let va: [&HeadActs; $V] = std::array::from_fn(|j| &vs[j]);
                    let widen = |t: [f32; $V]| {
                        let mut o = [0f32; 8];
                        o[..$V].copy_from_slice(&t);
                        o
                    };
                    let done = x86::spread::<_, $S>(&mut out, (r0, r1), |rs| {
                        tile!($S, $V, rs.map(row), va).map(widen)
                    });
                    for r in done..r1 {
                        out[r - r0] = widen(tile!(1, $V, [row(r)], va)[0]);
                    }
                }};
            }
            match (vs.len(), q6k, avx512) {
                (1, true, _) => group!(1, 2),
                (1, false, true) => group!(1, 8),
                (1, false, false) => group!(1, 4),
                (2, false, true) => group!(2, 4),
                (2, _, _) => group!(2, 2),
                (3, _, _) => group!(3, 2),
                (4, _, _) => group!(4, 2),
                (5, _, _) => group!(5, 2),
                (6, _, _) => group!(6, 2),
                (7, _, _) => group!(7, 2),
                _ => group!(8, 2),
            }
            for (i, o) in out.iter().enumerate() {
                for (j, &v) in o[..vs.len()].iter().enumerate() {
                    put(per_group * g + j, r0 + i, v);
                }
            }
        }
        return;
    }
    for r in r0..r1 {
        for (j, a) in acts.iter().enumerate() {
            put(j, r, head::dot_scalar(w.ty, row(r), a));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use x86::{Layout, TwoBit};

    fn matrix(ty: GgmlType, k: usize, scale: TernaryScale) -> TernaryMatrix<'static> {
        TernaryMatrix {
            ty,
            rows: 1,
            k,
            data: &[],
            scale,
        }
    }

    /// The plan table: which kernels each CPU gets per type and number of tokens, and the
    /// activation orders that go with them.
    #[test]
    fn one_plan_per_cpu_tensor_and_batch() {
        let uniform = TernaryScale::Uniform(0.5);
        let mut kern = Kernels::new(Some(1));
        let cpus = [
            (Isa::Scalar, false),
            (Isa::Avx2, false),
            (Isa::Avx512Vnni, false),
            (Isa::Avx512Vnni, true),
        ];
        for (isa, vbmi) in cpus {
            (kern.isa, kern.vbmi) = (isa, vbmi);
            let plan = |ty, n| kern.ternary_plan(&matrix(ty, 2560, uniform), n);
            let rows = |layout| TernaryPlan::Rows {
                layout,
                avx512: isa == Isa::Avx512Vnni,
            };
            for n in [1, 4, 8, 31, 32, 100] {
                let (i2s, tq1) = (plan(GgmlType::I2S, n), plan(GgmlType::Tq1_0, n));
                if isa == Isa::Scalar {
                    assert_eq!((i2s, tq1), (TernaryPlan::Scalar, TernaryPlan::Scalar));
                    continue;
                }
                let many = isa == Isa::Avx512Vnni && n >= INTERLEAVE_MIN_TOKENS;
                let want_i2s = if many {
                    TernaryPlan::Interleaved(InterleavedSource::TwoBit(TwoBit::I2s))
                } else {
                    rows(Layout::TwoBit(TwoBit::I2s))
                };
                assert_eq!(i2s, want_i2s, "{isa:?} n={n}");
                assert_eq!(
                    i2s.orders(),
                    ActOrders {
                        perm2: true,
                        ..Default::default()
                    }
                );
                let want_tq1 = match n {
                    1 => rows(Layout::Tq1_0),
                    _ if !vbmi => rows(Layout::Tq1_0),
                    n if n >= INTERLEAVE_MIN_TOKENS => {
                        TernaryPlan::Interleaved(InterleavedSource::Tq1_0)
                    }
                    n if n >= DECODE_TQ1_MIN_TOKENS => TernaryPlan::DecodedTq1_0,
                    _ => rows(Layout::Tq1_0Packed),
                };
                assert_eq!(tq1, want_tq1, "{isa:?} vbmi={vbmi} n={n}");
                let packed = want_tq1 != rows(Layout::Tq1_0);
                assert_eq!(
                    tq1.orders(),
                    ActOrders {
                        perm1: !packed,
                        perm1p: packed,
                        ..Default::default()
                    }
                );
            }
            // Per-block scales and rows that are not whole 256-weight blocks: the
            // specification, which reads the activations in their plain order only.
            let per_block =
                kern.ternary_plan(&matrix(GgmlType::Tq2_0, 2560, TernaryScale::PerBlock), 1);
            let odd = kern.ternary_plan(&matrix(GgmlType::I2S, 384, uniform), 1);
            assert_eq!((per_block, odd), (TernaryPlan::Scalar, TernaryPlan::Scalar));
            assert_eq!(per_block.orders(), ActOrders::default());
        }
    }

    /// The head's table: the type and row length decide, and the CPU.
    #[test]
    fn one_head_plan_per_cpu_and_matrix() {
        let m = |ty, k| DenseMatrix {
            ty,
            rows: 1,
            k,
            data: &[],
        };
        let q8 = x86::head::HeadType::Q8_0;
        let cases = [
            (
                Isa::Avx512Vnni,
                GgmlType::F16,
                2560,
                HeadPlan::F16 { avx512: true },
            ),
            (
                Isa::Avx2,
                GgmlType::F16,
                2560,
                HeadPlan::F16 { avx512: false },
            ),
            (Isa::Scalar, GgmlType::F16, 2560, HeadPlan::Scalar),
            (Isa::Avx512Vnni, GgmlType::F32, 2560, HeadPlan::Scalar),
            (
                Isa::Avx512Vnni,
                GgmlType::Q8_0,
                2560,
                HeadPlan::Quantized {
                    ty: q8,
                    avx512: true,
                },
            ),
            // AVX-512 reads 64 values per step: rows of 96 take the AVX2 kernels.
            (
                Isa::Avx512Vnni,
                GgmlType::Q8_0,
                96,
                HeadPlan::Quantized {
                    ty: q8,
                    avx512: false,
                },
            ),
            (
                Isa::Avx2,
                GgmlType::Q8_0,
                2560,
                HeadPlan::Quantized {
                    ty: q8,
                    avx512: false,
                },
            ),
            (Isa::Scalar, GgmlType::Q4_0, 2560, HeadPlan::Scalar),
        ];
        for (isa, ty, k, want) in cases {
            assert_eq!(head_plan(isa, &m(ty, k)), want, "{isa:?} {ty} k={k}");
        }
    }
}
