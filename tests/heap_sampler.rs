//! The heap sampler's estimates (README.md, "Profiling and live counters"): this test binary runs on the real counting
//! allocator, so its own allocations are sampled exactly as the server's are.
//!
//! Statistics: an allocation of `s` bytes is sampled with probability
//! `p = 1 - e^(-s/rate)`; over `n` allocations the scaled estimate has a relative standard
//! error of `sqrt((1 - p) / (n p))`. The figures below keep the 10% bound at five
//! standard errors or more, so a correct sampler fails less than once in a million runs.

use std::hint::black_box;

use leftpad::profile::heap::{self, ALLOCS, ALLOC_BYTES, FREES, FREE_BYTES};
use leftpad::profile::stacks::Counted;
use leftpad::profile::symbols;

#[global_allocator]
static GLOBAL: leftpad::telemetry::allocator::CountingAllocator =
    leftpad::telemetry::allocator::CountingAllocator;

/// The samples whose stack passes through a function named `function`.
fn samples_through(function: &str) -> Vec<Counted> {
    heap::snapshot()
        .into_iter()
        .filter(|stack| {
            stack.frames.iter().any(|&address| {
                symbols::resolve(address, true)
                    .iter()
                    .any(|symbol| symbol.name.ends_with(function))
            })
        })
        .collect()
}

/// Scaled (objects, bytes) over `samples`, allocated or in use.
fn estimate(samples: &[Counted], in_use: bool) -> (f64, f64) {
    samples.iter().fold((0.0, 0.0), |(objects, bytes), s| {
        let v = s.values;
        let (count, size) = if in_use {
            (v[ALLOCS] - v[FREES], v[ALLOC_BYTES] - v[FREE_BYTES])
        } else {
            (v[ALLOCS], v[ALLOC_BYTES])
        };
        let (o, b) = heap::scale(count, size, heap::rate());
        (objects + o as f64, bytes + b as f64)
    })
}

fn assert_within(what: &str, estimate: f64, truth: f64, tolerance: f64) {
    let error = (estimate - truth).abs() / truth;
    assert!(
        error <= tolerance,
        "{what}: estimated {estimate:.0}, true {truth:.0} ({:.1}% off)",
        100.0 * error
    );
}

/// 20,000 blocks of 64 KiB, freed at once: 1.25 GiB allocated.
#[inline(never)]
fn allocate_and_free() {
    for _ in 0..20_000 {
        black_box(Vec::<u8>::with_capacity(64 * 1024));
    }
}

#[test]
fn allocated_bytes_and_objects_are_estimated_within_ten_percent() {
    // At the default rate (512 KiB), p = 1 - e^(-1/8) = 0.1175 per block: ~2,350 samples,
    // a relative standard error of 1.9%.
    assert_eq!(heap::rate(), heap::DEFAULT_RATE);
    allocate_and_free();
    let samples = samples_through("allocate_and_free");
    let (objects, bytes) = estimate(&samples, false);
    assert_within("alloc_objects", objects, 20_000.0, 0.10);
    assert_within("alloc_space", bytes, 20_000.0 * 65_536.0, 0.10);
    // Every sampled block was freed, and every free was matched: nothing is in use.
    assert_eq!(estimate(&samples, true), (0.0, 0.0));
}

/// 500 blocks of 1 MiB, kept (address space only: never written, so not resident).
#[inline(never)]
fn allocate_and_keep() -> Vec<Vec<u8>> {
    (0..500).map(|_| Vec::with_capacity(1 << 20)).collect()
}

#[test]
fn bytes_in_use_are_estimated_and_drop_to_zero_when_freed() {
    // p = 1 - e^(-2) = 0.865 per block: ~432 samples, a relative standard error of 1.8%.
    let kept = allocate_and_keep();
    let (objects, bytes) = estimate(&samples_through("allocate_and_keep"), true);
    assert_within("inuse_objects", objects, 500.0, 0.10);
    assert_within("inuse_space", bytes, 500.0 * 1_048_576.0, 0.10);
    drop(kept);
    assert_eq!(
        estimate(&samples_through("allocate_and_keep"), true),
        (0.0, 0.0)
    );
}
