//! Process lifecycle: bind, start one worker per CPU, print the startup summary, wait for
//! SIGINT/SIGTERM, drain, exit.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use socket2::{Domain, Protocol, Socket, Type};

use crate::accesslog::{LogStats, Writer};
use crate::admin::{self, AdminState, Pages};
use crate::config::Config;
use crate::cpus::{self, Budget};
use crate::profile::goroutine::Mailbox;
use crate::runtime::DriverReport;
use crate::stats::WorkerStats;
use crate::worker::{self, Shared, WorkerSpec};

/// Exit code for a failure at startup (a bad flag value is clap's 2).
const EXIT_STARTUP: u8 = 1;

enum Event {
    Signal(i32),
    WorkerExited(usize),
}

/// Runs the server until it is told to stop; returns the process exit code.
pub fn run(config: Config) -> ExitCode {
    match start_and_wait(config) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("leftpad: error: {message}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

fn start_and_wait(config: Config) -> Result<ExitCode, String> {
    crate::profile::heap::set_rate(config.heap_profile_rate);
    raise_fd_limit();
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let budget = match config.workers {
        Some(n) => Budget {
            workers: usize::from(n),
            source: "--workers".into(),
        },
        None => cpus::default_workers(cpus.len()),
    };
    let workers = budget.workers;
    let listeners = bind_listeners(config.listen, workers)?;
    let local = listeners[0]
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;

    // Opened here so a bad path stops the server before anything starts.
    let log_file = match &config.access_log {
        Some(target) => Some(
            target
                .open()
                .map_err(|e| format!("cannot open --access-log {target}: {e}"))?,
        ),
        None => None,
    };

    // Bound before the workers start, so a taken port stops everything cleanly.
    let admin_listener = config
        .admin
        .map(|addr| bind_plain(addr, "--admin"))
        .transpose()?;
    let metrics_listener = config
        .metrics
        .map(|addr| bind_plain(addr, "--metrics"))
        .transpose()?;

    let config = Arc::new(config);
    let shared = Arc::new(Shared::default());
    let mut worker_stats: Vec<&'static WorkerStats> = Vec::with_capacity(workers);
    let mut log_stats = Vec::new();
    let mut mailboxes = Vec::with_capacity(workers);
    let (events, events_rx) = mpsc::channel();
    // Registered before any worker starts, so no signal is missed or fatal.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let log_warned = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let (ready, ready_rx) = mpsc::channel();
    let mut pinned = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        pinned.extend(cpu.map(|c| c.id));
        let log = match (&config.access_log, &log_file) {
            (Some(target), Some(file)) => {
                let file = file
                    .try_clone()
                    .map_err(|e| format!("cannot open --access-log {target}: {e}"))?;
                let stats = Arc::new(LogStats::default());
                log_stats.push(stats.clone());
                let threshold = config.log_buffer as usize;
                Some(
                    Writer::start(
                        target.clone(),
                        file,
                        threshold,
                        cpu,
                        stats,
                        log_warned.clone(),
                    )
                    .map_err(|e| format!("cannot start the log writer thread: {e}"))?,
                )
            }
            _ => None,
        };
        // One slot per worker for the life of the process.
        let stats: &'static WorkerStats = Box::leak(Box::default());
        worker_stats.push(stats);
        let mailbox = Arc::new(Mailbox::default());
        mailboxes.push(mailbox.clone());
        let spec = WorkerSpec {
            id,
            cpu,
            listener,
            config: config.clone(),
            shared: shared.clone(),
            log,
            stats,
            mailbox,
        };
        let ready = ready.clone();
        let events = events.clone();
        std::thread::Builder::new()
            .name(format!("leftpad-w{id}"))
            .spawn(move || {
                worker::run(spec, ready);
                let _ = events.send(Event::WorkerExited(id));
            })
            .map_err(|e| format!("cannot start worker thread {id}: {e}"))?;
    }
    drop(ready);

    let mut drivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(report)) => drivers.push(report),
            Ok(Err(message)) => {
                shared.shutdown.store(true, Ordering::Relaxed);
                return Err(message);
            }
            Err(_) => return Err("a worker thread died while starting".into()),
        }
    }
    let worker_totals = worker_stats.clone();
    let names = drivers.iter().map(ToString::to_string).collect();
    let state =
        Arc::new(AdminState::new(worker_stats, log_stats, names).with_connections(mailboxes));
    let mut addrs = [None, None];
    for (slot, listener, pages) in [
        (0, admin_listener, Pages::All),
        (1, metrics_listener, Pages::MetricsOnly),
    ] {
        if let Some(listener) = listener {
            addrs[slot] = listener.local_addr().ok();
            admin::start(listener, state.clone(), pages)
                .map_err(|e| format!("cannot start the admin thread: {e}"))?;
        }
    }
    let [admin_addr, metrics_addr] = addrs;
    eprintln!(
        "{}",
        summary(
            &config,
            local,
            &budget,
            &pinned,
            &drivers,
            admin_addr,
            metrics_addr
        )
    );

    std::thread::Builder::new()
        .name("leftpad-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    let code = wait_for_exit(&config, &shared, &events_rx, workers)?;
    if code == ExitCode::SUCCESS {
        let answered: u64 = worker_totals.iter().map(|w| w.requests.get()).sum();
        eprintln!("leftpad: stopped after answering {answered} requests");
    }
    Ok(code)
}

