//! Telemetry: what a worker makes of each answer, and the pages that show it.
//!
//! - [`recorder`]: after each batch, turns the core's records into an access-log line,
//!   StatsD lines and counter increments (the only entry point on the request path);
//! - [`accesslog`]: the line (pure), the worker's buffer, the writer thread;
//! - [`statsd`]: sampling, aggregation and packing (pure), the UDP client;
//! - [`counters`]: every counter, declared once, in per-worker single-writer slots;
//!   [`allocator`]: the counting global allocator;
//! - [`prometheus`] (`/metrics`) and [`vars`] (`/debug/vars`): both rendered from the
//!   counter declaration.
//!
//! Telemetry knows records, outcomes and counters, never connections or sockets of the
//! server (the StatsD client's own socket aside).

pub mod accesslog;
pub mod allocator;
pub mod counters;
pub mod prometheus;
pub mod recorder;
pub mod statsd;
pub mod vars;
