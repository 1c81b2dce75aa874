//! One worker: a thread pinned to its CPU, with its own monoio runtime, its own
//! `SO_REUSEPORT` listener and everything its requests touch.
//!
//! This is the async shell around the sans-IO core in [`crate::http`]: it moves bytes
//! between sockets and [`Conn::process`], and owns the clocks (timeouts, the cached
//! `Date`). Nothing here is shared with other workers except [`Shared`], which is read
//! once per tick and written once per connection, never per request.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Canceller};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::{timeout_at, Instant};
use slab::Slab;

use crate::accesslog::{AccessLog, Writer};
use crate::config::Config;
use crate::handler::{App, Handled};
use crate::http::conn::{Conn, Record, Span, Waiting, OUT_HIGH_WATER};
use crate::http::date::HttpDate;
use crate::http::request::Limits;
use crate::http::response::{Connection, Response};
use crate::http::Status;
use crate::profile::goroutine::{ConnInfo, ConnState, Mailbox, WorkerConns};
use crate::runtime::{DriverReport, Runtime};
use crate::stats::{self, WorkerStats};
use crate::statsd::{Client, Metrics};
use crate::telemetry::{PacketSender, Telemetry};

/// How often a worker refreshes its `Date` and looks for a shutdown request.
const TICK: Duration = Duration::from_millis(50);
/// First size of a connection's read buffer; it grows (once) only for a large head.
const READ_BUF: usize = 4096;
const WRITE_BUF: usize = 4096;
/// After the server decides to close, how long and how much it keeps reading (and
/// discarding) so that the client sees the last response rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// While draining, how long a connection that has not sent anything yet gets to do so.
const DRAIN_FIRST_READ: Duration = Duration::from_millis(200);

/// The little that workers share: written by the signal thread and at accept/close.
#[derive(Default)]
pub struct Shared {
    pub shutdown: AtomicBool,
    /// Open connections in the whole process (for `--max-connections`).
    pub connections: AtomicUsize,
    /// Bumped on SIGHUP: each worker reopens its access log when it sees a new value.
    pub reopen_log: AtomicU64,
}

/// Everything a worker thread is started with.
pub struct WorkerSpec {
    pub id: usize,
    pub cpu: Option<core_affinity::CoreId>,
    pub listener: std::net::TcpListener,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    /// The worker's access-log buffer and the writer thread behind it (None: log off).
    pub log: Option<(AccessLog, Writer)>,
    /// The worker's counters for `/debug/vars` (it is their only writer).
    pub stats: &'static WorkerStats,
    /// Where the admin thread asks for the connection table (`/debug/pprof/goroutine`).
    pub mailbox: Arc<Mailbox>,
}

/// The worker thread's body: pin, build the runtime, report the driver, serve until
/// shutdown. `ready` gets the driver, or the reason the runtime could not be built.
pub fn run(mut spec: WorkerSpec, ready: std::sync::mpsc::Sender<Result<DriverReport, String>>) {
    if let Some(cpu) = spec.cpu {
        core_affinity::set_for_current(cpu);
    }
    stats::count_allocations_into(&spec.stats.allocations);
    let (log, writer) = spec.log.take().unzip();
    match Runtime::build(spec.config.driver, spec.config.uring_setup) {
        Ok(mut runtime) => {
            let _ = ready.send(Ok(runtime.report()));
            runtime.block_on(serve(spec, log));
        }
        Err(message) => {
            drop(log);
            let _ = ready.send(Err(message));
        }
    }
    // Its AccessLog is gone (shipped and dropped at the end of `serve`, or above): the
    // writer has the last lines and stops once they are written.
    if let Some(writer) = writer {
        writer.join();
    }
}

/// A worker's own state, shared by its tasks (one thread: `Rc`, `Cell`, `RefCell`).
struct Worker {
    config: Arc<Config>,
    limits: Limits,
    shared: Arc<Shared>,
    /// Cancels the pending accept at drain (then `None`: accept no more).
    accept_canceller: RefCell<Option<Canceller>>,
    date: RefCell<HttpDate>,
    app: RefCell<App>,
    telemetry: RefCell<Telemetry>,
    stats: &'static WorkerStats,
    /// Open connections: their fds, what each waits for, and its totals.
    conns: RefCell<Slab<ConnSlot>>,
    draining: Cell<bool>,
    mailbox: Arc<Mailbox>,
}

