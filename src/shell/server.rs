//! The process's lifecycle: bind, start one worker per CPU and the admin listener,
//! print the startup summary, wait for SIGINT/SIGTERM, drain, exit with a code that says
//! how it ended ([`Exit`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::profile::goroutine::Mailbox;
use crate::shell::admin::{self, AdminState, Pages};
use crate::shell::config::Config;
use crate::shell::cpus::{self, Budget};
use crate::shell::listen::{self, bind_listeners, bind_side};
use crate::shell::runtime::DriverReport;
use crate::shell::worker::{self, Shared, WorkerSpec};
use crate::telemetry::accesslog::Writer;
use crate::telemetry::counters::{sum, Scalar, WorkerCounters};

/// How the process ended, as its exit code tells (a bad flag value is clap's 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A signal asked it to stop and every worker drained: 0.
    Stopped,
    /// It could not start (an address in use, a log it cannot open, ...): 1.
    StartupFailed,
    /// A worker thread ended on its own (a bug): the others were drained; 70, sysexits'
    /// `EX_SOFTWARE`.
    WorkerDied,
    /// A second SIGINT or SIGTERM during the drain: it exits at once, 128 + the signal's
    /// number, as a shell reports a process the signal killed.
    Interrupted { signal: i32 },
    /// The workers did not finish within the drain's backstop: 1.
    DrainTimedOut,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Stopped => 0,
            Exit::StartupFailed | Exit::DrainTimedOut => 1,
            Exit::WorkerDied => 70,
            Exit::Interrupted { signal } => 128u8.saturating_add(signal as u8),
        }
    }
}

/// What the main thread waits for.
enum Event {
    Signal(i32),
    WorkerExited(usize),
}

/// Runs the server until it is told to stop; returns the process exit code.
pub fn run(config: Config) -> ExitCode {
    let exit = start_and_wait(config).unwrap_or_else(|message| {
        eprintln!("leftpad: error: {message}");
        Exit::StartupFailed
    });
    ExitCode::from(exit.code())
}

/// Starts everything, then waits for the end; Err is a startup failure's message.
fn start_and_wait(config: Config) -> Result<Exit, String> {
    crate::profile::heap::set_rate(config.heap_profile_rate);
    listen::raise_fd_limit();
    let mut bound = Bound::bind(config)?;
    let config = bound.config.clone();
    // Registered before any worker starts, so no signal is missed or fatal.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let (events, events_rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let workers = start_workers(&mut bound, &shared, &events)?;
    let drivers = workers.wait_ready(&shared)?;
    let names = drivers.iter().map(ToString::to_string).collect();
    let state = Arc::new(AdminState::new(
        workers.counters.clone(),
        names,
        workers.mailboxes,
    ));
    let admin = start_admin(bound.admin, &state, Pages::All)?;
    let metrics = start_admin(bound.metrics, &state, Pages::MetricsOnly)?;
    let cpus = &workers.pinned;
    let line = summary(
        &config,
        bound.local,
        &bound.budget,
        cpus,
        &drivers,
        admin,
        metrics,
    );
    eprintln!("{line}");
    forward_signals(signals, events)?;
    let exit = wait_for_exit(&config, &shared, &events_rx, drivers.len());
    if exit == Exit::Stopped {
        let answered = sum(workers.counters.iter().copied(), Scalar::Requests);
        eprintln!("leftpad: stopped after answering {answered} requests");
    }
    Ok(exit)
}

/// Everything opened before a worker starts, so that a taken port or a bad log path
/// stops the server cleanly.
struct Bound {
    config: Arc<Config>,
    budget: Budget,
    cpus: Vec<core_affinity::CoreId>,
    listeners: Vec<std::net::TcpListener>,
    local: SocketAddr,
    log_file: Option<std::fs::File>,
    admin: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
}

impl Bound {
    fn bind(config: Config) -> Result<Bound, String> {
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let budget = match config.workers {
            Some(n) => Budget {
                workers: usize::from(n),
                source: "--workers".into(),
            },
            None => cpus::default_workers(cpus.len()),
        };
        let listeners = bind_listeners(config.listen, budget.workers, config.takeover)?;
        let local = listeners[0]
            .local_addr()
            .map_err(|e| format!("cannot read the listening address: {e}"))?;
        let log_file = match &config.access_log {
            Some(target) => Some(
                target
                    .open()
                    .map_err(|e| format!("cannot open --access-log {target}: {e}"))?,
            ),
            None => None,
        };
        let side = |addr: Option<SocketAddr>, flag| {
            addr.map(|addr| bind_side(addr, flag, config.takeover))
                .transpose()
        };
        let admin = side(config.admin, "--admin")?;
        let metrics = side(config.metrics, "--metrics")?;
        if config.takeover {
            let setting = std::fs::read_to_string(listen::MIGRATE_REQ);
            if let Some(warning) = listen::migration_warning(setting.as_deref().map(str::trim).ok())
            {
                eprintln!("{warning}");
            }
        }
        Ok(Bound {
            config: Arc::new(config),
            budget,
            cpus,
            listeners,
            local,
            log_file,
            admin,
            metrics,
        })
    }
}

