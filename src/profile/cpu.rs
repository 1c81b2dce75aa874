//! CPU profiles of the whole process: `/debug/pprof/profile` and `/debug/pprof/flamegraph`.
//!
//! Sampling uses the `pprof` crate: `setitimer(ITIMER_PROF)` at 100 Hz and a SIGPROF
//! handler that walks the interrupted thread's stack. Its unwinder is chosen for the
//! signal handler: frame pointers (the crate's `frame-pointer` feature; every crate here
//! is built with frame pointers), which read memory only after validating each address,
//! and take no lock and allocate nothing, unlike the libgcc unwinder, which can deadlock
//! or crash in a signal handler. libc, libgcc, pthread and the vDSO are block-listed:
//! they are built without frame pointers, so a sample that lands inside them is dropped
//! rather than walked wrongly. Time spent inside those libraries (mostly the syscall
//! wrappers around io_uring_enter) is therefore missing from profiles; `perf` shows it.
//! No profiler runs until one is asked for, so profiling costs nothing otherwise.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Samples per second: pprof's and Go's default.
const PROFILE_HZ: i32 = 100;
/// Libraries without frame pointers: samples inside them are dropped, not mis-walked.
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// How a profile is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// pprof protobuf, gzip-compressed, for `go tool pprof`.
    Pprof,
    /// An SVG flame graph, for a browser.
    Flamegraph,
}

/// Why no profile was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Another profile is being taken (one at a time): HTTP 409.
    Busy,
    /// Sampling or encoding failed: HTTP 500, with the reason.
    Failed(String),
}

/// Samples the whole process for `seconds` and encodes the result as `format`. `busy`
/// is the process's "a CPU profile is running" flag: one profile at a time.
pub fn profile(busy: &AtomicBool, seconds: u64, format: Format) -> Result<Vec<u8>, Error> {
    if busy.swap(true, Ordering::AcqRel) {
        return Err(Error::Busy);
    }
    let report = sample(seconds);
    busy.store(false, Ordering::Release);
    let report = report?;
    match format {
        Format::Pprof => pprof_gzip(&report),
        Format::Flamegraph => flamegraph(&report, seconds),
    }
    .map_err(Error::Failed)
}

fn sample(seconds: u64) -> Result<pprof::Report, Error> {
    pprof::ProfilerGuardBuilder::default()
        .frequency(PROFILE_HZ)
        .blocklist(&BLOCKLIST)
        .build()
        .and_then(|guard| {
            std::thread::sleep(Duration::from_secs(seconds));
            guard.report().build()
        })
        .map_err(|e| Error::Failed(format!("cannot take a CPU profile: {e}")))
}

fn flamegraph(report: &pprof::Report, seconds: u64) -> Result<Vec<u8>, String> {
    if report.data.is_empty() {
        // inferno draws nothing at all for no samples; say why instead.
        return Ok(no_samples_svg(seconds).into_bytes());
    }
    let mut body = Vec::new();
    report
        .flamegraph(&mut body)
        .map_err(|e| format!("cannot draw the flame graph: {e}"))?;
    Ok(body)
}

/// The flame graph of a profile without samples: the process spent the time idle or in
/// the kernel (samples in system calls are not kept).
fn no_samples_svg(seconds: u64) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"10\" y=\"35\" font-family=\"Verdana\" font-size=\"16\">\
         No samples in {seconds} s: the process ran no user-space code while profiled \
         (idle, or in system calls). Profile again under load.</text></svg>\n"
    )
}

fn pprof_gzip(report: &pprof::Report) -> Result<Vec<u8>, String> {
    use pprof::protos::Message;
    let profile = report
        .pprof()
        .map_err(|e| format!("cannot encode the profile: {e}"))?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&profile.encode_to_vec())
        .and_then(|()| gzip.finish())
        .map_err(|e| format!("cannot compress the profile: {e}"))
}
