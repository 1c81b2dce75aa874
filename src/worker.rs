//! One worker: a thread pinned to its CPU, with its own monoio runtime, its own
//! `SO_REUSEPORT` listener and everything its requests touch.
//!
//! This is the async shell around the sans-IO core in [`crate::http`]: it moves bytes
//! between sockets and [`Conn::process`], and owns the clocks (timeouts, the cached
//! `Date`). Nothing here is shared with other workers except [`Shared`], which is read
//! once per tick and written once per connection, never per request.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::Write;
use std::mem::take;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Canceller};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use slab::Slab;

use crate::accesslog::{AccessLog, Writer};
use crate::config::Config;
use crate::handler::{App, Handled};
use crate::http::conn::{Conn, Record, Span, Waiting, OUT_HIGH_WATER};
use crate::http::date::HttpDate;
use crate::http::request::Limits;
use crate::http::response::{Connection, Response};
use crate::http::Status;
use crate::parking::{self, EpollSet};
use crate::pool::BufferPool;
use crate::profile::goroutine::{ConnInfo, ConnState, Mailbox, WorkerConns};
use crate::runtime::{DriverReport, Runtime};
use crate::stats::{self, WorkerStats};
use crate::statsd::{Client, Metrics};
use crate::telemetry::{PacketSender, Telemetry};

/// How often a worker refreshes its `Date` and looks for a shutdown request.
const TICK: Duration = Duration::from_millis(50);
/// The size of a connection's input and output buffers, taken from the worker's pool
/// while it is served; the input grows (once) only for a large head.
const BUF_SIZE: usize = 4096;
/// Bytes of free buffers a worker keeps for reuse; beyond them, given-back buffers are
/// freed (a thousand 4 KiB buffers: a burst's worth of connections served at once).
const POOL_BYTES: usize = 4 << 20;
/// Connection slots reserved up front (up to `--max-connections`): address space only
/// until used, and a table that never doubles leaves no freed copies behind in the
/// resident set (190 bytes per connection at 15,000 when it grew).
const RESERVED_SLOTS: usize = 1 << 16;
/// After the server decides to close, how long and how much it keeps reading (and
/// discarding) so that the client sees the last response rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// While draining, how long an idle connection gets to send the request its client may
/// already have sent: it is answered with `Connection: close`, so a client that sent it
/// just as the drain began reconnects instead of seeing its connection cut.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(200);
/// How long a keep-alive connection stays idle with its task before it parks: its task
/// ends and only its socket waits, in the worker's epoll set (see [`crate::parking`]).
/// Long enough that a connection in steady use never parks (so the request path never
/// pays the `epoll_ctl` and the new task), short enough that idle ones soon cost little.
const PARK_AFTER: Duration = Duration::from_secs(1);
/// How long the 408 for a request head that did not arrive in time may take to write.
const TIMEOUT_ANSWER_TIME: Duration = Duration::from_secs(1);

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
    /// Input and output buffers for the connections being served right now.
    buffers: BufferPool,
    /// Where connections idle past [`PARK_AFTER`] wait without a task (None: the
    /// system refused an epoll set; idle connections then keep their tasks).
    parking: Option<Parking>,
    /// Connections parked since the tick last gave memory back (see [`Worker::park`]).
    parked_lately: Cell<bool>,
}

/// The worker's parking set, and a second handle on it for the runtime to wait on.
struct Parking {
    set: EpollSet,
    /// The set's descriptor as a monoio socket type, used only to wait until the set
    /// is readable (a parked socket is ready): monoio has no type for a bare fd, and
    /// its readiness wait is a plain poll on the descriptor whatever the type.
    waiter: monoio::net::unix::UnixDatagram,
}

impl Parking {
    fn new() -> std::io::Result<Parking> {
        let set = EpollSet::new()?;
        let waiter = std::os::unix::net::UnixDatagram::from(set.try_clone()?);
        let waiter = monoio::net::unix::UnixDatagram::from_std(waiter)?;
        Ok(Parking { set, waiter })
    }
}