struct ConnSlot {
    fd: RawFd,
    state: ConnState,
    peer: SocketAddr,
    since: Instant,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

async fn serve(spec: WorkerSpec, log: Option<AccessLog>) {
    let backlog = spec.listener.try_clone();
    let listener = match TcpListener::from_std(spec.listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("leftpad: worker {}: cannot use its listener: {e}", spec.id);
            return;
        }
    };
    let metrics = spec
        .config
        .statsd()
        .and_then(|settings| match Client::connect(settings.addr) {
            Ok(client) => {
                let send: PacketSender = Box::new(move |packet| client.send(packet));
                Some((Metrics::new(&settings, seed(spec.id)), send))
            }
            Err(e) => {
                eprintln!(
                    "leftpad: worker {}: StatsD off: cannot open a UDP socket to {}: {e}",
                    spec.id, settings.addr
                );
                None
            }
        });
    let worker = Rc::new(Worker {
        limits: spec.config.limits(),
        app: RefCell::new(App::new(spec.config.max_len)),
        telemetry: RefCell::new(Telemetry::new(log, metrics, spec.stats)),
        stats: spec.stats,
        config: spec.config,
        shared: spec.shared,
        accept_canceller: RefCell::new(Some(Canceller::new())),
        date: RefCell::new(HttpDate::new(SystemTime::now())),
        conns: RefCell::new(Slab::new()),
        draining: Cell::new(false),
        mailbox: spec.mailbox,
    });
    monoio::spawn(tick(worker.clone()));
    accept_loop(&worker, &listener).await;
    match backlog {
        Ok(backlog) => sweep_backlog(&worker, &backlog),
        Err(e) => eprintln!(
            "leftpad: worker {}: cannot take in the backlog at shutdown: {e}",
            spec.id
        ),
    }
    drop(listener);
    drain(&worker).await;
    // Every answered request's line is in the log buffer: hand it all to the writer.
    drop(worker.telemetry.borrow_mut().finish());
}

