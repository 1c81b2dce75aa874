//! Accept and admission: new connections come in here, get a slot and a task, or a 503
//! over `--max-connections`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;

use crate::http::response::{Connection, Response};
use crate::http::Status;
use crate::profile::trace::{self, Notice, Site};
use crate::telemetry::counters::Scalar;

use super::connection::connection_task;
use super::table::{ConnSlot, PeerText, Registration};
use super::Worker;

/// Most connections taken from the backlog at drain: a flood of new connections cannot
/// keep the drain going.
const BACKLOG_SWEEP_LIMIT: usize = 4096;

/// Accepts until the drain cancels the pending accept.
pub(super) async fn accept_loop(worker: &Rc<Worker>, listener: &TcpListener) {
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
        match listener.cancelable_accept(cancel).await {
            Ok((stream, peer)) => take_in(worker, stream, peer),
            Err(_) if worker.draining.get() => return,
            Err(e) => {
                // Out of fds or memory: back off instead of spinning on the error.
                if trace::on() {
                    trace::notice(Notice::AcceptBackoff, Site::Accept);
                }
                if !std::mem::replace(&mut warned, true) {
                    eprintln!(
                        "leftpad: accept failed: {e} (retrying; further failures are not reported)"
                    );
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Takes a new connection in: serves it, or refuses it over `--max-connections`.
fn take_in(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    if !worker.admit() {
        refuse(worker, &stream);
        worker.record_unparsed(Status::SERVICE_UNAVAILABLE, &PeerText::new(peer));
        return;
    }
    worker.counters[Scalar::ConnectionsAccepted].add(1);
    worker.counters[Scalar::ConnectionsOpen].add(1);
    let now = Instant::now();
    let first_head_due = now + worker.timeouts.header;
    let g = trace::next_id(worker.trace_ids);
    let slot = ConnSlot::new(stream.as_raw_fd(), g, peer, now, first_head_due);
    let key = worker.conns.borrow_mut().insert(slot);
    if trace::on() {
        trace::go_create(now.into_std(), g, Site::Accept);
    }
    let registration = Registration {
        worker: worker.clone(),
        key,
        g,
    };
    monoio::spawn(connection_task(registration, stream, None));
}

/// At drain: takes in the connections already waiting in the listener's backlog (their
/// clients may have sent requests before the signal), so closing the listener does not
/// reset them. `backlog` is a clone of the listening socket, non-blocking.
pub(super) fn take_in_backlog(worker: &Rc<Worker>, backlog: &std::net::TcpListener) {
    for _ in 0..BACKLOG_SWEEP_LIMIT {
        let Ok((stream, peer)) = backlog.accept() else {
            return;
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            take_in(worker, stream, peer);
        }
    }
}

impl Worker {
    /// Counts a new connection in, unless the process is at `--max-connections`.
    fn admit(&self) -> bool {
        let max = self.config.max_connections as usize;
        if self.shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
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
