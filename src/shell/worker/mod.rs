//! One worker: a thread pinned to its CPU, with its own monoio runtime, its own
//! `SO_REUSEPORT` listener and everything its requests touch.
//!
//! This is the async shell around the sans-IO core in [`crate::http`]: it moves bytes
//! between sockets and [`Conn::process`], and owns the clocks (timeouts, the cached
//! `Date`). Nothing here is shared with other workers except [`Shared`], which is read
//! once per tick and written once per connection, never per request.
//!
//! - this file: the worker's life ([`run`]: start, accept until the drain, drain) and
//!   its tick;
//! - [`accept`]: new connections and admission;
//! - [`connection`]: a connection's task (read, answer, write, wait);
//! - [`table`]: the connection table and what each connection waits for;
//! - [`deadline`]: every deadline of a connection, a pure table;
//! - [`parking`]: where idle connections wait without a task;
//! - [`pool`]: the buffers of the connections being served.
//!
//! [`Conn::process`]: crate::http::conn::Conn::process

mod accept;
mod connection;
mod deadline;
mod parking;
mod pool;
mod table;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use monoio::io::Canceller;
use monoio::net::TcpListener;
use monoio::time::Instant;
use slab::Slab;

use crate::app::handler::{App, Handled};
use crate::http::conn::{Record, Span};
use crate::http::date::HttpDate;
use crate::http::request::Limits;
use crate::http::Status;
use crate::profile::goroutine::{Mailbox, TaskInfo, WorkerTasks};
use crate::profile::trace::{self, Notice, Site};
use crate::shell::config::Config;
use crate::shell::runtime::{DriverReport, Runtime};
use crate::telemetry::accesslog::{AccessLog, Writer};
use crate::telemetry::allocator;
use crate::telemetry::counters::WorkerCounters;
use crate::telemetry::recorder::{PacketSender, Recorder};
use crate::telemetry::statsd::{Batcher, Client};

use self::deadline::{Sweep, Timeouts};
use self::parking::Parking;
use self::pool::BufferPool;
use self::table::{ConnSlot, PeerText};

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
/// How long the drain waits for the connections it cut to end.
const DRAIN_CUT_GRACE: Duration = Duration::from_millis(500);

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
    /// The worker's counters (it is their only writer on the request path).
    pub counters: &'static WorkerCounters,
    /// Where the admin thread asks for the connection table (`/debug/pprof/goroutine`).
    pub mailbox: Arc<Mailbox>,
}

/// The worker thread's body: pin, build the runtime, report the driver, serve until
/// shutdown. `ready` gets the driver, or the reason the runtime could not be built.
pub fn run(mut spec: WorkerSpec, ready: std::sync::mpsc::Sender<Result<DriverReport, String>>) {
    if let Some(cpu) = spec.cpu {
        core_affinity::set_for_current(cpu);
    }
    allocator::count_allocations_into(spec.counters);
    let (log, writer) = spec.log.take().unzip();
    match Runtime::build(spec.config.driver, spec.config.uring_setup) {
        Ok(mut runtime) => {
            let report = runtime.report();
            // A read in flight in io_uring has taken its bytes from the socket when it
            // completes, so dropping it to park would lose them: only epoll's reads,
            // which take nothing until they run, may be given up.
            let reads_cancellable = matches!(report, DriverReport::Epoll(_));
            let _ = ready.send(Ok(report));
            runtime.block_on(live(spec, log, reads_cancellable));
        }
        Err(message) => {
            drop(log);
            let _ = ready.send(Err(message));
        }
    }
    // Its AccessLog is gone (shipped and dropped at the end of `live`, or above): the
    // writer has the last lines and stops once they are written.
    if let Some(writer) = writer {
        writer.join();
    }
}

