//! One worker's StatsD lines: formatted, sampled, aggregated and packed into datagrams
//! of at most `--statsd-max-packet` bytes. Pure: a full packet goes to the caller's
//! `send` closure.

use crate::app::handler::{Handled, Route};
use crate::http::Status;
use crate::telemetry::counters::{code_index, CODES};

use super::Settings;

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

/// What one worker's batcher has sent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub lines: u64,
    pub packets: u64,
    pub send_errors: u64,
}

/// The datagram being filled, and the tally of what was sent.
struct Packet {
    buf: Vec<u8>,
    max: usize,
    tally: Tally,
}

impl Packet {
    /// Adds a whole line, sending the packet first if the line would not fit.
    fn push_line(&mut self, line: &[u8], send: &mut impl FnMut(&[u8]) -> bool) {
        if !self.buf.is_empty() && self.buf.len() + 1 + line.len() > self.max {
            self.send(send);
        }
        if !self.buf.is_empty() {
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(line);
        self.tally.lines += 1;
    }

    /// Sends the packet, if it holds anything, and starts a new one.
    fn send(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
        if self.buf.is_empty() {
            return;
        }
        if send(&self.buf) {
            self.tally.packets += 1;
        } else {
            self.tally.send_errors += 1;
        }
        self.buf.clear();
    }
}

/// One worker's metric formatter, sampler and packet batcher.
pub struct Batcher {
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
    /// Per-event mode formats lines straight into the packet.
    packet: Packet,
    /// A line being moved or built whole (an overflowing line, a counter line).
    line: Vec<u8>,
    /// With aggregation: what this flush interval has summed and packed so far.
    aggregate: Option<Aggregate>,
}

/// One flush interval's aggregated metrics, in buffers sized at start-up.
struct Aggregate {
    leftpad_requests: u64,
    /// Answers that were not a 200, by status ([`CODES`] order).
    statuses: [u64; CODES.len()],
    /// Multi-value lines being filled: the metric's name, then `:value|type|@rate`s.
    timings: MultiValue,
    str_lens: MultiValue,
    /// The last timing and `str` length values formatted, to pack again without
    /// formatting: requests pipelined in one read share their handling time, and most
    /// `str` lengths repeat.
    timing: FormattedValue,
    str_len: FormattedValue,
}

/// One `:value|type|@rate` packed value, formatted, and the number it was formatted from.
struct FormattedValue {
    of: Option<u64>,
    text: Vec<u8>,
}

impl FormattedValue {
    fn new(capacity: usize) -> FormattedValue {
        FormattedValue {
            of: None,
            text: Vec::with_capacity(capacity),
        }
    }

    /// The text for `number`, written by `format` unless it is the last one's.
    fn of(&mut self, number: u64, format: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        if self.of != Some(number) {
            self.of = Some(number);
            self.text.clear();
            format(&mut self.text);
        }
        &self.text
    }
}

/// A multi-value line: the metric's name, then its packed values.
struct MultiValue {
    line: Vec<u8>,
    /// Where the values start (after the name).
    name_len: usize,
}

impl MultiValue {
    fn new(name: Vec<u8>, capacity: usize) -> MultiValue {
        let mut line = Vec::with_capacity(capacity);
        line.extend_from_slice(&name);
        MultiValue {
            name_len: line.len(),
            line,
        }
    }

    fn has_values(&self) -> bool {
        self.line.len() > self.name_len
    }

    /// Moves the line into `packet` and starts over with the name alone.
    fn emit(&mut self, packet: &mut Packet, send: &mut impl FnMut(&[u8]) -> bool) {
        if self.has_values() {
            packet.push_line(&self.line, send);
            self.line.truncate(self.name_len);
        }
    }

