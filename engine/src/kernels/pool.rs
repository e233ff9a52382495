//! The kernels' thread pool: the calling thread plus `threads - 1` workers that spin between
//! parallel regions.
//!
//! Decoding one token runs about 210 short regions (a few dozen microseconds to a few
//! milliseconds each). A pool whose idle workers sleep pays a futex wake-up per region and
//! per join, which cost about 6 % of decode time at 2 threads. Here a worker spins on the
//! region counter while regions keep coming and parks only after [`SPIN_FOR`] without one,
//! so a request pays no wake-ups after its first region and an idle instance burns no CPU.
//!
//! Chunks are claimed from a shared counter, so uneven chunks still balance. A region runs
//! on the thread that asks for it, which makes the calling thread one of the pool's threads.
//! A region inside a region (or one asked for outside [`Pool::install`]) runs serially. One
//! region runs at a time: a chunk must not wait for another thread that asks this pool for a
//! region (it would wait for the region lock the chunk's region holds).

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN_FOR: Duration = Duration::from_millis(2);

/// Spins between yields of a waiting thread (tens of microseconds).
const YIELD_AFTER: u32 = 1024;

/// One region: `f(c)` for every chunk `c < n`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
}

struct Shared {
    /// Bumped once per region; a worker runs the region when it sees a new value.
    epoch: AtomicUsize,
    /// The current region's `Job`, valid from the epoch bump until `running` reaches 0.
    job: AtomicPtr<()>,
    /// Next chunk to claim.
    next: AtomicUsize,
    /// Workers that have not finished the current region.
    running: AtomicUsize,
    /// Some chunk of the current region panicked on a worker (its payload is in `payload`).
    panicked: AtomicBool,
    payload: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    /// Parked workers wait here.
    parked: Mutex<usize>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One region at a time (sessions on several threads share the pool).
    region: Mutex<()>,
}

thread_local! {
    /// The pool that [`Pool::install`] made current on this thread, if any.
    static CURRENT: Cell<*const Pool> = const { Cell::new(std::ptr::null()) };
    /// This thread is running a chunk: a region asked for now runs serially.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A pool of `threads` threads in all: the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            payload: Mutex::new(None),
            stop: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
        });
        let mut pool = Self {
            shared,
            workers: Vec::with_capacity(threads.saturating_sub(1)),
            region: Mutex::new(()),
        };
        for i in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            // On failure `pool` drops, which stops the workers already started.
            let w = std::thread::Builder::new()
                .name(format!("bitnet-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn kernel worker thread");
            pool.workers.push(w);
        }
        pool
    }

    /// Threads that run a region: the workers plus the caller.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f` on this thread with this pool current, so that [`for_each`] inside it runs
    /// on the pool.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Pool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self)));
        f()
    }

    /// `f(c)` for every `c < n`, spread over the pool's threads; returns when all are done.
    /// A panic in any chunk is raised here once every thread has left the region.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || n == 1 || IN_REGION.with(Cell::get) {
            return serial(n, f);
        }
        // Released before a chunk's panic is re-raised; recover a poisoned lock anyway.
        let one = self.region.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job = Job { f, n };
        s.job
            .store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.running.store(self.workers.len(), Ordering::Relaxed);
        // Release: a worker that sees the new epoch also sees the job and the counters.
        s.epoch.fetch_add(1, Ordering::Release);
        {
            let parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
            if *parked > 0 {
                s.wake.notify_all();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim_chunks(s, &job)));
        // Workers read `job` until they decrement `running`: wait for all of them before
        // `job` (on this stack) goes away, even when this thread's chunks panicked.
        let mut spins = 0u32;
        while s.running.load(Ordering::Acquire) != 0 {
            spins = spins.saturating_add(1);
            if spins < YIELD_AFTER {
                std::hint::spin_loop();
            } else {
                // More threads than cores (tests, other processes): let the worker run.
                std::thread::yield_now();
            }
        }
        let theirs = s
            .panicked
            .swap(false, Ordering::Relaxed)
            .then(|| s.payload.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(one);
        if let Err(p) = mine {
            drop_quietly(theirs);
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p.unwrap_or_else(|| Box::new("a kernel thread panicked")));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _parked = self.shared.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// `f(c)` for every `c < n` on the pool installed on this thread, or serially without one.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        return serial(n, f);
    }
    // SAFETY: `CURRENT` is non-null only inside `Pool::install` on this thread, which borrows
    // the pool for its whole duration and restores the previous value when it returns.
    unsafe { &*p }.run(n, f)
}

