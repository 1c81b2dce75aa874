//! A connection's task: reads, hands the bytes to the HTTP core, writes the answers,
//! waits; until the connection ends or parks.
//!
//! Kept small on purpose: an idle keep-alive connection costs this task (one
//! allocation), its slot and nothing more, as it waits for readability with no buffer
//! (taken from the worker's pool while it is served) and no timer (the tick enforces its
//! deadline). Sizes in ARCHITECTURE.md, "Idle connections".

use std::future::Future;
use std::mem::take;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::app::handler::{Handled, Route};
use crate::http::conn::{Conn, Record, Waiting, OUT_HIGH_WATER};
use crate::http::response::{Connection, Response};
use crate::http::Status;
use crate::profile::trace::{self, Site};

use super::deadline::{self, HeadClock, LINGER_TIME, TIMEOUT_ANSWER_TIME};
use super::parking::Resume;
use super::table::{ConnState, Registration};
use super::Worker;

/// After the server decides to close, how much it keeps reading (and discarding) so
/// that the client sees the last response rather than a reset.
const LINGER_BYTES: usize = 1 << 20;

/// A connection's task. A plain function returning an `async move` block, not an
/// `async fn`: an async fn keeps a second copy of its arguments in its future for the
/// whole connection (rustc issue 62958).
pub(super) fn connection_task(
    reg: Registration,
    stream: TcpStream,
    resume: Option<Resume>,
) -> impl Future<Output = ()> {
    let mut session = Session::new(reg, stream, resume);
    async move {
        if trace::on() {
            trace::go_start(std::time::Instant::now(), session.reg.g, false);
        }
        match session.exchange().await {
            End::ToParking => session.into_parking(),
            end => session.finish(end).await,
        }
        if trace::on() {
            trace::go_end(std::time::Instant::now());
        }
    }
}

/// Spawns the task of connection `key`, registered again, from where it was (a parked
/// connection that became readable, or one the parking set refused).
pub(super) fn resume(worker: &Rc<Worker>, key: usize, stream: TcpStream, resume: Resume) {
    let g = trace::next_id(worker.trace_ids);
    if let Some(slot) = worker.conns.borrow_mut().get_mut(key) {
        slot.g = g;
    }
    if trace::on() {
        trace::go_create(std::time::Instant::now(), g, Site::Readable);
    }
    let reg = Registration {
        worker: worker.clone(),
        key,
        g,
    };
    monoio::spawn(connection_task(reg, stream, Some(resume)));
}

/// Registers the sites where connection tasks record trace events, and the routes'
/// names for the requests' tasks (once per worker; the same values each time).
pub(super) fn register_trace_sites() {
    trace::register_site(Site::ConnectionTask, connection_entry() as usize);
    trace::register_site(Site::Read, Session::read_more as *const () as usize);
    trace::register_site(Site::Readable, Session::wait_readable as *const () as usize);
    trace::register_site(Site::Write, Session::write_output as *const () as usize);
    trace::register_site(Site::Linger, Session::linger as *const () as usize);
    trace::register_site(Site::Answer, Session::answer as *const () as usize);
    trace::register_task_names(&Route::ALL.map(Route::label));
}

/// The address of [`connection_task`], which profiles name as every connection task's
/// start (as Go's name a goroutine's start function).
pub(super) fn connection_entry() -> u64 {
    let entry: fn(Registration, TcpStream, Option<Resume>) -> _ = connection_task;
    entry as usize as u64
}

/// Why a connection's exchange ended.
enum End {
    /// Idle too long: the task ends, the socket waits in the worker's parking set.
    ToParking,
    /// The peer closed, reset or timed out: nothing more to send.
    PeerGone,
    /// The server decided to close after its last response: close gracefully.
    CloseAfterAnswer,
    /// A request head did not arrive within `--header-timeout`: answer 408.
    HeadTimedOut,
}

/// How a wait on the socket ended.
enum Wake {
    /// Bytes arrived (for a readiness wait: the socket is readable).
    Ready,
    /// End of file or an error: the connection is over.
    Gone,
    /// The deadline passed (the tick shut the socket down).
    Expired,
    /// The tick asked this idle connection to park.
    ParkRequested,
}