/// Waits for a signal, then for the workers to drain (bounded by the shutdown timeout).
fn wait_for_exit(
    config: &Config,
    shared: &Shared,
    events: &mpsc::Receiver<Event>,
    workers: usize,
) -> Result<ExitCode, String> {
    let mut exited = 0;
    let mut deadline: Option<Instant> = None;
    let mut code = ExitCode::SUCCESS;
    while exited < workers {
        let event = match deadline {
            None => events.recv().ok(),
            Some(at) => events
                .recv_timeout(at.saturating_duration_since(Instant::now()))
                .ok(),
        };
        match event {
            Some(Event::Signal(SIGHUP)) => {
                shared.reopen_log.fetch_add(1, Ordering::Relaxed);
            }
            Some(Event::Signal(_)) if deadline.is_some() => {
                eprintln!("leftpad: second signal: exiting now");
                return Ok(ExitCode::from(EXIT_STARTUP));
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
                shared.shutdown.store(true, Ordering::Relaxed);
                // The workers cut what is left at the timeout; this is the backstop.
                deadline = Some(Instant::now() + config.shutdown_timeout + Duration::from_secs(2));
            }
            Some(Event::WorkerExited(id)) => {
                exited += 1;
                if deadline.is_none() {
                    eprintln!("leftpad: worker {id} stopped unexpectedly; shutting down");
                    shared.shutdown.store(true, Ordering::Relaxed);
                    deadline =
                        Some(Instant::now() + config.shutdown_timeout + Duration::from_secs(2));
                    code = ExitCode::from(EXIT_STARTUP);
                }
            }
            None => {
                eprintln!("leftpad: workers did not stop in time; exiting");
                break;
            }
        }
    }
    Ok(code)
}

/// The one startup line: address, workers, driver.
/// Binds a plain (blocking) listener for `--admin` or `--metrics`.
fn bind_plain(addr: SocketAddr, flag: &str) -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!("cannot listen on {flag} {addr}: the address is already in use; choose another {flag} or {flag} off")
        } else {
            format!("cannot listen on {flag} {addr}: {e}")
        }
    })
}

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
    format!(
        "leftpad {}: listening on http://{local}, {} worker(s) ({}) {cpus}, driver {driver}, \
         {log}, {statsd}, {admin}, max-len {}, max-connections {}",
        env!("CARGO_PKG_VERSION"),
        budget.workers,
        budget.source,
        config.max_len,
        config.max_connections,
    )
}

/// Binds one `SO_REUSEPORT` listener per worker on the same address.
///
/// A probe bind without `SO_REUSEPORT` first: it fails if anything already listens there,
/// even another process's reuse-port group, which a plain reuse-port bind would join.
fn bind_listeners(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, String> {
    let in_use = |e: io::Error| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: the address is already in use; stop the other server or choose another --listen")
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    };
    let probe = bind(addr, false).map_err(in_use)?;
    // With port 0 the probe picked the port; every worker must share it.
    let addr = probe.local_addr().map_err(in_use)?;
    drop(probe);
    (0..count)
        .map(|_| bind(addr, true).map_err(in_use))
        .collect()
}

fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Lifts the soft open-file limit to the hard one, as Go and nginx do: each connection
/// is a file descriptor, and 1024 is far below `--max-connections`.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer,
    // which lives on this stack frame for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
