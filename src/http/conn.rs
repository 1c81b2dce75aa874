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