/// A worker's own state, shared by its tasks (one thread: `Rc`, `Cell`, `RefCell`).
struct Worker {
    id: usize,
    /// The high bits of this worker's goroutine and task numbers in execution traces.
    trace_ids: u64,
    config: Arc<Config>,
    limits: Limits,
    timeouts: Timeouts,
    shared: Arc<Shared>,
    /// Cancels the pending accept at drain (then `None`: accept no more).
    accept_canceller: RefCell<Option<Canceller>>,
    date: RefCell<HttpDate>,
    app: RefCell<App>,
    recorder: RefCell<Recorder>,
    counters: &'static WorkerCounters,
    /// Open connections: their fds, what each waits for, and its totals.
    conns: RefCell<Slab<ConnSlot>>,
    draining: Cell<bool>,
    mailbox: Arc<Mailbox>,
    /// Input and output buffers for the connections being served right now.
    buffers: BufferPool,
    /// Where idle connections wait without a task (None: the system refused an epoll
    /// set; idle connections then keep their tasks).
    parking: Option<Parking>,
    /// Tasks of connections parked since the tick last gave memory back.
    tasks_freed_lately: Cell<bool>,
    /// Whether a pending read may be dropped to park its connection (epoll only; see
    /// [`run`]).
    reads_cancellable: bool,
}

/// The worker's life: accept until the drain, take in the backlog, drain, hand the log
/// its last lines.
async fn live(spec: WorkerSpec, log: Option<AccessLog>, reads_cancellable: bool) {
    let WorkerSpec {
        id,
        listener,
        config,
        shared,
        counters,
        mailbox,
        ..
    } = spec;
    let backlog = listener.try_clone();
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("leftpad: worker {id}: cannot use its listener: {e}");
            return;
        }
    };
    let recorder = Recorder::new(log, connect_statsd(&config, id), counters);
    let parking = Parking::new()
        .map_err(|e| {
            eprintln!("leftpad: worker {id}: idle connections keep their tasks: no epoll set: {e}")
        })
        .ok();
    connection::register_trace_sites();
    trace::register_site(Site::Wake, live as *const () as usize);
    let mut worker = Worker::new(id, config, shared, counters, mailbox, recorder, parking);
    worker.reads_cancellable = reads_cancellable;
    let worker = Rc::new(worker);
    monoio::spawn(tick(worker.clone()));
    monoio::spawn(wake_ready_parked(worker.clone()));
    accept::accept_loop(&worker, &listener).await;
    match backlog {
        Ok(backlog) => accept::take_in_backlog(&worker, &backlog),
        Err(e) => eprintln!("leftpad: worker {id}: cannot take in the backlog at shutdown: {e}"),
    }
    drop(listener);
    drain(&worker).await;
    // Every answered request's line is in the log buffer: hand it all to the writer.
    drop(worker.recorder.borrow_mut().finish());
}

/// The worker's StatsD batcher and its socket (None: StatsD off, or no socket).
fn connect_statsd(config: &Config, id: usize) -> Option<(Batcher, PacketSender)> {
    let settings = config.statsd()?;
    match Client::connect(settings.addr) {
        Ok(client) => {
            let send: PacketSender = Box::new(move |packet| client.send(packet));
            Some((Batcher::new(&settings, seed(id)), send))
        }
        Err(e) => {
            eprintln!(
                "leftpad: worker {id}: StatsD off: cannot open a UDP socket to {}: {e}",
                settings.addr
            );
            None
        }
    }
}

