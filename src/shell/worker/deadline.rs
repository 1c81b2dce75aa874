//! Every deadline of a connection, decided in one small pure table: what a connection
//! waits for next and until when ([`next_wait`]), and what the tick does to a slot
//! ([`sweep`]). No clock is read here: the caller passes `now`.
//!
//! | waiting for | deadline |
//! |---|---|
//! | the first head of a new connection | `--header-timeout` from the accept |
//! | the rest of a head | `--header-timeout` from its first byte |
//! | the next request (keep-alive), a body | `--idle-timeout` from now |
//! | the next request while draining | [`DRAIN_IDLE_GRACE`] |
//! | a write | `--write-timeout` |
//! | the 408 for a late head | [`TIMEOUT_ANSWER_TIME`] |
//! | a lingering close | [`LINGER_TIME`] |
//! | parking, for an idle connection | [`PARK_AFTER`] idle |

use std::time::Duration;

use monoio::time::Instant;

use crate::http::conn::Waiting;

use super::table::ConnState;

/// While draining, how long an idle connection gets to send the request its client may
/// already have sent: it is answered with `Connection: close`, so a client that sent it
/// just as the drain began reconnects instead of seeing its connection cut.
pub(super) const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(200);
/// How long a keep-alive connection stays idle with its task before it parks: its task
/// ends and only its socket waits, in the worker's epoll set (see [`super::parking`]).
/// Long enough that a connection in steady use never parks (so the request path never
/// pays the `epoll_ctl` and the new task), short enough that idle ones soon cost little.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);
/// After the server decides to close, how long it keeps reading (and discarding) so
/// that the client sees the last response rather than a reset.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(2);
/// How long the 408 for a request head that did not arrive in time may take to write.
pub(super) const TIMEOUT_ANSWER_TIME: Duration = Duration::from_secs(1);

/// The timeouts of the command line.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) header: Duration,
    pub(super) idle: Duration,
    pub(super) write: Duration,
}

/// The header timeout's clock of one connection: whether it has sent a byte yet, and
/// when the head under way (or the first one) is due.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadClock {
    /// No byte read yet: the connection owes its first head within the header timeout.
    fresh: bool,
    due: Option<Instant>,
}

impl HeadClock {
    /// A new connection's clock (`resumed`: None), or a parked one's, which keeps its
    /// first head's deadline if it has not sent a byte (`Some((fresh, deadline))`).
    pub(super) fn new(resumed: Option<(bool, Instant)>) -> HeadClock {
        HeadClock {
            fresh: resumed.is_none_or(|(fresh, _)| fresh),
            due: resumed.filter(|&(fresh, _)| fresh).map(|(_, due)| due),
        }
    }

    /// Bytes came: from now on, silence is idleness, not a missing first head.
    pub(super) fn bytes_arrived(&mut self) {
        self.fresh = false;
    }
}

/// What the connection waits for next and until when; None when it is done.
pub(super) fn next_wait(
    waiting: Waiting,
    now: Instant,
    draining: bool,
    head: &mut HeadClock,
    timeouts: &Timeouts,
) -> Option<(ConnState, Instant)> {
    let deadline = match waiting {
        Waiting::Done => return None,
        Waiting::Idle if draining => now + DRAIN_IDLE_GRACE,
        // A new connection owes its first request head within the header timeout, as
        // nginx's `client_header_timeout` and Go's `ReadHeaderTimeout` have it: silence
        // is not idleness, and it is closed without an answer.
        Waiting::Idle if head.fresh => *head.due.get_or_insert(now + timeouts.header),
        Waiting::Idle | Waiting::Body => {
            head.due = None;
            now + timeouts.idle
        }
        Waiting::Head => *head.due.get_or_insert(now + timeouts.header),
    };
    let state = match waiting {
        Waiting::Idle => ConnState::Idle,
        Waiting::Body => ConnState::Body,
        Waiting::Head | Waiting::Done => ConnState::Head,
    };
    Some((state, deadline))
}

/// The deadline of an idle or parked connection once the drain begins at `now`.
pub(super) fn at_drain(state: ConnState, deadline: Instant, now: Instant) -> Instant {
    match state {
        ConnState::Idle | ConnState::Parked => deadline.min(now + DRAIN_IDLE_GRACE),
        _ => deadline,
    }
}

/// What the tick reads of a slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotTimes {
    pub(super) state: ConnState,
    pub(super) deadline: Instant,
    pub(super) expired: bool,
    /// When the state was last noted.
    pub(super) noted: Instant,
    pub(super) park_requested: bool,
}

/// Which way a timed-out socket is shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shut {
    /// Reading only: a connection waiting for a head still gets its 408.
    Read,
    /// Both ways: a pending write fails at once.
    Both,
}

impl Shut {
    pub(super) fn how(self) -> libc::c_int {
        match self {
            Shut::Read => libc::SHUT_RD,
            Shut::Both => libc::SHUT_RDWR,
        }
    }
}

/// What the tick does to one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sweep {
    Keep,
    /// The deadline passed: end the pending operation.
    Expire {
        shut: Shut,
    },
    /// Idle past [`PARK_AFTER`]: ask the task to park.
    AskToPark,
}

