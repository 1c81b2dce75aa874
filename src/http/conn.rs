//! The per-connection state machine: framing, keep-alive and pipelining.
//!
//! The worker reads bytes into a buffer and calls [`Conn::process`], which answers every
//! complete request at the front of the buffer, in order, appending the responses to one
//! output buffer; the worker then writes that buffer with one write and drops the
//! consumed bytes. States:
//!
//! ```text
//!   Head ──complete head, no body──▶ Head
//!   Head ──complete head + body────▶ Body ──body discarded──▶ Head
//!   Head ──rejected / close / 100-continue with body──▶ Closed
//! ```
//!
//! `Closed` answers nothing more: bytes after a `Connection: close` request or after a
//! malformed head are ignored, and the worker closes once the output is written.

use super::request::{self, Limits, Method, Parsed, Request};
use super::response::{Connection, Response};
use super::Status;

/// What answers requests: the application, as far as this module knows it (the core is
/// generic over it, as hyper's `proto/h1` is over its service).
pub trait Service {
    /// What the service reports about each answer, kept in its [`Record`] for the layers
    /// above (metrics); the core only stores it.
    type Outcome: Copy + Default;

    /// Answers `request` by writing exactly one response.
    fn handle(&mut self, request: &Request<'_>, response: &mut Response<'_>) -> Self::Outcome;
}

/// Past this much output, `process` stops and lets the worker write before answering
/// more pipelined requests, so the output buffer stays bounded whatever the input.
pub const OUT_HIGH_WATER: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
    Closed,
}

#[derive(Debug)]
pub struct Conn {
    state: State,
    /// False once the server wants to close (a drain): the last request buffered in a
    /// batch is then answered with `Connection: close`.
    keep_alive: bool,
}

/// What one call of [`Conn::process`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of the input that are done with; the worker drops them.
    pub consumed: usize,
    /// Requests answered (responses appended to the output).
    pub answered: u32,
}

/// A run of bytes in the input given to [`Conn::process`] (empty: not known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// The span of `part`, a subslice of `input` (an empty `part` may be any slice, such
    /// as the `b""` of a missing header, and gives the empty span).
    fn of(input: &[u8], part: &[u8]) -> Span {
        if part.is_empty() {
            return Span::default();
        }
        let start = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
        assert!(start + part.len() <= input.len(), "span outside its input");
        Span {
            start: start as u32,
            len: part.len() as u32,
        }
    }

    pub fn get(self, input: &[u8]) -> &[u8] {
        let start = self.start as usize;
        &input[start..start + self.len as usize]
    }
}

/// One answered request, for the access log and the metrics. Spans point into the
/// input the request was parsed from, which the worker keeps until it has logged.
/// `outcome` is the service's report (its default for answers the core gave itself,
/// such as a 400 for a malformed head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<O> {
    pub target: Span,
    pub user_agent: Span,
    pub status: Status,
    pub outcome: O,
}

/// What the worker should read next, for choosing a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Between requests, nothing buffered: the idle timeout applies.
    Idle,
    /// Part of a request head is buffered: the header timeout applies.
    Head,
    /// In a request body.
    Body,
    /// Nothing more will be answered: write what is pending and close.
    Done,
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}

impl Conn {
    pub fn new() -> Conn {
        Conn {
            state: State::Head,
            keep_alive: true,
        }
    }

    /// From now on, the last request of each batch (no bytes buffered after it) is
    /// answered with `Connection: close` and ends the connection; requests pipelined
    /// before it are still answered in full. A client that sent a request as the server
    /// began to drain gets its answer and a clean close, not a cut connection.
    pub fn disable_keep_alive(&mut self) {
        self.keep_alive = false;
    }

