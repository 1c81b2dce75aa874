//! `/debug/pprof/block` and `/debug/pprof/mutex`: where threads waited.
//!
//! By design a worker never blocks; these profiles are how that is shown rather than
//! claimed. The places that can wait record each wait with its stack (a frame-pointer
//! walk) and its length, and only when a wait actually happens:
//! - a contended lock ([`lock`]: `try_lock` first, so the uncontended path costs what it
//!   did): the mutex profile and the block profile;
//! - a blocking system call off the request path ([`timed`]: the log writers' `write`);
//! - an operation that would have blocked and was refused instead ([`would_block`]: a
//!   StatsD datagram dropped on a full socket buffer), with no delay, since the thread
//!   did not wait but a blocking client would have.
//!
//! Idle waiting (a log writer parked with nothing to write, a worker in `io_uring_enter`
//! with no events) is not a wait for something else and is left out, unlike Go's
//! channel receives. Both profiles carry Go's sample types, `contentions/count` and
//! `delay/nanoseconds`, and support `?seconds=N` for the difference over a window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use super::frames::{self, MAX_DEPTH};
use super::pprof::{Builder, Frame};
use super::stacks::{Counted, StackTable};

/// Which profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every wait: contended locks, blocking calls, refused operations.
    Block,
    /// Contended locks only.
    Mutex,
}

const CONTENTIONS: usize = 0;
const DELAY: usize = 1;

static BLOCK: StackTable = StackTable::new();
static MUTEX: StackTable = StackTable::new();
static LOST: AtomicU64 = AtomicU64::new(0);

fn table(kind: Kind) -> &'static StackTable {
    match kind {
        Kind::Block => &BLOCK,
        Kind::Mutex => &MUTEX,
    }
}

/// Locks `mutex`, recording the wait if it was contended. Poisoning is the caller's to
/// handle, as with `Mutex::lock`.
pub fn lock<T>(
    mutex: &Mutex<T>,
) -> Result<MutexGuard<'_, T>, std::sync::PoisonError<MutexGuard<'_, T>>> {
    match mutex.try_lock() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::Poisoned(poisoned)) => Err(poisoned),
        Err(TryLockError::WouldBlock) => {
            let start = Instant::now();
            let guard = mutex.lock();
            let waited = start.elapsed();
            record(&[Kind::Mutex, Kind::Block], waited);
            guard
        }
    }
}

/// Runs a blocking call and records how long it took in the block profile.
pub fn timed<R>(call: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let result = call();
    record(&[Kind::Block], start.elapsed());
    result
}

/// Records an operation that would have blocked and was refused instead.
pub fn would_block() {
    record(&[Kind::Block], Duration::ZERO);
}

/// Counts one wait of `delay` at the caller's stack in each of `kinds`.
#[inline(never)]
fn record(kinds: &[Kind], delay: Duration) {
    let mut stack = [0u64; MAX_DEPTH];
    // Skip the return address into this function's caller in this module.
    let depth = frames::walk(1, &mut stack);
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    for &kind in kinds {
        match table(kind).intern(&stack[..depth]) {
            Some((_, entry)) => {
                entry.add(CONTENTIONS, 1);
                entry.add(DELAY, nanos);
            }
            None => {
                LOST.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every stack that waited so far.
pub fn snapshot(kind: Kind) -> Vec<Counted> {
    table(kind).snapshot()
}

/// The profile of `samples` as gzipped pprof with Go's sample types.
pub fn encode(
    kind: Kind,
    samples: &[Counted],
    start: SystemTime,
    window: Option<Duration>,
) -> std::io::Result<Vec<u8>> {
    let mut builder = Builder::new(
        &[("contentions", "count"), ("delay", "nanoseconds")],
        ("contentions", "count"),
        1,
    );
    builder.time(start, window.unwrap_or_default());
    builder.comment(match kind {
        Kind::Block => {
            "waits: contended locks, blocking writes of the log writers, StatsD datagrams \
             refused by a full socket buffer (delay 0); idle waiting is not counted"
        }
        Kind::Mutex => "contended locks: waits for a lock another thread held",
    });
    if let Some(window) = window {
        builder.comment(&format!(
            "the difference over a {:.1} s window",
            window.as_secs_f64()
        ));
    }
    let lost = LOST.load(Ordering::Relaxed);
    if lost > 0 {
        builder.comment(&format!("{lost} waits not recorded (a table was full)"));
    }
    for counted in samples {
        let frames = Frame::walked(&counted.frames, false);
        let values = [counted.values[CONTENTIONS], counted.values[DELAY]];
        builder.add_sample(
            &frames,
            &values.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            &[],
        );
    }
    builder.gzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn contend_once(mutex: &'static Mutex<u32>) {
        let held = mutex.lock().unwrap();
        let waiter = std::thread::spawn(move || *lock(mutex).unwrap() += 1);
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        waiter.join().unwrap();
    }

    #[test]
    fn a_contended_lock_is_recorded_with_its_wait() {
        static MUTEX_UNDER_TEST: Mutex<u32> = Mutex::new(0);
        let before = snapshot(Kind::Mutex);
        contend_once(&MUTEX_UNDER_TEST);
        let after = snapshot(Kind::Mutex);
        let new = super::super::stacks::difference(&before, &after);
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(new[0].values[CONTENTIONS], 1);
        assert!(
            new[0].values[DELAY] >= 20_000_000,
            "waited ~50 ms: {:?}",
            new[0].values
        );
        // An uncontended lock records nothing.
        let quiet = snapshot(Kind::Mutex);
        drop(lock(&MUTEX_UNDER_TEST).unwrap());
        assert_eq!(
            super::super::stacks::difference(&quiet, &snapshot(Kind::Mutex)),
            []
        );
    }
}
