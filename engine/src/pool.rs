//! Persistent worker threads for the decode products: a token is a few hundred small matrix-vector
//! products, and waking a parked thread for each one (a rayon fork and join) costs as much as a
//! product of a 135M model. Workers here spin for a short while after each job, so the next
//! product of the same token finds them awake; idle longer than that, they park.
//!
//! [`for_each_task`] runs `tasks` numbered tasks on `rayon::current_num_threads()` threads: the
//! caller and that many minus one workers claim tasks one at a time from a shared counter, so a
//! worker that starts late (parked, or descheduled on a shared machine) takes fewer. Which thread
//! runs a task never changes what it computes.
//!
//! One pool per thread count, made on first use and kept for the process (like rayon's global
//! pool). A pool runs one job at a time: a caller that finds it busy (another thread's product, or
//! a product inside a task) runs its tasks on rayon instead.

use rayon::prelude::*;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker keeps checking for the next job before it parks: longer than the
/// gap between two products of one token (a norm, RoPE, attention), far shorter than a pause.
const SPIN: Duration = Duration::from_micros(200);

/// The threads a job runs on: the current rayon thread count (a `ThreadPool::install` sets it).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f(task)` for every task in `0..tasks`, each exactly once, spread over [`threads`], and
/// returns when all are done. A panic in a task is raised again here, after every thread has left
/// `f`.
pub fn for_each_task(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = threads().min(tasks);
    if threads <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    let pool = pool(threads);
    let busy = match pool.job.try_lock() {
        Ok(g) => g,
        // A job that panicked left the lock poisoned; the pool itself is whole (`run` waited).
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return (0..tasks).into_par_iter().for_each(f),
    };
    pool.run(tasks, f);
    drop(busy);
}

/// Runs `f(i, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), the pieces
/// spread over the pool like [`for_each_task`]'s tasks: a parallel loop that writes disjoint parts
/// of one buffer (attention heads, an activation function, packed panels).
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    assert!(chunk > 0, "for_each_chunk_mut: chunks of 0 elements");
    let len = data.len();
    let base = Disjoint::new(data);
    for_each_task(len.div_ceil(chunk), &|i| {
        let start = i * chunk;
        // SAFETY: task i is the only one to touch `start..start + n`, which lies inside `data`,
        // borrowed mutably until every task has returned.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.at(start), chunk.min(len - start)) };
        f(i, piece)
    });
}

/// The start of a buffer whose disjoint elements several tasks of one job write at once (chunks
/// here, a decode product's row spans, a GEMM group's outputs). Writing through [`Disjoint::at`]
/// is the user's promise: in bounds, no element written by two tasks, and the buffer borrowed
/// mutably until the job has returned.
pub(crate) struct Disjoint<T>(*mut T);
// SAFETY: the pointer is only written through by tasks that each own the elements they touch
// (the contract above), while the buffer it came from stays mutably borrowed.
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    pub(crate) fn new(data: &mut [T]) -> Disjoint<T> {
        Disjoint(data.as_mut_ptr())
    }

    /// Element `i`'s place (a method, so closures capture the whole Sync wrapper, not the pointer).
    pub(crate) fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// The pool of `threads` threads (the caller and `threads - 1` workers).
fn pool(threads: usize) -> Arc<Pool> {
    static POOLS: OnceLock<Mutex<Vec<Arc<Pool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.iter().find(|p| p.threads == threads) {
        return p.clone();
    }
    let p = Pool::start(threads);
    pools.push(p.clone());
    p
}

struct Pool {
    threads: usize,
    /// Held by the caller whose job the workers run.
    job: Mutex<()>,
    shared: Arc<Shared>,
}

