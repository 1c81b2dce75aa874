//! Where a worker's P is idle: its thread's context switches, merged into its events.
//!
//! A worker blocks only in its ring's wait (`io_uring_enter`, or `epoll_wait`), so each
//! time its thread switches out of its own accord while none of its goroutines runs, its
//! P stops (`ProcStop`), and it starts again when the thread switches back in
//! (`ProcStart`). The connections whose operations completed in that wait became
//! runnable then: their `GoUnblock`s, recorded when each task was polled, move to the
//! wake-up, as Go's network poller unblocks its goroutines, so the time from a wake-up to
//! a task's poll is its scheduling latency (`go tool trace -pprof=sched`). Pure: events
//! and switches in, events out.

use std::collections::HashMap;

use super::format::{Event, EventBuf, Kind, StackId};
use crate::profile::perf::{Switch, SwitchKind};

/// A worker's switches, and what the merge needs to place them.
pub(super) struct Waits<'a> {
    /// In the order the kernel recorded them.
    pub(super) switches: &'a [Switch],
    /// The trace's start in CLOCK_MONOTONIC nanoseconds (the switches' clock).
    pub(super) epoch_mono: u64,
    pub(super) os_thread: u64,
    /// The stack of a wake-up's `GoUnblock`s (the worker's loop).
    pub(super) wake: StackId,
}

/// What goes in before an event: the P stops, or the P starts and unblocks goroutines.
enum Insertion {
    Stop(u64),
    Start { at: u64, unblocked: Vec<usize> },
}

/// `events` with the P's stops and starts from `waits`, and each `GoUnblock` moved to the
/// wake-up that made its goroutine runnable (when that goroutine blocked before it).
pub(super) fn with_waits(events: &EventBuf, waits: &Waits<'_>) -> EventBuf {
    let recorded = events.events();
    let (insertions, moved) = plan(recorded, waits);
    let mut merged = EventBuf::with_capacity(recorded.len() + 2 * insertions.len() + 1);
    let mut next = insertions.into_iter().peekable();
    for (i, event) in recorded.iter().enumerate() {
        while let Some((_, insertion)) = next.next_if(|(before, _)| *before == i) {
            match insertion {
                Insertion::Stop(at) => {
                    merged.push(Event::proc_stop(at));
                }
                Insertion::Start { at, unblocked } => {
                    merged.push(Event::proc_start(at, waits.os_thread));
                    for u in unblocked {
                        let g = recorded[u].goroutine();
                        merged.push(Event::go_unblock(at, g, waits.wake));
                    }
                }
            }
        }
        if !moved[i] {
            merged.push(*event);
        }
    }
    merged.count_lost(events.lost());
    merged
}

