//! Live counters for `/debug/vars`, written without contention.
//!
//! Each worker owns one [`WorkerStats`] slot, padded to its own cache lines, and is its
//! only writer: it updates with a relaxed load and store (no locked read-modify-write),
//! once per batch or per connection, never across workers. The admin thread only reads,
//! and sums the slots when asked.
//!
//! [`CountingAllocator`] wraps mimalloc and counts allocations per thread the same way:
//! a thread that registers a slot counts into it; any other thread into a shared pair
//! of atomics (those threads are not on the request path). It also feeds the sampling
//! heap profiler ([`crate::profile::heap`]).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::handler::Route;
use crate::profile::heap;

/// A counter with a single writer: `add` is a plain load and store, not a locked
/// read-modify-write, and readers on other threads see a recent value.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's counters. 128-byte alignment keeps two workers' slots off the same
/// cache line and off adjacent lines the prefetcher pairs.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    pub requests: Counter,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [Counter; 5],
    pub connections_open: Counter,
    pub connections_accepted: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub statsd_lines: Counter,
    pub statsd_packets: Counter,
    pub statsd_send_errors: Counter,
    pub allocations: AllocCounters,
    /// Answers by route ([`Route::ALL`] order) and status ([`CODES`] order).
    pub answers: [[Counter; CODES.len()]; Route::ALL.len()],
    /// Handling time of every answer.
    pub duration: Histogram,
}

/// The status codes this server answers with, each counted on its own.
pub const CODES: [u16; 13] = [
    200, 400, 404, 405, 408, 409, 413, 414, 431, 500, 501, 503, 505,
];

/// Upper bounds of the request-duration histogram's buckets, in microseconds: from the
/// few microseconds a request takes here to the seconds a stalled one could.
pub const BUCKETS_MICROS: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000,
    10_000_000,
];

/// A latency histogram with a single writer: per-bucket counts (not cumulative; the
/// scrape adds them up) and the sum.
#[derive(Default, Debug)]
pub struct Histogram {
    /// One count per bucket of [`BUCKETS_MICROS`], then the overflow (`+Inf`).
    pub counts: [Counter; BUCKETS_MICROS.len() + 1],
    pub sum_micros: Counter,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, micros: u64) {
        // Most requests take a few microseconds: the scan stops in the first buckets.
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.counts[bucket].add(1);
        self.sum_micros.add(micros);
    }
}

impl WorkerStats {
    #[inline]
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].add(1);
    }

    /// Counts one answer for `/metrics`: by route and code, and its handling time.
    #[inline]
    pub fn answered(&self, route: Route, status: u16, micros: u64) {
        let code = CODES.iter().position(|&c| c == status).unwrap_or(9); // 500
        self.answers[route as usize][code].add(1);
        self.duration.observe(micros);
    }
}

/// Allocation counters of one thread.
#[derive(Default, Debug)]
pub struct AllocCounters {
    pub count: Counter,
    pub bytes: Counter,
}

thread_local! {
    static THREAD_SLOT: Cell<Option<&'static AllocCounters>> = const { Cell::new(None) };
}

/// Allocations by threads without a slot of their own (main, admin, log writers).
pub static OTHER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
pub static OTHER_ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Makes this thread count its allocations into `slot` (a worker, once at start).
pub fn count_allocations_into(slot: &'static AllocCounters) {
    THREAD_SLOT.with(|s| s.set(Some(slot)));
}

/// mimalloc, counting allocations (number and bytes) per thread for `/debug/vars`.
pub struct CountingAllocator;

#[inline]
fn count(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; count it as "other".
    let counted = THREAD_SLOT
        .try_with(|slot| match slot.get() {
            Some(counters) => {
                counters.count.add(1);
                counters.bytes.add(size as u64);
                true
            }
            None => false,
        })
        .unwrap_or(false);
    if !counted {
        OTHER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        OTHER_ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to mimalloc, which upholds the GlobalAlloc
// contract. Counting only touches a const-initialised thread-local and atomics, neither
// of which allocates; the heap profiler's hooks allocate nothing and take no lock (see
// `profile::heap`). A block leaves the profiler's table before it is freed, and enters
// it after it is allocated, so an address is never in the table while another
// allocation could be handed the same memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        let block = unsafe { mimalloc::MiMalloc.alloc(layout) };
        heap::on_alloc(block, layout.size());
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        let block = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        heap::on_alloc(block, layout.size());
        block
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        heap::on_free(ptr);
        let block = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        heap::on_alloc(block, new_size);
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        heap::on_free(ptr);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_classify() {
        let stats = WorkerStats::default();
        stats.requests.add(3);
        for status in [200, 204, 404, 503, 101, 999] {
            stats.response(status);
        }
        let classes: Vec<u64> = stats.responses.iter().map(Counter::get).collect();
        assert_eq!(classes, [1, 2, 0, 1, 2]);
        assert_eq!(stats.requests.get(), 3);
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
    }

    #[test]
    fn answers_are_counted_by_route_code_and_bucket() {
        let stats = WorkerStats::default();
        stats.answered(Route::Leftpad, 200, 3);
        stats.answered(Route::Leftpad, 200, 10);
        stats.answered(Route::Other, 404, 11);
        stats.answered(Route::Unrouted, 999, 20_000_000);
        assert_eq!(stats.answers[Route::Leftpad as usize][0].get(), 2);
        assert_eq!(stats.answers[Route::Other as usize][2].get(), 1);
        assert_eq!(
            stats.answers[Route::Unrouted as usize][9].get(),
            1,
            "unknown: 500"
        );
        let counts: Vec<u64> = stats.duration.counts.iter().map(Counter::get).collect();
        assert_eq!(&counts[..3], [1, 1, 1], "<=5, <=10, <=25 µs");
        assert_eq!(counts[BUCKETS_MICROS.len()], 1, "+Inf");
        assert_eq!(stats.duration.sum_micros.get(), 20_000_024);
    }

    #[test]
    fn a_registered_thread_counts_into_its_slot() {
        let slot: &'static AllocCounters = Box::leak(Box::default());
        std::thread::spawn(move || {
            count_allocations_into(slot);
            count(100);
            count(28);
        })
        .join()
        .unwrap();
        assert_eq!((slot.count.get(), slot.bytes.get()), (2, 128));
    }
}
