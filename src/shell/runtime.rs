//! Building a worker's monoio runtime: io_uring with tuned setup flags, or epoll.
//!
//! Shared by the server and the benchmark floor (`examples/floor.rs`), so both run on
//! exactly the same driver and ring settings.

use std::future::Future;
use std::io;

use crate::shell::config::{Driver, UringSetup};

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;
type EpollRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

/// A worker's runtime, on whichever driver it got.
pub enum Runtime {
    IoUring(UringRuntime, UringSetup),
    /// epoll, with the reason io_uring was not used when `auto` fell back.
    Epoll(EpollRuntime, Option<String>),
}

/// Which I/O driver a worker got, for the startup summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverReport {
    IoUring(UringSetup),
    Epoll(Option<String>),
}

impl std::fmt::Display for DriverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverReport::IoUring(UringSetup::Defer) => {
                f.write_str("io_uring (single_issuer+defer_taskrun)")
            }
            DriverReport::IoUring(UringSetup::Coop) => {
                f.write_str("io_uring (coop_taskrun+taskrun_flag)")
            }
            DriverReport::IoUring(UringSetup::Plain) => f.write_str("io_uring"),
            DriverReport::Epoll(None) => f.write_str("epoll"),
            DriverReport::Epoll(Some(why)) => write!(f, "epoll (io_uring unavailable: {why})"),
        }
    }
}

impl Runtime {
    /// Builds the runtime `driver` asks for. `auto` falls back to epoll when io_uring is
    /// refused (old kernel, seccomp, `io_uring_disabled`, no memory for the ring).
    pub fn build(driver: Driver, setup: UringSetup) -> Result<Runtime, String> {
        if driver == Driver::Epoll {
            return build_epoll(None);
        }
        match build_uring(setup) {
            Ok((runtime, setup)) => Ok(Runtime::IoUring(runtime, setup)),
            Err(e) if driver == Driver::IoUring => Err(format!(
                "cannot set up io_uring: {e} (use --driver auto or --driver epoll)"
            )),
            Err(e) => build_epoll(Some(e.to_string())),
        }
    }

    pub fn report(&self) -> DriverReport {
        match self {
            Runtime::IoUring(_, setup) => DriverReport::IoUring(*setup),
            Runtime::Epoll(_, why) => DriverReport::Epoll(why.clone()),
        }
    }

    pub fn block_on<F: Future>(&mut self, future: F) -> F::Output {
        match self {
            Runtime::IoUring(runtime, _) => runtime.block_on(future),
            Runtime::Epoll(runtime, _) => runtime.block_on(future),
        }
    }
}

fn build_epoll(fallback_reason: Option<String>) -> Result<Runtime, String> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map(|runtime| Runtime::Epoll(runtime, fallback_reason))
        .map_err(|e| format!("cannot set up epoll: {e}"))
}

/// Builds an io_uring runtime with the wanted setup flags, retrying with fewer flags on
/// kernels that do not know them (DEFER_TASKRUN needs 6.1, COOP_TASKRUN 5.19).
fn build_uring(wanted: UringSetup) -> io::Result<(UringRuntime, UringSetup)> {
    let fallbacks = [UringSetup::Defer, UringSetup::Coop, UringSetup::Plain];
    let mut last_error = io::Error::other("no io_uring setup tried");
    for setup in fallbacks.into_iter().skip_while(|s| *s != wanted) {
        let mut builder = io_uring::IoUring::builder();
        match setup {
            UringSetup::Defer => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            UringSetup::Coop => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            UringSetup::Plain => {}
        }
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(builder)
            .with_entries(1024)
            .enable_timer()
            .build()
        {
            Ok(runtime) => return Ok((runtime, setup)),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}