/// `f(c, &mut data[c * chunk..][..chunk])` for every chunk of `data` (the last may be
/// shorter), on the installed pool.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    assert!(chunk > 0);
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), &|c| {
        let start = c * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk c covers data[start..start + n], inside `data`, and chunks are
        // disjoint; every c runs exactly once, so no two live `&mut` overlap, and `data` is
        // borrowed mutably until every chunk has returned.
        f(c, unsafe {
            std::slice::from_raw_parts_mut(base.get().add(start), n)
        })
    });
}

/// Chunk boundaries of `0..total` for a region on `threads` threads: chunks of `max` items,
/// then, for the last `2 * threads * max` or so, chunks that shrink as the work runs out
/// (guided self-scheduling, down to `min`), so that the threads finish close together instead
/// of one waiting out the other's last big chunk. No chunk exceeds `max`. Fixed-size, so
/// planning a region allocates nothing.
pub struct Guided {
    total: usize,
    max: usize,
    /// Leading chunks of `max` items.
    bulk: usize,
    /// Ends of the shrinking chunks after the bulk.
    tail: [usize; Guided::MAX_TAIL],
    n_tail: usize,
}

impl Guided {
    pub const MAX_TAIL: usize = 128;

    pub fn new(total: usize, threads: usize, min: usize, max: usize) -> Self {
        let max = max.max(1);
        let min = min.clamp(1, max);
        let threads = threads.max(1);
        let bulk = total.saturating_sub(threads.saturating_mul(max).saturating_mul(2)) / max;
        let mut g = Self {
            total,
            max,
            bulk,
            tail: [0; Self::MAX_TAIL],
            n_tail: 0,
        };
        let mut pos = bulk * max;
        while pos < total {
            if g.n_tail == Self::MAX_TAIL {
                // Too many threads for the tail: equal chunks throughout.
                return Self::uniform(total, max);
            }
            let rest = total - pos;
            pos += (rest / threads.saturating_mul(2)).clamp(min, max).min(rest);
            g.tail[g.n_tail] = pos;
            g.n_tail += 1;
        }
        g
    }

    /// Chunks of `size` items (the last may be shorter).
    pub fn uniform(total: usize, size: usize) -> Self {
        let size = size.max(1);
        Self {
            total,
            max: size,
            bulk: total.div_ceil(size),
            tail: [0; Self::MAX_TAIL],
            n_tail: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.bulk + self.n_tail
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Chunk `c` as `(start, end)`.
    pub fn range(&self, c: usize) -> (usize, usize) {
        debug_assert!(c < self.len());
        if c < self.bulk {
            return (c * self.max, ((c + 1) * self.max).min(self.total));
        }
        let i = c - self.bulk;
        let start = if i == 0 {
            self.bulk * self.max
        } else {
            self.tail[i - 1]
        };
        (start, self.tail[i])
    }
}

/// A pointer that may cross to the pool's threads (see the SAFETY note at its use).
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used by `for_each_chunk_mut`, which hands each thread disjoint `T: Send` items.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Marks this thread as inside a region until dropped.
struct InRegion(bool);
impl InRegion {
    fn enter() -> Self {
        Self(IN_REGION.with(|r| r.replace(true)))
    }
}
impl Drop for InRegion {
    fn drop(&mut self) {
        IN_REGION.with(|r| r.set(self.0));
    }
}

/// Drops a panic payload, containing a panic from its destructor.
fn drop_quietly<T>(p: T) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(p)));
}

fn serial(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let _in = InRegion::enter();
    (0..n).for_each(f);
}

