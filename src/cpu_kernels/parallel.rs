//! Splitting a kernel's rows over threads.
//!
//! A call splits its work items into contiguous ranges of about equal cost and runs them on
//! several threads. When the process has an OpenMP runtime (PyTorch's libgomp) and Python has
//! registered its `GOMP_parallel` ([`set_openmp`]), the ranges run on that thread team: the same
//! threads PyTorch's own ops use, already awake between back-to-back ops (a few microseconds to
//! start), and never competing with them for the cores. Otherwise each call starts scoped threads
//! (~10-30 us), so only large calls split.

use std::ffi::c_void;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);

static GOMP_PARALLEL: AtomicUsize = AtomicUsize::new(0);

/// Run parallel work on the OpenMP team of the process: `addr` is the address of libgomp's
/// `GOMP_parallel` (0: back to scoped threads).
///
/// # Safety
/// `addr` must be 0 or the address of a function with GOMP_parallel's signature and semantics
/// that stays loaded for the life of the process.
pub unsafe fn set_openmp(addr: usize) {
    GOMP_PARALLEL.store(addr, Ordering::Release);
}

/// Whether parallel work runs on an OpenMP team.
pub fn uses_openmp() -> bool {
    GOMP_PARALLEL.load(Ordering::Acquire) != 0
}

/// Work (roughly: float32 multiply-adds or bytes moved) below which a call runs on one thread,
/// with an OpenMP team and with scoped threads.
pub const MIN_PARALLEL_WORK_OPENMP: usize = 1 << 20;
pub const MIN_PARALLEL_WORK: usize = 1 << 18;

/// The CPUs this process may use.
pub fn available_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Threads for a call with `work` units: 1 for small calls, else `requested` (0: all CPUs),
/// at most `items` and at most the CPUs available.
pub fn threads_for(work: usize, items: usize, requested: usize) -> usize {
    let min = if uses_openmp() {
        MIN_PARALLEL_WORK_OPENMP
    } else {
        MIN_PARALLEL_WORK
    };
    if work < min || items < 2 {
        return 1;
    }
    let cap = if requested == 0 {
        available_threads()
    } else {
        requested.min(available_threads())
    };
    cap.min(items).max(1)
}

/// `m` rows in consecutive blocks of at most `block`: (first row, rows) of each (the passes of a
/// matrix product whose per-pass buffers are sized for `block` rows).
pub fn row_blocks(m: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m).step_by(block.max(1)).map(move |r0| (r0, (m - r0).min(block.max(1))))
}

/// Ranges of `0..n` for `parts` threads with about equal total `cost` each (cost >= 0 per item).
pub fn split_by_cost(n: usize, parts: usize, cost: impl Fn(usize) -> usize) -> Vec<Range<usize>> {
    if parts <= 1 || n <= 1 {
        return vec![0..n];
    }
    let costs: Vec<usize> = (0..n).map(|i| cost(i).max(1)).collect();
    let total: usize = costs.iter().sum();
    let mut ranges = Vec::with_capacity(parts);
    let (mut start, mut acc, mut k) = (0usize, 0usize, 1usize);
    for (i, &c) in costs.iter().enumerate() {
        acc += c;
        // close part k once its share of the total is reached (leave items for the parts after it)
        if k < parts && acc * parts >= total * k && n - (i + 1) >= parts - k {
            ranges.push(start..i + 1);
            start = i + 1;
            k += 1;
        }
    }
    ranges.push(start..n);
    ranges.retain(|r| !r.is_empty());
    ranges
}

/// Run `f` on each range, in parallel (the calling thread takes part).
pub fn run_ranges<F: Fn(Range<usize>) + Sync>(ranges: Vec<Range<usize>>, f: F) {
    if ranges.len() <= 1 {
        if let Some(r) = ranges.into_iter().next() {
            f(r);
        }
        return;
    }
    let gomp = GOMP_PARALLEL.load(Ordering::Acquire);
    if gomp != 0 {
        return run_openmp(gomp, &ranges, &f);
    }
    let f = &f;
    std::thread::scope(|s| {
        let mut it = ranges.into_iter();
        let first = it.next().unwrap();
        for r in it {
            s.spawn(move || f(r));
        }
        f(first);
    });
}

struct Job<'a, F> {
    ranges: &'a [Range<usize>],
    next: AtomicUsize,
    f: &'a F,
    panicked: AtomicBool,
}

/// Each team thread takes ranges until none are left (the team may be smaller than asked).
extern "C" fn omp_worker<F: Fn(Range<usize>) + Sync>(data: *mut c_void) {
    let job = unsafe { &*(data as *const Job<'_, F>) };
    loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.ranges.len() {
            break;
        }
        let r = job.ranges[i].clone();
        if catch_unwind(AssertUnwindSafe(|| (job.f)(r))).is_err() {
            job.panicked.store(true, Ordering::Relaxed); // no unwinding into C
        }
    }
}

fn run_openmp<F: Fn(Range<usize>) + Sync>(gomp: usize, ranges: &[Range<usize>], f: &F) {
    let job = Job {
        ranges,
        next: AtomicUsize::new(0),
        f,
        panicked: AtomicBool::new(false),
    };
    let parallel: GompParallel = unsafe { std::mem::transmute::<usize, GompParallel>(gomp) };
    unsafe {
        parallel(
            omp_worker::<F>,
            &job as *const Job<'_, F> as *mut c_void,
            ranges.len() as u32,
            0,
        )
    };
    if job.panicked.load(Ordering::Relaxed) {
        panic!("a CPU kernel thread panicked");
    }
}

/// Split `0..n` by cost over `threads` threads and run `f` on each part.
pub fn parallel_for<F: Fn(Range<usize>) + Sync>(
    n: usize,
    threads: usize,
    cost: impl Fn(usize) -> usize,
    f: F,
) {
    run_ranges(split_by_cost(n, threads, cost), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for n in 0..40 {
            for parts in 1..5 {
                let r = split_by_cost(n, parts, |i| (i * 7) % 5);
                let flat: Vec<usize> = r.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>());
                assert!(r.len() <= parts.max(1));
            }
        }
    }

    #[test]
    fn split_balances_cost() {
        let r = split_by_cost(100, 2, |_| 1);
        assert_eq!(r, vec![0..50, 50..100]);
        let r = split_by_cost(4, 2, |i| if i == 0 { 100 } else { 1 });
        assert_eq!(r, vec![0..1, 1..4]);
    }
}
