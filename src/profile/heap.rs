//! The sampling heap profiler behind `/debug/pprof/heap` and `/debug/pprof/allocs`.
//!
//! As Go's runtime does, the allocator samples on average one allocation per
//! `--heap-profile-rate` bytes (default 524288, Go's `MemProfileRate`): each thread counts
//! down a random, exponentially distributed number of bytes, and the allocation that
//! crosses zero is sampled, its stack recorded. That makes the estimate unbiased: a
//! sampled allocation of size `s` stands for `1 / (1 - e^(-s/rate))` allocations like it,
//! which is how the profile scales its values (Go's `scaleHeapSample`). Frees of sampled
//! blocks are matched, so in-use figures are right.
//!
//! The allocator hook's rules (it runs inside every allocation of the process):
//! - The common path is a thread-local subtraction and compare.
//! - Nothing allocates: the tables are static arrays of atomics (zero pages until touched,
//!   so they cost memory only as they fill), and the stack walk writes to the stack.
//! - No lock: entries are claimed with compare-and-swap; a table that is full, or an
//!   entry another thread is still writing, means a counted loss, never a wait. So a
//!   signal handler or another allocation can never be blocked by it.
//! - No recursion: a thread-local flag makes the hook ignore allocations made while it
//!   runs (the first stack-bounds query of a thread may use libc's own malloc, which is
//!   not this allocator, but the flag holds whatever happens).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::frames::{self, MAX_DEPTH};
use super::pprof::{Builder, Frame};
use super::stacks::{Counted, StackTable};

/// Go's `MemProfileRate`: one sample per this many bytes allocated, on average.
pub const DEFAULT_RATE: u64 = 512 * 1024;
/// The counters of a stack's entry.
pub const ALLOCS: usize = 0;
pub const ALLOC_BYTES: usize = 1;
pub const FREES: usize = 2;
pub const FREE_BYTES: usize = 3;
/// Sampled blocks that can be live at once.
const LIVE: usize = 1 << 16;
/// Longest probe sequence in the live table before giving up (counted as a loss).
const MAX_PROBES: usize = 64;
/// Frames of the hook itself at the top of every walk: the return addresses into
/// `record` and `sample` (neither is inlined). The allocator's own frames above them, and
/// the `alloc` crate's, are trimmed by name when the profile is written
/// ([`is_allocation_machinery`]).
const HOOK_FRAMES: usize = 2;

/// Bytes per sample; 0 is off. Set once at startup from `--heap-profile-rate`.
static RATE: AtomicU64 = AtomicU64::new(DEFAULT_RATE);

/// Samples that could not be recorded (a table full, a probe sequence too long).
static LOST: AtomicU64 = AtomicU64::new(0);
/// Sampled blocks currently live: frees skip the table lookup while it is zero.
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// A live sampled block: which stack allocated it, and its size.
struct LiveEntry {
    /// 0: empty; 1: a removed entry (probes pass it); otherwise the block's address.
    address: AtomicUsize,
    stack: AtomicU32,
    size: AtomicU64,
}

const REMOVED: usize = 1;

#[allow(clippy::declare_interior_mutable_const)] // only as array initialisers
const LIVE_ENTRY: LiveEntry = LiveEntry {
    address: AtomicUsize::new(0),
    stack: AtomicU32::new(0),
    size: AtomicU64::new(0),
};

/// Allocating stacks; counters: [`ALLOCS`], [`ALLOC_BYTES`], [`FREES`], [`FREE_BYTES`].
static STACKS: StackTable = StackTable::new();
static LIVE_TABLE: [LiveEntry; LIVE] = [LIVE_ENTRY; LIVE];

