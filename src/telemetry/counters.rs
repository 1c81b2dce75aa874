//! Every counter of the server, declared once, in per-worker slots without contention.
//!
//! [`Scalar`] lists the plain counters with their `/debug/vars` place and their Prometheus
//! family, in one table: `/debug/vars` ([`crate::telemetry::vars`]) and `/metrics`
//! ([`crate::telemetry::prometheus`]) are both rendered from it, so adding a counter is
//! one line here. The answers by route and code and the duration histogram are the two
//! structured counters beside them.
//!
//! Each worker owns one [`WorkerCounters`] slot, padded to its own cache lines, and is
//! the only writer of its request-path counters: it updates them with a relaxed load
//! and store (no locked read-modify-write), once per batch or per connection. The few
//! counters with a second writer (the worker's log writer thread, pinned to the same
//! CPU; the threads without a slot of their own) use [`Counter::add_shared`], once per
//! write or allocation off the request path. The admin thread only reads.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::app::handler::Route;

/// A counter: [`Counter::add`] for its single writer (a plain load and store),
/// [`Counter::add_shared`] where several threads write; readers on other threads see a
/// recent value.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

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

    /// Adds from a thread that may not be the only writer (a locked add).
    #[inline]
    pub fn add_shared(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How Prometheus exposes a [`Scalar`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    pub help: &'static str,
}

/// Where a [`Scalar`] appears: its `/debug/vars` group and name, its Prometheus family.
#[derive(Clone, Copy, Debug)]
pub struct Declared {
    pub group: &'static str,
    pub name: &'static str,
    /// None: `/debug/vars` only (`/metrics` has it in a richer form, or not at all).
    pub family: Option<Family>,
}

/// Declares the scalar counters: the enum that indexes a slot and the table of where
/// each appears, from one list.
macro_rules! scalars {
    ($($(#[$doc:meta])* $variant:ident => $group:literal $name:literal $(, $kind:literal $family:literal $help:literal)?;)*) => {
        /// The plain counters of a worker, in `/debug/vars` order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Scalar {
            $($(#[$doc])* $variant,)*
        }

        impl Scalar {
            /// Every scalar, in declaration order.
            pub const ALL: [Scalar; [$(Scalar::$variant),*].len()] = [$(Scalar::$variant),*];

            /// Where this counter appears.
            pub const fn declared(self) -> Declared {
                DECLARED[self as usize]
            }
        }

        const DECLARED: [Declared; Scalar::ALL.len()] = [$(Declared {
            group: $group,
            name: $name,
            family: scalars!(@family $($kind $family $help)?),
        },)*];
    };
    (@family) => { None };
    (@family $kind:literal $family:literal $help:literal) => {
        Some(Family { name: $family, kind: $kind, help: $help })
    };
}

scalars! {
    /// Requests answered (by route and code in [`WorkerCounters::answers`]).
    Requests => "requests" "total";
    Responses1xx => "responses" "1xx";
    Responses2xx => "responses" "2xx";
    Responses3xx => "responses" "3xx";
    Responses4xx => "responses" "4xx";
    Responses5xx => "responses" "5xx";
    ConnectionsOpen => "connections" "open",
        "gauge" "leftpad_connections_open" "Connections open now.";
    ConnectionsAccepted => "connections" "accepted",
        "counter" "leftpad_connections_accepted_total" "Connections accepted.";
    BytesIn => "bytes" "in",
        "counter" "leftpad_http_received_bytes_total" "Bytes read from clients.";
    BytesOut => "bytes" "out",
        "counter" "leftpad_http_sent_bytes_total" "Bytes written to clients.";
    /// Lines handed to the log writer (by the worker, per hand-over).
    LogLines => "access_log" "lines",
        "counter" "leftpad_access_log_lines_total" "Access-log lines written.";
    /// Written by the log writer thread.
    LogBytesWritten => "access_log" "bytes_written",
        "counter" "leftpad_access_log_written_bytes_total" "Access-log bytes written.";
    /// Written by the log writer thread.
    LogWriteErrors => "access_log" "write_errors",
        "counter" "leftpad_access_log_write_errors_total"
        "Access-log writes that failed (disk full, closed pipe).";
    /// Lines lost: the worker's buffer at its cap, or a failed write (both threads).
    LogDropped => "access_log" "dropped",
        "counter" "leftpad_access_log_dropped_lines_total"
        "Access-log lines dropped because the writer fell behind.";
    StatsdLines => "statsd" "lines";
    StatsdPackets => "statsd" "packets",
        "counter" "leftpad_statsd_packets_total" "StatsD datagrams sent.";
    StatsdSendErrors => "statsd" "send_errors",
        "counter" "leftpad_statsd_send_errors_total"
        "StatsD datagrams that could not be sent (counted, dropped).";
    /// Counted by the allocator for the thread the slot is registered to.
    HeapAllocations => "heap" "allocations",
        "counter" "leftpad_heap_allocations_total" "Heap allocations (the counting allocator).";
    HeapBytes => "heap" "bytes",
        "counter" "leftpad_heap_allocated_bytes_total" "Bytes allocated on the heap.";
}

/// The status codes this server answers with, each counted on its own.
pub const CODES: [u16; 13] = [
    200, 400, 404, 405, 408, 409, 413, 414, 431, 500, 501, 503, 505,
];

/// The index in [`CODES`] of `status` (500's for a code not listed).
pub fn code_index(status: u16) -> usize {
    const INTERNAL_ERROR: usize = 9;
    CODES
        .iter()
        .position(|&c| c == status)
        .unwrap_or(INTERNAL_ERROR)
}

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
    pub const fn new() -> Histogram {
        Histogram {
            counts: [const { Counter::new() }; BUCKETS_MICROS.len() + 1],
            sum_micros: Counter::new(),
        }
    }

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

/// One worker's counters. 128-byte alignment keeps two workers' slots off the same
/// cache line and off adjacent lines the prefetcher pairs.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerCounters {
    scalars: [Counter; Scalar::ALL.len()],
    /// Answers by route ([`Route::ALL`] order) and status ([`CODES`] order).
    pub answers: [[Counter; CODES.len()]; Route::ALL.len()],
    /// Handling time of every answer.
    pub duration: Histogram,
}

impl std::ops::Index<Scalar> for WorkerCounters {
    type Output = Counter;

    #[inline]
    fn index(&self, scalar: Scalar) -> &Counter {
        &self.scalars[scalar as usize]
    }
}

impl WorkerCounters {
    /// All zeros; `const`, for the allocator's static slot.
    pub const fn new() -> WorkerCounters {
        WorkerCounters {
            scalars: [const { Counter::new() }; Scalar::ALL.len()],
            answers: [const { [const { Counter::new() }; CODES.len()] }; Route::ALL.len()],
            duration: Histogram::new(),
        }
    }

    /// A slot for the life of the process (one per worker, made at startup).
    pub fn leak() -> &'static WorkerCounters {
        Box::leak(Box::default())
    }

    /// Counts one answer: its status class, its route and code, its handling time.
    #[inline]
    pub fn answered(&self, route: Route, status: u16, micros: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.scalars[Scalar::Responses1xx as usize + class].add(1);
        self.answers[route as usize][code_index(status)].add(1);
        self.duration.observe(micros);
    }
}

/// The sum of `scalar` over `slots`.
pub fn sum<'a>(slots: impl IntoIterator<Item = &'a WorkerCounters>, scalar: Scalar) -> u64 {
    slots.into_iter().map(|slot| slot[scalar].get()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_class_route_code_and_bucket() {
        let counters = WorkerCounters::default();
        counters.answered(Route::Leftpad, 200, 3);
        counters.answered(Route::Leftpad, 200, 10);
        counters.answered(Route::Other, 404, 11);
        counters.answered(Route::Unrouted, 999, 20_000_000);
        counters.answered(Route::Unrouted, 101, 1);
        let classes =
            [1, 2, 3, 4, 5].map(|c| counters.scalars[Scalar::Responses1xx as usize + c - 1].get());
        assert_eq!(classes, [1, 2, 0, 1, 1]);
        assert_eq!(counters.answers[Route::Leftpad as usize][0].get(), 2);
        assert_eq!(counters.answers[Route::Other as usize][2].get(), 1);
        assert_eq!(
            counters.answers[Route::Unrouted as usize][9].get(),
            2,
            "codes not listed (999, 101) count as 500"
        );
        let counts: Vec<u64> = counters.duration.counts.iter().map(Counter::get).collect();
        assert_eq!(&counts[..3], [2, 1, 1], "<=5, <=10, <=25 µs");
        assert_eq!(counts[BUCKETS_MICROS.len()], 1, "+Inf");
        assert_eq!(counters.duration.sum_micros.get(), 20_000_025);
        assert_eq!(std::mem::align_of::<WorkerCounters>(), 128);
    }

    #[test]
    fn the_declaration_covers_every_scalar_in_order() {
        for (index, scalar) in Scalar::ALL.into_iter().enumerate() {
            assert_eq!(scalar as usize, index);
        }
        assert_eq!(
            Scalar::Responses5xx as usize - Scalar::Responses1xx as usize,
            4
        );
        let families: Vec<&str> = Scalar::ALL
            .iter()
            .filter_map(|s| s.declared().family.map(|f| f.name))
            .collect();
        let mut unique = families.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), families.len(), "one family per counter");
        assert!(families.iter().all(|f| f.starts_with("leftpad_")));
    }

    #[test]
    fn shared_and_single_writer_adds_sum() {
        let counters = WorkerCounters::default();
        counters[Scalar::LogDropped].add(2);
        counters[Scalar::LogDropped].add_shared(3);
        counters[Scalar::ConnectionsOpen].add(2);
        counters[Scalar::ConnectionsOpen].sub(1);
        assert_eq!(counters[Scalar::LogDropped].get(), 5);
        assert_eq!(sum([&counters, &counters], Scalar::ConnectionsOpen), 2);
    }
}