/// What the caller and its workers share for one job.
struct Shared {
    /// Bumped once per job; a worker runs a job when it sees a number it has not run.
    generation: AtomicUsize,
    /// The job's function, read only by workers that entered the job (see `entered`).
    work: UnsafeCell<Option<Work>>,
    /// The next task to claim.
    next: AtomicUsize,
    /// Workers inside the current job, plus [`CLOSED`] once the caller has run out of tasks: a
    /// worker enters only an open job, so the caller waits only for workers already working,
    /// never for one that is parked or descheduled (on a loaded machine it may not run for a
    /// whole time slice).
    entered: AtomicUsize,
    panicked: AtomicBool,
    /// Workers parked (or about to park) on `wake`.
    parked: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// The job as workers see it: the caller's function with its lifetime erased (the caller does
/// not return before every worker has left it) and the task count.
#[derive(Clone, Copy)]
struct Work {
    f: &'static (dyn Fn(usize) + Sync),
    tasks: usize,
}

/// The bit of `Shared::entered` that says the job takes no more workers.
const CLOSED: usize = 1 << (usize::BITS - 1);

// SAFETY: `work` is written only by the caller holding `Pool::job` while the job is closed with no
// worker inside; workers read it only between entering an open job (an AcqRel increment that
// sees the caller's SeqCst opening store) and leaving it (a Release decrement the caller waits for).
unsafe impl Sync for Shared {}

impl Pool {
    fn start(threads: usize) -> Arc<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            work: UnsafeCell::new(None),
            next: AtomicUsize::new(0),
            entered: AtomicUsize::new(CLOSED),
            panicked: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let s = shared.clone();
            // A pool that cannot start a thread still works: the caller claims every task.
            let _ = std::thread::Builder::new().name(format!("engine-pool-{i}")).spawn(move || s.serve());
        }
        Arc::new(Pool { threads, job: Mutex::new(()), shared })
    }

    /// Runs the job on the caller and the workers; the caller holds `job`.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased; `run` does not return (or unwind) until the job is
        // closed with no worker inside, and no worker touches `f` after that.
        let f: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        // SAFETY: the job is closed with no worker inside (how every job ends, and the start).
        unsafe { *s.work.get() = Some(Work { f, tasks }) };
        s.next.store(0, Relaxed);
        s.panicked.store(false, Relaxed);
        s.entered.store(0, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        if s.parked.load(SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| s.claim(f, tasks)));
        s.entered.fetch_or(CLOSED, SeqCst);
        let mut spins = 0u32;
        while s.entered.load(Acquire) != CLOSED {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: the job is closed and every worker that entered it has left.
        unsafe { *s.work.get() = None };
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.load(Acquire) {
            panic!("a task of a parallel product panicked on a pool worker");
        }
    }
}

impl Shared {
    /// Claims and runs tasks until none are left.
    fn claim(&self, f: &(dyn Fn(usize) + Sync), tasks: usize) {
        loop {
            let t = self.next.fetch_add(1, Relaxed);
            if t >= tasks {
                return;
            }
            f(t);
        }
    }

    /// A worker's life: wait for a job, claim its tasks, report done; forever.
    fn serve(&self) {
        // Generation 0 is the pool's start, before any job: a worker that starts after the first
        // job was published must still run it.
        let mut seen = 0;
        loop {
            seen = self.wait_past(seen);
            if !self.enter() {
                continue;
            }
            // SAFETY: this thread is inside an open job, whose `work` stays put until it leaves.
            let work = unsafe { *self.work.get() };
            if let Some(Work { f, tasks }) = work {
                if catch_unwind(AssertUnwindSafe(|| self.claim(f, tasks))).is_err() {
                    self.panicked.store(true, Release);
                }
            }
            self.entered.fetch_sub(1, Release);
        }
    }

    /// Joins the current job if it is still open: the caller then waits for this thread.
    fn enter(&self) -> bool {
        let mut now = self.entered.load(SeqCst);
        while now & CLOSED == 0 {
            match self.entered.compare_exchange_weak(now, now + 1, AcqRel, SeqCst) {
                Ok(_) => return true,
                Err(v) => now = v,
            }
        }
        false
    }

