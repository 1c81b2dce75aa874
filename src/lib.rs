//! leftpad: a thread-per-core io_uring left-pad HTTP microservice.
//!
//! The crate is a sans-I/O core and a thin runtime shell around it:
//!
//! - core (pure functions of bytes, no sockets or clocks): [`http`] (framing, parsing,
//!   responses; generic over the service that answers), [`handler`] (routing and the
//!   API: that service), [`query`], [`leftpad`], [`json`];
//! - shell: [`worker`] (one pinned monoio runtime per CPU), [`pool`] (its connection
//!   buffers, held only while a request is served), [`parking`] (where idle
//!   connections wait without a task), [`runtime`] (io_uring or epoll), [`server`]
//!   (startup, signals, shutdown), [`config`] (the command line), [`cpus`] (the
//!   default worker count, cgroup quota included);
//! - observability: [`accesslog`], [`statsd`], [`telemetry`] (per worker), [`stats`]
//!   (counters), [`prometheus`] (`/metrics`), [`profile`] (pprof profiles) and [`admin`]
//!   (the admin listener that serves them and `/debug/vars`, on its own thread).
//!
//! See ARCHITECTURE.md for the path of a request and the invariants.

pub mod accesslog;
pub mod admin;
pub mod config;
pub mod cpus;
pub mod handler;
pub mod http;
pub mod json;
pub mod leftpad;
pub mod parking;
pub mod pool;
pub mod profile;
pub mod prometheus;
pub mod query;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod statsd;
pub mod telemetry;
pub mod worker;
