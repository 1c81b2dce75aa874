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
//! Two parts: [`batcher`] formats, samples, aggregates and packs into a reused packet
//! buffer and never allocates once warm; sending a full packet is its caller's (a `send`
//! closure), so it does no I/O. [`client`] is the worker's non-blocking UDP socket: a
//! send that fails (nothing listening, buffer full) is counted and dropped, never
//! waited for.

pub mod batcher;
pub mod client;

use std::net::SocketAddr;

pub use batcher::{Batcher, Tally};
pub use client::Client;

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
