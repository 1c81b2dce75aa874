//! Command line and lifecycle (README.md, "Command line"): flags, environment, errors, startup summary,
//! graceful shutdown.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{exchange, get, is_closed, read_response, Server};

fn leftpad(args: &[&str]) -> std::process::Output {
    common::leftpad_command()
        .args(args)
        .output()
        .expect("run leftpad")
}

const FLAGS: [&str; 15] = [
    "--listen",
    "--workers",
    "--driver",
    "--max-len",
    "--max-head-size",
    "--max-headers",
    "--max-body-size",
    "--max-connections",
    "--header-timeout",
    "--idle-timeout",
    "--write-timeout",
    "--shutdown-timeout",
    "--takeover",
    "--help",
    "--version",
];

#[test]
fn help_documents_every_flag_with_its_default_and_variable() {
    let out = leftpad(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in FLAGS {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for text in [
        "[default: 0.0.0.0:8080]",
        "[default: 1024]",
        "[default: 10s]",
        "[env: LEFTPAD_MAX_LEN=]",
        "[env: LEFTPAD_TAKEOVER=]",
    ] {
        assert!(help.contains(text), "--help lacks {text}");
    }
}

#[test]
fn version() {
    let out = leftpad(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("leftpad {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_values_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--max-len", "lots"][..], "--max-len"),
        (&["--workers", "0"], "--workers"),
        (&["--driver", "kqueue"], "--driver"),
        (&["--header-timeout", "soon"], "--header-timeout"),
        (&["--listen", "not an address"], "--listen"),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let out = leftpad(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let out = common::leftpad_command()
        .env("LEFTPAD_MAX_LEN", "-3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--max-len"));
}

#[test]
fn address_in_use_exits_1_with_a_clear_message() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = leftpad(&["--listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&addr) && stderr.contains("already in use"),
        "{stderr}"
    );

    // Another leftpad (a SO_REUSEPORT group) holds the port too.
    let first = Server::start(&[]);
    let out = leftpad(&["--listen", &first.addr.to_string()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn environment_variables_set_flags_and_flags_win() {
    let server = Server::start_with_env(&[], &[("LEFTPAD_MAX_LEN", "5")]);
    assert_eq!(exchange(&server, &get("/v1/leftpad/?len=6")).0.status, 400);
    let server = Server::start_with_env(&["--max-len", "7"], &[("LEFTPAD_MAX_LEN", "5")]);
    assert_eq!(exchange(&server, &get("/v1/leftpad/?len=6")).0.status, 200);
}

#[test]
fn startup_summary_names_address_workers_and_driver() {
    let server = Server::start(&["--workers", "2"]);
    let stderr = server.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("listening on http://{}", server.addr)));
    assert!(stderr.contains("2 worker(s)"));
    assert!(stderr.contains("driver io_uring") || stderr.contains("driver epoll"));
}

#[test]
#[cfg_attr(
    leftpad_emulated,
    ignore = "qemu-user need not pass PR_SET_THP_DISABLE on to the kernel"
)]
fn the_server_runs_without_transparent_huge_pages() {
    let server = Server::start(&["--workers", "2"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let thp = status.lines().find(|line| line.starts_with("THP_enabled:"));
    assert_eq!(
        thp.map(|line| line.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["THP_enabled:", "0"]),
        "{status}"
    );
    // Off from before the first allocation: not one huge page was faulted in.
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", server.pid())).unwrap();
    let huge = rollup
        .lines()
        .find(|line| line.starts_with("AnonHugePages:"));
    assert_eq!(
        huge.map(|line| line.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["AnonHugePages:", "0", "kB"]),
        "{rollup}"
    );
}

#[test]
fn workers_share_the_port() {
    let server = Server::start(&["--workers", "2"]);
    for _ in 0..50 {
        assert_eq!(exchange(&server, &get("/healthz")).0.status, 200);
    }
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_0() {
    for driver in common::drivers() {
        let driver = driver.as_str();
        let mut server = Server::start(&["--driver", driver, "--workers", "2"]);
        // Idle keep-alive connections: closed at once on shutdown.
        let mut idle: Vec<_> = (0..4)
            .map(|_| exchange(&server, &get("/healthz")).1)
            .collect();
        // Requests in flight: half a head sent before the signal, the rest after.
        let request = get("/v1/leftpad/?str=inflight&len=12&chr=-");
        let (first, rest) = request.split_at(20);
        let mut busy: Vec<_> = (0..4)
            .map(|_| {
                let mut s = server.connect();
                s.write_all(first).unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        server.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(300));

        for s in &mut idle {
            assert!(
                is_closed(s, Duration::from_secs(2)),
                "{driver}: idle connection not closed"
            );
        }
        for s in &mut busy {
            s.write_all(rest).unwrap();
            let r = read_response(s, false).expect("in-flight request answered");
            assert_eq!(r.text(), "{\"str\":\"----inflight\"}\n");
            assert!(is_closed(s, Duration::from_secs(2)));
        }
        let status = server.wait(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{driver}: {}", server.stderr());
        assert!(
            std::net::TcpStream::connect(server.addr).is_err(),
            "still accepting"
        );
    }
}

#[test]
fn pipelined_burst_before_sigterm_is_answered_completely() {
    let mut server = Server::start(&["--workers", "2"]);
    let mut conns: Vec<_> = (0..8).map(|_| server.connect()).collect();
    let burst = get("/v1/leftpad/?str=x&len=900&chr=%E2%98%83").repeat(64);
    for s in &mut conns {
        s.write_all(&burst).unwrap();
    }
    server.signal(libc::SIGTERM);
    for s in &mut conns {
        for _ in 0..64 {
            let r = read_response(s, false).expect("every pipelined request answered");
            assert_eq!(r.body.len(), "{\"str\":\"\"}\n".len() + 899 * 3 + 1);
        }
    }
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn shutdown_timeout_cuts_stuck_connections() {
    let mut server = Server::start(&["--shutdown-timeout", "500ms", "--header-timeout", "30s"]);
    let mut stuck = server.connect();
    stuck.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait(Duration::from_secs(5)).code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(is_closed(&mut stuck, Duration::from_secs(1)));
}

/// A cgroup v1 `cpu` group of the test's own, removed when dropped.
struct CpuCgroup(std::path::PathBuf);

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // Empty once the server has exited; retried briefly while it exits.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// In a container limited to one CPU, the default is one worker (README.md, "Deploying"), and the
/// startup line says why. Runs the binary inside a real cgroup v1 with a 1-CPU quota.
#[test]
fn a_cpu_quota_sets_the_default_worker_count() {
    let root = std::path::Path::new("/sys/fs/cgroup/cpu");
    common::require_root("it makes a cgroup with a CPU quota");
    assert!(
        root.join("cpu.cfs_quota_us").exists(),
        "this test needs the cgroup v1 cpu controller at {} (mount -t cgroup -o cpu cpu {})",
        root.display(),
        root.display()
    );
    let group = CpuCgroup(root.join(format!("leftpad-test-{}", std::process::id())));
    std::fs::create_dir_all(&group.0).unwrap();
    std::fs::write(group.0.join("cpu.cfs_period_us"), "100000").unwrap();
    std::fs::write(group.0.join("cpu.cfs_quota_us"), "100000").unwrap();
    // The shell joins the group, then becomes the server.
    let join = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
        group.0.display()
    );
    let mut server = Server::start_wrapped(&["sh", "-c", &join], &["--listen", "127.0.0.1:0"]);
    let line = server.stderr();
    assert!(
        line.contains("1 worker(s) (cgroup v1 CPU quota 1.00)"),
        "the quota decides: {line}"
    );
    server.signal(libc::SIGTERM);
    server.wait(Duration::from_secs(10));
    drop(group);
}

/// From SIGTERM on, a health check on a connection still open answers 503 (load
/// balancers stop sending), while the API still answers requests on it until the drain
/// ends (README.md, "Deploying").
#[test]
fn health_checks_fail_during_the_drain_while_requests_are_served() {
    let mut server = Server::start(&["--shutdown-timeout", "5s"]);
    let mut busy = server.connect();
    // In the middle of a request when the signal comes: the drain waits for it.
    busy.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    busy.write_all(
        b"Host: x\r\n\r\nGET /v1/leftpad/?str=a&len=3&chr=- HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let health = read_response(&mut busy, false).expect("the health check's answer");
    assert_eq!((health.status, health.text().as_str()), (503, "draining\n"));
    let api = read_response(&mut busy, false).expect("the request's answer");
    assert_eq!(
        (api.status, api.text().as_str()),
        (200, "{\"str\":\"--a\"}\n")
    );
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
}
