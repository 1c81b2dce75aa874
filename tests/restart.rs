//! Zero-downtime restart (README.md, "Deploying"): a second process started with
//! `--takeover` joins the running server's `SO_REUSEPORT` group, the first is sent SIGTERM
//! and drains, and clients under load see no failed request.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_get, get, read_response, Server};

/// Lets the kernel move connections queued on the old process's listeners to the new
/// one when the old closes them (Linux 5.14+). The tests run as root here and in CI;
/// elsewhere this fails quietly and the server's own warning says what is at stake.
fn allow_migration() {
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1");
}

/// What the client threads saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Responses with `Connection: close` on keep-alive connections (the old process
    /// draining), each followed by a reconnect.
    closes: AtomicU64,
    failed: AtomicU64,
    /// The first failures, with when they happened since the load began.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, start: Instant, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(format!("{:?}: {what}", start.elapsed()));
        }
    }
}

/// One client: GETs in a loop until `stop`, a full response read for each, a new
/// connection after `Connection: close`. Anything else counts as a failed request: a
/// connect error, a reset or end of file instead of a response, a status other than 200.
/// `keep_alive` false: every request on a new connection (it asks for `Connection:
/// close`), so there are always handshakes under way when the old listeners close.
fn client(
    addr: SocketAddr,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    start: Instant,
) {
    let target = "/v1/leftpad/?str=restart&len=16&chr=-";
    let request = if keep_alive {
        get(target)
    } else {
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
    };
    while !stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => stream,
            Err(e) => {
                tally.fail(start, format!("connect: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = writer.write_all(&request) {
                tally.fail(start, format!("write: {e}"));
                break;
            }
            let Some(response) = read_response(&mut reader, false) else {
                tally.fail(start, "no response (end of file, reset or timeout)".into());
                break;
            };
            if response.status != 200 || response.text() != "{\"str\":\"---------restart\"}\n" {
                tally.fail(
                    start,
                    format!("status {}: {}", response.status, response.text()),
                );
                break;
            }
            tally.ok.fetch_add(1, Ordering::Relaxed);
            if response.header("Connection") == Some("close") {
                if keep_alive {
                    tally.closes.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
}

/// "leftpad: stopped after answering N requests" from a server's stderr.
fn answered(server: &Server) -> u64 {
    let stderr = server.stderr();
    stderr
        .split("stopped after answering ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count on exit: {stderr}"))
}

/// The process's request total in `/debug/vars`.
fn requests_so_far(server: &Server) -> u64 {
    let vars = admin_get(server.admin.expect("admin on"), "/debug/vars").text();
    let key = "\"total\":{\"requests\":{\"total\":";
    vars.split(key)
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request total in {vars}"))
}

#[test]
fn a_takeover_under_load_loses_no_request() {
    allow_migration();
    for driver in common::drivers() {
        takeover_under_load(&driver);
    }
}

fn takeover_under_load(driver: &str) {
    let args = [
        "--driver",
        driver,
        "--workers",
        "2",
        "--access-log",
        "off",
        "--statsd",
        "off",
    ];
    let mut old = Server::start(&args);
    let addr = old.addr;
    let listen = addr.to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    // Keep-alive clients, which all reconnect when the drain answers them with
    // `Connection: close`, and some that connect for every request. (Without
    // tcp_migrate_req, this many found a reset in about one run of five.)
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || client(addr, i < 24, stop, tally, start))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tally.ok.load(Ordering::Relaxed) > 0,
        "no load on the old server"
    );

    // The new process: it serves once its startup line is out (the harness waits for it).
    let mut new = Server::start(&[&args[..], &["--listen", &listen, "--takeover"]].concat());
    let line = new.stderr();
    assert!(
        line.contains(&format!("listening on http://{addr}, takeover")),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(200));

    old.signal(libc::SIGTERM);
    let status = old.wait(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{}", old.stderr());
    let ok_at_exit = tally.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client thread panicked");
    }
    let failures = tally.failures.lock().unwrap().clone();
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req");
    assert_eq!(
        failed,
        0,
        "{driver}: {failed} failed requests of {} (net.ipv4.tcp_migrate_req: {migrate:?}): \
         {failures:#?}\nold: {}\nnew: {}",
        ok + failed,
        old.stderr(),
        new.stderr()
    );
    // Requests go on after the old process is gone, all of them to the new one.
    let after_exit = ok - ok_at_exit;
    assert!(
        after_exit > 100,
        "only {after_exit} requests after the old exited"
    );

    new.signal(libc::SIGTERM);
    assert_eq!(new.wait(Duration::from_secs(8)).code(), Some(0));
    let (by_old, by_new) = (answered(&old), answered(&new));
    let closes = tally.closes.load(Ordering::Relaxed);
    eprintln!("{driver}: {ok} requests, 0 failed: {by_old} answered by the old process, {by_new} by the new; {closes} keep-alive connections closed");
    assert!(by_old > 0 && by_new > 0, "old {by_old}, new {by_new}");
    // Every request answered reached a client, and every client's request was answered.
    assert_eq!(
        by_old + by_new,
        ok,
        "old {by_old} + new {by_new} != {ok} answers read"
    );
    // The drain told each keep-alive client (all were on the old process) to reconnect.
    assert!(closes >= 24, "{closes} keep-alive connections closed");
}

#[test]
fn without_takeover_a_second_server_is_refused() {
    let old = Server::start(&["--access-log", "off", "--statsd", "off"]);
    let admin = old.admin.unwrap().to_string();
    for (args, flag) in [
        (vec!["--listen", &*old.addr.to_string()], "--listen"),
        // The admin listener shares its port (SO_REUSEPORT) for --takeover, yet a plain
        // start is still refused there.
        (
            vec!["--listen", "127.0.0.1:0", "--admin", &admin],
            "--admin",
        ),
    ] {
        let out = common::leftpad_command()
            .args(&args)
            .args(["--access-log", "off", "--statsd", "off"])
            .output()
            .expect("run leftpad");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(
            stderr.contains("address is already in use"),
            "{flag}: {stderr}"
        );
        if flag == "--admin" {
            assert!(stderr.contains(&format!("--admin {admin}")), "{stderr}");
        }
    }
}

#[test]
fn takeover_from_the_environment_joins_admin_and_metrics_too() {
    allow_migration();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics.local_addr().unwrap().to_string();
    drop(metrics);
    let args = [
        "--access-log",
        "off",
        "--statsd",
        "off",
        "--metrics",
        &metrics_addr,
    ];
    let mut old = Server::start(&args);
    let admin = old.admin.unwrap().to_string();
    let listen = old.addr.to_string();
    let joined = [&args[..], &["--listen", &listen, "--admin", &admin]].concat();
    let mut new = Server::start_with_env(&joined, &[("LEFTPAD_TAKEOVER", "1")]);
    assert!(new.stderr().contains("takeover"), "{}", new.stderr());
    assert_eq!(new.admin, old.admin);
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait(Duration::from_secs(8)).code(), Some(0));
    // The ports are the new process's alone now, and answer.
    requests_so_far(&new);
    let metrics = admin_get(metrics_addr.parse().unwrap(), "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(common::exchange(&new, &get("/healthz")).0.status, 200);
    new.signal(libc::SIGTERM);
    assert_eq!(new.wait(Duration::from_secs(8)).code(), Some(0));
}
