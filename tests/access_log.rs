//! The access log (README.md, "Access log") against the real binary: every answered
//! request logged once, hostile bytes kept on one line, reopening on SIGHUP, startup
//! errors and the default (stdout).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::{exchange, get, read_response, Server};

fn temp_path(name: &str) -> PathBuf {
    common::scratch_dir(name).join("access.log")
}

/// Checks one access-log line and returns (url, ua, status).
fn parse_line(line: &str) -> (String, String, u16) {
    assert!(
        line.bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
        "raw control or non-ASCII byte in {line:?}"
    );
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    let time = fields[0];
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{line:?}"
    );
    let field = |i: usize, name: &str| {
        fields[i]
            .strip_prefix(&format!("{name} "))
            .unwrap_or_else(|| panic!("field {i} of {line:?} is not {name}"))
            .to_owned()
    };
    let ip = field(2, "ip");
    assert!(ip.starts_with("127.0.0.1:"), "{line:?}");
    let us: u64 = field(5, "us").parse().unwrap();
    assert!(us < 10_000_000);
    (
        field(1, "url"),
        field(3, "ua"),
        field(4, "status").parse().unwrap(),
    )
}

/// Sends a mix of requests from `connections` parallel clients; returns the count of
/// answers by status.
fn mixed_load(server: &Server, connections: usize, per_connection: usize) -> HashMap<u16, usize> {
    let requests: [(&[u8], u16); 5] = [
        (b"GET /v1/leftpad/?str=test&len=10&chr=* HTTP/1.1\r\nHost: t\r\nUser-Agent: mixed/1\r\n\r\n", 200),
        (b"GET /v1/leftpad/?len=x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n", 404),
        (b"DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"HEAD /v1/leftpad/?len=3 HTTP/1.1\r\nHost: t\r\n\r\n", 200),
    ];
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut counts = HashMap::new();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for i in 0..per_connection {
                    let (raw, status) = requests[(c + i) % requests.len()];
                    s.write_all(raw).unwrap();
                    let r = read_response(&mut s, raw.starts_with(b"HEAD")).unwrap();
                    assert_eq!(r.status, status);
                    *counts.entry(status).or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = HashMap::new();
    for t in threads {
        for (status, n) in t.join().unwrap() {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

fn status_counts<'a>(lines: impl Iterator<Item = &'a str>) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        *counts.entry(parse_line(line).2).or_insert(0) += 1;
    }
    counts
}

#[test]
fn every_answered_request_is_logged_once_even_at_shutdown() {
    let path = temp_path("exact");
    let log = path.to_str().unwrap();
    // A long flush interval: the lines reach the file only when buffers fill or at exit.
    let mut server = Server::start(&[
        "--workers",
        "2",
        "--access-log",
        log,
        "--log-flush-ms",
        "600000",
        "--statsd",
        "off",
    ]);
    let mut sent = mixed_load(&server, 16, 40);
    // Protocol errors are answered and logged too (without a URL).
    for _ in 0..4 {
        let (r, _) = exchange(&server, b"NOT HTTP\x00\r\n\r\n");
        assert_eq!(r.status, 400);
        *sent.entry(400).or_insert(0) += 1;
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), 16 * 40 + 4);
    assert_eq!(status_counts(text.lines()), sent);
    assert!(text.contains("\turl /v1/leftpad/?str=test&len=10&chr=*\t"));
    assert!(text.contains("\tua mixed/1\tstatus 200\t"));
    assert!(text.contains("\turl -\t"), "unparsed requests log url -");
}

#[test]
fn hostile_bytes_stay_on_one_line() {
    let path = temp_path("hostile");
    let mut server = Server::start(&["--access-log", path.to_str().unwrap(), "--statsd", "off"]);
    // Raw UTF-8 in the target and a tab, 0xFF and a backslash in the User-Agent are
    // accepted by the parser and must be escaped in the log.
    let evil: &[u8] = b"GET /v1/leftpad/?str=\xc3\xa9&len=3%0A HTTP/1.1\r\nHost: t\r\n\
        User-Agent: evil\tua\xff\\ 2026-01-01T00:00:00.000Z\turl /forged\r\n\r\n";
    assert_eq!(exchange(&server, evil).0.status, 400);
    // Other control characters make the head malformed: still exactly one line.
    let escape: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: a\x1b[31mb\r\n\r\n";
    assert_eq!(exchange(&server, escape).0.status, 400);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<_> = text.lines().map(parse_line).collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert_eq!(lines[0].0, "/v1/leftpad/?str=\\xc3\\xa9&len=3%0A");
    assert_eq!(
        lines[0].1,
        "evil\\x09ua\\xff\\x5c 2026-01-01T00:00:00.000Z\\x09url /forged"
    );
    assert_eq!((lines[1].0.as_str(), lines[1].2), ("-", 400));
}

#[test]
fn sighup_reopens_the_log_without_losing_lines() {
    let path = temp_path("rotate");
    let rotated = path.with_extension("log.1");
    let mut server = Server::start(&[
        "--workers",
        "2",
        "--access-log",
        path.to_str().unwrap(),
        "--log-flush-ms",
        "600000",
        "--statsd",
        "off",
    ]);
    let before = mixed_load(&server, 4, 25);
    std::fs::rename(&path, &rotated).unwrap();
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(400));
    assert!(path.exists(), "SIGHUP did not recreate the log file");
    let after = mixed_load(&server, 4, 10);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));

    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert_eq!(status_counts(old.lines()), before);
    assert_eq!(status_counts(new.lines()), after);
}

#[test]
fn unwritable_log_path_fails_at_startup() {
    let out = common::leftpad_command()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "/nonexistent-dir/leftpad/access.log",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--access-log /nonexistent-dir/leftpad/access.log")
            && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn the_default_log_goes_to_stdout() {
    let mut server = Server::start(&["--statsd", "off"]);
    for _ in 0..3 {
        exchange(&server, &get("/healthz"));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    let out = server.stdout();
    assert_eq!(out.lines().count(), 3, "{out:?}");
    assert!(out.lines().all(|l| parse_line(l).0 == "/healthz"));
}