/// A different sampling sequence per worker and per run.
fn seed(worker_id: usize) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (worker_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The worker's clock: refreshes the `Date` header, flushes the log and metrics on their
/// intervals, reopens the log on SIGHUP, and turns a shutdown request into draining.
async fn tick(worker: Rc<Worker>) {
    let config = &*worker.config;
    let log_every = Duration::from_millis(config.log_flush_ms);
    let metrics_every = Duration::from_millis(config.statsd_flush_ms);
    let mut interval = monoio::time::interval(TICK.min(log_every).min(metrics_every));
    let (mut log_flushed, mut metrics_flushed) = (Instant::now(), Instant::now());
    let mut reopen_seen = worker.shared.reopen_log.load(Ordering::Relaxed);
    loop {
        interval.tick().await;
        let now = Instant::now();
        worker.date.borrow_mut().update(SystemTime::now());
        let flush_log = now - log_flushed >= log_every;
        let flush_metrics = now - metrics_flushed >= metrics_every;
        log_flushed = if flush_log { now } else { log_flushed };
        metrics_flushed = if flush_metrics { now } else { metrics_flushed };
        let mut telemetry = worker.telemetry.borrow_mut();
        telemetry.tick(now.into_std(), flush_log, flush_metrics);
        let reopen = worker.shared.reopen_log.load(Ordering::Relaxed);
        if reopen != reopen_seen {
            reopen_seen = reopen;
            if let Some(log) = &mut telemetry.log {
                log.reopen();
            }
        }
        drop(telemetry);
        if !worker.draining.get() && worker.shared.shutdown.load(Ordering::Relaxed) {
            worker.begin_drain();
        }
        if worker.mailbox.wanted() {
            worker.mailbox.answer(worker.connections());
        }
    }
}

impl Worker {
    /// Stops accepting and closes idle connections; busy ones close after their answer.
    fn begin_drain(&self) {
        self.draining.set(true);
        self.app.borrow_mut().set_draining();
        // The pending accept is cancelled (not the listener shut down: that would reset
        // the connections waiting in its backlog). On an idle connection, shutdown()
        // makes the pending read return end-of-file (after any bytes already received):
        // that is how waiting tasks learn of the drain without a waker registry.
        if let Some(canceller) = self.accept_canceller.borrow_mut().take() {
            canceller.cancel();
        }
        for (_, slot) in self.conns.borrow().iter() {
            if slot.state == ConnState::Idle {
                shutdown_fd(slot.fd, libc::SHUT_RD);
            }
        }
    }

    /// A copy of the connection table, for `/debug/pprof/goroutine`.
    fn connections(&self) -> WorkerConns {
        let now = Instant::now();
        WorkerConns {
            draining: self.draining.get(),
            conns: self
                .conns
                .borrow()
                .iter()
                .map(|(_, slot)| ConnInfo {
                    peer: slot.peer,
                    state: slot.state,
                    age: now - slot.since,
                    requests: slot.requests,
                    bytes_in: slot.bytes_in,
                    bytes_out: slot.bytes_out,
                })
                .collect(),
        }
    }

    /// Counts a new connection in, unless the process is at `--max-connections`.
    fn admit(&self) -> bool {
        let max = self.config.max_connections as usize;
        if self.shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Logs and counts an answer given without a parsed request (503, 408).
    fn record_unparsed(&self, status: Status, peer: &PeerText) {
        let mut telemetry = self.telemetry.borrow_mut();
        telemetry.records.push(Record {
            target: Span::default(),
            user_agent: Span::default(),
            status,
            outcome: Handled::default(),
        });
        let now = std::time::Instant::now();
        telemetry.record_batch(b"", peer.as_bytes(), Duration::ZERO, now);
    }

    /// Records what connection `key` waits for now, and what it moved since the last
    /// note (once per read and per write, where the worker touches the slot anyway).
    fn note(&self, key: usize, state: ConnState, moved: Moved) {
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.state = state;
            slot.requests += moved.requests;
            slot.bytes_in += moved.bytes_in;
            slot.bytes_out += moved.bytes_out;
        }
    }
}

fn shutdown_fd(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) takes any integer; on an fd that is not a socket, or one closed
    // meanwhile, it fails with EBADF/ENOTSOCK and changes nothing. The fds passed here
    // are owned by live tasks of this single thread, so they cannot be reused by another
    // file between the lookup and this call.
    unsafe {
        libc::shutdown(fd, how);
    }
}

