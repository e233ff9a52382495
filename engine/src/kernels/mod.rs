//! Matmul drivers: split work across the thread pool and pick the fastest kernel the CPU
//! has. Every fast path is checked against the scalar specification in `crate::quant`.

use crate::quant::{DenseMatrix, QuantizedActs, TernaryMatrix};

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
}

/// Thread pool plus kernel choice, built once per model.
pub struct Kernels {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("threads", &self.threads).finish()
    }
}

impl Kernels {
    pub fn new(threads: Option<usize>) -> Self {
        let threads = threads
            .filter(|&t| t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bitnet-{i}"))
            .build()
            .expect("thread pool");
        Self { pool, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// BitLinear: `out[t * rows + m] = (D(w_m, q_t) / s_t) * scale` for every token t.
    pub fn bitlinear(&self, w: &TernaryMatrix<'_>, acts: &QuantizedActs, out: &mut [f32]) {
        let n = acts.n_rows();
        let rows = w.rows;
        assert_eq!(out.len(), n * rows);
        assert_eq!(acts.k, w.k);
        let dst = SharedOut(out.as_mut_ptr(), out.len());
        let chunk = rows.div_ceil(self.threads * 8).max(16);
        self.pool.install(|| {
            use rayon::prelude::*;
            (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
                let r0 = c * chunk;
                let r1 = (r0 + chunk).min(rows);
                for m in r0..r1 {
                    for t in 0..n {
                        let y = w.row_dot_scalar(m, acts.row(t), acts.scales[t]);
                        // SAFETY: index t*rows+m < n*rows = len; row m belongs to this chunk
                        // only, so no other worker writes it.
                        unsafe { dst.write(t * rows + m, y) };
                    }
                }
            });
        });
    }

    /// `out[r] = w_r · x` for every row r of a dense matrix (the output head).
    pub fn matvec(&self, w: &DenseMatrix<'_>, x: &[f32], out: &mut [f32]) {
        assert_eq!(out.len(), w.rows);
        let chunk = w.rows.div_ceil(self.threads * 16).max(64);
        self.pool.install(|| {
            use rayon::prelude::*;
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
                let r0 = c * chunk;
                w.matvec_scalar(x, r0..r0 + o.len(), o);
            });
        });
    }
}