struct ConnSlot {
    fd: RawFd,
    state: ConnState,
    /// When what the connection waits for times out. The tick ends the pending read or
    /// write past it (see [`Worker::sweep`]): a connection task holds no timer of its
    /// own, as monoio's timer entry alone is 640 bytes (SPEC §10).
    deadline: Instant,
    /// The tick found the deadline passed and shut the socket down.
    expired: bool,
    /// When the state was last noted (how long an idle connection has been idle).
    noted: Instant,
    /// The tick asks this idle connection to park (see [`Worker::sweep`]).
    park: bool,
    /// Wakes the connection's task while it waits for readability, to park it.
    waker: Option<Waker>,
    /// The socket of a parked connection, which has no task.
    parked: Option<TcpStream>,
    peer: SocketAddr,
    /// The peer as the access log writes it, formatted once (here, not in the task,
    /// keeps the task of an idle connection in a smaller allocation class).
    peer_text: PeerText,
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
    let reserved = (spec.config.max_connections as usize).min(RESERVED_SLOTS);
    let parking = Parking::new()
        .map_err(|e| {
            eprintln!(
                "leftpad: worker {}: idle connections keep their tasks: no epoll set: {e}",
                spec.id
            )
        })
        .ok();
    let worker = Rc::new(Worker {
        limits: spec.config.limits(),
        app: RefCell::new(App::new(spec.config.max_len)),
        telemetry: RefCell::new(Telemetry::new(log, metrics, spec.stats)),
        stats: spec.stats,
        config: spec.config,
        shared: spec.shared,
        accept_canceller: RefCell::new(Some(Canceller::new())),
        date: RefCell::new(HttpDate::new(SystemTime::now())),
        conns: RefCell::new(Slab::with_capacity(reserved)),
        draining: Cell::new(false),
        mailbox: spec.mailbox,
        buffers: BufferPool::new(BUF_SIZE, POOL_BYTES),
        parking,
        parked_lately: Cell::new(false),
    });
    monoio::spawn(tick(worker.clone()));
    monoio::spawn(unpark_ready(worker.clone()));
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
        worker.sweep(now);
        if worker.parked_lately.replace(false) {
            // The tasks of the connections parked since the last tick are freed, and an
            // idle thread would never get back to mimalloc to return their pages to the
            // system: ask it now (a walk over this thread's pages, only after parking).
            // SAFETY: mi_collect takes no arguments to misuse and may be called by any
            // thread at any time; it only frees memory no allocation refers to.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
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
    /// Stops accepting; idle connections get [`DRAIN_IDLE_GRACE`] to send a last
    /// request, busy ones close after their answer.
    fn begin_drain(&self) {
        self.draining.set(true);
        self.app.borrow_mut().set_draining();
        // The pending accept is cancelled (not the listener shut down: that would reset
        // the connections waiting in its backlog).
        if let Some(canceller) = self.accept_canceller.borrow_mut().take() {
            canceller.cancel();
        }
        let grace = Instant::now() + DRAIN_IDLE_GRACE;
        for (_, slot) in self.conns.borrow_mut().iter_mut() {
            if matches!(slot.state, ConnState::Idle | ConnState::Parked) {
                slot.deadline = slot.deadline.min(grace);
            }
        }
    }

    /// The tick's pass over the connection table.
    ///
    /// It ends the pending operation of every connection past its deadline: shutdown()
    /// makes a pending read or readiness wait return end-of-file (after any bytes
    /// already received) and a pending write fail; the task then sees `expired`. That is
    /// how waiting tasks learn of a timeout without a timer of their own. A connection
    /// waiting for a head is only shut for reading: it still gets its 408. A parked
    /// connection's socket becomes readable, so it gets a task that finds it over.
    ///
    /// It also asks connections idle past [`PARK_AFTER`] to park, by waking their task.
    fn sweep(&self, now: Instant) {
        let parking = self.parking.is_some() && !self.draining.get();
        for (_, slot) in self.conns.borrow_mut().iter_mut() {
            if !slot.expired && slot.deadline <= now {
                slot.expired = true;
                let how = match slot.state {
                    ConnState::Writing => libc::SHUT_RDWR,
                    _ => libc::SHUT_RD,
                };
                shutdown_fd(slot.fd, how);
            } else if parking
                && slot.state == ConnState::Idle
                && !slot.park
                && now.saturating_duration_since(slot.noted) >= PARK_AFTER
            {
                slot.park = true;
                if let Some(waker) = slot.waker.take() {
                    // Only schedules the task; it runs after this pass.
                    waker.wake();
                }
            }
        }
    }

    /// Whether the tick asked connection `key` to park; if not, `waker` is kept for it
    /// to ask. Called while the connection waits for readability.
    fn asked_to_park(&self, key: usize, waker: &Waker) -> bool {
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(key) else {
            return false;
        };
        if slot.park {
            return true;
        }
        if !slot
            .waker
            .as_ref()
            .is_some_and(|kept| kept.will_wake(waker))
        {
            slot.waker = Some(waker.clone());
        }
        false
    }

    /// Takes over the socket of connection `key`, whose task ended to park it.
    fn park(self: &Rc<Self>, key: usize, stream: TcpStream) {
        let parked = self
            .parking
            .as_ref()
            .map(|parking| parking.set.park(stream.as_raw_fd(), key));
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(key) else {
            // Never so (only a registration removes a slot); if it were, the
            // connection is closed and uncounted as a registration's end does.
            drop(conns);
            drop(Registration {
                worker: self.clone(),
                key,
            });
            return;
        };
        let waker = slot.waker.take();
        slot.park = false;
        if let Some(Ok(())) = parked {
            slot.state = ConnState::Parked;
            slot.parked = Some(stream);
            self.parked_lately.set(true);
            drop(conns);
            drop(waker);
            return;
        }
        // The set refused it: serve on with a task.
        let resume = Resume::of(slot);
        drop(conns);
        drop(waker);
        self.resume(key, stream, resume);
    }

    /// Gives parked connection `key` a task again: its socket is readable (bytes, end
    /// of file, or the tick's shutdown at its deadline).
    fn unpark(self: &Rc<Self>, key: usize) {
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(key) else {
            return;
        };
        let Some(stream) = slot.parked.take() else {
            return;
        };
        if let Some(parking) = &self.parking {
            parking.set.unpark(slot.fd);
        }
        slot.state = ConnState::Idle;
        let resume = Resume::of(slot);
        drop(conns);
        self.resume(key, stream, resume);
    }

    /// Spawns a task for connection `key`, registered again, from where it was.
    fn resume(self: &Rc<Self>, key: usize, stream: TcpStream, resume: Resume) {
        let reg = Registration {
            worker: self.clone(),
            key,
        };
        monoio::spawn(serve_connection(reg, stream, Some(resume)));
    }

    /// Whether connection `key`'s deadline passed while it waited (see [`Worker::sweep`]).
    fn expired(&self, key: usize) -> bool {
        self.conns
            .borrow()
            .get(key)
            .is_some_and(|slot| slot.expired)
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

    /// Records what connection `key` waits for from `now` on, and until when.
    fn note(&self, key: usize, state: ConnState, now: Instant, deadline: Instant) {
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.state = state;
            slot.noted = now;
            slot.deadline = deadline;
            slot.expired = false;
            slot.park = false;
        }
    }

    /// Counts bytes connection `key` read, in its slot and the worker's stats.
    fn count_in(&self, key: usize, bytes: usize) {
        self.stats.bytes_in.add(bytes as u64);
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.bytes_in += bytes as u64;
        }
    }