    /// Appends `value`; a line that would pass `max_packet` goes out first, whole (at
    /// most one packet of its own).
    fn pack(&mut self, value: &[u8], packet: &mut Packet, send: &mut impl FnMut(&[u8]) -> bool) {
        if self.line.len() + value.len() > packet.max {
            self.emit(packet, send);
        }
        self.line.extend_from_slice(value);
    }
}

/// Which line head [`Batcher::start_line`] writes.
#[derive(Clone, Copy)]
enum Head {
    Timing,
    /// The whole count line, rate tag included.
    Count,
    StrLen,
    Status,
}

impl Batcher {
    pub fn new(settings: &Settings, seed: u64) -> Batcher {
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
        let max_packet = settings.max_packet;
        let aggregate = settings.aggregate.then(|| Aggregate {
            leftpad_requests: 0,
            statuses: [0; CODES.len()],
            timings: MultiValue::new(head("request.leftpad.timing"), max_packet + longest_line),
            str_lens: MultiValue::new(head("request.str.len"), max_packet + longest_line),
            timing: FormattedValue::new(longest_line),
            str_len: FormattedValue::new(longest_line),
        });
        Batcher {
            timing_head,
            count_line,
            str_len_head: head("request.str.len:"),
            status_head: head("response.status."),
            rate_tag,
            keep_below: (rate < 1.0).then_some((rate * u64::MAX as f64) as u64),
            rng: fastrand::Rng::with_seed(seed),
            packet: Packet {
                buf: Vec::with_capacity(max_packet + longest_line),
                max: max_packet,
                tally: Tally::default(),
            },
            line: Vec::with_capacity(longest_line),
            aggregate,
        }
    }

    /// What was sent so far.
    pub fn tally(&self) -> Tally {
        self.packet.tally
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
        } else {
            self.record_event(status, handled, micros, send);
        }
    }

    /// Per-event mode: each kept event is a line of its own.
    fn record_event(
        &mut self,
        status: Status,
        handled: Handled,
        micros: u64,
        send: &mut impl FnMut(&[u8]) -> bool,
    ) {
        if handled.route == Route::Leftpad {
            if self.keep() {
                let at = self.start_line(Head::Timing);
                write_millis(&mut self.packet.buf, micros);
                self.packet.buf.extend_from_slice(b"|ms");
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
                        .buf
                        .extend_from_slice(digits.format(chars).as_bytes());
                    self.packet.buf.extend_from_slice(b"|h");
                    self.end_line(at, true, send);
                }
            }
        }
        if status.0 != 200 && self.keep() {
            let at = self.start_line(Head::Status);
            let mut digits = itoa::Buffer::new();
            self.packet
                .buf
                .extend_from_slice(digits.format(status.0).as_bytes());
            self.packet.buf.extend_from_slice(b":1|c");
            self.end_line(at, true, send);
        }
    }

    /// Starts a line straight in the packet (after a `\n` if it is not the first);
    /// returns where the packet ended before it.
    fn start_line(&mut self, head: Head) -> usize {
        let buf = &mut self.packet.buf;
        let at = buf.len();
        if at > 0 {
            buf.push(b'\n');
        }
        let head = match head {
            Head::Timing => &self.timing_head,
            Head::Count => &self.count_line,
            Head::StrLen => &self.str_len_head,
            Head::Status => &self.status_head,
        };
        buf.extend_from_slice(head);
        at
    }

    /// Finishes the line begun at `at` (adding the rate tag if asked). A line that made
    /// the packet too long moves to a new packet once the full one is sent; the move
    /// costs a copy, once per packet.
    fn end_line(&mut self, at: usize, tag: bool, send: &mut impl FnMut(&[u8]) -> bool) {
        let packet = &mut self.packet;
        if tag {
            packet.buf.extend_from_slice(&self.rate_tag);
        }
        if packet.buf.len() > packet.max {
            let line_start = if at > 0 { at + 1 } else { at };
            self.line.clear();
            self.line.extend_from_slice(&packet.buf[line_start..]);
            packet.buf.truncate(at);
            if self.line.len() > packet.max {
                return; // cannot fit in any packet (a very long prefix); never sent
            }
            packet.send(send);
            packet.buf.extend_from_slice(&self.line);
        }
        packet.tally.lines += 1;
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
            aggregate.statuses[code_index(status.0)] += 1;
        }
        let rate_tag = &self.rate_tag;
        if keep_timing {
            let value = aggregate.timing.of(micros, |value| {
                value.push(b':');
                write_millis(value, micros);
                value.extend_from_slice(b"|ms");
                value.extend_from_slice(rate_tag);
            });
            aggregate.timings.pack(value, &mut self.packet, send);
        }
        if let (true, Some(chars)) = (keep_str_len, handled.str_chars) {
            let value = aggregate.str_len.of(u64::from(chars), |value| {
                value.push(b':');
                value.extend_from_slice(itoa::Buffer::new().format(chars).as_bytes());
                value.extend_from_slice(b"|h");
                value.extend_from_slice(rate_tag);
            });
            aggregate.str_lens.pack(value, &mut self.packet, send);
        }
    }

    /// Aggregated mode: the interval's counters (exact: no sample rate) and the values
    /// packed so far, into the packet; the interval starts over.
    fn emit_aggregates(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
        let Some(aggregate) = &mut self.aggregate else {
            return;
        };
        let line = &mut self.line;
        if aggregate.leftpad_requests > 0 {
            // `count_line` is `<prefix>.request.leftpad.count:1|c[rate]`: its name part.
            let name_end = self.count_line.len() - self.rate_tag.len() - "1|c".len();
            counter_line(
                line,
                &[&self.count_line[..name_end]],
                aggregate.leftpad_requests,
            );
            aggregate.leftpad_requests = 0;
            self.packet.push_line(line, send);
        }
        for (code, count) in CODES.iter().zip(aggregate.statuses.iter_mut()) {
            if *count > 0 {
                let mut digits = itoa::Buffer::new();
                let code = digits.format(*code).as_bytes();
                counter_line(line, &[&self.status_head, code, b":"], *count);
                *count = 0;
                self.packet.push_line(line, send);
            }
        }
        aggregate.timings.emit(&mut self.packet, send);
        aggregate.str_lens.emit(&mut self.packet, send);
    }

    /// Sends what is pending: in aggregated mode the interval's metrics first, then the
    /// packet being filled, if any.
    pub fn flush(&mut self, send: &mut impl FnMut(&[u8]) -> bool) {
        self.emit_aggregates(send);
        self.packet.send(send);
    }
}