/// One connection as its task holds it.
struct Session {
    reg: Registration,
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    conn: Conn,
    head: HeadClock,
    /// When the bytes being answered were read (the start of the handling time).
    read_at: Instant,
    /// The latest clock reading: when a read completed, after processing, after a
    /// write. It serves the handling time and every deadline, so a batch reads the clock
    /// three times, not once per use.
    now: Instant,
}

impl Session {
    fn new(reg: Registration, stream: TcpStream, resume: Option<Resume>) -> Session {
        let _ = stream.set_nodelay(true);
        let now = Instant::now();
        Session {
            reg,
            stream,
            // No buffers yet: they come from the pool when the first bytes do.
            input: Vec::new(),
            output: Vec::new(),
            conn: Conn::new(),
            head: HeadClock::new(resume.map(|r| (r.fresh, r.deadline))),
            read_at: now,
            now,
        }
    }

    fn worker(&self) -> &Worker {
        &self.reg.worker
    }

    /// Reads, answers and writes until the connection ends; says how it ended.
    async fn exchange(&mut self) -> End {
        loop {
            let Some(more_buffered) = self.answer() else {
                return End::PeerGone;
            };
            if !self.output.is_empty() {
                let deadline = self.now + self.worker().timeouts.write;
                self.note(ConnState::Writing, deadline);
                if !self.write_output().await {
                    return End::PeerGone;
                }
                self.now = Instant::now();
            }
            let waiting = self.conn.waiting(self.input.len());
            if more_buffered && waiting != Waiting::Done {
                continue;
            }
            let worker = &*self.reg.worker;
            let draining = worker.draining.get();
            let next = deadline::next_wait(
                waiting,
                self.now,
                draining,
                &mut self.head,
                &worker.timeouts,
            );
            let Some((state, deadline)) = next else {
                return End::CloseAfterAnswer;
            };
            self.note(state, deadline);
            if self.input.is_empty() {
                // Nothing buffered: wait for bytes without owning buffers. It stays
                // `Idle` until bytes are read: with the epoll driver, readiness may be
                // stale and the read below is then still the idle wait. (A drain gives
                // an idle connection a grace to send, so a request just arrived is
                // answered either way.)
                match self.wait_readable().await {
                    Wake::Ready => {}
                    Wake::ParkRequested => return End::ToParking,
                    Wake::Gone | Wake::Expired => return End::PeerGone,
                }
            }
            match self.read_more().await {
                Wake::Ready => {}
                Wake::ParkRequested => return End::ToParking,
                Wake::Expired if waiting == Waiting::Head => return End::HeadTimedOut,
                Wake::Expired | Wake::Gone => return End::PeerGone,
            }
        }
    }

