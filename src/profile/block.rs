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
/// handle, as with `Mutex::lock`. Never inlined, like [`timed`] and [`would_block`]: the
/// profiler's own frames are whole frames of their own, left out of the profile by name,
/// so the recorded stack ends at the caller's call of `lock`, and the location there
/// names the caller.
#[inline(never)]
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
#[inline(never)]
pub fn timed<R>(call: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let result = call();
    record(&[Kind::Block], start.elapsed());
    result
}

/// Records an operation that would have blocked and was refused instead.
#[inline(never)]
pub fn would_block() {
    record(&[Kind::Block], Duration::ZERO);
}

/// Counts one wait of `delay` at the caller's stack in each of `kinds`.
#[inline(never)]
fn record(kinds: &[Kind], delay: Duration) {
    let mut stack = [0u64; MAX_DEPTH];
    // Skip the walk's return into this function. The return into `lock`, `timed` or
    // `would_block` stays (unless the compiler made the call a jump): they are left out
    // by name when the profile is written, which holds whatever the code generation.
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
    builder.comment(
        "stacks end at the waiting call (a contended lock, the blocking write, the refused \
         send): the profiler's own wrapper frames (leftpad::profile::block) are left out",
    );
    // As Go's block profile starts at `sync.(*Mutex).Lock`, not at the runtime's
    // semaphore code that measured the wait.
    builder.trim_leading(is_profiler);
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

/// The profiler's own functions, left out at the top of block and mutex stacks: the
/// wrappers above and the recording and walking under them (not any other code of the
/// profile module, such as its tests' callers).
fn is_profiler(name: &str) -> bool {
    const OWN: [&str; 5] = [
        "leftpad::profile::block::lock",
        "leftpad::profile::block::timed",
        "leftpad::profile::block::would_block",
        "leftpad::profile::block::record",
        "leftpad::profile::frames::walk",
    ];
    OWN.iter().any(|own| {
        name.strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('<'))
    })
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

        // The profile's stack ends at the waiting call, the closure that called `lock`,
        // not in the profiler.
        let encoded = encode(Kind::Mutex, &new, SystemTime::now(), None).expect("encoded");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&encoded[..]), &mut bytes)
            .expect("gzip");
        let p = <pprof::protos::Profile as pprof::protos::Message>::decode(bytes.as_slice())
            .expect("valid protobuf");
        let leaf = &p.location[p.sample[0].location_id[0] as usize - 1];
        let function = &p.function[leaf.line[0].function_id as usize - 1];
        let name = &p.string_table[function.name as usize];
        assert!(name.contains("contend_once::{{closure}}"), "{name}");
        assert!(is_profiler("leftpad::profile::block::timed"));
        assert!(!is_profiler(
            "leftpad::profile::block::tests::contend_once::{{closure}}"
        ));
        let comments: Vec<&str> = p
            .comment
            .iter()
            .map(|&c| p.string_table[c as usize].as_str())
            .collect();
        assert!(
            comments
                .iter()
                .any(|c| c.contains("end at the waiting call")),
            "{comments:?}"
        );
    }
}