/// The tick's decision for one slot; `may_park` when the worker has a parking set and
/// is not draining.
pub(super) fn sweep(slot: &SlotTimes, now: Instant, may_park: bool) -> Sweep {
    if !slot.expired && slot.deadline <= now {
        let shut = match slot.state {
            ConnState::Writing => Shut::Both,
            _ => Shut::Read,
        };
        return Sweep::Expire { shut };
    }
    let idle_long = now.saturating_duration_since(slot.noted) >= PARK_AFTER;
    if may_park && slot.state == ConnState::Idle && !slot.park_requested && idle_long {
        return Sweep::AskToPark;
    }
    Sweep::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        write: Duration::from_secs(30),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_new_connection_owes_its_first_head_within_the_header_timeout() {
        let t0 = Instant::now();
        let mut head = HeadClock::new(None);
        let first = next_wait(Waiting::Idle, t0, false, &mut head, &TIMEOUTS);
        assert_eq!(first, Some((ConnState::Idle, t0 + secs(10))));
        // Waiting again (e.g. after a spurious wake) does not move the deadline.
        let again = next_wait(Waiting::Idle, t0 + secs(3), false, &mut head, &TIMEOUTS);
        assert_eq!(again, first);
    }

    #[test]
    fn a_head_is_due_from_its_first_byte_and_idleness_resets_it() {
        let t0 = Instant::now();
        let mut head = HeadClock::new(None);
        head.bytes_arrived();
        let partial = next_wait(Waiting::Head, t0, false, &mut head, &TIMEOUTS);
        assert_eq!(partial, Some((ConnState::Head, t0 + secs(10))));
        let more = next_wait(Waiting::Head, t0 + secs(4), false, &mut head, &TIMEOUTS);
        assert_eq!(
            more, partial,
            "the rest of the head is due at the same time"
        );
        let idle = next_wait(Waiting::Idle, t0 + secs(5), false, &mut head, &TIMEOUTS);
        assert_eq!(idle, Some((ConnState::Idle, t0 + secs(65))));
        let next_head = next_wait(Waiting::Head, t0 + secs(70), false, &mut head, &TIMEOUTS);
        assert_eq!(next_head, Some((ConnState::Head, t0 + secs(80))));
    }

    #[test]
    fn bodies_wait_by_the_idle_timeout_and_done_is_none() {
        let t0 = Instant::now();
        let mut head = HeadClock::new(None);
        head.bytes_arrived();
        let body = next_wait(Waiting::Body, t0, false, &mut head, &TIMEOUTS);
        assert_eq!(body, Some((ConnState::Body, t0 + secs(60))));
        assert_eq!(
            next_wait(Waiting::Done, t0, false, &mut head, &TIMEOUTS),
            None
        );
    }

    #[test]
    fn draining_gives_idle_connections_a_short_grace() {
        let t0 = Instant::now();
        let mut head = HeadClock::new(None);
        let idle = next_wait(Waiting::Idle, t0, true, &mut head, &TIMEOUTS);
        assert_eq!(idle, Some((ConnState::Idle, t0 + DRAIN_IDLE_GRACE)));
        let far = t0 + secs(50);
        assert_eq!(at_drain(ConnState::Parked, far, t0), t0 + DRAIN_IDLE_GRACE);
        assert_eq!(at_drain(ConnState::Idle, t0, t0), t0, "never later");
        assert_eq!(at_drain(ConnState::Writing, far, t0), far);
    }

    #[test]
    fn a_resumed_connection_keeps_its_first_heads_deadline_only_while_fresh() {
        let t0 = Instant::now();
        let due = t0 + secs(2);
        let mut fresh = HeadClock::new(Some((true, due)));
        let wait = next_wait(Waiting::Idle, t0, false, &mut fresh, &TIMEOUTS);
        assert_eq!(wait, Some((ConnState::Idle, due)));
        let mut spoken = HeadClock::new(Some((false, due)));
        let wait = next_wait(Waiting::Idle, t0, false, &mut spoken, &TIMEOUTS);
        assert_eq!(wait, Some((ConnState::Idle, t0 + secs(60))));
    }

    fn slot(state: ConnState, deadline: Instant, noted: Instant) -> SlotTimes {
        SlotTimes {
            state,
            deadline,
            expired: false,
            noted,
            park_requested: false,
        }
    }

    #[test]
    fn the_tick_expires_past_deadlines_once_and_shuts_writes_both_ways() {
        let t0 = Instant::now();
        let now = t0 + secs(20);
        let head = slot(ConnState::Head, t0 + secs(10), t0);
        assert_eq!(sweep(&head, now, true), Sweep::Expire { shut: Shut::Read });
        let writing = slot(ConnState::Writing, now, t0);
        assert_eq!(
            sweep(&writing, now, true),
            Sweep::Expire { shut: Shut::Both }
        );
        let done = SlotTimes {
            expired: true,
            ..head
        };
        assert_eq!(sweep(&done, now, false), Sweep::Keep, "expired once");
    }

    #[test]
    fn the_tick_asks_long_idle_connections_to_park_once() {
        let t0 = Instant::now();
        let idle = slot(ConnState::Idle, t0 + secs(60), t0);
        assert_eq!(sweep(&idle, t0 + PARK_AFTER / 2, true), Sweep::Keep);
        assert_eq!(sweep(&idle, t0 + PARK_AFTER, true), Sweep::AskToPark);
        assert_eq!(sweep(&idle, t0 + PARK_AFTER, false), Sweep::Keep, "no set");
        let asked = SlotTimes {
            park_requested: true,
            ..idle
        };
        assert_eq!(sweep(&asked, t0 + PARK_AFTER, true), Sweep::Keep);
        let body = slot(ConnState::Body, t0 + secs(60), t0);
        assert_eq!(
            sweep(&body, t0 + secs(5), true),
            Sweep::Keep,
            "only idle parks"
        );
    }
}