/// Whether the P is stopped after the last of `events`.
pub(super) fn ends_stopped(events: &EventBuf) -> bool {
    events
        .events()
        .iter()
        .rev()
        .find_map(|e| match e.kind() {
            Kind::ProcStop => Some(true),
            Kind::ProcStart => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// Where the P stops and starts (before which event), and which `GoUnblock`s move to
/// their wake-up.
fn plan(recorded: &[Event], waits: &Waits<'_>) -> (Vec<(usize, Insertion)>, Vec<bool>) {
    let switches: Vec<(u64, SwitchKind)> = waits
        .switches
        .iter()
        .filter(|s| s.at >= waits.epoch_mono)
        .map(|s| (s.at - waits.epoch_mono + 1, s.kind))
        .collect();
    let mut next_switch = 0;
    let mut insertions: Vec<(usize, Insertion)> = Vec::new();
    let mut moved = vec![false; recorded.len()];
    let mut running: Option<u64> = None;
    let mut idle = false;
    // When each goroutine last blocked, and when the current wake-up began.
    let mut blocked_at: HashMap<u64, u64> = HashMap::new();
    let mut wake: Option<u64> = None;
    for (i, event) in recorded.iter().enumerate() {
        while let Some(&(at, kind)) = switches.get(next_switch).filter(|(at, _)| *at <= event.ts) {
            next_switch += 1;
            match kind {
                SwitchKind::Out if running.is_none() && !idle => {
                    insertions.push((i, Insertion::Stop(at)));
                    idle = true;
                }
                SwitchKind::In if idle => {
                    insertions.push((
                        i,
                        Insertion::Start {
                            at,
                            unblocked: Vec::new(),
                        },
                    ));
                    idle = false;
                    wake = Some(at);
                }
                _ => {}
            }
        }
        if idle {
            // The thread ran with no switch-in seen (one the ring dropped): start here.
            insertions.push((
                i,
                Insertion::Start {
                    at: event.ts,
                    unblocked: Vec::new(),
                },
            ));
            idle = false;
            wake = None;
        }
        match event.kind() {
            Kind::GoStart => running = Some(event.goroutine()),
            Kind::GoBlockNet => {
                if let Some(g) = running.take() {
                    blocked_at.insert(g, event.ts);
                }
            }
            Kind::GoEnd
            | Kind::GoSched
            | Kind::GoStop
            | Kind::GoBlock
            | Kind::GoBlockRecv
            | Kind::GoSleep
            | Kind::GoSysBlock => running = None,
            Kind::GoUnblock => {
                let g = event.goroutine();
                let blocked_before_wake =
                    wake.is_some_and(|w| blocked_at.get(&g).is_some_and(|&b| b < w));
                if let (true, Some((_, Insertion::Start { unblocked, .. }))) =
                    (blocked_before_wake, insertions.last_mut())
                {
                    unblocked.push(i);
                    moved[i] = true;
                }
            }
            _ => {}
        }
    }
    (insertions, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAKE: StackId = StackId::NONE;

    fn kinds(buf: &EventBuf) -> Vec<(Kind, u64)> {
        buf.events().iter().map(|e| (e.kind(), e.ts)).collect()
    }

    fn buf(events: &[Event]) -> EventBuf {
        let mut buf = EventBuf::with_capacity(events.len());
        for &e in events {
            buf.push(e);
        }
        buf
    }

    fn switch(at: u64, kind: SwitchKind) -> Switch {
        Switch { at, kind }
    }

    /// `events` of OS thread 7 with `switches`, the trace starting at 1000 on the
    /// kernel's clock (so a switch at 1030 is at trace time 31).
    fn merge(events: &EventBuf, switches: &[Switch]) -> EventBuf {
        let waits = Waits {
            switches,
            epoch_mono: 1000,
            os_thread: 7,
            wake: WAKE,
        };
        with_waits(events, &waits)
    }

    #[test]
    fn a_wait_between_polls_stops_the_p_and_the_wake_up_unblocks() {
        let events = buf(&[
            Event::proc_start(1, 7),
            Event::go_start(10, 5),
            Event::go_block_net(20, StackId::NONE),
            // Polled at 60 after the wait that ended at 50.
            Event::go_unblock(60, 5, StackId::NONE),
            Event::go_start(61, 5),
        ]);
        // Epoch 1000 in the kernel's clock: switches at trace times 31 and 51.
        let switches = [switch(1030, SwitchKind::Out), switch(1050, SwitchKind::In)];
        let merged = merge(&events, &switches);
        assert_eq!(
            kinds(&merged),
            [
                (Kind::ProcStart, 1),
                (Kind::GoStart, 10),
                (Kind::GoBlockNet, 20),
                (Kind::ProcStop, 31),
                (Kind::ProcStart, 51),
                (Kind::GoUnblock, 51),
                (Kind::GoStart, 61),
            ]
        );
    }

    #[test]
    fn switches_while_a_goroutine_runs_or_preempted_leave_the_p_running() {
        let events = buf(&[
            Event::proc_start(1, 7),
            Event::go_start(10, 5),
            Event::go_block_net(40, StackId::NONE),
        ]);
        let switches = [
            switch(1019, SwitchKind::Out),
            switch(1024, SwitchKind::In),
            switch(1029, SwitchKind::Preempted),
            switch(1034, SwitchKind::In),
        ];
        let merged = merge(&events, &switches);
        assert_eq!(
            kinds(&merged),
            [
                (Kind::ProcStart, 1),
                (Kind::GoStart, 10),
                (Kind::GoBlockNet, 40)
            ]
        );
    }

    #[test]
    fn an_unblock_of_a_goroutine_blocked_in_the_same_wake_up_stays() {
        let events = buf(&[
            Event::proc_start(1, 7),
            Event::go_start(60, 5),
            Event::go_block_net(70, StackId::NONE),
            Event::go_unblock(80, 5, StackId::NONE),
            Event::go_start(81, 5),
        ]);
        let switches = [switch(1030, SwitchKind::Out), switch(1050, SwitchKind::In)];
        let merged = merge(&events, &switches);
        // The P was idle from 31 (no goroutine ran) and woke at 51; goroutine 5 blocked
        // at 70, after that wake-up: its unblock stays where it was recorded.
        assert_eq!(
            kinds(&merged),
            [
                (Kind::ProcStart, 1),
                (Kind::ProcStop, 31),
                (Kind::ProcStart, 51),
                (Kind::GoStart, 60),
                (Kind::GoBlockNet, 70),
                (Kind::GoUnblock, 80),
                (Kind::GoStart, 81),
            ]
        );
    }
}
