//! The writer thread of one worker's access log: takes whole-line buffers from the
//! hand-off and appends them to the file; reopens it on request (SIGHUP).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::profile::block;
use crate::profile::trace::{self, Notice, Site};
use crate::telemetry::counters::{Scalar, WorkerCounters};

use super::buffer::{AccessLog, Handoff, Message};
use super::pagecache::Trim;
use super::Target;

/// The writer thread of one worker.
pub struct Writer {
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts a writer on `file` (already opened from `target`, so startup errors are
    /// reported before any worker runs), pinned to `cpu`. Returns the worker's half.
    pub fn start(
        target: Target,
        file: File,
        threshold: usize,
        cpu: Option<core_affinity::CoreId>,
        counters: &'static WorkerCounters,
        warned: Arc<AtomicBool>,
    ) -> io::Result<(AccessLog, Writer)> {
        // Each buffer holds four thresholds, so lines keep fitting while the writer is
        // busy with earlier ones.
        let capacity = threshold * 4;
        let handoff = Arc::new(Handoff::new(capacity));
        let thread_handoff = handoff.clone();
        let thread = std::thread::Builder::new()
            .name("leftpad-log".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(cpu);
                }
                let handoff = &*thread_handoff;
                write_until_closed(target, file, handoff, counters, &warned);
                handoff.lock().writer_gone = true;
                handoff.returned.notify_all();
            })?;
        let writer = thread.thread().clone();
        let log = AccessLog::new(handoff, writer, capacity, threshold, counters);
        Ok((log, Writer { thread }))
    }

    /// Waits for the writer to write everything it was sent (after its `AccessLog` is
    /// dropped).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn write_until_closed(
    target: Target,
    mut file: File,
    handoff: &Handoff,
    counters: &WorkerCounters,
    warned: &AtomicBool,
) {
    let mut is_pipe = is_pipe_like(&file);
    let mut trim = Trim::default();
    let mut torn = false;
    let tracing = TraceIdentity::new();
    // Whether the writer's goroutine (in an execution trace) is running, not waiting.
    let mut running = false;
    let report = |what: &str, e: &io::Error| {
        counters[Scalar::LogWriteErrors].add_shared(1);
        if trace::on() {
            trace::notice(Notice::LogWriteFailed, Site::LogWrite);
        }
        if !warned.swap(true, Ordering::Relaxed) {
            eprintln!("leftpad: access log {target}: {what}: {e} (counting further errors in /debug/vars)");
        }
    };
    loop {
        let next = {
            let mut queues = handoff.lock();
            match queues.inbox.pop_front() {
                Some(message) => Some(message),
                None if queues.closed => return,
                None => None,
            }
        };
        // Nothing queued: sleep until the worker unparks us (an unpark that came before
        // this park makes it return at once, so no wake-up is lost), or until a trace's
        // start or end is due to be seen (the only time this thread looks at the clock).
        let Some(message) = next else {
            if std::mem::take(&mut running) && trace::on() {
                trace::writer_waits();
            }
            tracing.sync();
            std::thread::park_timeout(TRACE_SYNC);
            continue;
        };
        if !std::mem::replace(&mut running, true) && trace::on() {
            trace::writer_wakes(TraceIdentity::current_g());
        }
        match message {
            Message::Lines(mut lines) => {
                // A line cut by a failed write (disk full) is ended before anything else
                // is written, so the lines that follow stay whole.
                if torn && write_lines(&mut file, b"\n", is_pipe).is_ok() {
                    torn = false;
                }
                match write_lines(&mut file, &lines, is_pipe) {
                    Ok(()) => {
                        counters[Scalar::LogBytesWritten].add_shared(lines.len() as u64);
                        if !is_pipe {
                            trim.after_write(&file, lines.len());
                        }
                    }
                    Err((written, e)) => {
                        // Whole lines written stay; the rest (a cut one included) is lost.
                        let lost = lines[written..].iter().filter(|&&b| b == b'\n').count();
                        counters[Scalar::LogDropped].add_shared(lost as u64);
                        counters[Scalar::LogBytesWritten].add_shared(written as u64);
                        torn |= written > 0 && lines[written - 1] != b'\n';
                        report("write failed, lines lost (counted as dropped)", &e);
                    }
                }
                lines.clear();
                // Back to the worker; the pool is sized so this never grows.
                handoff.lock().spares.push(lines);
                handoff.returned.notify_one();
            }
            Message::Reopen => match target.open() {
                Ok(new) => {
                    is_pipe = is_pipe_like(&new);
                    file = new;
                    trim = Trim::default();
                }
                Err(e) => report("cannot reopen, still writing to the old file", &e),
            },
        }
    }
}