/// The workers once their threads are started.
struct Workers {
    /// One slot per worker for the life of the process.
    counters: Vec<&'static WorkerCounters>,
    mailboxes: Vec<Arc<Mailbox>>,
    /// The CPUs the workers are pinned to.
    pinned: Vec<usize>,
    ready: mpsc::Receiver<Result<DriverReport, String>>,
}

impl Workers {
    /// Waits for every worker's runtime: its driver, or the first failure (then the
    /// others are told to stop).
    fn wait_ready(&self, shared: &Shared) -> Result<Vec<DriverReport>, String> {
        let mut drivers = Vec::with_capacity(self.counters.len());
        for _ in 0..self.counters.len() {
            match self.ready.recv() {
                Ok(Ok(report)) => drivers.push(report),
                Ok(Err(message)) => {
                    shared.shutdown.store(true, Ordering::Relaxed);
                    return Err(message);
                }
                Err(_) => return Err("a worker thread died while starting".into()),
            }
        }
        Ok(drivers)
    }
}

/// Turns transparent huge pages off for the whole process (README.md, "Behaviour
/// choices"). The binary calls it from a constructor, before anything is allocated:
/// mimalloc asks for huge pages, and every 2 MiB page it gets is resident in full
/// (ARCHITECTURE.md, "No transparent huge pages"). A kernel without the option (before
/// 3.15) leaves them as they are.
pub extern "C" fn refuse_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and sets a flag of this process; a
    // system call, it allocates nothing and needs nothing initialised.
    unsafe {
        // libc reads the four arguments as `unsigned long`, and the kernel refuses
        // nonzero high bits.
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused);
    }
}

/// Starts one thread per listener, each with its log writer, counters and mailbox.
fn start_workers(
    bound: &mut Bound,
    shared: &Arc<Shared>,
    events: &mpsc::Sender<Event>,
) -> Result<Workers, String> {
    let config = &bound.config;
    // Moved into the workers: a listener left open here would keep taking connections
    // into a backlog nobody accepts from once its worker drains.
    let listeners = std::mem::take(&mut bound.listeners);
    let count = listeners.len();
    let log_warned = Arc::new(AtomicBool::new(false));
    let (ready, ready_rx) = mpsc::channel();
    let mut workers = Workers {
        counters: Vec::with_capacity(count),
        mailboxes: Vec::with_capacity(count),
        pinned: Vec::with_capacity(count),
        ready: ready_rx,
    };
    for (id, listener) in listeners.into_iter().enumerate() {
        let cpu = (!bound.cpus.is_empty()).then(|| bound.cpus[id % bound.cpus.len()]);
        workers.pinned.extend(cpu.map(|c| c.id));
        let counters = WorkerCounters::leak();
        workers.counters.push(counters);
        let mailbox = Arc::new(Mailbox::default());
        workers.mailboxes.push(mailbox.clone());
        let log = start_log(bound, cpu, counters, &log_warned)?;
        let spec = WorkerSpec {
            id,
            cpu,
            listener,
            config: config.clone(),
            shared: shared.clone(),
            log,
            counters,
            mailbox,
        };
        let (ready, events) = (ready.clone(), events.clone());
        std::thread::Builder::new()
            .name(format!("leftpad-w{id}"))
            .spawn(move || {
                worker::run(spec, ready);
                let _ = events.send(Event::WorkerExited(id));
            })
            .map_err(|e| format!("cannot start worker thread {id}: {e}"))?;
    }
    Ok(workers)
}

/// A worker's access log and its writer thread, pinned beside it (None: log off).
fn start_log(
    bound: &Bound,
    cpu: Option<core_affinity::CoreId>,
    counters: &'static WorkerCounters,
    warned: &Arc<AtomicBool>,
) -> Result<Option<(crate::telemetry::accesslog::AccessLog, Writer)>, String> {
    let (Some(target), Some(file)) = (&bound.config.access_log, &bound.log_file) else {
        return Ok(None);
    };
    let file = file
        .try_clone()
        .map_err(|e| format!("cannot open --access-log {target}: {e}"))?;
    let threshold = bound.config.log_buffer as usize;
    Writer::start(
        target.clone(),
        file,
        threshold,
        cpu,
        counters,
        warned.clone(),
    )
    .map(Some)
    .map_err(|e| format!("cannot start the log writer thread: {e}"))
}

