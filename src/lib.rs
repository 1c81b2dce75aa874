//! leftpad: a thread-per-core io_uring left-pad HTTP microservice.
//!
//! The crate is a sans-I/O core inside a thin runtime shell, one folder per layer; each
//! layer imports only the layers below it (ARCHITECTURE.md, "Architecture invariants"):
//!
//! - [`shell`]: everything that owns a socket, a thread or a clock: startup and signals,
//!   the command line, one pinned worker per CPU with its connections, and the admin
//!   listener;
//! - [`telemetry`]: what a worker makes of each answer: access-log lines, StatsD lines
//!   and counters, and the pages that show the counters (`/metrics`, `/debug/vars`);
//! - [`app`]: routing and the left-pad API, the [`http`] core's service;
//! - [`http`]: HTTP/1.1 framing, parsing and responses, pure functions of bytes;
//! - [`profile`]: Go-compatible profiles, below everything it observes.
//!
//! A request flows down and back up once: bytes in (shell) → request (http) → handler
//! (app) → response bytes and records (http) → log line, metric lines, counters
//! (telemetry).

pub mod app;
pub mod http;
pub mod profile;
pub mod shell;
pub mod telemetry;
