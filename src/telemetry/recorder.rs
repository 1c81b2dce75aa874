//! A worker's recorder: after each batch of answers, one access-log line, the StatsD
//! lines and the counters of each answered request.
//!
//! The worker calls [`Recorder::record_batch`] with the records [`Conn::process`] made,
//! the input they point into, the peer and the batch's handling time. Handling time is
//! measured per batch (from the read that brought the bytes to the end of processing), so
//! requests pipelined in one read share it and the clock is read twice per read, not per
//! request.
//!
//! [`Conn::process`]: crate::http::conn::Conn::process

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::app::handler::Handled;
use crate::http::conn::Record;
use crate::telemetry::accesslog::{AccessLog, Line, LineTime};
use crate::telemetry::counters::{Scalar, WorkerCounters};
use crate::telemetry::statsd::Batcher;

/// Sends one StatsD datagram; false if it could not be sent. Called once per packet
/// (~30 lines), so the indirection costs nothing per request; benchmarks plug in a no-op.
pub type PacketSender = Box<dyn FnMut(&[u8]) -> bool>;

pub struct Recorder {
    pub log: Option<AccessLog>,
    pub statsd: Option<(Batcher, PacketSender)>,
    /// Filled by `Conn::process`, emptied by `record_batch`; reused.
    pub records: Vec<Record<Handled>>,
    /// The worker's counters.
    counters: &'static WorkerCounters,
    time: LineTime,
    clock: WallClock,
}

impl Recorder {
    pub fn new(
        log: Option<AccessLog>,
        statsd: Option<(Batcher, PacketSender)>,
        counters: &'static WorkerCounters,
    ) -> Recorder {
        Recorder {
            log,
            statsd,
            records: Vec::with_capacity(64),
            counters,
            time: LineTime::default(),
            clock: WallClock::new(),
        }
    }

    /// Logs and counts every record of the batch, then forgets them.
    pub fn record_batch(&mut self, input: &[u8], peer: &[u8], handling: Duration, now: Instant) {
        let micros = handling.as_micros() as u64;
        let unix_ms = self.clock.unix_ms(now);
        self.counters[Scalar::Requests].add(self.records.len() as u64);
        for record in &self.records {
            self.counters
                .answered(record.outcome.route, record.status.0, micros);
            if let Some(log) = &mut self.log {
                let line = Line {
                    target: record.target.get(input),
                    peer,
                    user_agent: record.user_agent.get(input),
                    status: record.status.0,
                    micros,
                };
                log.append(&mut self.time, unix_ms, &line);
            }
            if let Some((batcher, send)) = &mut self.statsd {
                batcher.record(record.status, record.outcome, micros, send);
            }
        }
        self.records.clear();
        if let Some(log) = &mut self.log {
            if log.is_full() {
                log.ship();
            }
        }
        self.publish_statsd_tally();
    }

    fn publish_statsd_tally(&self) {
        if let Some((batcher, _)) = &self.statsd {
            let tally = batcher.tally();
            self.counters[Scalar::StatsdLines].set(tally.lines);
            self.counters[Scalar::StatsdPackets].set(tally.packets);
            self.counters[Scalar::StatsdSendErrors].set(tally.send_errors);
        }
    }

    /// The periodic part: re-reads the wall clock, and writes out log lines and metrics
    /// when their flush intervals say so.
    pub fn tick(&mut self, now: Instant, flush_log: bool, flush_statsd: bool) {
        self.clock = WallClock::new_at(now);
        if let Some(log) = &mut self.log {
            if flush_log || log.reopen_pending() {
                log.ship();
            }
        }
        if flush_statsd {
            self.flush_statsd();
        }
    }

    pub fn flush_statsd(&mut self) {
        if let Some((batcher, send)) = &mut self.statsd {
            batcher.flush(send);
        }
        self.publish_statsd_tally();
    }

    /// Everything out, waiting for the log writer if need be (shutdown). The log's
    /// writer thread finishes once the returned log is dropped.
    pub fn finish(&mut self) -> Option<AccessLog> {
        self.flush_statsd();
        let mut log = self.log.take();
        if let Some(log) = &mut log {
            log.ship_all();
        }
        log
    }
}

/// Wall-clock milliseconds derived from the monotonic clock, re-anchored every tick, so a
/// batch costs one clock read (which the timeouts need anyway), not two.
struct WallClock {
    base_ms: u64,
    base: Instant,
}

impl WallClock {
    fn new() -> WallClock {
        WallClock::new_at(Instant::now())
    }

    fn new_at(now: Instant) -> WallClock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            base_ms: wall.as_millis() as u64,
            base: now,
        }
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        // In u64: `Duration::as_millis` divides a u128.
        let since = now.saturating_duration_since(self.base);
        self.base_ms + since.as_secs() * 1000 + u64::from(since.subsec_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_follows_the_monotonic_clock_from_its_anchor() {
        let anchor = Instant::now();
        let clock = WallClock::new_at(anchor);
        assert_eq!(clock.unix_ms(anchor), clock.base_ms);
        let later = anchor + Duration::new(3, 456_789_000);
        assert_eq!(clock.unix_ms(later), clock.base_ms + 3_456);
        // A reading from before the anchor (another connection's, taken earlier) does
        // not go back in time.
        if let Some(earlier) = anchor.checked_sub(Duration::from_millis(5)) {
            assert_eq!(clock.unix_ms(earlier), clock.base_ms);
        }
    }
}
