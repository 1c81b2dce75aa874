//! Where a worker keeps the sockets of connections idle too long to keep a task for.
//!
//! A keep-alive connection idle past [`PARK_AFTER`] gives up its task
//! (about 500 bytes) as well as its buffers: its socket goes into this worker-private
//! epoll set, one-shot, keyed by its slot in the connection table, and a new task is
//! spawned for it when it becomes readable. nginx keeps idle connections the same way
//! (an event registration, no buffer). A busy connection never comes here, so the
//! request path pays no `epoll_ctl`.
//!
//! [`EpollSet`] is the system-call half; [`Parking`] and the worker's methods here move
//! a connection's socket between its task and the set. The tick decides when a
//! connection parks ([`super::deadline::sweep`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use monoio::net::TcpStream;
use monoio::time::Instant;

#[cfg(doc)]
use super::deadline::PARK_AFTER;
use super::table::{ConnSlot, ConnState, Registration};
use super::Worker;

/// A worker's epoll set of parked sockets.
pub(super) struct EpollSet {
    epoll: OwnedFd,
}

/// Readiness events read at once by [`EpollSet::ready`].
pub(super) const BATCH: usize = 64;

impl EpollSet {
    pub(super) fn new() -> io::Result<EpollSet> {
        // SAFETY: epoll_create1 takes no pointer; a non-negative result is a new fd that
        // nothing else owns, so OwnedFd may take it.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above: `fd` is open and owned by no one else.
        Ok(EpollSet {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` until it is readable, hung up or in error, once: `ready` then
    /// reports `key`, and the socket is not reported again until it is parked again.
    pub(super) fn watch(&self, fd: RawFd, key: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: key as u64,
        };
        self.ctl(libc::EPOLL_CTL_ADD, fd, &mut event)
    }

    /// Stops watching `fd` (before its task takes it back, so a later readiness of the
    /// socket, or of another that reuses its slot, is never reported for it).
    pub(super) fn unwatch(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // A socket already closed has left the set by itself; nothing to undo then.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, &mut event);
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, event: &mut libc::epoll_event) -> io::Result<()> {
        // SAFETY: `event` is a valid epoll_event for the call's duration; epoll_ctl only
        // reads it and fails cleanly (EBADF, ENOENT, EEXIST) on a bad fd or state.
        let done = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, event) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The keys of parked sockets that are ready now (without waiting), at most
    /// [`BATCH`]; written into `keys`, and the count returned.
    pub(super) fn ready(&self, keys: &mut [usize; BATCH]) -> usize {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: `events` holds BATCH writable entries, as the count passed says; with a
        // timeout of 0 the call never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                0,
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        for (key, event) in keys.iter_mut().zip(&events[..n]) {
            *key = event.u64 as usize;
        }
        n
    }

    /// A second descriptor of the set, for the worker's runtime to wait on: the set is
    /// readable (to poll and io_uring alike) while a parked socket is ready.
    pub(super) fn try_clone(&self) -> io::Result<OwnedFd> {
        self.epoll.try_clone()
    }
}

/// The worker's parking set, and a second handle on it for the runtime to wait on.
pub(super) struct Parking {
    set: EpollSet,
    /// The set's descriptor as a monoio socket type, used only to wait until the set
    /// is readable (a parked socket is ready): monoio has no type for a bare fd, and
    /// its readiness wait is a plain poll on the descriptor whatever the type.
    waiter: monoio::net::unix::UnixDatagram,
}

impl Parking {
    pub(super) fn new() -> io::Result<Parking> {
        let set = EpollSet::new()?;
        let waiter = std::os::unix::net::UnixDatagram::from(set.try_clone()?);
        let waiter = monoio::net::unix::UnixDatagram::from_std(waiter)?;
        Ok(Parking { set, waiter })
    }

    /// Waits until a parked socket is ready.
    pub(super) async fn readable(&self) -> io::Result<()> {
        self.waiter.readable(false).await
    }

    /// The keys of the parked sockets ready now, at most [`BATCH`]; see
    /// [`EpollSet::ready`].
    pub(super) fn ready(&self, keys: &mut [usize; BATCH]) -> usize {
        self.set.ready(keys)
    }
}

/// What a task given to a parked connection starts from.
#[derive(Clone, Copy)]
pub(super) struct Resume {
    /// No byte read yet: the header timeout still runs, to `deadline`.
    pub(super) fresh: bool,
    pub(super) deadline: Instant,
}

impl Resume {
    fn of(slot: &ConnSlot) -> Resume {
        Resume {
            fresh: slot.bytes_in == 0,
            deadline: slot.deadline,
        }
    }
}

impl Worker {
    /// Takes over the socket of connection `key`, whose task ended to park it. If the
    /// set refuses it, the socket comes back with where to resume: it is served on with
    /// a task.
    pub(super) fn hold_parked(
        self: &Rc<Self>,
        key: usize,
        stream: TcpStream,
    ) -> Option<(TcpStream, Resume)> {
        let watched = self
            .parking
            .as_ref()
            .map(|parking| parking.set.watch(stream.as_raw_fd(), key));
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(key) else {
            // Never so (only a registration removes a slot); if it were, the
            // connection is closed and uncounted as a registration's end does.
            drop(conns);
            drop(Registration {
                worker: self.clone(),
                key,
                g: 0,
            });
            return None;
        };
        let waker = slot.waker.take();
        slot.park_requested = false;
        if let Some(Ok(())) = watched {
            slot.state = ConnState::Parked;
            slot.parked_socket = Some(stream);
            self.tasks_freed_lately.set(true);
            drop(conns);
            drop(waker);
            return None;
        }
        let resume = Resume::of(slot);
        drop(conns);
        drop(waker);
        Some((stream, resume))
    }

    /// Takes parked connection `key` out of the set, to be given a task again: its
    /// socket is readable (bytes, end of file, or the tick's shutdown at its deadline).
    pub(super) fn unpark(&self, key: usize) -> Option<(TcpStream, Resume)> {
        let mut conns = self.conns.borrow_mut();
        let slot = conns.get_mut(key)?;
        let stream = slot.parked_socket.take()?;
        if let Some(parking) = &self.parking {
            parking.set.unwatch(slot.fd);
        }
        slot.state = ConnState::Idle;
        Some((stream, Resume::of(slot)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_a_parked_socket_once_when_it_becomes_readable() {
        let set = EpollSet::new().unwrap();
        let (mut client, parked) = UnixStream::pair().unwrap();
        set.watch(parked.as_raw_fd(), 7).unwrap();
        let mut keys = [0; BATCH];
        assert_eq!(set.ready(&mut keys), 0, "nothing sent yet");
        client.write_all(b"GET").unwrap();
        assert_eq!((set.ready(&mut keys), keys[0]), (1, 7));
        client.write_all(b" /").unwrap();
        assert_eq!(set.ready(&mut keys), 0, "one-shot: reported once");
        set.unwatch(parked.as_raw_fd());
        set.watch(parked.as_raw_fd(), 9).unwrap();
        assert_eq!((set.ready(&mut keys), keys[0]), (1, 9), "parked again");
    }

    #[test]
    fn a_hang_up_is_reported_and_unwatched_sockets_are_not() {
        let set = EpollSet::new().unwrap();
        let (client, parked) = UnixStream::pair().unwrap();
        let (other_client, other) = UnixStream::pair().unwrap();
        set.watch(parked.as_raw_fd(), 1).unwrap();
        set.watch(other.as_raw_fd(), 2).unwrap();
        set.unwatch(other.as_raw_fd());
        drop(other_client);
        drop(client);
        let mut keys = [0; BATCH];
        assert_eq!((set.ready(&mut keys), keys[0]), (1, 1));
    }
}