    /// Answers the complete requests at the front of `input`, appending the responses to
    /// `out` and one [`Record`] per answer to `records`. Stops at a partial request, when
    /// `out` passes [`OUT_HIGH_WATER`], or when the connection must close
    /// ([`Conn::waiting`] is then [`Waiting::Done`]).
    pub fn process<S: Service>(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        records: &mut Vec<Record<S::Outcome>>,
        service: &mut S,
        limits: &Limits,
        date: &[u8; 29],
    ) -> Progress {
        let mut pos = 0;
        let mut answered = 0;
        loop {
            match self.state {
                State::Closed => {
                    pos = input.len();
                    break;
                }
                State::Body { remaining } => {
                    let take = remaining.min((input.len() - pos) as u64);
                    pos += take as usize;
                    if take < remaining {
                        self.state = State::Body {
                            remaining: remaining - take,
                        };
                        break;
                    }
                    self.state = State::Head;
                }
                State::Head => {
                    if pos == input.len() || out.len() >= OUT_HIGH_WATER {
                        break;
                    }
                    match request::parse(&input[pos..], limits) {
                        Parsed::Partial => break,
                        Parsed::Rejected(reject) => {
                            let mut res = Response::new(out, date, false, Connection::Close);
                            res.error(reject.status(), reject.message(), b"");
                            records.push(Record {
                                target: Span::default(),
                                user_agent: Span::default(),
                                status: reject.status(),
                                outcome: S::Outcome::default(),
                            });
                            answered += 1;
                            self.state = State::Closed;
                        }
                        Parsed::Complete { request, head_len } => {
                            pos += head_len;
                            // A client waiting for "100 Continue" may never send the body
                            // we did not ask for, so the framing after it is unknowable.
                            let last_buffered = pos as u64 + request.body_len >= input.len() as u64;
                            let close = !request.keep_alive
                                || (request.expect_continue && request.body_len > 0)
                                || (!self.keep_alive && last_buffered);
                            let connection = match (close, request.http10) {
                                (true, _) => Connection::Close,
                                (false, true) => Connection::KeepAlive,
                                (false, false) => Connection::Default,
                            };
                            let head_only = request.method == Method::Head;
                            let mut res = Response::new(out, date, head_only, connection);
                            let outcome = service.handle(&request, &mut res);
                            records.push(Record {
                                target: Span::of(input, request.target),
                                user_agent: Span::of(input, request.user_agent),
                                status: res.status(),
                                outcome,
                            });
                            answered += 1;
                            self.state = match (close, request.body_len) {
                                (true, _) => State::Closed,
                                (false, 0) => State::Head,
                                (false, remaining) => State::Body { remaining },
                            };
                        }
                    }
                }
            }
        }
        Progress {
            consumed: pos,
            answered,
        }
    }

    /// What the connection waits for, given how many unconsumed bytes are buffered.
    pub fn waiting(&self, buffered: usize) -> Waiting {
        match self.state {
            State::Closed => Waiting::Done,
            State::Body { .. } => Waiting::Body,
            State::Head if buffered == 0 => Waiting::Idle,
            State::Head => Waiting::Head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The real application drives the state machine in these tests.
    use crate::handler::{App, Handled, Route};

    const LIMITS: Limits = Limits {
        max_head_size: 1024,
        max_headers: 16,
        max_body_size: 100,
    };
    const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    /// Feeds `chunks` one by one, as separate reads, into one connection; returns the
    /// output, the requests answered and the final wait state.
    fn run(chunks: &[&[u8]]) -> (String, u32, Waiting) {
        let mut conn = Conn::new();
        let mut app = App::new(1024);
        let (mut buf, mut out, mut answered) = (Vec::new(), Vec::new(), 0);
        let mut records = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let p = conn.process(&buf, &mut out, &mut records, &mut app, &LIMITS, DATE);
                buf.drain(..p.consumed);
                answered += p.answered;
                if p.answered == 0 || conn.waiting(buf.len()) == Waiting::Done {
                    break;
                }
            }
        }
        (
            String::from_utf8(out).unwrap(),
            answered,
            conn.waiting(buf.len()),
        )
    }

    fn statuses(out: &str) -> Vec<&str> {
        out.match_indices("HTTP/1.1 ")
            .map(|(i, _)| &out[i + 9..i + 12])
            .collect()
    }