/// Serves `listener` (if any) on the admin thread; returns its address.
fn start_admin(
    listener: Option<std::net::TcpListener>,
    state: &Arc<AdminState>,
    pages: Pages,
) -> Result<Option<SocketAddr>, String> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let addr = listener.local_addr().ok();
    admin::start(listener, state.clone(), pages)
        .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    Ok(addr)
}

/// Hands every signal to the main thread's event queue, from a thread of its own.
fn forward_signals(mut signals: Signals, events: mpsc::Sender<Event>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("leftpad-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// Waits for a signal, then for the workers to drain (bounded by the shutdown timeout).
fn wait_for_exit(
    config: &Config,
    shared: &Shared,
    events: &mpsc::Receiver<Event>,
    workers: usize,
) -> Exit {
    let mut exited = 0;
    let mut backstop: Option<Instant> = None;
    let mut exit = Exit::Stopped;
    // The workers cut what is left at the shutdown timeout; this is the backstop.
    let begin_drain = || {
        shared.shutdown.store(true, Ordering::Relaxed);
        Some(Instant::now() + config.shutdown_timeout + Duration::from_secs(2))
    };
    while exited < workers {
        let event = match backstop {
            None => events.recv().ok(),
            Some(at) => events
                .recv_timeout(at.saturating_duration_since(Instant::now()))
                .ok(),
        };
        match event {
            Some(Event::Signal(SIGHUP)) => {
                shared.reopen_log.fetch_add(1, Ordering::Relaxed);
            }
            Some(Event::Signal(signal)) if backstop.is_some() => {
                eprintln!("leftpad: second signal: exiting now");
                return Exit::Interrupted { signal };
            }
            Some(Event::Signal(signal)) => {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                eprintln!(
                    "leftpad: {name}: shutting down (finishing requests in flight, up to {:?})",
                    config.shutdown_timeout
                );
                backstop = begin_drain();
            }
            Some(Event::WorkerExited(id)) => {
                exited += 1;
                if backstop.is_none() {
                    eprintln!("leftpad: worker {id} stopped unexpectedly; shutting down");
                    backstop = begin_drain();
                    exit = Exit::WorkerDied;
                }
            }
            None => {
                eprintln!("leftpad: workers did not stop in time; exiting");
                return Exit::DrainTimedOut;
            }
        }
    }
    exit
}

/// The one startup line: address, workers, driver.
fn summary(
    config: &Config,
    local: SocketAddr,
    budget: &Budget,
    cpus: &[usize],
    drivers: &[DriverReport],
    admin: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> String {
    let cpus = if cpus.is_empty() {
        "unpinned".to_owned()
    } else {
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        format!("pinned to CPUs {}", list.join(","))
    };
    let driver = if drivers.iter().all(|d| *d == drivers[0]) {
        drivers[0].to_string()
    } else {
        let each: Vec<String> = drivers
            .iter()
            .enumerate()
            .map(|(i, d)| format!("worker {i}: {d}"))
            .collect();
        each.join("; ")
    };
    let log = match &config.access_log {
        Some(target) => format!("access log {target}"),
        None => "access log off".to_owned(),
    };
    let statsd = match config.statsd() {
        Some(s) => format!(
            "statsd {} (prefix {}, sample rate {})",
            s.addr, s.prefix, s.sample_rate
        ),
        None => "statsd off".to_owned(),
    };
    let mut admin = match admin {
        Some(addr) => format!("admin http://{addr}/debug/pprof/"),
        None => "admin off".to_owned(),
    };
    if let Some(addr) = metrics {
        admin.push_str(&format!(", metrics http://{addr}/metrics"));
    }
    // A field of its own: the address is followed by a comma, which scripts split on.
    let takeover = if config.takeover {
        "takeover (sharing the port with the server it replaces), "
    } else {
        ""
    };
    format!(
        "leftpad {}: listening on http://{local}, {takeover}{} worker(s) ({}) {cpus}, \
         driver {driver}, {log}, {statsd}, {admin}, max-len {}, max-connections {}",
        env!("CARGO_PKG_VERSION"),
        budget.workers,
        budget.source,
        config.max_len,
        config.max_connections,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_how_the_process_ended() {
        assert_eq!(Exit::Stopped.code(), 0);
        assert_eq!(Exit::StartupFailed.code(), 1);
        assert_eq!(Exit::WorkerDied.code(), 70);
        assert_eq!(Exit::Interrupted { signal: SIGINT }.code(), 130);
        assert_eq!(Exit::Interrupted { signal: SIGTERM }.code(), 143);
    }
}
