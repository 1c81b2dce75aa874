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
//! [`Metrics`] formats into a reused packet buffer and never allocates once warm; sending
//! a full packet is the caller's (`send` closure), so this module does no I/O. The worker
//! sends with a non-blocking UDP socket: a send that fails (nothing listening, buffer
//! full) is counted and dropped, never waited for.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::handler::{Handled, Route};
use crate::http::Status;

/// StatsD settings, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    pub prefix: String,
    pub sample_rate: f64,
    pub max_packet: usize,
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
    pub stats: MetricStats,
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

    /// Sends the packet being filled, if any.
    pub fn flush(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
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
        match self.socket.send(packet) {
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
        }
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