    /// Counts bytes connection `key` wrote, in its slot and the worker's stats.
    fn count_out(&self, key: usize, bytes: usize) {
        self.stats.bytes_out.add(bytes as u64);
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.bytes_out += bytes as u64;
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
    let now = Instant::now();
    let key = worker.conns.borrow_mut().insert(ConnSlot {
        fd: stream.as_raw_fd(),
        state: ConnState::Idle,
        deadline: now + worker.config.header_timeout,
        expired: false,
        noted: now,
        park: false,
        waker: None,
        parked: None,
        peer,
        peer_text: PeerText::new(peer),
        since: now,
        requests: 0,
        bytes_in: 0,
        bytes_out: 0,
    });
    let registration = Registration {
        worker: worker.clone(),
        key,
    };
    monoio::spawn(serve_connection(registration, stream, None));
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

impl Registration {
    /// Ends the registration without removing the connection: it is parked, and its
    /// slot stays (a task it gets later registers again).
    fn release(self) -> (Rc<Worker>, usize) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop) nor used after this read, so the
        // `Rc` is moved out exactly once and its count stays right.
        let worker = unsafe { std::ptr::read(&this.worker) };
        (worker, this.key)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The slot (and the waker it may hold) is dropped after the table's borrow ends.
        let slot = self.worker.conns.borrow_mut().try_remove(self.key);
        drop(slot);
        self.worker
            .shared
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.worker.stats.connections_open.sub(1);
    }
}