/// Writes a counter line into `line`: `name` (its parts, ending in `:`) and the sum.
fn counter_line(line: &mut Vec<u8>, name: &[&[u8]], count: u64) {
    line.clear();
    for part in name {
        line.extend_from_slice(part);
    }
    line.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    line.extend_from_slice(b"|c");
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
        let mut m = Batcher::new(&aggregated(1.0, 1432), 1);
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
        let mut m = Batcher::new(&aggregated(0.5, 200), 7);
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
    fn packets(metrics: &mut Batcher, records: &[(Answer, u64)]) -> Vec<String> {
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
        let mut m = Batcher::new(&settings(1.0, 1432), 1);
        let sent = packets(&mut m, &[(record(200, true, Some(4)), 12)]);
        assert_eq!(
            sent,
            ["leftpad.request.leftpad.timing:0.012|ms\nleftpad.request.leftpad.count:1|c\nleftpad.request.str.len:4|h"]
        );
        assert_eq!(
            m.tally(),
            Tally {
                lines: 3,
                packets: 1,
                send_errors: 0
            }
        );
    }

    #[test]
    fn errors_count_by_status_and_other_routes_only_errors() {
        let mut m = Batcher::new(&settings(1.0, 1432), 1);
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
        let mut m = Batcher::new(&settings(0.5, 100_000), 7);
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
        let mut m = Batcher::new(&settings(1.0, 120), 1);
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
        let mut m = Batcher::new(&long, 1);
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
        let mut tiny = Batcher::new(&long, 1);
        assert_eq!(
            packets(&mut tiny, &[(record(200, true, Some(4)), 12)]).len(),
            3
        );
        let mut none = Batcher::new(
            &Settings {
                max_packet: 50,
                ..long
            },
            1,
        );
        assert!(packets(&mut none, &[(record(200, true, Some(4)), 12)]).is_empty());
        assert_eq!(none.tally().lines, 0);
    }

    #[test]
    fn failed_sends_are_counted() {
        let mut m = Batcher::new(&settings(1.0, 1432), 1);
        let (status, handled) = record(200, true, Some(1));
        m.record(status, handled, 1, &mut |_| false);
        m.flush(&mut |_| false);
        assert_eq!(m.tally().send_errors, 1);
        assert_eq!(m.tally().packets, 0);
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
        let mut m = Batcher::new(
            &Settings {
                prefix: "a:b".into(),
                ..settings(1.0, 1432)
            },
            1,
        );
        assert!(packets(&mut m, &[(record(200, true, None), 1)])[0].starts_with("a_b.request"));
    }
}
