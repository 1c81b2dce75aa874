//! StatsD metrics: the original service's three metrics, sampled, batched into datagrams.
//!
//! Per `/v1/leftpad` request (names as in the original, `leftpad` being `--statsd-prefix`):
//!
//! ```text
//! leftpad.request.leftpad.timing:0.012|ms|@0.5   handling time in ms, plain decimal
//! leftpad.request.leftpad.count:1|c|@0.5
//! leftpad.request.str.len:4|h|@0.5               length of `str` in characters (200s only)
//! ```
//!
//! plus `leftpad.response.status.<code>:1|c` for every answer that is not a 200 (errors
//! on any route). Each event is kept with probability `--statsd-sample-rate` and a kept
//! line says `|@rate` (when rate < 1) so the server scales it back. Lines are joined with
//! `\n` into datagrams of at most `--statsd-max-packet` bytes.
//!
//! With `--statsd-aggregate on` (the default), as the DogStatsD clients do, counters are
//! summed per worker and flush interval and sent once per flush, exact whatever the
//! sample rate (`leftpad.request.leftpad.count:1234|c`), and the sampled timing and
//! `str.len` values of one metric are packed into multi-value lines the Etsy daemon
//! parses (`leftpad.request.leftpad.timing:0.012|ms|@0.5:0.015|ms|@0.5`), each at most
//! one packet long: about a fifth of the bytes per request, so far fewer datagrams.
//!
//! [`Metrics`] formats into a reused packet buffer and never allocates once warm; sending
//! a full packet is the caller's (`send` closure), so this module does no I/O. The worker
//! sends with a non-blocking UDP socket: a send that fails (nothing listening, buffer
//! full) is counted and dropped, never waited for.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::handler::{Handled, Route};
use crate::http::Status;
use crate::stats::CODES;

/// StatsD settings, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    pub prefix: String,
    pub sample_rate: f64,
    pub max_packet: usize,
    /// Client-side aggregation (`--statsd-aggregate`).
    pub aggregate: bool,
}

/// Replaces what would break the StatsD line format (`:`, `|`, `@`, and control
/// characters and spaces) with `_`, as the original did for `:`, `|` and `@`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            ':' | '|' | '@' => '_',
            c if c.is_control() || c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// Appends `micros` as milliseconds in plain decimal: `0.012`, `15.000`, never `1e-5`.