/// Pipes and sockets only write up to `PIPE_BUF` bytes atomically.
fn is_pipe_like(file: &File) -> bool {
    file.metadata()
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

/// Writes whole lines: one `O_APPEND` write for a file (atomic against other workers),
/// writes of at most `PIPE_BUF` bytes ending at a newline for a pipe.
/// On failure, says how many bytes were written before it.
fn write_lines(file: &mut File, lines: &[u8], is_pipe: bool) -> Result<(), (usize, io::Error)> {
    // The writer's one wait: every write shows in the block profile with its length, and
    // in an execution trace as a blocking system call.
    let traced = trace::on();
    if traced {
        trace::writer_syscall_begins();
    }
    let written = block::timed(|| write_lines_now(file, lines, is_pipe));
    if traced {
        trace::writer_syscall_ends(TraceIdentity::current_g());
    }
    written
}

/// How often an idle writer wakes to see whether an execution trace began or ended.
const TRACE_SYNC: Duration = Duration::from_millis(50);

/// Writers started so far: each one's index names its P and goroutine in a trace.
static WRITERS: AtomicUsize = AtomicUsize::new(0);

/// A writer thread as an execution trace knows it: its P, and (in `WRITER_G`, where
/// `write_lines` finds it) its one goroutine.
struct TraceIdentity {
    thread: trace::Thread,
}

thread_local! {
    /// The goroutine of the writer running on this thread.
    static WRITER_G: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl TraceIdentity {
    fn new() -> TraceIdentity {
        let thread = trace::Thread::LogWriter(WRITERS.fetch_add(1, Ordering::Relaxed));
        trace::register_site(Site::LogWriter, write_until_closed as *const () as usize);
        trace::register_site(
            Site::LogWait,
            std::thread::park_timeout as *const () as usize,
        );
        trace::register_site(Site::LogWrite, write_lines_now as *const () as usize);
        let g = trace::next_id(trace::id_base(thread));
        WRITER_G.with(|cell| cell.set(g));
        TraceIdentity { thread }
    }

    /// The goroutine of the writer running on this thread.
    fn current_g() -> u64 {
        WRITER_G.with(std::cell::Cell::get)
    }

    /// Starts or ends this writer's recording (only while its goroutine waits).
    fn sync(&self) {
        trace::sync(self.thread, || vec![(Self::current_g(), Site::LogWriter)]);
    }
}

fn write_lines_now(file: &mut File, lines: &[u8], is_pipe: bool) -> Result<(), (usize, io::Error)> {
    if !is_pipe {
        return write_counted(file, lines, 0);
    }
    let mut rest = lines;
    while !rest.is_empty() {
        let end = if rest.len() <= libc::PIPE_BUF {
            rest.len()
        } else {
            match rest[..libc::PIPE_BUF].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                // One line longer than PIPE_BUF cannot be atomic; write it whole anyway.
                None => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1),
            }
        };
        write_counted(file, &rest[..end], lines.len() - rest.len())?;
        rest = &rest[end..];
    }
    Ok(())
}

/// `write_all` that says how much of `bytes` was written when it fails (plus `before`,
/// what the caller had written already).
fn write_counted(file: &mut File, bytes: &[u8], before: usize) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return Err((before + written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((before + written, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_writes_are_whole_lines_of_at_most_pipe_buf() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut file = File::from(std::os::fd::OwnedFd::from(writer));
        let one = format!("{}\n", "x".repeat(99));
        let lines = one.repeat(200).into_bytes();
        let handle = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &reader, &mut got).unwrap();
            got
        });
        write_lines(&mut file, &lines, true).unwrap();
        drop(file);
        assert_eq!(handle.join().unwrap(), lines);
    }
}