    const GET: &[u8] = b"GET /v1/leftpad/?str=ab&len=4&chr=* HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn answers_one_request() {
        let (out, n, waiting) = run(&[GET]);
        assert_eq!(n, 1);
        assert!(out.ends_with("\r\n\r\n{\"str\":\"**ab\"}\n"), "{out}");
        assert!(out.contains("Content-Length: 15\r\n"));
        assert_eq!(waiting, Waiting::Idle);
    }

    #[test]
    fn answers_pipelined_requests_in_order() {
        let mut batch = GET.to_vec();
        batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        let (out, n, _) = run(&[&batch]);
        assert_eq!(n, 3);
        assert_eq!(statuses(&out), ["200", "200", "404"]);
    }

    #[test]
    fn any_split_gives_the_same_output() {
        let mut stream = GET.to_vec();
        stream.extend_from_slice(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        );
        stream.extend_from_slice(GET);
        let (whole, n, _) = run(&[&stream]);
        assert_eq!(n, 3);
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(run(&[a, b]).0, whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).0, whole);
    }

    #[test]
    fn body_is_discarded_and_framing_kept() {
        let (out, n, _) = run(&[
            b"POST /v1/leftpad HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nGET / HTTP",
            GET,
        ]);
        assert_eq!(n, 2);
        assert_eq!(statuses(&out), ["405", "200"]);
        assert!(out.contains("Allow: GET, HEAD\r\n"));
    }

    #[test]
    fn records_describe_each_answer() {
        let mut input = GET.to_vec();
        input.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\n\r\n");
        input.extend_from_slice(b"GET /v1/leftpad?len=q HTTP/1.1\r\nHost: x\r\n\r\n");
        input.extend_from_slice(b"BAD\0\r\n\r\n");
        let (mut out, mut records) = (Vec::new(), Vec::new());
        let mut app = App::new(1024);
        Conn::new().process(&input, &mut out, &mut records, &mut app, &LIMITS, DATE);
        let summary: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.target.get(&input),
                    r.user_agent.get(&input),
                    r.status.0,
                    r.outcome,
                )
            })
            .collect();
        let leftpad = |str_chars| Handled {
            route: Route::Leftpad,
            str_chars,
        };
        assert_eq!(
            summary,
            [
                (
                    &b"/v1/leftpad/?str=ab&len=4&chr=*"[..],
                    &b""[..],
                    200,
                    leftpad(Some(2))
                ),
                (
                    b"/nope",
                    b"curl/8",
                    404,
                    Handled {
                        route: Route::Other,
                        str_chars: None
                    }
                ),
                (b"/v1/leftpad?len=q", b"", 400, leftpad(None)),
                (b"", b"", 400, Handled::default()),
            ]
        );
    }

    #[test]
    fn waiting_tracks_head_and_body() {
        assert_eq!(run(&[b"GET / HT"]).2, Waiting::Head);
        assert_eq!(
            run(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na"]).2,
            Waiting::Body
        );
    }

    #[test]
    fn connection_close_stops_the_pipeline() {
        let mut batch = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
        batch.extend_from_slice(GET);
        let (out, n, waiting) = run(&[&batch]);
        assert_eq!((n, waiting), (1, Waiting::Done));
        assert!(out.contains("Connection: close\r\n"));
    }

    #[test]
    fn without_keep_alive_the_last_buffered_request_closes() {
        let mut conn = Conn::new();
        conn.disable_keep_alive();
        let mut app = App::new(1024);
        let (mut out, mut records) = (Vec::new(), Vec::new());
        // Two pipelined requests and part of a third: the first two are answered with
        // keep-alive (more bytes follow them), and the connection waits for the third.
        let mut batch = [GET, GET].concat();
        batch.extend_from_slice(&GET[..10]);
        let p = conn.process(&batch, &mut out, &mut records, &mut app, &LIMITS, DATE);
        assert_eq!((p.answered, p.consumed), (2, 2 * GET.len()));
        assert!(!String::from_utf8_lossy(&out).contains("Connection: close"));
        assert_eq!(conn.waiting(10), Waiting::Head);
        // The rest of it arrives: nothing follows it, so it is the last and closes.
        out.clear();
        let p = conn.process(GET, &mut out, &mut records, &mut app, &LIMITS, DATE);
        assert_eq!(p.answered, 1);
        assert!(String::from_utf8_lossy(&out).contains("Connection: close\r\n"));
        assert_eq!(conn.waiting(0), Waiting::Done);
    }

    #[test]
    fn http10_keep_alive_is_confirmed_and_default_closes() {
        let (out, _, waiting) = run(&[b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]);
        assert!(out.contains("Connection: keep-alive\r\n"));
        assert_eq!(waiting, Waiting::Idle);
        let (out, _, waiting) = run(&[b"GET /healthz HTTP/1.0\r\n\r\n"]);
        assert!(out.contains("Connection: close\r\n"));
        assert_eq!(waiting, Waiting::Done);
    }

    #[test]
    fn malformed_gets_400_and_closes() {
        let (out, n, waiting) = run(&[b"GARBAGE\x00\r\n\r\n", GET]);
        assert_eq!((n, waiting), (1, Waiting::Done));
        assert_eq!(statuses(&out), ["400"]);
        assert!(out.contains("Connection: close\r\n"));
        assert!(out.contains("{\"error\":\"malformed"));
    }

    #[test]
    fn protocol_rejections_close() {
        for (raw, status) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "501",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
                "413",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "400",
            ),
        ] {
            let (out, _, waiting) = run(&[raw]);
            assert_eq!(statuses(&out), [status]);
            assert_eq!(waiting, Waiting::Done);
        }
        let long = [b'a'; 2000];
        let (out, _, _) = run(&[b"GET /", &long]);
        assert_eq!(statuses(&out), ["414"]);
    }

    #[test]
    fn application_errors_keep_the_connection() {
        let (out, n, waiting) = run(&[
            b"GET /v1/leftpad/?len=x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            GET,
        ]);
        assert_eq!(statuses(&out), ["400", "405", "200"]);
        assert_eq!((n, waiting), (3, Waiting::Idle));
    }

    #[test]
    fn expect_continue_with_body_closes() {
        let (out, _, waiting) =
            run(&[b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"]);
        assert!(out.contains("Connection: close\r\n"));
        assert_eq!(waiting, Waiting::Done);
    }

    #[test]
    fn output_is_bounded_by_the_high_water_mark() {
        // 200 pipelined requests that each produce a ~6 KiB body.
        let one = b"GET /v1/leftpad/?len=1024&chr=%3C HTTP/1.1\r\nHost: x\r\n\r\n";
        let batch = one.repeat(200);
        let mut conn = Conn::new();
        let mut app = App::new(1024);
        let (mut out, mut records) = (Vec::new(), Vec::new());
        let p = conn.process(&batch, &mut out, &mut records, &mut app, &LIMITS, DATE);
        assert!(p.answered < 200 && p.consumed < batch.len());
        assert_eq!(records.len(), p.answered as usize);
        assert!(out.len() < OUT_HIGH_WATER + 8 * 1024);
    }
}