async fn accept_loop(worker: &Rc<Worker>, listener: &TcpListener) {
    let mut warned = false;
    loop {
        let Some(cancel) = worker
            .accept_canceller
            .borrow()
            .as_ref()
            .map(Canceller::handle)
        else {
            return;
        };
        let accepted = listener.cancelable_accept(cancel).await;
        match accepted {
            Ok((stream, peer)) => accepted_connection(worker, stream, peer),
            Err(_) if worker.draining.get() => return,
            Err(e) => {
                // Out of fds or memory: back off instead of spinning on the error.
                if !warned {
                    eprintln!(
                        "leftpad: accept failed: {e} (retrying; further failures are not reported)"
                    );
                    warned = true;
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Takes a new connection in: serves it, or refuses it over `--max-connections`.
fn accepted_connection(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    if !worker.admit() {
        refuse(worker, &stream);
        worker.record_unparsed(Status::SERVICE_UNAVAILABLE, &PeerText::new(peer));
        return;
    }
    worker.stats.connections_accepted.add(1);
    worker.stats.connections_open.add(1);
    let key = worker.conns.borrow_mut().insert(ConnSlot {
        fd: stream.as_raw_fd(),
        state: ConnState::Head,
        peer,
        since: Instant::now(),
        requests: 0,
        bytes_in: 0,
        bytes_out: 0,
    });
    let registration = Registration {
        worker: worker.clone(),
        key,
    };
    monoio::spawn(serve_connection(registration, stream, peer));
}

/// At drain: takes in the connections already waiting in the listener's backlog (their
/// clients may have sent requests before the signal), so closing the listener does not
/// reset them. `backlog` is a clone of the listening socket, non-blocking.
fn sweep_backlog(worker: &Rc<Worker>, backlog: &std::net::TcpListener) {
    // Bounded: a flood of new connections cannot keep the drain going.
    for _ in 0..4096 {
        let Ok((stream, peer)) = backlog.accept() else {
            return;
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            accepted_connection(worker, stream, peer);
        }
    }
}

/// Answers a connection over `--max-connections` with a best-effort 503, then closes it.
fn refuse(worker: &Worker, stream: &TcpStream) {
    let mut out = Vec::with_capacity(256);
    let date = *worker.date.borrow().as_bytes();
    Response::new(&mut out, &date, false, Connection::Close).error(
        Status::SERVICE_UNAVAILABLE,
        "too many connections: retry later",
        b"",
    );
    // SAFETY: the fd is the live socket `stream` owns and `out` is valid for its length;
    // MSG_DONTWAIT makes this never block, MSG_NOSIGNAL never raise SIGPIPE.
    unsafe {
        libc::send(
            stream.as_raw_fd(),
            out.as_ptr().cast(),
            out.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

/// A connection's place in its worker: removed, and the process count lowered, on drop.
struct Registration {
    worker: Rc<Worker>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.worker.conns.borrow_mut().try_remove(self.key);
        self.worker
            .shared
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.worker.stats.connections_open.sub(1);
    }
}

/// Requests answered and bytes moved since a connection's slot was last updated.
#[derive(Clone, Copy, Default)]
struct Moved {
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Why a connection's loop ended.
enum End {
    /// The peer closed, reset or timed out: nothing more to send.
    Gone,
    /// The server decided to close after its last response: close gracefully.
    Close,
    /// A request head did not arrive within `--header-timeout`.
    HeadTimeout,
}

/// A peer address as the access log writes it (`ip:port`), formatted once per connection.
struct PeerText {
    text: [u8; 64],
    len: usize,
}

impl PeerText {
    fn new(peer: SocketAddr) -> PeerText {
        let mut text = [0u8; 64];
        let mut cursor = &mut text[..];
        // The longest socket address text (IPv6 with scope id and port) fits in 64 bytes.
        let _ = write!(cursor, "{peer}");
        let len = 64 - cursor.len();
        PeerText { text, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

async fn serve_connection(reg: Registration, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let peer = PeerText::new(peer);
    let mut input = Vec::with_capacity(READ_BUF);
    let mut output = Vec::with_capacity(WRITE_BUF);
    let end = connection_loop(&reg, &peer, &mut stream, &mut input, &mut output).await;
    match end {
        End::Gone => {}
        End::Close => {
            reg.worker
                .note(reg.key, ConnState::Lingering, Moved::default());
            linger(&mut stream).await
        }
        End::HeadTimeout => {
            output.clear();
            let date = *reg.worker.date.borrow().as_bytes();
            Response::new(&mut output, &date, false, Connection::Close).error(
                Status::REQUEST_TIMEOUT,
                "request head not received in time",
                b"",
            );
            reg.worker.record_unparsed(Status::REQUEST_TIMEOUT, &peer);
            let deadline = Instant::now() + Duration::from_secs(1);
            let _ = timeout_at(deadline, stream.write_all(output)).await;
        }
    }
}

async fn connection_loop(
    reg: &Registration,
    peer: &PeerText,
    stream: &mut TcpStream,
    input: &mut Vec<u8>,
    output: &mut Vec<u8>,
) -> End {
    let worker = &*reg.worker;
    let config = &*worker.config;
    let mut conn = Conn::new();
    let mut head_deadline: Option<Instant> = None;
    let mut read_at = Instant::now();
    // The latest clock reading: when a read completed, after processing, after a write.
    // It serves the handling time and every deadline, so a batch reads the clock three
    // times, not once per use.
    let mut now = read_at;
    // Until its first read, a connection may hold requests sent before a shutdown signal.
    let mut fresh = true;
    let mut moved = Moved::default();
    loop {
        let mut more_buffered = false;
        if !input.is_empty() {
            let date = *worker.date.borrow().as_bytes();
            let mut app = worker.app.borrow_mut();
            let mut telemetry = worker.telemetry.borrow_mut();
            let telemetry = &mut *telemetry;
            // The core is pure and should never panic; if it does, only this connection
            // ends, not the worker and its other clients.
            let progress = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                let records = &mut telemetry.records;
                conn.process(input, output, records, &mut *app, &worker.limits, &date)
            })) {
                Ok(progress) => progress,
                Err(_) => {
                    telemetry.records.clear();
                    return End::Gone;
                }
            };
            now = Instant::now();
            telemetry.record_batch(input, peer.as_bytes(), now - read_at, now.into_std());
            moved.requests += u64::from(progress.answered);
            input.drain(..progress.consumed);
            more_buffered = output.len() >= OUT_HIGH_WATER;
        }
        if !output.is_empty() {
            let deadline = now + config.write_timeout;
            worker.note(reg.key, ConnState::Writing, std::mem::take(&mut moved));
            let buf = std::mem::take(output);
            match timeout_at(deadline, stream.write_all(buf)).await {
                Ok((Ok(_), mut buf)) => {
                    worker.stats.bytes_out.add(buf.len() as u64);
                    moved.bytes_out += buf.len() as u64;
                    buf.clear();
                    *output = buf;
                }
                _ => return End::Gone,
            }
            now = Instant::now();
        }
        let waiting = conn.waiting(input.len());
        if more_buffered && waiting != Waiting::Done {
            continue;
        }
        let deadline = match waiting {
            Waiting::Done => return End::Close,
            Waiting::Idle if worker.draining.get() && fresh => now + DRAIN_FIRST_READ,
            Waiting::Idle if worker.draining.get() => return End::Close,
            // A new connection owes its first request head within the header timeout,
            // as nginx's `client_header_timeout` and Go's `ReadHeaderTimeout` have it:
            // silence is not idleness, and it is closed without an answer.
            Waiting::Idle if fresh => *head_deadline.get_or_insert(now + config.header_timeout),
            Waiting::Idle | Waiting::Body => {
                head_deadline = None;
                now + config.idle_timeout
            }
            Waiting::Head => *head_deadline.get_or_insert(now + config.header_timeout),
        };
        let state = match waiting {
            Waiting::Idle => ConnState::Idle,
            Waiting::Body => ConnState::Body,
            Waiting::Head | Waiting::Done => ConnState::Head,
        };
        worker.note(reg.key, state, std::mem::take(&mut moved));
        if input.len() == input.capacity() {
            // Only a partial head fills the buffer (the core rejects one past the limit).
            input.reserve(worker.limits.max_head_size.max(input.capacity()));
        }
        let buf = std::mem::take(input);
        let len = buf.len();
        let read = timeout_at(deadline, stream.read(buf.slice_mut(len..))).await;
        if state == ConnState::Idle {
            // Busy again: the drain must not take it for an idle connection.
            worker.note(reg.key, ConnState::Head, Moved::default());
        }
        match read {
            Ok((Ok(n), buf)) if n > 0 => {
                fresh = false;
                *input = buf.into_inner();
                read_at = Instant::now();
                now = read_at;
                worker.stats.bytes_in.add(n as u64);
                moved.bytes_in += n as u64;
            }
            Ok(_) => return End::Gone,
            Err(_) if waiting == Waiting::Head => return End::HeadTimeout,
            Err(_) => return End::Gone,
        }
    }
}

/// Half-closes, then reads and discards what the client still sends (up to a bound), so
/// unread request bytes do not make the kernel reset the connection before the client
/// has read our last response. nginx calls this lingering close.
async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = Vec::with_capacity(READ_BUF);
    let mut total = 0;
    while total < LINGER_BYTES {
        match timeout_at(deadline, stream.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n;
                buf = b;
                buf.clear();
            }
            _ => return,
        }
    }
}

/// After accepting stops: waits for connections to finish, up to `--shutdown-timeout`,
/// then cuts the rest.
async fn drain(worker: &Rc<Worker>) {
    let deadline = Instant::now() + worker.config.shutdown_timeout;
    while !worker.conns.borrow().is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, slot) in worker.conns.borrow().iter() {
        shutdown_fd(slot.fd, libc::SHUT_RDWR);
    }
    let grace = Instant::now() + Duration::from_millis(500);
    while !worker.conns.borrow().is_empty() && Instant::now() < grace {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}
