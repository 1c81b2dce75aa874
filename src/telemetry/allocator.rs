//! The global allocator: mimalloc, counting allocations per thread and feeding the
//! sampling heap profiler ([`crate::profile::heap`]).
//!
//! A thread that registers a [`WorkerCounters`] slot (a worker, at start) counts into
//! its heap counters with single-writer adds; every other thread (main, admin, log
//! writers: none on the request path) into [`OTHER_THREADS`], with shared adds.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use crate::profile::heap;
use crate::telemetry::counters::{Scalar, WorkerCounters};

thread_local! {
    static THREAD_SLOT: Cell<Option<&'static WorkerCounters>> = const { Cell::new(None) };
}

/// The heap counters of the threads without a slot of their own.
pub static OTHER_THREADS: WorkerCounters = WorkerCounters::new();

/// Makes this thread count its allocations into `slot` (a worker, once at start).
pub fn count_allocations_into(slot: &'static WorkerCounters) {
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
                counters[Scalar::HeapAllocations].add(1);
                counters[Scalar::HeapBytes].add(size as u64);
                true
            }
            None => false,
        })
        .unwrap_or(false);
    if !counted {
        OTHER_THREADS[Scalar::HeapAllocations].add_shared(1);
        OTHER_THREADS[Scalar::HeapBytes].add_shared(size as u64);
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
    fn a_registered_thread_counts_into_its_slot() {
        let slot = WorkerCounters::leak();
        std::thread::spawn(move || {
            count_allocations_into(slot);
            count(100);
            count(28);
        })
        .join()
        .unwrap();
        let counted = (
            slot[Scalar::HeapAllocations].get(),
            slot[Scalar::HeapBytes].get(),
        );
        assert_eq!(counted, (2, 128));
    }
}
