//! One worker: a thread pinned to its CPU, with its own monoio runtime, its own
//! `SO_REUSEPORT` listener and everything its requests touch.
//!
//! This is the async shell around the sans-IO core in [`crate::http`]: it moves bytes
//! between sockets and [`Conn::process`], and owns the clocks (timeouts, the cached
//! `Date`). Nothing here is shared with other workers except [`Shared`], which is read
//! once per tick and written once per connection, never per request.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::{timeout_at, Instant};
use slab::Slab;

use crate::config::Config;
use crate::handler::App;
use crate::http::conn::{Conn, Waiting, OUT_HIGH_WATER};
use crate::http::date::HttpDate;
use crate::http::request::Limits;
use crate::http::response::{Connection, Response};
use crate::http::Status;
use crate::runtime::{DriverReport, Runtime};

/// How often a worker refreshes its `Date` and looks for a shutdown request.
const TICK: Duration = Duration::from_millis(50);
/// First size of a connection's read buffer; it grows (once) only for a large head.
const READ_BUF: usize = 4096;
const WRITE_BUF: usize = 4096;
/// After the server decides to close, how long and how much it keeps reading (and
/// discarding) so that the client sees the last response rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The little that workers share: written by the signal thread and at accept/close.
#[derive(Default)]
pub struct Shared {
    pub shutdown: AtomicBool,
    /// Open connections in the whole process (for `--max-connections`).
    pub connections: AtomicUsize,
}

/// Everything a worker thread is started with.
pub struct WorkerSpec {
    pub id: usize,
    pub cpu: Option<core_affinity::CoreId>,
    pub listener: std::net::TcpListener,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
}

/// The worker thread's body: pin, build the runtime, report the driver, serve until
/// shutdown. `ready` gets the driver, or the reason the runtime could not be built.
pub fn run(spec: WorkerSpec, ready: std::sync::mpsc::Sender<Result<DriverReport, String>>) {
    if let Some(cpu) = spec.cpu {
        core_affinity::set_for_current(cpu);
    }
    match Runtime::build(spec.config.driver, spec.config.uring_setup) {
        Ok(mut runtime) => {
            let _ = ready.send(Ok(runtime.report()));
            runtime.block_on(serve(spec));
        }
        Err(message) => {
            let _ = ready.send(Err(message));
        }
    }
}

/// A worker's own state, shared by its tasks (one thread: `Rc`, `Cell`, `RefCell`).
struct Worker {
    config: Arc<Config>,
    limits: Limits,
    shared: Arc<Shared>,
    listener_fd: RawFd,
    date: RefCell<HttpDate>,
    app: RefCell<App>,
    /// Open connections: their fds, and whether each waits idle between requests.
    conns: RefCell<Slab<ConnSlot>>,
    draining: Cell<bool>,
}

struct ConnSlot {
    fd: RawFd,
    idle: bool,
}

async fn serve(spec: WorkerSpec) {
    let listener = match TcpListener::from_std(spec.listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("leftpad: worker {}: cannot use its listener: {e}", spec.id);
            return;
        }
    };
    let worker = Rc::new(Worker {
        limits: spec.config.limits(),
        app: RefCell::new(App::new(spec.config.max_len)),
        config: spec.config,
        shared: spec.shared,
        listener_fd: listener.as_raw_fd(),
        date: RefCell::new(HttpDate::new(SystemTime::now())),
        conns: RefCell::new(Slab::new()),
        draining: Cell::new(false),
    });
    monoio::spawn(tick(worker.clone()));
    accept_loop(&worker, &listener).await;
    drop(listener);
    drain(&worker).await;
}

/// Refreshes the `Date` header and turns a shutdown request into draining.
async fn tick(worker: Rc<Worker>) {
    let mut interval = monoio::time::interval(TICK);
    loop {
        interval.tick().await;
        worker.date.borrow_mut().update(SystemTime::now());
        if !worker.draining.get() && worker.shared.shutdown.load(Ordering::Relaxed) {
            worker.begin_drain();
        }
    }
}

