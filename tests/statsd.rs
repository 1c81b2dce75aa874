//! StatsD metrics (README.md, "Metrics (StatsD)") against the real binary: a raw UDP
//! capture (rates, batching, packet bounds, a server that is down, then up) and the real
//! Etsy StatsD daemon (npm `statsd`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_get, exchange, get, read_response, Server};

/// A StatsD stand-in: a UDP socket read by a thread as datagrams arrive (so none is
/// dropped by a full receive buffer) until it has been quiet for a while after `finish`.
struct Capture {
    addr: String,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Capture {
    fn start() -> Capture {
        Capture::on("127.0.0.1:0")
    }

    /// A capture on a given address (`127.0.0.1:0` for any free port).
    fn on(addr: &str) -> Capture {
        let socket = UdpSocket::bind(addr).unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let thread = std::thread::spawn(move || {
            let mut packets = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => packets.push(String::from_utf8(buf[..n].to_vec()).unwrap()),
                    Err(_) if finished.load(std::sync::atomic::Ordering::Relaxed) => {
                        return packets
                    }
                    Err(_) => {}
                }
            }
        });
        Capture { addr, done, thread }
    }

    /// The datagrams received, once the sender has exited.
    fn finish(self) -> Vec<String> {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Sends `n` requests for `target` on one connection, 16 pipelined at a time.
fn pipelined(server: &Server, target: &str, n: usize, status: u16) {
    let mut s = server.connect();
    let request = get(target);
    let mut left = n;
    while left > 0 {
        let batch = left.min(16);
        s.write_all(&request.repeat(batch)).unwrap();
        for _ in 0..batch {
            assert_eq!(read_response(&mut s, false).unwrap().status, status);
        }
        left -= batch;
    }
}

fn lines_of(packets: &[String]) -> Vec<&str> {
    packets.iter().flat_map(|p| p.split('\n')).collect()
}

fn count_prefix(lines: &[&str], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn statsd_at_rate_1_counts_exactly() {
    let statsd = Capture::start();
    let mut server = Server::start(&[
        "--statsd-aggregate",
        "off",
        "--workers",
        "2",
        "--statsd",
        &statsd.addr,
        "--statsd-sample-rate",
        "1",
        "--access-log",
        "off",
    ]);
    pipelined(&server, "/v1/leftpad/?str=abc&len=5", 300, 200);
    pipelined(&server, "/v1/leftpad/?len=oops", 40, 400);
    pipelined(&server, "/missing", 20, 404);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    let packets = statsd.finish();
    assert!(packets.iter().all(|p| p.len() <= 1432));
    let lines = lines_of(&packets);
    assert_eq!(
        count_prefix(&lines, "leftpad.request.leftpad.count:1|c"),
        340
    );
    assert_eq!(count_prefix(&lines, "leftpad.request.leftpad.timing:"), 340);
    assert_eq!(count_prefix(&lines, "leftpad.request.str.len:3|h"), 300);
    assert_eq!(count_prefix(&lines, "leftpad.response.status.400:1|c"), 40);
    assert_eq!(count_prefix(&lines, "leftpad.response.status.404:1|c"), 20);
    assert_eq!(
        lines.len(),
        340 * 2 + 300 + 60,
        "unexpected lines: {:?}",
        &lines[..5]
    );
    for line in lines.iter().filter(|l| l.contains(".timing:")) {
        let value = line.split(':').nth(1).unwrap().strip_suffix("|ms").unwrap();
        let (whole, frac) = value.split_once('.').unwrap();
        assert!(
            whole.bytes().all(|b| b.is_ascii_digit()) && frac.len() == 3,
            "{line}"
        );
    }
}

#[test]
fn statsd_sampling_batching_and_packet_bound() {
    let statsd = Capture::start();
    let mut server = Server::start(&[
        "--statsd-aggregate",
        "off",
        "--statsd",
        &statsd.addr,
        "--statsd-max-packet",
        "256",
        "--statsd-prefix",
        "my:app",
        "--access-log",
        "off",
    ]);
    const N: usize = 2000;
    pipelined(&server, "/v1/leftpad/?str=abcd&len=8", N, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    let packets = statsd.finish();
    assert!(packets.iter().all(|p| p.len() <= 256 && !p.ends_with('\n')));
    let lines = lines_of(&packets);
    assert!(
        lines.len() as f64 / packets.len() as f64 > 3.0,
        "lines are batched"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("my_app.") && l.ends_with("|@0.5")),
        "{:?}",
        &lines[..3]
    );
    // Each metric: Binomial(2000, 0.5), mean 1000, sd 22.4; allow 5 sd.
    for metric in [
        "my_app.request.leftpad.count:1|c",
        "my_app.request.leftpad.timing:",
        "my_app.request.str.len:4|h",
    ] {
        let kept = count_prefix(&lines, metric);
        assert!((888..=1112).contains(&kept), "{metric}: {kept} of {N}");
    }
}

/// The StatsD server is down, then starts: metrics arrive again without a restart
/// (README.md, "Metrics (StatsD)"). Sends to the dead port fail and are counted; the socket stays usable.
#[test]
fn statsd_resumes_when_its_server_starts() {
    let free = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free); // nothing listens there now
    let mut server = Server::start(&[
        "--statsd",
        &addr,
        "--statsd-sample-rate",
        "1",
        "--statsd-flush-ms",
        "20",
        "--access-log",
        "off",
    ]);
    pipelined(&server, "/v1/leftpad/?str=a&len=2", 100, 200);
    std::thread::sleep(Duration::from_millis(300)); // flushed into the void
    let statsd = Capture::on(&addr);
    pipelined(&server, "/v1/leftpad/?str=a&len=2", 50, 200);
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    let packets = statsd.finish();
    let counted: u64 = lines_of(&packets)
        .iter()
        .filter_map(|l| l.strip_prefix("leftpad.request.leftpad.count:"))
        .filter_map(|v| v.strip_suffix("|c")?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        counted, 50,
        "the requests after the server started: {packets:?}"
    );
}

#[test]
fn no_statsd_listener_does_no_harm() {
    // A port with nothing behind it: sends are refused (ICMP), counted, ignored.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let server = Server::start(&[
        "--statsd",
        &closed,
        "--statsd-sample-rate",
        "1",
        "--statsd-flush-ms",
        "1",
    ]);
    for _ in 0..5 {
        pipelined(&server, "/v1/leftpad/?str=x&len=3&chr=0", 200, 200);
    }
    let (r, _) = exchange(&server, &get("/v1/leftpad/?str=x&len=3&chr=0"));
    assert_eq!(r.text(), "{\"str\":\"00x\"}\n");
}

