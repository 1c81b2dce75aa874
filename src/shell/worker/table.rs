//! The connection table: one slot per open connection of a worker (its fd, what it
//! waits for and until when, its totals), and the registration that keeps a task's
//! slot for as long as the task lives.
//!
//! The table is the worker's own (one thread, a `RefCell`): tasks note their state in
//! it, the tick enforces its deadlines and the goroutine profile reads a copy of it
//! (both in the worker's tick).

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Waker;

use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::telemetry::counters::Scalar;

use super::Worker;

/// What a connection waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum ConnState {
    /// Reading a request head (a new connection, or the rest of a partial head).
    Head,
    /// Reading (and discarding) a request body.
    Body,
    /// Between requests on a keep-alive connection.
    Idle,
    /// Writing responses to the client.
    Writing,
    /// Closing: reading what the client still sends before the socket is closed.
    Lingering,
    /// Idle so long it gave up its task: only its socket waits (see [`super::parking`]).
    Parked,
}

impl ConnState {
    /// The state's name, as `/debug/pprof/goroutine?debug=1` lists it.
    pub(super) fn name(self) -> &'static str {
        match self {
            ConnState::Head => "Head",
            ConnState::Body => "Body",
            ConnState::Idle => "Idle",
            ConnState::Writing => "Writing",
            ConnState::Lingering => "Lingering",
            ConnState::Parked => "Parked",
        }
    }

    /// What a connection in this state waits for, in words.
    pub(super) fn describe(self) -> &'static str {
        match self {
            ConnState::Head => "waiting for a request head",
            ConnState::Body => "reading a request body",
            ConnState::Idle => "idle between requests (keep-alive)",
            ConnState::Writing => "writing responses",
            ConnState::Lingering => "lingering close",
            ConnState::Parked => "idle, parked (no task, no buffers)",
        }
    }
}

/// One open connection.
pub(super) struct ConnSlot {
    pub(super) fd: RawFd,
    pub(super) state: ConnState,
    /// When what the connection waits for times out. The tick ends the pending read or
    /// write past it (see the worker's sweep): a connection task holds no timer of its
    /// own, as monoio's timer entry alone is 640 bytes (ARCHITECTURE.md, "Idle
    /// connections").
    pub(super) deadline: Instant,
    /// The tick found the deadline passed and shut the socket down.
    pub(super) expired: bool,
    /// When the state was last noted (how long an idle connection has been idle).
    pub(super) noted: Instant,
    /// The tick asked this idle connection to park (see the worker's sweep).
    pub(super) park_requested: bool,
    /// Wakes the connection's task while it waits for readability, to park it.
    pub(super) waker: Option<Waker>,
    /// The socket of a parked connection, which has no task.
    pub(super) parked_socket: Option<TcpStream>,
    /// The goroutine number of the connection's task in an execution trace (a new one
    /// for each task it gets), declared at a trace's start.
    pub(super) g: u64,
    /// The peer as the access log writes it, formatted once (here, not in the task,
    /// keeps the task of an idle connection in a smaller allocation class); the
    /// goroutine profile shows it too, so the address itself is not kept.
    pub(super) peer_text: PeerText,
    pub(super) since: Instant,
    pub(super) requests: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
}