/// What a task given to a parked connection starts from.
#[derive(Clone, Copy)]
struct Resume {
    /// No byte read yet: the header timeout still runs, to `deadline`.
    fresh: bool,
    deadline: Instant,
}

impl Resume {
    fn of(slot: &ConnSlot) -> Resume {
        Resume {
            fresh: slot.bytes_in == 0,
            deadline: slot.deadline,
        }
    }
}

/// Why a connection's loop ended.
enum End {
    /// Idle too long: the task ends, the socket waits in the worker's parking set.
    Park,
    /// The peer closed, reset or timed out: nothing more to send.
    Gone,
    /// The server decided to close after its last response: close gracefully.
    Close,
    /// A request head did not arrive within `--header-timeout`.
    HeadTimeout,
}

/// Why a read ended without bytes, besides end of file.
enum Wait {
    /// The deadline passed.
    Expired,
    /// The tick asked the idle connection to park.
    Park,
}

/// `op` until it completes, or None once the tick asks connection `reg` to park (only
/// an idle one is asked, see [`Worker::sweep`]): then `op` is dropped, which cancels it.
fn unless_parked<F: Future>(reg: &Registration, op: F) -> UnlessParked<'_, F> {
    UnlessParked {
        op,
        worker: &reg.worker,
        key: reg.key,
    }
}

struct UnlessParked<'a, F> {
    op: F,
    worker: &'a Worker,
    key: usize,
}

