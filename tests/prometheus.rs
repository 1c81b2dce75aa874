//! Prometheus `/metrics` (README.md, "Metrics (Prometheus)"): `promtool check metrics` finds nothing, and a real
//! Prometheus server scraping the server counts exactly the requests sent.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_get, get, read_response, Server};

/// Prometheus' tools are Debian's `prometheus` package, which `scripts/test.sh` installs;
/// a test whose tool is missing fails with the hint (it never passes unchecked).
fn tool(name: &str) -> String {
    let found = Command::new(name).arg("--version").output().is_ok();
    assert!(
        found,
        "`{name}` is needed for this test: run scripts/test.sh, which installs it (apt-get install prometheus)"
    );
    name.to_owned()
}

/// Sends `n` requests over one keep-alive connection: leftpad 200s, some 400s and 404s,
/// and health checks.
fn send_requests(server: &Server, n: usize) {
    let mut s = server.connect();
    for i in 0..n {
        let target = match i % 10 {
            0 => "/nope",
            1 => "/v1/leftpad/?str=x&len=ten",
            2 => "/healthz",
            _ => "/v1/leftpad/?str=test&len=20&chr=*",
        };
        s.write_all(&get(target)).unwrap();
        read_response(&mut s, false).unwrap();
    }
}

fn metrics_addr(server: &Server) -> SocketAddr {
    let stderr = server.stderr();
    stderr
        .split("metrics http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in the startup line: {stderr}"))
}

#[test]
fn promtool_finds_nothing_to_fix() {
    let promtool = tool("promtool");
    let log = std::env::temp_dir().join(format!("leftpad-prom-{}.log", std::process::id()));
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = Server::start(&[
        "--access-log",
        log.to_str().unwrap(),
        "--statsd",
        &statsd.local_addr().unwrap().to_string(),
    ]);
    send_requests(&server, 50);
    let metrics = admin_get(server.admin.unwrap(), "/metrics");
    drop(server);
    let _ = std::fs::remove_file(&log);
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = metrics.text();
    for family in [
        "leftpad_http_requests_total",
        "leftpad_http_request_duration_seconds_bucket",
        "leftpad_connections_open",
        "leftpad_access_log_lines_total",
        "leftpad_statsd_packets_total",
        "leftpad_heap_allocations_total",
        "leftpad_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(binary: &str, target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("leftpad-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: leftpad\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    /// The single value of an instant query, if there is one.
    fn query(&self, expression: &str) -> Option<f64> {
        let encoded: String = expression
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let body = &response[response.find("\r\n\r\n")? + 4..];
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn a_real_prometheus_counts_every_request() {
    let prometheus = tool("prometheus");
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--workers", "2"]);
    let target = metrics_addr(&server);
    // The metrics-only listener serves nothing else.
    assert_eq!(admin_get(target, "/debug/pprof/").status, 404);
    assert_eq!(admin_get(target, "/metrics").status, 200);

    let sent = 300;
    send_requests(&server, sent);
    let prometheus = Prometheus::start(&prometheus, target);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut requests, mut observed) = (None, None);
    while Instant::now() < deadline {
        requests = prometheus.query("sum(leftpad_http_requests_total)");
        observed = prometheus.query("sum(leftpad_http_request_duration_seconds_count)");
        if requests == Some(sent as f64) && observed == Some(sent as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        requests,
        Some(sent as f64),
        "requests counted by Prometheus"
    );
    assert_eq!(observed, Some(sent as f64), "histogram count in Prometheus");
    let not_found = prometheus.query("sum(leftpad_http_requests_total{code=\"404\"})");
    assert_eq!(not_found, Some((sent / 10) as f64));
}