impl ConnSlot {
    /// The slot of a connection accepted `now`, which owes its first head by `deadline`.
    pub(super) fn new(
        fd: RawFd,
        g: u64,
        peer: SocketAddr,
        now: Instant,
        deadline: Instant,
    ) -> ConnSlot {
        ConnSlot {
            fd,
            g,
            state: ConnState::Idle,
            deadline,
            expired: false,
            noted: now,
            park_requested: false,
            waker: None,
            parked_socket: None,
            peer_text: PeerText::new(peer),
            since: now,
            requests: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// The longest socket address text: `[` + 39 for IPv6 + `%` + 10 for a scope id + `]:` +
/// 5 for the port.
const PEER_TEXT_MAX: usize = 58;
/// The longest text kept in the slot itself: an IPv4 `255.255.255.255:65535` is 21.
const PEER_TEXT_INLINE: usize = 22;

/// A peer address as the access log writes it (`ip:port`), formatted once per connection.
/// A text of up to 22 bytes (any IPv4 one, and short IPv6 ones such as `[::1]:8080`) is
/// kept in place, a longer one on the heap (one allocation per connection, at accept;
/// on a dual-stack `[::]` listener an IPv4 peer is `[::ffff:a.b.c.d]:p`, up to 30 bytes,
/// and takes that path too): every slot pays for the text's size, and 24 bytes instead
/// of 59 took the slot from 248 to 208 bytes (ARCHITECTURE.md, "Idle connections: no
/// buffer, then no task"). Not `Clone`: a copy of a long one would allocate.
pub(super) enum PeerText {
    Inline {
        len: u8,
        text: [u8; PEER_TEXT_INLINE],
    },
    Boxed(Box<[u8]>),
}

impl PeerText {
    pub(super) fn new(peer: SocketAddr) -> PeerText {
        let mut text = [0u8; PEER_TEXT_MAX];
        let mut cursor = &mut text[..];
        let _ = write!(cursor, "{peer}");
        let len = PEER_TEXT_MAX - cursor.len();
        if len > PEER_TEXT_INLINE {
            return PeerText::Boxed(text[..len].into());
        }
        let mut short = [0u8; PEER_TEXT_INLINE];
        short[..len].copy_from_slice(&text[..len]);
        PeerText::Inline {
            len: len as u8,
            text: short,
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            PeerText::Inline { len, text } => &text[..usize::from(*len)],
            PeerText::Boxed(text) => text,
        }
    }
}

/// A connection's place in its worker: removed, and the process count lowered, on drop.
pub(super) struct Registration {
    pub(super) worker: Rc<Worker>,
    pub(super) key: usize,
    /// The task's number as a goroutine of the execution trace.
    pub(super) g: u64,
}

impl Registration {
    /// Ends the registration without removing the connection: it is parked, and its
    /// slot stays (a task it gets later registers again).
    pub(super) fn release(self) -> (Rc<Worker>, usize) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped (ManuallyDrop) nor used after this read, so the
        // `Rc` is moved out exactly once and its count stays right (`key` and `g` are
        // plain integers).
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
        self.worker.counters[Scalar::ConnectionsOpen].sub(1);
    }
}

impl Worker {
    /// Whether the tick asked connection `key` to park; if not, `waker` is kept for it
    /// to ask. Called while the connection waits for readability.
    pub(super) fn is_asked_to_park(&self, key: usize, waker: &Waker) -> bool {
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(key) else {
            return false;
        };
        if slot.park_requested {
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

    /// Whether connection `key`'s deadline passed while it waited (see the worker's sweep).
    pub(super) fn expired(&self, key: usize) -> bool {
        self.conns
            .borrow()
            .get(key)
            .is_some_and(|slot| slot.expired)
    }

    /// Records what connection `key` waits for from `now` on, and until when.
    pub(super) fn note(&self, key: usize, state: ConnState, now: Instant, deadline: Instant) {
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.state = state;
            slot.noted = now;
            slot.deadline = deadline;
            slot.expired = false;
            slot.park_requested = false;
        }
    }

    /// Counts bytes connection `key` read, in its slot and the worker's counters.
    pub(super) fn count_in(&self, key: usize, bytes: usize) {
        self.counters[Scalar::BytesIn].add(bytes as u64);
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.bytes_in += bytes as u64;
        }
    }

    /// Counts bytes connection `key` wrote, in its slot and the worker's counters.
    pub(super) fn count_out(&self, key: usize, bytes: usize) {
        self.counters[Scalar::BytesOut].add(bytes as u64);
        if let Some(slot) = self.conns.borrow_mut().get_mut(key) {
            slot.bytes_out += bytes as u64;
        }
    }
}

pub(super) fn shutdown_fd(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) takes any integer; on an fd that is not a socket, or one closed
    // meanwhile, it fails with EBADF/ENOTSOCK and changes nothing. The fds passed here
    // are owned by live tasks of this single thread, so they cannot be reused by another
    // file between the lookup and this call.
    unsafe {
        libc::shutdown(fd, how);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs is mostly its slot (bench-results: "What an idle
    /// connection holds"): a field added here is paid by every connection.
    #[test]
    fn a_slot_stays_within_its_budget() {
        let size = std::mem::size_of::<ConnSlot>();
        assert!(size <= 208, "ConnSlot is {size} bytes");
    }

    #[test]
    fn peer_text_keeps_ipv4_in_place_and_the_longest_whole() {
        let longest = std::net::SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            65535,
            0,
            u32::MAX,
        );
        let text = longest.to_string();
        assert_eq!(text.len(), PEER_TEXT_MAX, "{text}");
        assert_eq!(PeerText::new(longest.into()).as_bytes(), text.as_bytes());
        assert!(matches!(PeerText::new(longest.into()), PeerText::Boxed(_)));
        for (peer, text) in [
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("255.255.255.255:65535", "255.255.255.255:65535"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            let kept = PeerText::new(peer.parse().unwrap());
            assert_eq!(kept.as_bytes(), text.as_bytes());
            assert!(
                matches!(kept, PeerText::Inline { .. }),
                "{text} is kept in place"
            );
        }
    }
}