impl Worker {
    /// Stops accepting and closes idle connections; busy ones close after their answer.
    fn begin_drain(&self) {
        self.draining.set(true);
        // shutdown() on a listening socket wakes a pending accept with an error, and on a
        // connection makes its pending read return end-of-file: that is how the waiting
        // tasks learn of the drain without a waker registry.
        shutdown_fd(self.listener_fd, libc::SHUT_RD);
        for (_, slot) in self.conns.borrow().iter() {
            if slot.idle {
                shutdown_fd(slot.fd, libc::SHUT_RD);
            }
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

    fn set_idle(&self, key: usize, idle: bool) {
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.idle = idle;
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
        let accepted = listener.accept().await;
        if worker.draining.get() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if !worker.admit() {
                    refuse(worker, &stream);
                    continue;
                }
                let key = worker.conns.borrow_mut().insert(ConnSlot {
                    fd: stream.as_raw_fd(),
                    idle: true,
                });
                let registration = Registration {
                    worker: worker.clone(),
                    key,
                };
                monoio::spawn(serve_connection(registration, stream, peer));
            }
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
    }
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

async fn serve_connection(reg: Registration, mut stream: TcpStream, _peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut input = Vec::with_capacity(READ_BUF);
    let mut output = Vec::with_capacity(WRITE_BUF);
    let end = connection_loop(&reg, &mut stream, &mut input, &mut output).await;
    match end {
        End::Gone => {}
        End::Close => linger(&mut stream).await,
        End::HeadTimeout => {
            output.clear();
            let date = *reg.worker.date.borrow().as_bytes();
            Response::new(&mut output, &date, false, Connection::Close).error(
                Status::REQUEST_TIMEOUT,
                "request head not received in time",
                b"",
            );
            let deadline = Instant::now() + Duration::from_secs(1);
            let _ = timeout_at(deadline, stream.write_all(output)).await;
        }
    }
}

async fn connection_loop(
    reg: &Registration,
    stream: &mut TcpStream,
    input: &mut Vec<u8>,
    output: &mut Vec<u8>,
) -> End {
    let worker = &*reg.worker;
    let config = &*worker.config;
    let mut conn = Conn::new();
    let mut head_deadline: Option<Instant> = None;
    loop {
        let mut more_buffered = false;
        if !input.is_empty() {
            let date = *worker.date.borrow().as_bytes();
            let mut app = worker.app.borrow_mut();
            // The core is pure and should never panic; if it does, only this connection
            // ends, not the worker and its other clients.
            let progress = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                conn.process(input, output, &mut app, &worker.limits, &date)
            })) {
                Ok(progress) => progress,
                Err(_) => return End::Gone,
            };
            input.drain(..progress.consumed);
            more_buffered = output.len() >= OUT_HIGH_WATER;
        }
        if !output.is_empty() {
            let deadline = Instant::now() + config.write_timeout;
            let buf = std::mem::take(output);
            match timeout_at(deadline, stream.write_all(buf)).await {
                Ok((Ok(_), mut buf)) => {
                    buf.clear();
                    *output = buf;
                }
                _ => return End::Gone,
            }
        }
        let waiting = conn.waiting(input.len());
        if more_buffered && waiting != Waiting::Done {
            continue;
        }
        let deadline = match waiting {
            Waiting::Done => return End::Close,
            Waiting::Idle if worker.draining.get() => return End::Close,
            Waiting::Idle | Waiting::Body => {
                head_deadline = None;
                Instant::now() + config.idle_timeout
            }
            Waiting::Head => {
                *head_deadline.get_or_insert_with(|| Instant::now() + config.header_timeout)
            }
        };
        let idle = waiting == Waiting::Idle;
        worker.set_idle(reg.key, idle);
        if input.len() == input.capacity() {
            // Only a partial head fills the buffer (the core rejects one past the limit).
            input.reserve(worker.limits.max_head_size.max(input.capacity()));
        }
        let buf = std::mem::take(input);
        let len = buf.len();
        let read = timeout_at(deadline, stream.read(buf.slice_mut(len..))).await;
        if idle {
            worker.set_idle(reg.key, false);
        }
        match read {
            Ok((Ok(n), buf)) if n > 0 => *input = buf.into_inner(),
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