pub fn write_millis(out: &mut Vec<u8>, micros: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let frac = (micros % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Counters of one worker's StatsD client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricStats {
    pub lines: u64,
    pub packets: u64,
    pub send_errors: u64,
}

/// One worker's metric formatter, sampler and packet batcher.
pub struct Metrics {
    /// `<prefix>.request.leftpad.timing:` and the other line heads, built once.
    timing_head: Vec<u8>,
    count_line: Vec<u8>,
    str_len_head: Vec<u8>,
    status_head: Vec<u8>,
    /// `|@0.5` (empty at rate 1).
    rate_tag: Vec<u8>,
    /// Keep an event when a random u64 is below this; `None` keeps everything (rate 1).
    keep_below: Option<u64>,
    rng: fastrand::Rng,
    max_packet: usize,
    /// The datagram being filled; lines are formatted straight into it.
    packet: Vec<u8>,
    /// A line that overflowed the packet, waiting for the next one.
    line: Vec<u8>,
    /// With aggregation: what this flush interval has summed and packed so far.
    aggregate: Option<Aggregate>,
    pub stats: MetricStats,
}

/// One flush interval's aggregated metrics, in buffers sized at start-up.
struct Aggregate {
    leftpad_requests: u64,
    /// Answers that were not a 200, by status ([`CODES`] order).
    statuses: [u64; CODES.len()],
    /// Multi-value lines being filled: the metric's name, then `:value|type|@rate`s.
    timings: Vec<u8>,
    str_lens: Vec<u8>,
    /// Where each line's values start (after the name).
    timing_name_len: usize,
    str_len_name_len: usize,
    /// One value being formatted.
    value: Vec<u8>,
}

/// Which multi-value line a sampled value goes to.
#[derive(Clone, Copy)]
enum Packed {
    Timing,
    StrLen,
}

/// Which line head [`Metrics::start_line`] writes.
#[derive(Clone, Copy)]
enum Head {
    Timing,
    /// The whole count line, rate tag included.
    Count,
    StrLen,
    Status,
}

impl Metrics {
    pub fn new(settings: &Settings, seed: u64) -> Metrics {
        let prefix = sanitize(&settings.prefix);
        let head = |name: &str| format!("{prefix}.{name}").into_bytes();
        let rate = settings.sample_rate;
        let rate_tag = if rate < 1.0 {
            let mut tag = b"|@".to_vec();
            tag.extend_from_slice(ryu::Buffer::new().format_finite(rate).as_bytes());
            tag
        } else {
            Vec::new()
        };
        let mut count_line = head("request.leftpad.count:1|c");
        count_line.extend_from_slice(&rate_tag);
        let timing_head = head("request.leftpad.timing:");
        // The longest head plus a value (at most 24 bytes: `<u64 / 1000>.xxx|ms`), a
        // separator and the tag: what the packet may briefly hold past the limit.
        let longest_line = timing_head.len().max(count_line.len()) + 32 + rate_tag.len();
        Metrics {
            timing_head,
            count_line,
            str_len_head: head("request.str.len:"),
            status_head: head("response.status."),
            rate_tag,
            keep_below: (rate < 1.0).then_some((rate * u64::MAX as f64) as u64),
            rng: fastrand::Rng::with_seed(seed),
            max_packet: settings.max_packet,
            packet: Vec::with_capacity(settings.max_packet + longest_line),
            line: Vec::with_capacity(longest_line),
            aggregate: settings.aggregate.then(|| {
                let line = |name: &str| {
                    let mut line = Vec::with_capacity(settings.max_packet + longest_line);
                    line.extend_from_slice(head(name).as_slice());
                    line
                };
                let timings = line("request.leftpad.timing");
                let str_lens = line("request.str.len");
                Aggregate {
                    leftpad_requests: 0,
                    statuses: [0; CODES.len()],
                    timing_name_len: timings.len(),
                    str_len_name_len: str_lens.len(),
                    timings,
                    str_lens,
                    value: Vec::with_capacity(longest_line),
                }
            }),
            stats: MetricStats::default(),
        }
    }

    fn keep(&mut self) -> bool {
        match self.keep_below {
            None => true,
            Some(below) => self.rng.u64(..) < below,
        }
    }

    /// Records the metrics of one answered request, sending packets that fill up.
    pub fn record(
        &mut self,
        status: Status,
        handled: Handled,
        micros: u64,
        send: &mut impl FnMut(&[u8]) -> bool,
    ) {
        if self.aggregate.is_some() {
            self.aggregate(status, handled, micros, send);
            return;
        }
        if handled.route == Route::Leftpad {
            if self.keep() {
                let at = self.start_line(Head::Timing);
                write_millis(&mut self.packet, micros);
                self.packet.extend_from_slice(b"|ms");
                self.end_line(at, true, send);
            }
            if self.keep() {
                let at = self.start_line(Head::Count);
                self.end_line(at, false, send);
            }
            if let Some(chars) = handled.str_chars {
                if self.keep() {
                    let at = self.start_line(Head::StrLen);
                    let mut digits = itoa::Buffer::new();
                    self.packet
                        .extend_from_slice(digits.format(chars).as_bytes());
                    self.packet.extend_from_slice(b"|h");
                    self.end_line(at, true, send);
                }
            }
        }
        if status.0 != 200 && self.keep() {
            let at = self.start_line(Head::Status);
            let mut digits = itoa::Buffer::new();
            self.packet
                .extend_from_slice(digits.format(status.0).as_bytes());
            self.packet.extend_from_slice(b":1|c");
            self.end_line(at, true, send);
        }
    }

    /// Starts a line straight in the packet (after a `\n` if it is not the first);
    /// returns where the packet ended before it.
    fn start_line(&mut self, head: Head) -> usize {
        let at = self.packet.len();
        if at > 0 {
            self.packet.push(b'\n');
        }
        let head = match head {
            Head::Timing => &self.timing_head,
            Head::Count => &self.count_line,
            Head::StrLen => &self.str_len_head,
            Head::Status => &self.status_head,
        };
        self.packet.extend_from_slice(head);
        at
    }

    /// Finishes the line begun at `at` (adding the rate tag if asked). A line that made
    /// the packet too long moves to a new packet once the full one is sent; the move
    /// costs a copy, once per packet.
    fn end_line(&mut self, at: usize, tag: bool, send: &mut impl FnMut(&[u8]) -> bool) {
        if tag {
            self.packet.extend_from_slice(&self.rate_tag);
        }
        if self.packet.len() > self.max_packet {
            let line_start = if at > 0 { at + 1 } else { at };
            self.line.clear();
            self.line.extend_from_slice(&self.packet[line_start..]);
            self.packet.truncate(at);
            if self.line.len() > self.max_packet {
                return; // cannot fit in any packet (a very long prefix); never sent
            }
            self.flush(send);
            self.packet.extend_from_slice(&self.line);
        }
        self.stats.lines += 1;
    }

    /// Aggregated mode: counts, and packs the sampled values into their lines.
    fn aggregate(
        &mut self,
        status: Status,
        handled: Handled,
        micros: u64,
        send: &mut impl FnMut(&[u8]) -> bool,
    ) {
        let keep_timing = handled.route == Route::Leftpad && self.keep();
        let keep_str_len = handled.str_chars.is_some() && self.keep();
        let Some(aggregate) = &mut self.aggregate else {
            return;
        };
        if handled.route == Route::Leftpad {
            aggregate.leftpad_requests += 1;
        }
        if status.0 != 200 {
            let code = CODES.iter().position(|&c| c == status.0).unwrap_or(9); // 500
            aggregate.statuses[code] += 1;
        }
        if keep_timing {
            aggregate.value.clear();
            aggregate.value.push(b':');
            write_millis(&mut aggregate.value, micros);
            aggregate.value.extend_from_slice(b"|ms");
            aggregate.value.extend_from_slice(&self.rate_tag);
            self.pack(Packed::Timing, send);
        }
        if let (true, Some(chars), Some(aggregate)) =
            (keep_str_len, handled.str_chars, &mut self.aggregate)
        {
            aggregate.value.clear();
            aggregate.value.push(b':');
            aggregate
                .value
                .extend_from_slice(itoa::Buffer::new().format(chars).as_bytes());
            aggregate.value.extend_from_slice(b"|h");
            aggregate.value.extend_from_slice(&self.rate_tag);
            self.pack(Packed::StrLen, send);
        }
    }

    /// Appends the formatted value to its multi-value line; a line that would pass
    /// `--statsd-max-packet` goes out first, whole.
    fn pack(&mut self, which: Packed, send: &mut impl FnMut(&[u8]) -> bool) {
        let Some(aggregate) = &mut self.aggregate else {
            return;
        };
        let (line, name_len) = match which {
            Packed::Timing => (&mut aggregate.timings, aggregate.timing_name_len),
            Packed::StrLen => (&mut aggregate.str_lens, aggregate.str_len_name_len),
        };
        if line.len() + aggregate.value.len() > self.max_packet && line.len() > name_len {
            // The line is full: it becomes (at most) one packet of its own.
            self.line.clear();
            self.line.extend_from_slice(line);
            line.truncate(name_len);
            self.push_own_line(send);
        }
        let Some(aggregate) = &mut self.aggregate else {
            return;
        };
        let line = match which {
            Packed::Timing => &mut aggregate.timings,
            Packed::StrLen => &mut aggregate.str_lens,
        };
        line.extend_from_slice(&aggregate.value);
    }

    /// Adds a whole line to the packet, sending the packet first if the line would not
    /// fit.
    fn push_line(
        packet: &mut Vec<u8>,
        line: &[u8],
        max_packet: usize,
        stats: &mut MetricStats,
        send: &mut impl FnMut(&[u8]) -> bool,
    ) {
        if !packet.is_empty() && packet.len() + 1 + line.len() > max_packet {
            Self::send_packet(packet, stats, send);
        }
        if !packet.is_empty() {
            packet.push(b'\n');
        }
        packet.extend_from_slice(line);
        stats.lines += 1;
    }

    /// [`Metrics::push_line`] of the line built in `self.line`.
    fn push_own_line(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
        Self::push_line(
            &mut self.packet,
            &self.line,
            self.max_packet,
            &mut self.stats,
            send,
        );
    }

    fn send_packet(
        packet: &mut Vec<u8>,
        stats: &mut MetricStats,
        send: &mut impl FnMut(&[u8]) -> bool,
    ) {
        if packet.is_empty() {
            return;
        }
        if send(packet) {
            stats.packets += 1;
        } else {
            stats.send_errors += 1;
        }
        packet.clear();
    }

    /// Aggregated mode: the interval's counters (exact: no sample rate) and the values
    /// packed so far, into the packet; the interval starts over.
    fn emit_aggregates(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
        let Some(aggregate) = &mut self.aggregate else {
            return;
        };
        // A counter line: `name` (ending in `:`) and the interval's sum.
        let counter = |line: &mut Vec<u8>, name: &[&[u8]], count: u64| {
            line.clear();
            for part in name {
                line.extend_from_slice(part);
            }
            line.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
            line.extend_from_slice(b"|c");
        };
        if aggregate.leftpad_requests > 0 {
            // `count_line` is `<prefix>.request.leftpad.count:1|c[rate]`: its name part.
            let name_end = self.count_line.len() - self.rate_tag.len() - "1|c".len();
            let name = &self.count_line[..name_end];
            counter(&mut self.line, &[name], aggregate.leftpad_requests);
            aggregate.leftpad_requests = 0;
            Self::push_line(
                &mut self.packet,
                &self.line,
                self.max_packet,
                &mut self.stats,
                send,
            );
        }
        for (code, count) in CODES.iter().zip(aggregate.statuses.iter_mut()) {
            if *count > 0 {
                let mut digits = itoa::Buffer::new();
                let code = digits.format(*code).as_bytes();
                counter(&mut self.line, &[&self.status_head, code, b":"], *count);
                *count = 0;
                Self::push_line(
                    &mut self.packet,
                    &self.line,
                    self.max_packet,
                    &mut self.stats,
                    send,
                );
            }
        }
        for (line, name_len) in [
            (&mut aggregate.timings, aggregate.timing_name_len),
            (&mut aggregate.str_lens, aggregate.str_len_name_len),
        ] {
            if line.len() > name_len {
                Self::push_line(
                    &mut self.packet,
                    line,
                    self.max_packet,
                    &mut self.stats,
                    send,
                );
                line.truncate(name_len);
            }
        }
    }

    /// Sends what is pending: in aggregated mode the interval's metrics first, then the
    /// packet being filled, if any.
    pub fn flush(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
        self.emit_aggregates(send);
        if self.packet.is_empty() {
            return;
        }
        if send(&self.packet) {
            self.stats.packets += 1;
        } else {
            self.stats.send_errors += 1;
        }
        self.packet.clear();
    }
}

/// A worker's UDP socket to the StatsD server: connected, non-blocking.
pub struct Client {
    socket: UdpSocket,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Client { socket })
    }

    /// Sends one datagram; false if it was not sent (refused, buffer full, ...).
    pub fn send(&self, packet: &[u8]) -> bool {
        let sent = match self.socket.send(packet) {
            // A connected UDP socket reports the ICMP "port unreachable" of an earlier
            // datagram on the next send, which then fails without sending: after the
            // StatsD server comes back, that would lose the first datagram (a whole
            // flush interval's counters). The error is about the past: send again, once.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => self.socket.send(packet),
            other => other,
        };
        match sent {
            Ok(n) => n == packet.len(),
            Err(e) => {
                // A blocking client would have waited here: show it in the block profile.
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    crate::profile::block::would_block();
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: f64, max_packet: usize) -> Settings {
        Settings {
            addr: "127.0.0.1:8125".parse().unwrap(),
            prefix: "leftpad".into(),
            sample_rate: rate,
            max_packet,
            aggregate: false,
        }
    }

    fn aggregated(rate: f64, max_packet: usize) -> Settings {
        Settings {
            aggregate: true,
            ..settings(rate, max_packet)
        }
    }

    #[test]
    fn aggregation_sums_counters_and_packs_values() {
        let mut m = Metrics::new(&aggregated(1.0, 1432), 1);
        let mut answers = vec![(record(200, true, Some(4)), 12); 3];
        answers.push((record(404, false, None), 1));
        answers.push((record(404, false, None), 1));
        answers.push((record(400, true, None), 1500));
        let sent = packets(&mut m, &answers);
        assert_eq!(
            sent,
            ["leftpad.request.leftpad.count:4|c\n\
              leftpad.response.status.400:1|c\n\
              leftpad.response.status.404:2|c\n\
              leftpad.request.leftpad.timing:0.012|ms:0.012|ms:0.012|ms:1.500|ms\n\
              leftpad.request.str.len:4|h:4|h:4|h"]
        );
        // The interval starts over: nothing more to send.
        assert_eq!(packets(&mut m, &[]), Vec::<String>::new());
    }

    #[test]
    fn aggregated_lines_never_pass_the_packet_bound() {
        let mut m = Metrics::new(&aggregated(0.5, 200), 7);
        let answers = vec![(record(200, true, Some(123)), 4567); 2000];
        let sent = packets(&mut m, &answers);
        assert!(sent.iter().all(|p| p.len() <= 200), "{sent:?}");
        let lines: Vec<&str> = sent.iter().flat_map(|p| p.split('\n')).collect();
        // The counter is exact (no rate), once; values carry the rate.
        let counts: Vec<&&str> = lines.iter().filter(|l| l.contains(".count:")).collect();
        assert_eq!(counts, [&"leftpad.request.leftpad.count:2000|c"]);
        let timings: usize = lines
            .iter()
            .filter(|l| l.starts_with("leftpad.request.leftpad.timing:"))
            .map(|l| l.matches("|ms|@0.5").count())
            .sum();
        // Binomial(2000, 0.5): mean 1000, sd 22.4; allow 5 sd.
        assert!((888..=1112).contains(&timings), "{timings}");
    }

    /// An answer as the metrics see it: status and what the handler did.
    type Answer = (Status, Handled);

    fn record(status: u16, leftpad: bool, str_chars: Option<u32>) -> Answer {
        let route = if leftpad {
            Route::Leftpad
        } else {
            Route::Other
        };
        (Status(status), Handled { route, str_chars })
    }

    /// Records `records` and flushes; returns the packets sent.
    fn packets(metrics: &mut Metrics, records: &[(Answer, u64)]) -> Vec<String> {
        let mut sent = Vec::new();
        let mut send = |p: &[u8]| {
            sent.push(String::from_utf8(p.to_vec()).unwrap());
            true
        };
        for ((status, handled), micros) in records {
            metrics.record(*status, *handled, *micros, &mut send);
        }
        metrics.flush(&mut send);
        sent
    }

    #[test]
    fn the_original_metrics_at_rate_1() {
        let mut m = Metrics::new(&settings(1.0, 1432), 1);
        let sent = packets(&mut m, &[(record(200, true, Some(4)), 12)]);
        assert_eq!(
            sent,
            ["leftpad.request.leftpad.timing:0.012|ms\nleftpad.request.leftpad.count:1|c\nleftpad.request.str.len:4|h"]
        );
        assert_eq!(
            m.stats,
            MetricStats {
                lines: 3,
                packets: 1,
                send_errors: 0
            }
        );
    }

    #[test]
    fn errors_count_by_status_and_other_routes_only_errors() {
        let mut m = Metrics::new(&settings(1.0, 1432), 1);
        let sent = packets(
            &mut m,
            &[
                (record(400, true, None), 1_500),
                (record(200, false, None), 1),
                (record(404, false, None), 1),
            ],
        );
        assert_eq!(
            sent,
            [
                "leftpad.request.leftpad.timing:1.500|ms\nleftpad.request.leftpad.count:1|c\n\
              leftpad.response.status.400:1|c\nleftpad.response.status.404:1|c"
            ]
        );
    }

    #[test]
    fn sampled_lines_carry_the_rate() {
        let mut m = Metrics::new(&settings(0.5, 100_000), 7);
        let records: Vec<_> = (0..2000).map(|_| (record(200, true, Some(3)), 5)).collect();
        let sent = packets(&mut m, &records);
        let lines: Vec<&str> = sent.iter().flat_map(|p| p.split('\n')).collect();
        assert!(
            lines.iter().all(|l| l.ends_with("|@0.5")),
            "{:?}",
            &lines[..3]
        );
        // 6000 events at p = 0.5: mean 3000, sd ~39; allow 5 sd.
        assert!((2800..=3200).contains(&lines.len()), "{}", lines.len());
    }

    #[test]
    fn packets_never_exceed_the_limit_and_split_on_lines() {
        let mut m = Metrics::new(&settings(1.0, 120), 1);
        let records: Vec<_> = (0..50)
            .map(|i| (record(200, true, Some(i)), i as u64 * 977))
            .collect();
        let sent = packets(&mut m, &records);
        assert!(sent.len() > 10);
        assert!(sent
            .iter()
            .all(|p| p.len() <= 120 && !p.starts_with('\n') && !p.ends_with('\n')));
        assert_eq!(
            sent.iter().map(|p| p.split('\n').count()).sum::<usize>(),
            150
        );
    }

    #[test]
    fn a_line_longer_than_any_packet_is_dropped_alone() {
        let long = Settings {
            prefix: "p".repeat(100),
            ..settings(1.0, 140)
        };
        let mut m = Metrics::new(&long, 1);
        // Each line (120 to 132 bytes) fits a packet alone, never beside another.
        let sent = packets(
            &mut m,
            &[
                (record(200, true, Some(4)), 12),
                (record(404, false, None), 1),
            ],
        );
        assert!(sent.iter().all(|p| p.len() <= 140), "{sent:?}");
        assert_eq!(sent.len(), 4, "{sent:?}");
        let mut tiny = Metrics::new(&long, 1);
        assert_eq!(
            packets(&mut tiny, &[(record(200, true, Some(4)), 12)]).len(),
            3
        );
        let mut none = Metrics::new(
            &Settings {
                max_packet: 50,
                ..long
            },
            1,
        );
        assert!(packets(&mut none, &[(record(200, true, Some(4)), 12)]).is_empty());
        assert_eq!(none.stats.lines, 0);
    }

    #[test]
    fn failed_sends_are_counted() {
        let mut m = Metrics::new(&settings(1.0, 1432), 1);
        let (status, handled) = record(200, true, Some(1));
        m.record(status, handled, 1, &mut |_| false);
        m.flush(&mut |_| false);
        assert_eq!(m.stats.send_errors, 1);
        assert_eq!(m.stats.packets, 0);
    }

    #[test]
    fn millis_are_plain_decimal() {
        for (micros, text) in [
            (0, "0.000"),
            (1, "0.001"),
            (12, "0.012"),
            (999, "0.999"),
            (1000, "1.000"),
            (123_456_789, "123456.789"),
        ] {
            let mut out = Vec::new();
            write_millis(&mut out, micros);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("my:app|x@y z\n"), "my_app_x_y_z_");
        let mut m = Metrics::new(
            &Settings {
                prefix: "a:b".into(),
                ..settings(1.0, 1432)
            },
            1,
        );
        assert!(packets(&mut m, &[(record(200, true, None), 1)])[0].starts_with("a_b.request"));
    }
}