thread_local! {
    /// Bytes this thread may still allocate before its next sample.
    static UNTIL_SAMPLE: Cell<u64> = const { Cell::new(0) };
    /// This thread's random state; 0 until its first allocation.
    static RANDOM: Cell<u64> = const { Cell::new(0) };
    /// Set while the hook runs on this thread.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Sets the sampling rate (bytes per sample on average; 0 turns sampling off).
pub fn set_rate(bytes: u64) {
    RATE.store(bytes, Ordering::Relaxed);
}

pub fn rate() -> u64 {
    RATE.load(Ordering::Relaxed)
}

/// Samples that could not be recorded since the process started.
pub fn lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Called after every successful allocation of `size` bytes at `address`.
#[inline]
pub fn on_alloc(address: *mut u8, size: usize) {
    let size = size as u64;
    let Ok(until) = UNTIL_SAMPLE.try_with(Cell::get) else {
        return; // thread teardown: its thread-locals are gone
    };
    if until > size {
        let _ = UNTIL_SAMPLE.try_with(|c| c.set(until - size));
        return;
    }
    sample(address, size, until);
}

/// Called before every free of the block at `address`.
#[inline]
pub fn on_free(address: *mut u8) {
    if LIVE_COUNT.load(Ordering::Relaxed) != 0 {
        forget(address as usize);
    }
}

/// The slow path: draws the next interval, and records this allocation unless the thread
/// was only starting its countdown.
#[cold]
#[inline(never)]
fn sample(address: *mut u8, size: u64, until: u64) {
    if address.is_null() {
        return; // a failed allocation: nothing to record, and the countdown stands
    }
    let rate = RATE.load(Ordering::Relaxed);
    if rate == 0 {
        // Off (set once at startup): never come back to the slow path.
        let _ = UNTIL_SAMPLE.try_with(|c| c.set(u64::MAX));
        return;
    }
    if IN_HOOK.try_with(|flag| flag.replace(true)).unwrap_or(true) {
        return;
    }
    let first = RANDOM.try_with(|r| r.get() == 0).unwrap_or(false);
    let next = next_interval(rate);
    let _ = UNTIL_SAMPLE.try_with(|c| c.set(next));
    // A thread's first allocation only starts its countdown (its `until` was 0 because
    // it had none), as Go draws the first interval when a thread starts.
    if !(first && until == 0) {
        record(address as usize, size);
    }
    let _ = IN_HOOK.try_with(|flag| flag.set(false));
}

#[inline(never)]
fn record(address: usize, size: u64) {
    let mut stack = [0u64; MAX_DEPTH];
    let depth = frames::walk(HOOK_FRAMES, &mut stack);
    let Some((index, entry)) = STACKS.intern(&stack[..depth]) else {
        LOST.fetch_add(1, Ordering::Relaxed);
        return;
    };
    entry.add(ALLOCS, 1);
    entry.add(ALLOC_BYTES, size);
    if !remember(address, index as u32, size) {
        // Not tracked as live: count it freed at once, so in-use never drifts upwards.
        entry.add(FREES, 1);
        entry.add(FREE_BYTES, size);
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

fn live_slot(address: usize, probe: usize) -> usize {
    (address >> 4)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15usize)
        .wrapping_add(probe)
        % LIVE
}

/// Notes a live sampled block; false if there was no room.
fn remember(address: usize, stack: u32, size: u64) -> bool {
    for probe in 0..MAX_PROBES {
        let entry = &LIVE_TABLE[live_slot(address, probe)];
        let current = entry.address.load(Ordering::Relaxed);
        if current != 0 && current != REMOVED {
            continue;
        }
        if entry
            .address
            .compare_exchange(current, usize::MAX, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            entry.stack.store(stack, Ordering::Relaxed);
            entry.size.store(size, Ordering::Relaxed);
            // Publish last: a free of this block finds it complete.
            entry.address.store(address, Ordering::Release);
            LIVE_COUNT.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// Counts the free of a sampled block, if `address` is one.
fn forget(address: usize) {
    for probe in 0..MAX_PROBES {
        let entry = &LIVE_TABLE[live_slot(address, probe)];
        let current = entry.address.load(Ordering::Acquire);
        if current == 0 {
            return; // end of the probe sequence: not sampled
        }
        if current != address {
            continue;
        }
        let (stack, size) = (
            entry.stack.load(Ordering::Relaxed),
            entry.size.load(Ordering::Relaxed),
        );
        if entry
            .address
            .compare_exchange(address, REMOVED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            LIVE_COUNT.fetch_sub(1, Ordering::Relaxed);
            if let Some(stack) = STACKS.get(stack as usize) {
                stack.add(FREES, 1);
                stack.add(FREE_BYTES, size);
            }
        }
        return;
    }
}

/// An exponentially distributed number of bytes with mean `rate` (xorshift64* for the
/// uniform draw, seeded per thread).
fn next_interval(rate: u64) -> u64 {
    let state = RANDOM
        .try_with(|r| {
            let mut x = r.get();
            if x == 0 {
                x = seed();
            }
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            r.set(x);
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        })
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    // A uniform draw in (0, 1], from the top 53 bits.
    let uniform = ((state >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let interval = -uniform.ln() * rate as f64;
    (interval as u64).max(1)
}

fn seed() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let n = THREADS.fetch_add(1, Ordering::Relaxed);
    let local = 0u8;
    let address = std::ptr::addr_of!(local) as u64;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (time ^ address.rotate_left(17) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

/// Every stack with samples so far, raw (unscaled) counters (allocates: call it
/// outside the allocator).
pub fn snapshot() -> Vec<Counted> {
    STACKS.snapshot()
}

/// Go's `scaleHeapSample`: the estimated number and bytes of allocations that `count`
/// samples totalling `size` bytes stand for, at `rate`.
pub fn scale(count: u64, size: u64, rate: u64) -> (i64, i64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count as i64, size as i64);
    }
    let average = size as f64 / count as f64;
    let factor = 1.0 / (1.0 - (-average / rate as f64).exp());
    (
        (count as f64 * factor) as i64,
        (size as f64 * factor) as i64,
    )
}

/// Which of Go's two memory profiles: the same samples, a different default view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/debug/pprof/heap`: shows `inuse_space` unless told otherwise.
    Heap,
    /// `/debug/pprof/allocs`: shows `alloc_space` unless told otherwise.
    Allocs,
}

/// The memory profile of `samples` (all of them, or a window's difference), gzipped
/// pprof with Go's four sample types, scaled as Go scales them.
pub fn encode(
    kind: Kind,
    samples: &[Counted],
    start: SystemTime,
    window: Option<Duration>,
) -> std::io::Result<Vec<u8>> {
    let rate = rate();
    let mut builder = Builder::new(
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        ("space", "bytes"),
        i64::try_from(rate).unwrap_or(i64::MAX),
    );
    builder.default_sample_type(match kind {
        Kind::Heap => "inuse_space",
        Kind::Allocs => "alloc_space",
    });
    builder.time(start, window.unwrap_or_default());
    builder.comment(&match rate {
        0 => "heap profiling is off (--heap-profile-rate 0): no samples".to_owned(),
        _ => format!(
            "sampled: on average one allocation per {rate} bytes allocated \
             (--heap-profile-rate); values are estimates scaled as Go scales them"
        ),
    });
    if let Some(window) = window {
        builder.comment(&format!(
            "the difference over a {:.1} s window (in-use values: the change in it)",
            window.as_secs_f64()
        ));
    }
    if lost() > 0 {
        builder.comment(&format!(
            "{} samples lost (a profiling table was full)",
            lost()
        ));
    }
    // Stacks start at the function that asked for memory, as Go's start above
    // `runtime.mallocgc`: `top` then names who allocated, not `RawVec`'s growth.
    builder.trim_leading(is_allocation_machinery);
    for stack in samples {
        let [allocs, alloc_bytes, frees, free_bytes] = stack.values;
        let (alloc_objects, alloc_space) = scale(allocs, alloc_bytes, rate);
        let (inuse_objects, inuse_space) = scale(
            allocs.saturating_sub(frees),
            alloc_bytes.saturating_sub(free_bytes),
            rate,
        );
        let frames = Frame::walked(&stack.frames, false);
        builder.add_sample(
            &frames,
            &[alloc_objects, alloc_space, inuse_objects, inuse_space],
            &[],
        );
    }
    builder.comment(&hidden_comment(&builder, samples.len()));
    builder.gzip()
}

/// Says what the trimming hid, so that the shorter stacks are no mystery: how many began
/// with allocation machinery, and which machinery the allocating functions called.
fn hidden_comment(builder: &Builder, stacks: usize) -> String {
    let (trimmed, names) = builder.trimmed();
    let mut text = format!(
        "stacks start at the allocating function, as Go's start above runtime.mallocgc: \
         their leading frames of the global allocator (mimalloc, the counting wrapper, \
         this profiler's hook, the __rust_alloc shims) and of the alloc crate's machinery \
         (Vec/String growth and reserve, with_capacity, to_vec, Box::new, format!, \
         collections; std's HashMap) are hidden: {trimmed} of {stacks} stacks"
    );
    if !names.is_empty() {
        let most: Vec<String> = names
            .iter()
            .take(8)
            .map(|(name, count)| format!("{name} ({count})"))
            .collect();
        text.push_str(&format!(
            "; the hidden call each allocating function made, most often: {}",
            most.join(", ")
        ));
    }
    text
}

/// Paths whose functions are allocation machinery: the `alloc` crate (the language-level
/// allocations: `Vec` and `String` growth, `with_capacity`, `to_vec`, `Box::new`,
/// `format!`, `Rc`/`Arc`, collections), the allocator API and std's glue, std's
/// `HashMap` growth (hashbrown), `collect`'s dispatch, and this process's allocator:
/// mimalloc, the counting wrapper, this module. Go's analogues (`runtime.mallocgc`,
/// `makeslice`, `growslice`, `newobject`, `mapassign`, `concatstrings`) are runtime
/// functions, hidden from its heap profiles.
const MACHINERY: [&str; 10] = [
    "alloc::",
    "core::alloc::",
    "std::alloc::",
    "std::collections::hash::",
    "hashbrown::",
    "core::iter::traits::iterator::Iterator::collect",
    "mimalloc::",
    "libmimalloc_sys::",
    "leftpad::telemetry::allocator::CountingAllocator",
    "leftpad::profile::heap::",
];

/// Methods that only size a container's storage, in any crate (`slab::Slab::with_capacity`,
/// `bytes::BytesMut::reserve`): at the top of a stack they are the container's growth,
/// not the caller's decision to allocate, which is the frame below them.
const SIZING: [&str; 6] = [
    "with_capacity",
    "with_capacity_in",
    "reserve",
    "reserve_exact",
    "try_reserve",
    "try_reserve_exact",
];

/// Whether `name` (demangled) is allocation machinery, hidden at the top of memory
/// profiles' stacks: a function of [`MACHINERY`], an implementation on one of its types
/// or of one of its traits (`<alloc::string::String as core::fmt::Write>::write_str`,
/// `<str as alloc::borrow::ToOwned>::to_owned`), a [`SIZING`] method, or an allocation
/// shim.
pub fn is_allocation_machinery(name: &str) -> bool {
    const SHIMS: [&str; 10] = [
        "__rust_alloc",
        "__rust_alloc_zeroed",
        "__rust_realloc",
        "__rust_dealloc",
        "__rg_alloc",
        "__rg_alloc_zeroed",
        "__rg_realloc",
        "__rdl_alloc",
        "__rdl_alloc_zeroed",
        "__rdl_realloc",
    ];
    let last = name.rsplit("::").next().unwrap_or(name);
    if SHIMS.contains(&last) || SIZING.contains(&last) {
        return true;
    }
    let listed = |path: &str| MACHINERY.iter().any(|prefix| path.starts_with(prefix));
    match name.strip_prefix('<') {
        // `<Type as Trait>::method`: the type, then the trait after the ` as ` at the
        // outermost level (types have generic arguments of their own).
        Some(inner) => listed(inner) || trait_of(inner).is_some_and(listed),
        None => listed(name),
    }
}

/// The trait of `Type as Trait>::method` (the text after `<`), if there is one.
fn trait_of(inner: &str) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in inner.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth == 0 => return None,
            '>' => depth -= 1,
            ' ' if depth == 0 && inner[i..].starts_with(" as ") => return Some(&inner[i + 4..]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_follows_go() {
        // A 512 KiB allocation at the default rate is sampled with probability 1 - 1/e.
        let (count, bytes) = scale(1, 512 * 1024, DEFAULT_RATE);
        assert_eq!(count, 1, "1 / (1 - 1/e) = 1.58, truncated as Go does");
        assert_eq!(bytes, (512.0 * 1024.0 / (1.0 - (-1f64).exp())) as i64);
        // Small allocations stand for many.
        assert_eq!(scale(10, 640, DEFAULT_RATE).0, 81_925);
        assert_eq!(scale(0, 0, DEFAULT_RATE), (0, 0));
        assert_eq!(
            scale(3, 300, 1),
            (3, 300),
            "rate 1: every allocation is sampled"
        );
    }

    #[test]
    fn intervals_average_the_rate() {
        let n = 100_000;
        let total: u64 = (0..n).map(|_| next_interval(1000)).sum();
        let mean = total as f64 / n as f64;
        assert!((950.0..1050.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn allocation_machinery_is_recognised_by_its_paths() {
        for name in [
            "__rustc::__rust_alloc",
            "__rust_realloc",
            "<leftpad::telemetry::allocator::CountingAllocator as core::alloc::global::GlobalAlloc>::alloc",
            "alloc::alloc::Global::alloc_impl",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "alloc::raw_vec::RawVecInner<A>::grow_amortized",
            "alloc::raw_vec::finish_grow",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "alloc::vec::Vec<T,A>::with_capacity_in",
            "alloc::vec::Vec<T,A>::reserve",
            "alloc::slice::<impl [T]>::to_vec",
            "alloc::boxed::Box<T>::new",
            "alloc::string::String::reserve",
            "<alloc::string::String as core::fmt::Write>::write_str",
            "<str as alloc::borrow::ToOwned>::to_owned",
            "<alloc::vec::Vec<T> as alloc::vec::spec_from_iter::SpecFromIter<T,I>>::from_iter",
            "<core::iter::adapters::map::Map<I,F> as alloc::vec::Extend<T>>::extend",
            "alloc::fmt::format::format_inner",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
            "core::iter::traits::iterator::Iterator::collect",
            "leftpad::profile::heap::on_alloc",
            "slab::Slab<T>::with_capacity",
            "bytes::bytes_mut::BytesMut::reserve",
        ] {
            assert!(is_allocation_machinery(name), "{name}");
        }
        for name in [
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "std::io::default_read_to_end",
            "std::fs::read_to_string",
            "leftpad::telemetry::accesslog::Writer::run",
            "leftpad::shell::server::start_and_wait",
            "<leftpad::app::handler::App as leftpad::http::conn::Service>::handle",
            "<core::result::Result<T,E> as core::ops::try_trait::Try>::branch",
            "<Vec<u8> as leftpad::Thing>::f",
            "core::fmt::write",
        ] {
            assert!(!is_allocation_machinery(name), "{name}");
        }
    }

    #[test]
    fn live_blocks_are_matched_once() {
        let stack = [0x1111, 0x2222, 0x5555_0000_0000_0001];
        let (index, _) = STACKS.intern(&stack).expect("room");
        let address = 0x7f00_dead_bee0;
        assert!(remember(address, index as u32, 48));
        assert!(LIVE_COUNT.load(Ordering::Relaxed) >= 1);
        forget(address);
        forget(address); // a second free of the same address changes nothing
        let counted = STACKS.snapshot();
        let mine = counted.iter().find(|c| c.frames == stack).expect("listed");
        assert_eq!((mine.values[FREES], mine.values[FREE_BYTES]), (1, 48));
    }
}