/// A different sampling sequence per worker and per run.
fn seed(worker_id: usize) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (worker_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Worker {
    #[allow(clippy::too_many_arguments)] // each a part the worker owns, named at the call
    fn new(
        id: usize,
        config: Arc<Config>,
        shared: Arc<Shared>,
        counters: &'static WorkerCounters,
        mailbox: Arc<Mailbox>,
        recorder: Recorder,
        parking: Option<Parking>,
    ) -> Worker {
        let reserved = (config.max_connections as usize).min(RESERVED_SLOTS);
        Worker {
            id,
            trace_ids: trace::id_base(trace::Thread::Worker(id)),
            limits: config.limits(),
            timeouts: Timeouts {
                header: config.header_timeout,
                idle: config.idle_timeout,
                write: config.write_timeout,
            },
            app: RefCell::new(App::new(config.max_len)),
            recorder: RefCell::new(recorder),
            counters,
            config,
            shared,
            accept_canceller: RefCell::new(Some(Canceller::new())),
            date: RefCell::new(HttpDate::new(SystemTime::now())),
            conns: RefCell::new(Slab::with_capacity(reserved)),
            draining: Cell::new(false),
            mailbox,
            buffers: BufferPool::new(BUF_SIZE, POOL_BYTES),
            parking,
            tasks_freed_lately: Cell::new(false),
            reads_cancellable: false,
        }
    }

    /// Stops accepting; idle connections get a short grace to send a last request
    /// ([`deadline::at_drain`]), busy ones close after their answer.
    fn begin_drain(&self) {
        self.draining.set(true);
        if trace::on() {
            trace::notice(Notice::DrainBegins, Site::Wake);
        }
        self.app.borrow_mut().set_draining();
        // The pending accept is cancelled (not the listener shut down: that would reset
        // the connections waiting in its backlog).
        if let Some(canceller) = self.accept_canceller.borrow_mut().take() {
            canceller.cancel();
        }
        let now = Instant::now();
        for (_, slot) in self.conns.borrow_mut().iter_mut() {
            slot.deadline = deadline::at_drain(slot.state, slot.deadline, now);
        }
    }

    /// Logs and counts an answer given without a parsed request (503, 408).
    fn record_unparsed(&self, status: Status, peer: &PeerText) {
        let mut recorder = self.recorder.borrow_mut();
        recorder.records.push(Record {
            target: Span::default(),
            user_agent: Span::default(),
            status,
            outcome: Handled::default(),
        });
        let now = std::time::Instant::now();
        recorder.record_batch(b"", peer.as_bytes(), Duration::ZERO, now);
    }

    /// The tick's pass over the connection table, each slot as [`deadline::sweep`]
    /// decides.
    ///
    /// Past its deadline, a connection's pending operation is ended: shutdown() makes a
    /// pending read or readiness wait return end-of-file (after any bytes already
    /// received) and a pending write fail; the task then sees `expired`. That is how
    /// waiting tasks learn of a timeout without a timer of their own. A parked
    /// connection's socket becomes readable, so it gets a task that finds it over.
    ///
    /// Connections idle long enough are asked to park, by waking their task.
    pub(super) fn sweep(&self, now: Instant) {
        let may_park = self.parking.is_some() && !self.draining.get();
        for (_, slot) in self.conns.borrow_mut().iter_mut() {
            let times = deadline::SlotTimes {
                state: slot.state,
                deadline: slot.deadline,
                expired: slot.expired,
                noted: slot.noted,
                park_requested: slot.park_requested,
            };
            match deadline::sweep(&times, now, may_park) {
                Sweep::Keep => {}
                Sweep::Expire { shut } => {
                    slot.expired = true;
                    table::shutdown_fd(slot.fd, shut.how());
                }
                Sweep::AskToPark => {
                    slot.park_requested = true;
                    if let Some(waker) = slot.waker.take() {
                        // Only schedules the task; it runs after this pass.
                        waker.wake();
                    }
                }
            }
        }
    }

    /// A copy of the connection table, for `/debug/pprof/goroutine`.
    pub(super) fn tasks(&self) -> WorkerTasks {
        let now = Instant::now();
        WorkerTasks {
            draining: self.draining.get(),
            entry: connection::connection_entry(),
            tasks: self
                .conns
                .borrow()
                .iter()
                .map(|(_, slot)| TaskInfo {
                    peer: String::from_utf8_lossy(slot.peer_text.as_bytes()).into_owned(),
                    state: slot.state.name(),
                    waits_for: slot.state.describe(),
                    age: now - slot.since,
                    requests: slot.requests,
                    bytes_in: slot.bytes_in,
                    bytes_out: slot.bytes_out,
                })
                .collect(),
        }
    }

    /// The connections' goroutines of an execution trace, declared at its start.
    fn trace_goroutines(&self) -> Vec<(u64, Site)> {
        let conns = self.conns.borrow();
        conns
            .iter()
            .map(|(_, slot)| (slot.g, Site::ConnectionTask))
            .collect()
    }

    /// After parking: the tasks of the connections parked since the last tick are
    /// freed, and an idle thread would never get back to mimalloc to return their pages
    /// to the system: ask it now (a walk over this thread's pages, only after parking).
    fn return_freed_pages(&self) {
        if self.tasks_freed_lately.replace(false) {
            // SAFETY: mi_collect takes no arguments to misuse and may be called by any
            // thread at any time; it only frees memory no allocation refers to.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    }
}

/// When the tick last flushed the log and StatsD.
struct Flushes {
    log_every: Duration,
    statsd_every: Duration,
    log_at: Instant,
    statsd_at: Instant,
}

impl Flushes {
    /// Which flushes are due `now` (log, StatsD); each due one restarts its interval.
    fn due(&mut self, now: Instant) -> (bool, bool) {
        let log = now - self.log_at >= self.log_every;
        let statsd = now - self.statsd_at >= self.statsd_every;
        if log {
            self.log_at = now;
        }
        if statsd {
            self.statsd_at = now;
        }
        (log, statsd)
    }
}

/// The worker's clock: refreshes the `Date` header, enforces deadlines, flushes the log
/// and StatsD on their intervals, reopens the log on SIGHUP, turns a shutdown request
/// into draining, and answers the goroutine profile's mailbox.
async fn tick(worker: Rc<Worker>) {
    let config = &*worker.config;
    let mut flushes = Flushes {
        log_every: Duration::from_millis(config.log_flush_ms),
        statsd_every: Duration::from_millis(config.statsd_flush_ms),
        log_at: Instant::now(),
        statsd_at: Instant::now(),
    };
    let mut interval =
        monoio::time::interval(TICK.min(flushes.log_every).min(flushes.statsd_every));
    let mut reopen_seen = worker.shared.reopen_log.load(Ordering::Relaxed);
    loop {
        interval.tick().await;
        // Between tasks: where a trace's recording starts and ends on this worker.
        trace::sync(trace::Thread::Worker(worker.id), || {
            worker.trace_goroutines()
        });
        let now = Instant::now();
        worker.date.borrow_mut().update(SystemTime::now());
        worker.sweep(now);
        worker.return_freed_pages();
        let (flush_log, flush_statsd) = flushes.due(now);
        let mut recorder = worker.recorder.borrow_mut();
        recorder.tick(now.into_std(), flush_log, flush_statsd);
        let reopen = worker.shared.reopen_log.load(Ordering::Relaxed);
        if std::mem::replace(&mut reopen_seen, reopen) != reopen {
            if let Some(log) = &mut recorder.log {
                log.reopen();
            }
            if trace::on() {
                trace::notice(Notice::LogReopen, Site::Wake);
            }
        }
        drop(recorder);
        if !worker.draining.get() && worker.shared.shutdown.load(Ordering::Relaxed) {
            worker.begin_drain();
        }
        if worker.mailbox.wanted() {
            worker.mailbox.answer(worker.tasks());
        }
    }
}

/// The task of the worker's parking set: gives each parked connection that became
/// readable a task again.
async fn wake_ready_parked(worker: Rc<Worker>) {
    let Some(parking) = &worker.parking else {
        return;
    };
    let mut keys = [0; parking::BATCH];
    loop {
        if parking.readable().await.is_err() {
            return;
        }
        loop {
            let ready = parking.ready(&mut keys);
            for &key in &keys[..ready] {
                if let Some((stream, from)) = worker.unpark(key) {
                    connection::resume(&worker, key, stream, from);
                }
            }
            if ready < parking::BATCH {
                break;
            }
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
        table::shutdown_fd(slot.fd, libc::SHUT_RDWR);
    }
    let grace = Instant::now() + DRAIN_CUT_GRACE;
    while !worker.conns.borrow().is_empty() && Instant::now() < grace {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}