    /// Waits until the generation is past `seen`, spinning for [`SPIN`], then parked; returns it.
    fn wait_past(&self, seen: usize) -> usize {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = self.generation.load(Acquire);
            if g != seen {
                return g;
            }
            spins += 1;
            if spins.is_multiple_of(32) {
                // Give the core to anything else runnable on it (the caller, on a loaded machine).
                std::thread::yield_now();
                if start.elapsed() > SPIN {
                    break;
                }
            } else {
                std::hint::spin_loop();
            }
        }
        let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.parked.fetch_add(1, SeqCst);
        loop {
            let g = self.generation.load(SeqCst);
            if g != seen {
                self.parked.fetch_sub(1, SeqCst);
                return g;
            }
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool").install(f)
    }

    #[test]
    fn every_task_runs_exactly_once_on_one_two_and_three_threads() {
        for threads in [1, 2, 3] {
            for tasks in [0, 1, 2, 7, 1000] {
                let counts: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                on_threads(threads, || {
                    // Many jobs in a row: workers move from job to job without parking.
                    for _ in 0..50 {
                        for_each_task(tasks, &|t| {
                            counts[t].fetch_add(1, Relaxed);
                        });
                    }
                });
                assert!(counts.iter().all(|c| c.load(Relaxed) == 50), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn chunks_cover_the_buffer_once_with_their_index_and_a_short_last_chunk() {
        for threads in [1, 2, 3] {
            for (len, chunk) in [(0, 4), (1, 4), (10, 4), (12, 4), (1000, 7)] {
                let mut data = vec![0usize; len];
                on_threads(threads, || {
                    for_each_chunk_mut(&mut data, chunk, &|i, c| {
                        assert!(c.len() == chunk || (c.len() < chunk && (i + 1) * chunk >= len), "chunk {i}: {} long", c.len());
                        c.iter_mut().enumerate().for_each(|(k, v)| *v += i * chunk + k + 1);
                    })
                });
                // Each element holds its own index plus one: written once, by the chunk it lies in.
                assert!(data.iter().enumerate().all(|(k, v)| *v == k + 1), "{threads} threads, {len} / {chunk}");
            }
        }
    }

    #[test]
    fn a_job_after_the_workers_parked_still_runs_on_every_thread() {
        on_threads(2, || {
            for_each_task(2, &|_| {});
            std::thread::sleep(SPIN * 5);
            assert!(both_ran_at_once(|f| for_each_task(2, f)));
        });
    }

    /// Two tasks that each wait (up to 5 s) for the other to start: true if two threads ran them.
    fn both_ran_at_once(run: impl FnOnce(&(dyn Fn(usize) + Sync))) -> bool {
        let arrived = AtomicUsize::new(0);
        let start = Instant::now();
        run(&|_| {
            arrived.fetch_add(1, SeqCst);
            while arrived.load(SeqCst) < 2 && start.elapsed() < Duration::from_secs(5) {
                std::hint::spin_loop();
            }
        });
        start.elapsed() < Duration::from_secs(5)
    }

    #[test]
    fn a_worker_that_starts_after_the_first_job_was_published_still_runs_it() {
        // On a thread of its own, so a job that never ends fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..20 {
                // The job is published right after the spawn, usually before the worker runs.
                let pool = Pool::start(2);
                let _busy = pool.job.lock().unwrap();
                let _ = tx.send(both_ran_at_once(|f| pool.run(2, f)));
            }
        });
        for i in 0..20 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true), "job {i}");
        }
    }

    #[test]
    fn a_job_inside_a_task_runs_instead_of_deadlocking() {
        let total = AtomicU64::new(0);
        on_threads(2, || {
            for_each_task(4, &|_| {
                for_each_task(3, &|_| {
                    total.fetch_add(1, Relaxed);
                })
            })
        });
        assert_eq!(total.load(Relaxed), 12);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        for bad in [0, 999] {
            let r = catch_unwind(|| on_threads(2, || for_each_task(1000, &|t| assert_ne!(t, bad, "planted"))));
            assert!(r.is_err(), "task {bad} panicked");
        }
        let total = AtomicU64::new(0);
        on_threads(2, || {
            for_each_task(100, &|t| {
                total.fetch_add(t as u64, Relaxed);
            })
        });
        assert_eq!(total.load(Relaxed), 4950);
    }
}