impl<F: Future> Future for UnlessParked<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `op` is pinned structurally: it is never moved out of `self` (no
        // method takes it, there is no Drop impl), and `UnlessParked` is `Unpin` only
        // when `F` is, by the auto trait.
        let this = unsafe { self.get_unchecked_mut() };
        let op = unsafe { std::pin::Pin::new_unchecked(&mut this.op) };
        match op.poll(cx) {
            Poll::Ready(done) => Poll::Ready(Some(done)),
            Poll::Pending if this.worker.asked_to_park(this.key, cx.waker()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How a wait for readability ended.
enum Woke {
    Readable,
    /// The tick asked the idle connection to park.
    Park,
    Gone,
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

/// A connection's task. A plain function returning an `async move` block, not an
/// `async fn`: an async fn keeps a second copy of its arguments in its future for the
/// whole connection (rustc issue 62958).
fn serve_connection(
    reg: Registration,
    stream: TcpStream,
    resume: Option<Resume>,
) -> impl Future<Output = ()> {
    let mut session = Session::new(reg, stream, resume);
    async move {
        match session.serve().await {
            End::Park => session.park(),
            end => session.finish(end).await,
        }
    }
}

/// The task of the worker's parking set: gives each parked connection that became
/// readable a task again.
async fn unpark_ready(worker: Rc<Worker>) {
    let Some(parking) = &worker.parking else {
        return;
    };
    let mut keys = [0; parking::BATCH];
    loop {
        if parking.waiter.readable(false).await.is_err() {
            return;
        }
        loop {
            let ready = parking.set.ready(&mut keys);
            for &key in &keys[..ready] {
                worker.unpark(key);
            }
            if ready < parking::BATCH {
                break;
            }
        }
    }
}

/// One connection as its task holds it. Kept small on purpose: an idle keep-alive
/// connection costs this task (one allocation), its slot and nothing more, as it waits
/// for readability with no buffer (taken from the worker's pool while it is served) and
/// no timer (the tick enforces its deadline). SPEC §10; sizes in ARCHITECTURE.md.
struct Session {
    reg: Registration,
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    conn: Conn,
    head_deadline: Option<Instant>,
    /// When the bytes being answered were read (the start of the handling time).
    read_at: Instant,
    /// The latest clock reading: when a read completed, after processing, after a
    /// write. It serves the handling time and every deadline, so a batch reads the clock
    /// three times, not once per use.
    now: Instant,
    /// No byte read yet: the connection owes its first head within the header timeout.
    fresh: bool,
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
            head_deadline: resume.filter(|r| r.fresh).map(|r| r.deadline),
            read_at: now,
            now,
            fresh: resume.is_none_or(|r| r.fresh),
        }
    }

    /// Reads, answers and writes until the connection ends; says how it ended.
    async fn serve(&mut self) -> End {
        loop {
            let Some(more_buffered) = self.answer() else {
                return End::Gone;
            };
            if !self.output.is_empty() {
                let deadline = self.now + self.reg.worker.config.write_timeout;
                self.note(ConnState::Writing, deadline);
                if !self.write_output().await {
                    return End::Gone;
                }
                self.now = Instant::now();
            }
            let waiting = self.conn.waiting(self.input.len());
            if more_buffered && waiting != Waiting::Done {
                continue;
            }
            let Some((state, deadline)) = self.next_wait(waiting) else {
                return End::Close;
            };
            self.note(state, deadline);
            if self.input.is_empty() {
                // Nothing buffered: wait for bytes without owning buffers (SPEC §10).
                // It stays `Idle` until bytes are read: with the epoll driver, readiness
                // may be stale and the read below is then still the idle wait. (A
                // drain gives an idle connection a grace to send, so a request just
                // arrived is answered either way.)
                match self.wait_readable().await {
                    Woke::Readable => {}
                    Woke::Park => return End::Park,
                    Woke::Gone => return End::Gone,
                }
            }
            match self.read_more().await {
                Ok(true) => {}
                Ok(false) => return End::Gone,
                Err(Wait::Park) => return End::Park,
                Err(Wait::Expired) if waiting == Waiting::Head => return End::HeadTimeout,
                Err(Wait::Expired) => return End::Gone,
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
        let mut telemetry = worker.telemetry.borrow_mut();
        let telemetry = &mut *telemetry;
        let (conn, input, output) = (&mut self.conn, &self.input, &mut self.output);
        let progress = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let records = &mut telemetry.records;
            conn.process(input, output, records, &mut *app, &worker.limits, &date)
        }));
        let Ok(progress) = progress else {
            telemetry.records.clear();
            return None;
        };
        self.now = Instant::now();
        let handling = self.now - self.read_at;
        let mut conns = worker.conns.borrow_mut();
        if let Some(slot) = conns.get_mut(self.reg.key) {
            let peer = slot.peer_text.as_bytes();
            telemetry.record_batch(input, peer, handling, self.now.into_std());
            slot.requests += u64::from(progress.answered);
        }
        self.input.drain(..progress.consumed);
        Some(self.output.len() >= OUT_HIGH_WATER)
    }

    /// What the connection waits for next and until when; None when it is done.
    fn next_wait(&mut self, waiting: Waiting) -> Option<(ConnState, Instant)> {
        let worker = &*self.reg.worker;
        let config = &*worker.config;
        let now = self.now;
        let deadline = match waiting {
            Waiting::Done => return None,
            Waiting::Idle if worker.draining.get() => now + DRAIN_IDLE_GRACE,
            // A new connection owes its first request head within the header timeout,
            // as nginx's `client_header_timeout` and Go's `ReadHeaderTimeout` have it:
            // silence is not idleness, and it is closed without an answer.
            Waiting::Idle if self.fresh => *self
                .head_deadline
                .get_or_insert(now + config.header_timeout),
            Waiting::Idle | Waiting::Body => {
                self.head_deadline = None;
                now + config.idle_timeout
            }
            Waiting::Head => *self
                .head_deadline
                .get_or_insert(now + config.header_timeout),
        };
        let state = match waiting {
            Waiting::Idle => ConnState::Idle,
            Waiting::Body => ConnState::Body,
            Waiting::Head | Waiting::Done => ConnState::Head,
        };
        Some((state, deadline))
    }

    /// Records in the slot what the connection waits for and until when.
    fn note(&self, state: ConnState, deadline: Instant) {
        self.reg
            .worker
            .note(self.reg.key, state, self.now, deadline);
    }

    fn expired(&self) -> bool {
        self.reg.worker.expired(self.reg.key)
    }

    /// Writes the whole output (by the deadline noted); false if that failed.
    async fn write_output(&mut self) -> bool {
        let mut written = 0;
        while written < self.output.len() {
            let rest = take(&mut self.output).slice(written..);
            let (result, rest) = self.stream.write(rest).await;
            self.output = rest.into_inner();
            match result {
                Ok(n) if n > 0 && !self.expired() => written += n,
                _ => return false,
            }
        }
        self.output.clear();
        self.reg.worker.count_out(self.reg.key, written);
        true
    }

    /// Gives the buffers back to the pool and waits until the socket has bytes (or end
    /// of file), then takes buffers again; or until the tick asks it to park. Gone when
    /// the wait failed or the deadline passed: the connection is over (with nothing
    /// buffered, no head was under way).
    async fn wait_readable(&mut self) -> Woke {
        let buffers = &self.reg.worker.buffers;
        buffers.give(take(&mut self.input));
        buffers.give(take(&mut self.output));
        // Relaxed: the epoll driver may then wake on stale readiness; the read that
        // follows is then the wait (and can park as well).
        let readable = self.stream.readable(true);
        match unless_parked(&self.reg, readable).await {
            None => Woke::Park,
            Some(Ok(())) if !self.expired() => {
                let buffers = &self.reg.worker.buffers;
                self.input = buffers.take();
                self.output = buffers.take();
                Woke::Readable
            }
            Some(_) => Woke::Gone,
        }
    }

    /// Ends the task and hands the socket to the worker's parking set.
    fn park(self) {
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
        worker.park(key, stream);
    }

    /// Reads more bytes after those buffered: Ok(false) at end of file or on an error,
    /// Err when the deadline passed or the idle connection is to park.
    async fn read_more(&mut self) -> Result<bool, Wait> {
        let len = self.input.len();
        if len == self.input.capacity() {
            // Only a partial head fills the buffer (the core rejects one past the limit).
            let max_head = self.reg.worker.limits.max_head_size;
            self.input.reserve(max_head.max(len));
        }
        let read = self.stream.read(take(&mut self.input).slice_mut(len..));
        let Some((read, buf)) = unless_parked(&self.reg, read).await else {
            // Its buffer went with the read; the output goes back to the pool.
            return Err(Wait::Park);
        };
        self.input = buf.into_inner();
        if self.expired() {
            return Err(Wait::Expired);
        }
        let Ok(n @ 1..) = read else {
            return Ok(false);
        };
        self.fresh = false;
        self.read_at = Instant::now();
        self.now = self.read_at;
        self.reg.worker.count_in(self.reg.key, n);
        Ok(true)
    }

    /// After the loop: a lingering close, or the 408 for a head that came too late; the
    /// buffers go back to the pool either way.
    async fn finish(&mut self, end: End) {
        self.reg.worker.buffers.give(take(&mut self.input));
        match end {
            End::Gone | End::Park => {}
            End::Close => {
                self.reg.worker.buffers.give(take(&mut self.output));
                self.linger().await;
            }
            End::HeadTimeout => {
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
        let peer = worker
            .conns
            .borrow()
            .get(self.reg.key)
            .map(|slot| slot.peer);
        if let Some(peer) = peer {
            worker.record_unparsed(Status::REQUEST_TIMEOUT, &PeerText::new(peer));
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
            let (read, b) = self.stream.read(buf).await;
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
