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
    let listeners = bind_listeners(config.listen, workers, config.takeover)?;
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
        .map(|addr| bind_side(addr, "--admin", config.takeover))
        .transpose()?;
    let metrics_listener = config
        .metrics
        .map(|addr| bind_side(addr, "--metrics", config.takeover))
        .transpose()?;
    if config.takeover {
        if let Some(warning) = migration_warning(
            std::fs::read_to_string(MIGRATE_REQ)
                .as_deref()
                .map(str::trim)
                .ok(),
        ) {
            eprintln!("{warning}");
        }
    }

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

/// Whether the kernel moves the connections queued on a closing listener to another
/// listener of its `SO_REUSEPORT` group (Linux 5.14+), rather than resetting them.
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// The line `--takeover` prints when the kernel will not migrate queued connections:
/// `setting` is the content of [`MIGRATE_REQ`] (None: absent, a kernel before 5.14).
fn migration_warning(setting: Option<&str>) -> Option<String> {
    let (now, fix) = match setting {
        Some("1") => return None,
        Some(value) => (
            format!("net.ipv4.tcp_migrate_req is {value}"),
            "set it with sysctl -w net.ipv4.tcp_migrate_req=1",
        ),
        None => (
            "this kernel has no net.ipv4.tcp_migrate_req".to_owned(),
            "it needs Linux 5.14+ (sysctl -w net.ipv4.tcp_migrate_req=1)",
        ),
    };
    Some(format!(
        "leftpad: --takeover: {now}: connections still queued on the old process's listeners \
         when it closes them can be reset; {fix}"
    ))
}

/// Binds the (blocking) listener of `--admin` or `--metrics`, with `SO_REUSEPORT` so that
/// a `--takeover` process can join it, after a probe without it (as [`bind_listeners`]
/// does) unless `takeover`.
fn bind_side(
    addr: SocketAddr,
    flag: &str,
    takeover: bool,
) -> Result<std::net::TcpListener, String> {
    let failed = |e: io::Error| {
        if e.kind() != io::ErrorKind::AddrInUse {
            format!("cannot listen on {flag} {addr}: {e}")
        } else if takeover {
            format!("cannot listen on {flag} {addr}: the address is already in use by a listener that does not share it (SO_REUSEPORT), such as a leftpad before --takeover existed or another user's; choose another {flag} or {flag} off")
        } else {
            format!("cannot listen on {flag} {addr}: the address is already in use; choose another {flag} or {flag} off")
        }
    };
    let addr = if takeover {
        addr
    } else {
        let probe = bind(addr, false, Blocking::Yes).map_err(failed)?;
        probe.local_addr().map_err(failed)?
    };
    bind(addr, true, Blocking::Yes).map_err(failed)
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

/// Binds one `SO_REUSEPORT` listener per worker on the same address.
///
/// A probe bind without `SO_REUSEPORT` first: it fails if anything already listens there,
/// even another process's reuse-port group, which a plain reuse-port bind would join.
/// With `takeover` there is no probe: joining the running server's group is the point
/// (the kernel lets a process join only a group whose listeners all set `SO_REUSEPORT`,
/// under the same user).
fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    takeover: bool,
) -> Result<Vec<std::net::TcpListener>, String> {
    let in_use = |e: io::Error| {
        if e.kind() != io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: {e}")
        } else if takeover {
            format!("cannot listen on {addr}: the address is already in use by a listener that does not share it (SO_REUSEPORT): --takeover joins only a leftpad running as the same user")
        } else {
            format!("cannot listen on {addr}: the address is already in use; stop the other server or choose another --listen (or start with --takeover to replace a running leftpad)")
        }
    };
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    if !takeover {
        let probe = bind(addr, false, Blocking::No).map_err(in_use)?;
        // With port 0 the probe picked the port; every worker must share it.
        addr = probe.local_addr().map_err(in_use)?;
    }
    for _ in 0..count {
        let listener = bind(addr, true, Blocking::No).map_err(in_use)?;
        // Under --takeover with port 0, the first bind picks the port.
        addr = listener.local_addr().map_err(in_use)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Blocking {
    Yes,
    No,
}

fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    blocking: Blocking,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(blocking == Blocking::No)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_warning_says_what_to_set() {
        assert_eq!(migration_warning(Some("1")), None);
        let off = migration_warning(Some("0")).unwrap();
        assert!(
            off.contains("is 0") && off.contains("can be reset"),
            "{off}"
        );
        assert!(
            off.contains("sysctl -w net.ipv4.tcp_migrate_req=1"),
            "{off}"
        );
        assert!(!off.contains('\n'));
        let absent = migration_warning(None).unwrap();
        assert!(absent.contains("5.14"), "{absent}");
    }

    #[test]
    fn takeover_binds_join_and_plain_ones_probe() {
        let first = bind_listeners("127.0.0.1:0".parse().unwrap(), 2, false).unwrap();
        let addr = first[0].local_addr().unwrap();
        let plain = bind_listeners(addr, 1, false).unwrap_err();
        assert!(plain.contains("already in use"), "{plain}");
        let joined = bind_listeners(addr, 2, true).unwrap();
        assert_eq!(joined[1].local_addr().unwrap(), addr);

        let admin = bind_side("127.0.0.1:0".parse().unwrap(), "--admin", false).unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let plain = bind_side(admin_addr, "--admin", false).unwrap_err();
        assert!(
            plain.contains("--admin") && plain.contains("already in use"),
            "{plain}"
        );
        bind_side(admin_addr, "--admin", true).unwrap();
        // A listener that does not share the port cannot be joined.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = bind_side(other.local_addr().unwrap(), "--metrics", true).unwrap_err();
        assert!(refused.contains("does not share it"), "{refused}");
    }
}
