//! The worker's side of the access log: its line buffer and the hand-off to its writer.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;

use crate::profile::block;
use crate::telemetry::counters::{Scalar, WorkerCounters};

use super::line::{longest, write_line, Line, LineTime};

/// What the worker sends its writer.
pub(super) enum Message {
    Lines(Vec<u8>),
    Reopen,
}

/// Buffers per worker: one filling, up to two queued for the writer, one being written.
/// All are allocated at startup and circulate; none is allocated afterwards.
const POOL: usize = 4;
/// Buffers queued for the writer at most (besides the one it writes and the one filling).
const MAX_QUEUED_BUFFERS: usize = POOL - 2;

/// What a worker and its writer thread share. Each side holds the lock only to push or
/// pop; the writer parks when it has nothing to do and the worker unparks it after a
/// push (cheaper than a channel, whose waker takes a second lock on both sides).
pub(super) struct Handoff {
    queues: Mutex<Queues>,
    /// Signalled when a buffer comes back (the worker waits for one only at shutdown).
    pub(super) returned: Condvar,
}

pub(super) struct Queues {
    /// For the writer, in order.
    pub(super) inbox: VecDeque<Message>,
    /// Written and emptied buffers, for the worker.
    pub(super) spares: Vec<Vec<u8>>,
    /// The worker is done: write what is queued, then stop.
    pub(super) closed: bool,
    /// The writer has stopped (it never takes anything again).
    pub(super) writer_gone: bool,
}

impl Queues {
    /// An emptied buffer for the worker, if the writer's queue also has room for the
    /// full one it replaces.
    fn take_spare(&mut self) -> Option<Vec<u8>> {
        if self.inbox.len() >= MAX_QUEUED_BUFFERS {
            return None;
        }
        self.spares.pop()
    }
}

impl Handoff {
    /// The hand-off of a new log: `POOL - 1` spare buffers of `capacity` bytes (the
    /// worker fills the last one).
    pub(super) fn new(capacity: usize) -> Handoff {
        let mut spares = Vec::with_capacity(POOL);
        spares.extend((1..POOL).map(|_| Vec::with_capacity(capacity)));
        Handoff {
            queues: Mutex::new(Queues {
                inbox: VecDeque::with_capacity(MAX_QUEUED_BUFFERS + 1),
                spares,
                closed: false,
                writer_gone: false,
            }),
            returned: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Queues> {
        // The lock guards plain pushes and pops, which leave the queues whole even if a
        // panic interrupted their holder. A contended lock is recorded in the mutex and
        // block profiles (an uncontended one costs a `try_lock`, as `lock` does).
        block::lock(&self.queues).unwrap_or_else(PoisonError::into_inner)
    }
}

/// A worker's log buffer and its line to the writer thread.
pub struct AccessLog {
    buf: Vec<u8>,
    /// Ship the buffer once it holds this much (`--log-buffer`).
    threshold: usize,
    /// The most the buffer may grow to while the writer is behind.
    hard_cap: usize,
    handoff: Arc<Handoff>,
    writer: Thread,
    /// The worker's slot: lines handed over and dropped are counted here.
    counters: &'static WorkerCounters,
    /// Lines appended since the last ship (published to `stats` when shipped).
    lines: u64,
    /// SIGHUP seen; the reopen is sent to the writer once the buffer is shipped.
    reopen_pending: bool,
}

impl AccessLog {
    /// The worker's half of a log whose writer thread is `writer`: a buffer of
    /// `capacity` bytes, shipped once it holds `threshold`.
    pub(super) fn new(
        handoff: Arc<Handoff>,
        writer: Thread,
        capacity: usize,
        threshold: usize,
        counters: &'static WorkerCounters,
    ) -> AccessLog {
        AccessLog {
            buf: Vec::with_capacity(capacity),
            threshold,
            hard_cap: (threshold * 64).max(16 << 20),
            handoff,
            writer,
            counters,
            lines: 0,
            reopen_pending: false,
        }
    }

    /// Appends one line. In steady state the line fits the buffer's capacity. If the
    /// writer has fallen behind, the buffer grows (the only allocation, and only then) up
    /// to a hard cap; past that the line is dropped and counted: memory stays bounded
    /// even if the disk or pipe never drains.
    pub fn append(&mut self, time: &mut LineTime, unix_ms: u64, line: &Line<'_>) {
        let longest = longest(line);
        if self.buf.len() + longest > self.buf.capacity()
            && self.buf.len() + longest > self.hard_cap
        {
            self.counters[Scalar::LogDropped].add_shared(1);
            return;
        }
        write_line(&mut self.buf, time, unix_ms, line);
        self.lines += 1;
    }

    /// Whether the buffer has reached `--log-buffer` and should be shipped.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= self.threshold
    }

    /// Hands the buffered lines to the writer thread if it can take them now; if not (no
    /// spare buffer back yet, or the writer's queue full), they stay and the next call
    /// retries.
    pub fn ship(&mut self) {
        if !self.buf.is_empty() {
            let Some(replacement) = self.handoff.lock().take_spare() else {
                return;
            };
            self.hand_over(replacement);
        }
        self.send_pending_reopen();
    }

    /// Queues the filled buffer for the writer and goes on in `replacement`. Only this
    /// worker queues buffers, so the room `take_spare` saw is still there.
    fn hand_over(&mut self, replacement: Vec<u8>) {
        let full = std::mem::replace(&mut self.buf, replacement);
        self.handoff.lock().inbox.push_back(Message::Lines(full));
        self.writer.unpark();
        self.counters[Scalar::LogLines].add_shared(self.lines);
        self.lines = 0;
    }

    /// Ships everything, waiting for the writer if need be (shutdown only: a writer
    /// stuck on a full pipe would block this, and then the process's shutdown backstop).
    pub fn ship_all(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut queues = self.handoff.lock();
        let replacement = loop {
            if queues.writer_gone {
                return;
            }
            if let Some(spare) = queues.take_spare() {
                break spare;
            }
            queues = self
                .handoff
                .returned
                .wait(queues)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(queues);
        self.hand_over(replacement);
    }

    /// Asks the writer to reopen the file (SIGHUP) once the lines buffered so far are
    /// shipped, so they land in the old file. Never waits: if the writer is busy, the
    /// reopen stays pending and [`AccessLog::ship`] completes it later.
    pub fn reopen(&mut self) {
        self.reopen_pending = true;
        self.ship();
    }

    pub fn reopen_pending(&self) -> bool {
        self.reopen_pending
    }

    fn send_pending_reopen(&mut self) {
        if !self.reopen_pending || !self.buf.is_empty() {
            return;
        }
        let mut queues = self.handoff.lock();
        // The queue has room for one reopen beside its buffers.
        if queues.inbox.len() <= MAX_QUEUED_BUFFERS {
            queues.inbox.push_back(Message::Reopen);
            drop(queues);
            self.writer.unpark();
            self.reopen_pending = false;
        }
    }
}

impl Drop for AccessLog {
    /// Lets the writer finish what is queued and stop.
    fn drop(&mut self) {
        self.handoff.lock().closed = true;
        self.writer.unpark();
    }
}