// ----- the real StatsD daemon -----

/// The Etsy StatsD daemon (npm `statsd`), installed under target/ on first use.
struct StatsdDaemon {
    child: Child,
    udp_port: u16,
    mgmt_port: u16,
}

fn statsd_script() -> PathBuf {
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/statsd");
    let script = prefix.join("node_modules/statsd/stats.js");
    if !script.exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
            .arg(&prefix)
            .arg("statsd@0.9.0")
            .status()
            .expect("npm is needed to install the StatsD daemon for this test: run scripts/test.sh, which installs it (apt-get install npm)");
        assert!(status.success(), "npm install statsd failed");
    }
    script
}

impl StatsdDaemon {
    fn start() -> StatsdDaemon {
        let script = statsd_script();
        let udp_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mgmt_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = common::scratch_dir("statsd").join("config.js");
        std::fs::write(
            &config,
            format!(
                "{{ port: {udp_port}, address: \"127.0.0.1\", mgmt_port: {mgmt_port}, \
                 mgmt_address: \"127.0.0.1\", flushInterval: 3600000, backends: [] }}"
            ),
        )
        .unwrap();
        let child = Command::new("node")
            .arg(script)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let daemon = StatsdDaemon {
            child,
            udp_port,
            mgmt_port,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", mgmt_port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "StatsD did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon.wait_for_udp(start);
        daemon
    }

    /// Waits until the daemon counts what reaches its UDP port: its management port can
    /// be up before its UDP socket is bound, and a datagram sent to a port nobody holds
    /// yet is refused, which the server counts as a send error and the test as a lost
    /// count. A probe counter that shows up proves the socket bound and read.
    fn wait_for_udp(&self, start: Instant) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        loop {
            let _ = probe.send_to(b"test.probe:1|c", ("127.0.0.1", self.udp_port));
            if inspected_number(&self.admin("counters"), "test.probe").is_some() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "StatsD never counted a datagram sent to its UDP port"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Datagrams the kernel dropped for the daemon's socket (its receive buffer was full
    /// while the daemon did not read): the `drops` column of /proc/net/udp.
    fn kernel_drops(&self) -> u64 {
        let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        let local = format!("0100007F:{:04X}", self.udp_port);
        table
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
            .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    }

    /// Runs a management command (`counters`, `timers`) and returns its answer.
    fn admin(&self, command: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.mgmt_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        for line in BufReader::new(s).lines() {
            let line = line.unwrap();
            if line == "END" {
                break;
            }
            answer.push_str(&line);
            answer.push('\n');
        }
        answer
    }
}

impl Drop for StatsdDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `'name': ` in StatsD's (util.inspect) management output.
fn inspected_number(text: &str, name: &str) -> Option<f64> {
    let at = text.find(&format!("'{name}': "))? + name.len() + 4;
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// How many values StatsD holds for a timer (util.inspect shows 100, then "... N more items").
fn timer_values(text: &str, name: &str) -> usize {
    let Some(start) = text.find(&format!("'{name}': [")) else {
        return 0;
    };
    let list = &text[start..start + text[start..].find(']').unwrap()];
    let shown = list
        .split(',')
        .filter(|v| {
            v.trim()
                .trim_start_matches(&format!("'{name}': ["))
                .trim()
                .parse::<f64>()
                .is_ok()
        })
        .count();
    let more = list
        .split("... ")
        .nth(1)
        .and_then(|m| m.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    shown + more
}

/// The Etsy daemon's counters and timers after `n` leftpad requests to a server with
/// `args` (two workers; SIGTERM flushes everything before the figures are read).
///
/// The counts are exact, not merely likely: the daemon's UDP socket is known to be read
/// before the first request (`wait_for_udp`), the requests go one at a time (a datagram
/// every dozen requests or so, far below what the daemon reads), the server's own count
/// of failed sends is checked to be 0, and so is the kernel's count of datagrams dropped
/// for the daemon's socket; a count that still differs is a bug, not noise.
fn through_the_daemon(args: &[&str], n: usize) -> (String, String) {
    let daemon = StatsdDaemon::start();
    let target = format!("127.0.0.1:{}", daemon.udp_port);
    let mut all = vec!["--workers", "2", "--statsd", &target, "--access-log", "off"];
    all.extend_from_slice(args);
    let mut server = Server::start(&all);
    let mut s = server.connect();
    for i in 0..n {
        s.write_all(&get(&format!("/v1/leftpad/?str={i}&len=8")))
            .unwrap();
        assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    }
    let mut more = [0u8; 1];
    let _ = (&mut s).take(0).read(&mut more);
    let admin = server.admin.expect("the test server has an admin listener");
    let vars: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/debug/vars").text()).unwrap();
    assert_eq!(
        vars["total"]["statsd"]["send_errors"], 0,
        "the server failed to send StatsD datagrams: {vars}"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));

    let start = Instant::now();
    let counters = loop {
        let counters = daemon.admin("counters");
        let count = inspected_number(&counters, "leftpad.request.leftpad.count");
        if count == Some(n as f64) || start.elapsed() > Duration::from_secs(3) {
            break counters;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        inspected_number(&counters, "statsd.bad_lines_seen"),
        Some(0.0),
        "{counters}"
    );
    assert_eq!(
        daemon.kernel_drops(),
        0,
        "the kernel dropped datagrams for the daemon's socket"
    );
    (counters, daemon.admin("timers"))
}

#[test]
fn the_real_statsd_daemon_counts_every_request() {
    // Both modes are exact at rate 1.
    const N: usize = 500;
    for mode in ["off", "on"] {
        let args = ["--statsd-sample-rate", "1", "--statsd-aggregate", mode];
        let (counters, timers) = through_the_daemon(&args, N);
        assert_eq!(
            inspected_number(&counters, "leftpad.request.leftpad.count"),
            Some(N as f64),
            "aggregate {mode}: {counters}"
        );
        assert_eq!(
            timer_values(&timers, "leftpad.request.leftpad.timing"),
            N,
            "aggregate {mode}: {timers}"
        );
    }
}

#[test]
fn aggregated_counters_are_exact_at_any_sample_rate() {
    const N: usize = 1000;
    let (counters, timers) = through_the_daemon(&["--statsd-sample-rate", "0.5"], N);
    assert_eq!(
        inspected_number(&counters, "leftpad.request.leftpad.count"),
        Some(N as f64),
        "counters are summed, never sampled: {counters}"
    );
    // Timer values are sampled: Binomial(1000, 0.5), mean 500, sd 15.8; allow 5 sd.
    let kept = timer_values(&timers, "leftpad.request.leftpad.timing");
    assert!(
        (421..=579).contains(&kept),
        "{kept} timer values of {N}: {timers}"
    );
}

#[test]
fn aggregated_packets_stay_in_bounds_and_counters_go_once_per_flush() {
    let statsd = Capture::start();
    // One worker and a flush interval longer than the test: the counters go out once,
    // at the shutdown flush; values that fill a line go out as they do.
    let mut server = Server::start(&[
        "--statsd",
        &statsd.addr,
        "--statsd-max-packet",
        "256",
        "--statsd-flush-ms",
        "600000",
        "--access-log",
        "off",
    ]);
    const N: usize = 2000;
    pipelined(&server, "/v1/leftpad/?str=abcd&len=8", N, 200);
    pipelined(&server, "/missing", 30, 404);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    let packets = statsd.finish();
    assert!(
        packets.iter().all(|p| p.len() <= 256 && !p.ends_with('\n')),
        "{packets:?}"
    );
    let lines = lines_of(&packets);
    let count_lines: Vec<&&str> = lines.iter().filter(|l| l.contains(".count:")).collect();
    assert_eq!(count_lines, [&"leftpad.request.leftpad.count:2000|c"]);
    let status_lines: Vec<&&str> = lines.iter().filter(|l| l.contains(".status.")).collect();
    assert_eq!(status_lines, [&"leftpad.response.status.404:30|c"]);
    // Values are packed, many to a line, each with the rate.
    let timing_lines: Vec<&&str> = lines.iter().filter(|l| l.contains(".timing:")).collect();
    let values: usize = timing_lines
        .iter()
        .map(|l| l.matches("|ms|@0.5").count())
        .sum();
    assert!(
        values as f64 / timing_lines.len() as f64 > 5.0,
        "packed: {timing_lines:?}"
    );
    // Binomial(2000, 0.5): mean 1000, sd 22.4; allow 5 sd.
    assert!((888..=1112).contains(&values), "{values}");
}