    /// Answers the complete requests buffered, logging and counting them. Some(true)
    /// when the output passed its high-water mark with requests still buffered; None
    /// if the core panicked (only this connection ends, not the worker).
    fn answer(&mut self) -> Option<bool> {
        if self.input.is_empty() {
            return Some(false);
        }
        let worker = &*self.reg.worker;
        if worker.draining.get() {
            // The last request buffered now is answered with `Connection: close`.
            self.conn.disable_keep_alive();
        }
        let date = *worker.date.borrow().as_bytes();
        let mut app = worker.app.borrow_mut();
        let mut recorder = worker.recorder.borrow_mut();
        let recorder = &mut *recorder;
        let (conn, input, output) = (&mut self.conn, &self.input, &mut self.output);
        let progress = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let records = &mut recorder.records;
            conn.process(input, output, records, &mut *app, &worker.limits, &date)
        }));
        let Ok(progress) = progress else {
            recorder.records.clear();
            return None;
        };
        self.now = Instant::now();
        if trace::on() {
            trace_requests(
                &recorder.records,
                self.reg.worker.trace_ids,
                self.read_at,
                self.now,
            );
        }
        let handling = self.now - self.read_at;
        let mut conns = worker.conns.borrow_mut();
        if let Some(slot) = conns.get_mut(self.reg.key) {
            let peer = slot.peer_text.as_bytes();
            recorder.record_batch(input, peer, handling, self.now.into_std());
            slot.requests += u64::from(progress.answered);
        }
        self.input.drain(..progress.consumed);
        Some(self.output.len() >= OUT_HIGH_WATER)
    }

    /// The task is about to wait at `site` (an execution trace's `GoBlockNet`).
    #[inline]
    fn blocks(&self, site: Site) {
        if trace::on() {
            trace::go_block_net(std::time::Instant::now(), site);
        }
    }

    /// The task runs again after a wait (`GoUnblock`, `GoStart`).
    #[inline]
    fn resumes(&self) {
        if trace::on() {
            trace::go_start(std::time::Instant::now(), self.reg.g, true);
        }
    }

    /// Records in the slot what the connection waits for and until when.
    fn note(&self, state: ConnState, deadline: Instant) {
        self.worker().note(self.reg.key, state, self.now, deadline);
    }

    fn expired(&self) -> bool {
        self.worker().expired(self.reg.key)
    }

    /// Writes the whole output (by the deadline noted); false if that failed.
    async fn write_output(&mut self) -> bool {
        let mut written = 0;
        while written < self.output.len() {
            let rest = take(&mut self.output).slice(written..);
            self.blocks(Site::Write);
            let (result, rest) = self.stream.write(rest).await;
            self.resumes();
            self.output = rest.into_inner();
            match result {
                Ok(n) if n > 0 && !self.expired() => written += n,
                _ => return false,
            }
        }
        self.output.clear();
        self.worker().count_out(self.reg.key, written);
        true
    }

    /// Gives the buffers back to the pool and waits until the socket has bytes (or end
    /// of file), then takes buffers again; or until the tick asks it to park.
    async fn wait_readable(&mut self) -> Wake {
        let buffers = &self.reg.worker.buffers;
        buffers.give(take(&mut self.input));
        buffers.give(take(&mut self.output));
        // Relaxed: the epoll driver may then wake on stale readiness; the read that
        // follows is then the wait (and can park as well).
        self.blocks(Site::Readable);
        let readable = self.stream.readable(true);
        let woke = until_park_requested(&self.reg, readable).await;
        self.resumes();
        match woke {
            None => Wake::ParkRequested,
            Some(Ok(())) if self.expired() => Wake::Expired,
            Some(Ok(())) => {
                let buffers = &self.reg.worker.buffers;
                self.input = buffers.take();
                self.output = buffers.take();
                Wake::Ready
            }
            Some(Err(_)) => Wake::Gone,
        }
    }

    /// Reads more bytes after those buffered.
    async fn read_more(&mut self) -> Wake {
        let len = self.input.len();
        if len == self.input.capacity() {
            // Only a partial head fills the buffer (the core rejects one past the limit).
            let max_head = self.worker().limits.max_head_size;
            self.input.reserve(max_head.max(len));
        }
        self.blocks(Site::Read);
        // An idle connection may be asked to park while it reads (with epoll, readiness
        // can be stale and the read is then the idle wait); only a read that takes no
        // bytes until it runs may be given up for it.
        let cancellable = self.worker().reads_cancellable;
        let read = self.stream.read(take(&mut self.input).slice_mut(len..));
        let read = if cancellable {
            until_park_requested(&self.reg, read).await
        } else {
            Some(read.await)
        };
        self.resumes();
        let Some((read, buf)) = read else {
            // Its buffer went with the read; the output goes back to the pool.
            return Wake::ParkRequested;
        };
        self.input = buf.into_inner();
        if self.expired() {
            return Wake::Expired;
        }
        let Ok(n @ 1..) = read else {
            return Wake::Gone;
        };
        self.head.bytes_arrived();
        self.read_at = Instant::now();
        self.now = self.read_at;
        self.worker().count_in(self.reg.key, n);
        Wake::Ready
    }

    /// Ends the task and hands the socket to the worker's parking set.
    fn into_parking(self) {
        let Session {
            reg,
            stream,
            input,
            output,
            ..
        } = self;
        reg.worker.buffers.give(input);
        reg.worker.buffers.give(output);
        let (worker, key) = reg.release();
        if let Some((stream, from)) = worker.hold_parked(key, stream) {
            resume(&worker, key, stream, from);
        }
    }

    /// After the exchange: a lingering close, or the 408 for a head that came too late;
    /// the buffers go back to the pool either way.
    async fn finish(&mut self, end: End) {
        self.reg.worker.buffers.give(take(&mut self.input));
        match end {
            End::PeerGone | End::ToParking => {}
            End::CloseAfterAnswer => {
                self.reg.worker.buffers.give(take(&mut self.output));
                self.linger().await;
            }
            End::HeadTimedOut => {
                self.answer_head_timeout();
                self.write_output().await;
            }
        }
        self.reg.worker.buffers.give(take(&mut self.output));
    }

    /// Puts the 408 in the output (logged and counted) and gives it a second to go out.
    fn answer_head_timeout(&mut self) {
        let worker = &*self.reg.worker;
        self.output.clear();
        let date = *worker.date.borrow().as_bytes();
        Response::new(&mut self.output, &date, false, Connection::Close).error(
            Status::REQUEST_TIMEOUT,
            "request head not received in time",
            b"",
        );
        // The recorder never looks at the table, so the slot may stay borrowed.
        if let Some(slot) = worker.conns.borrow().get(self.reg.key) {
            worker.record_unparsed(Status::REQUEST_TIMEOUT, &slot.peer_text);
        }
        self.note(ConnState::Writing, Instant::now() + TIMEOUT_ANSWER_TIME);
    }

    /// Half-closes, then reads and discards what the client still sends (up to a
    /// bound), so unread request bytes do not make the kernel reset the connection
    /// before the client has read our last response. nginx calls this lingering close.
    async fn linger(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        self.note(ConnState::Lingering, Instant::now() + LINGER_TIME);
        let mut buf = self.reg.worker.buffers.take();
        let mut total = 0;
        while total < LINGER_BYTES {
            self.blocks(Site::Linger);
            let (read, b) = self.stream.read(buf).await;
            self.resumes();
            buf = b;
            buf.clear();
            match read {
                Ok(n) if n > 0 && !self.expired() => total += n,
                _ => break,
            }
        }
        self.reg.worker.buffers.give(buf);
    }
}

