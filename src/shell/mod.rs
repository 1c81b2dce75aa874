//! The shell: threads, sockets and clocks around the pure layers below.
//!
//! - [`server`]: the process's lifecycle (start the workers and the admin listener, wait
//!   for signals, drain, exit code); `listen` binds the listeners (`SO_REUSEPORT`,
//!   `--takeover`);
//! - [`config`]: the command line and its value parsers; `cpus`: the default worker
//!   count; [`runtime`]: a monoio runtime on io_uring or epoll;
//! - `worker`: one pinned thread per CPU that accepts, serves and parks connections;
//! - `admin`: the admin listener's thread, routing to [`crate::profile`] and
//!   [`crate::telemetry`] pages.

// Public: what `main`, the floor example and the benches build on; the rest is the
// server's own.
pub mod config;
pub mod runtime;
pub mod server;

pub(crate) mod admin;
pub(crate) mod cpus;
pub(crate) mod listen;
pub(crate) mod worker;