fn claim_chunks(s: &Shared, job: &Job<'_>) {
    let _in = InRegion::enter();
    loop {
        let c = s.next.fetch_add(1, Ordering::Relaxed);
        if c >= job.n {
            break;
        }
        (job.f)(c);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0;
    // Parked until the first region: a new pool must not take cores from the model load.
    let mut first = true;
    loop {
        let mut since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !first && !spins.is_multiple_of(YIELD_AFTER) {
                std::hint::spin_loop();
                continue;
            }
            // Now and then, give the core to a runnable thread (oversubscribed machines).
            std::thread::yield_now();
            let start = *since.get_or_insert_with(Instant::now);
            if !first && start.elapsed() < SPIN_FOR {
                continue;
            }
            let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
            *parked += 1;
            while s.epoch.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
                parked = s.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
            }
            *parked -= 1;
            since = None;
        }
        first = false;
        // SAFETY: the epoch bump (acquired above) was published after `job` was stored, and
        // the `Job` it points to lives on the stack of `Pool::run`, which does not return
        // until this worker decrements `running` below; this is the last use of `job`.
        let job = unsafe { &*(s.job.load(Ordering::Relaxed) as *const Job<'_>) };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| claim_chunks(s, job))) {
            // The first panic is raised; a later one is dropped here, where a panicking
            // payload destructor cannot kill this thread (the caller waits for it).
            let mut slot = s.payload.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(p);
            } else {
                drop_quietly(Some(p));
            }
            s.panicked.store(true, Ordering::Relaxed);
        }
        // Release: the chunk's writes (and the panic flag) happen before the caller returns.
        s.running.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_exactly_once_on_several_threads() {
        let pool = Pool::new(3);
        for n in [0, 1, 2, 5, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            let threads = Mutex::new(std::collections::HashSet::new());
            pool.install(|| {
                for_each(n, &|c| {
                    hits[c].fetch_add(1, Ordering::Relaxed);
                    threads.lock().unwrap().insert(std::thread::current().id());
                    // Long enough that every thread gets a chunk.
                    std::thread::sleep(Duration::from_micros(200));
                })
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
            if n >= 64 {
                assert_eq!(threads.lock().unwrap().len(), 3, "n = {n}");
            }
        }
    }

    #[test]
    fn guided_chunks_cover_the_range_and_shrink_toward_the_end() {
        for (total, threads, min, max) in [
            (0, 2, 8, 128),
            (5, 2, 8, 128),
            (2560, 2, 8, 128),
            (6912, 6, 8, 128),
            (128_256, 2, 64, 4008),
            (1 << 20, 1, 1, 2),
            (100_000, 64, 1, 128),
        ] {
            for g in [
                Guided::new(total, threads, min, max),
                Guided::uniform(total, max),
            ] {
                let mut prev = (0, 0);
                for c in 0..g.len() {
                    let (a, b) = g.range(c);
                    assert_eq!(a, prev.1, "contiguous");
                    assert!(b > a && b - a <= max, "{a}..{b} of {total}");
                    if c > 0 && b < total {
                        assert!(b - a <= prev.1 - prev.0, "non-increasing");
                    }
                    prev = (a, b);
                }
                assert_eq!(prev.1, total);
            }
        }
        let g = Guided::new(2560, 2, 8, 128);
        assert_eq!(g.range(0), (0, 128));
        let (a, b) = g.range(g.len() - 1);
        assert!(b - a <= 8, "the last chunk is small: {a}..{b}");
        assert_eq!(Guided::uniform(130, 64).len(), 3);
    }

    #[test]
    fn parked_workers_wake_for_the_next_region() {
        let pool = Pool::new(2);
        let count = AtomicU32::new(0);
        for _ in 0..3 {
            std::thread::sleep(SPIN_FOR * 3);
            let threads = Mutex::new(std::collections::HashSet::new());
            pool.install(|| {
                for_each(16, &|_| {
                    count.fetch_add(1, Ordering::Relaxed);
                    threads.lock().unwrap().insert(std::thread::current().id());
                    std::thread::sleep(Duration::from_millis(1));
                })
            });
            assert_eq!(threads.lock().unwrap().len(), 2);
        }
        assert_eq!(count.load(Ordering::Relaxed), 48);
    }

    #[test]
    fn nested_and_uninstalled_regions_run_serially() {
        let pool = Pool::new(2);
        let inner = AtomicU32::new(0);
        pool.install(|| {
            for_each(8, &|_| {
                let me = std::thread::current().id();
                for_each(4, &|_| {
                    assert_eq!(std::thread::current().id(), me);
                    inner.fetch_add(1, Ordering::Relaxed);
                });
            })
        });
        assert_eq!(inner.load(Ordering::Relaxed), 32);
        let me = std::thread::current().id();
        for_each(4, &|_| assert_eq!(std::thread::current().id(), me));
    }

    #[test]
    fn a_panicking_chunk_is_raised_to_the_caller_and_the_pool_keeps_working() {
        let pool = Pool::new(2);
        for bad in [0, 7] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.install(|| {
                    for_each(8, &|c| {
                        std::thread::sleep(Duration::from_micros(300));
                        assert_ne!(c, bad, "chunk {c} fails");
                    })
                })
            }));
            let msg = r.unwrap_err();
            let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains(&format!("chunk {bad} fails")), "{msg}");
        }
        let count = AtomicU32::new(0);
        pool.install(|| {
            for_each(8, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn sessions_on_several_threads_share_one_pool() {
        let pool = Pool::new(2);
        let total = AtomicU32::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    pool.install(|| {
                        for _ in 0..50 {
                            for_each(10, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        }
                    })
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 10);
    }
}