/// Each answer of a batch as a user task with a region, named by its route: from the
/// read that brought it to the answer (regions close innermost first).
#[cold]
fn trace_requests(records: &[Record<Handled>], ids: u64, read_at: Instant, now: Instant) {
    let first = trace::next_ids(ids, records.len() as u64);
    for (i, record) in records.iter().enumerate() {
        trace::task_begin(
            read_at.into_std(),
            first + i as u64,
            record.outcome.route as usize,
        );
    }
    for (i, record) in records.iter().enumerate().rev() {
        trace::task_end(
            now.into_std(),
            first + i as u64,
            record.outcome.route as usize,
        );
    }
}

/// `op` until it completes, or None once the tick asks connection `reg` to park (only
/// an idle one is asked, by the tick): then `op` is dropped, which cancels it.
fn until_park_requested<F: Future>(reg: &Registration, op: F) -> UntilParkRequested<'_, F> {
    UntilParkRequested {
        op,
        worker: &reg.worker,
        key: reg.key,
    }
}

struct UntilParkRequested<'a, F> {
    op: F,
    worker: &'a Worker,
    key: usize,
}

impl<F: Future> Future for UntilParkRequested<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `op` is pinned structurally: it is never moved out of `self` (no
        // method takes it, there is no Drop impl), and `UntilParkRequested` is `Unpin`
        // only when `F` is, by the auto trait.
        let this = unsafe { self.get_unchecked_mut() };
        let op = unsafe { Pin::new_unchecked(&mut this.op) };
        match op.poll(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if this.worker.is_asked_to_park(this.key, cx.waker()) => {
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
