//! HTTP/1.1 behaviour over raw TCP (README.md, "Limits, timeouts and security" and "Behaviour choices"): pipelining, keep-alive, framing, limits,
//! timeouts and hostile input, on both I/O drivers where it matters.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{exchange, get, is_closed, read_response, Server};

#[test]
fn pipelined_requests_are_answered_in_order() {
    for driver in common::drivers() {
        let driver = driver.as_str();
        let server = Server::start(&["--driver", driver]);
        let mut s = server.connect();
        let mut batch = Vec::new();
        for i in 0..16 {
            batch.extend(get(&format!("/v1/leftpad/?str={i}&len=3&chr=0")));
        }
        s.write_all(&batch).unwrap();
        for i in 0..16 {
            let r = read_response(&mut s, false).unwrap();
            assert_eq!(r.text(), format!("{{\"str\":\"{i:0>3}\"}}\n"), "{driver}");
        }
    }
}

#[test]
fn requests_split_across_writes() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let request = get("/v1/leftpad/?str=x&len=2");
    for byte in &request {
        s.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        read_response(&mut s, false).unwrap().text(),
        "{\"str\":\" x\"}\n"
    );
}

#[test]
fn keep_alive_rules() {
    let server = Server::start(&[]);
    // HTTP/1.1 stays open.
    let (r, mut s) = exchange(&server, &get("/healthz"));
    assert_eq!(r.header("Connection"), None);
    assert!(!is_closed(&mut s, Duration::from_millis(300)));
    // HTTP/1.0 closes by default.
    let (r, mut s) = exchange(&server, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(is_closed(&mut s, Duration::from_secs(2)));
    // HTTP/1.0 with keep-alive stays open and says so.
    let (r, mut s) = exchange(
        &server,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert!(!is_closed(&mut s, Duration::from_millis(300)));
    // Connection: close is honoured, and what is pipelined after it is not answered.
    let mut s = server.connect();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(read_response(&mut s, false).is_none());
}

#[test]
fn application_errors_keep_the_connection_open() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    for (request, status) in [
        (get("/v1/leftpad/?len=abc"), 400),
        (get("/missing"), 404),
        (b"PUT /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 405),
        (get("/healthz"), 200),
    ] {
        s.write_all(&request).unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!(r.status, status);
        assert_eq!(r.header("Connection"), None);
    }
}

#[test]
fn request_bodies_are_read_and_discarded() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    let body = "x".repeat(100_000);
    let request = format!(
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(&get("/v1/leftpad/?len=2")).unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 405);
    let r = read_response(&mut s, false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "{\"str\":\"  \"}\n"));
}

/// Sends `request`, expects `status`, a JSON error body, and the connection closed.
fn rejected_and_closed(server: &Server, request: &[u8], status: u16) {
    let (r, mut s) = exchange(server, request);
    assert_eq!(
        r.status,
        status,
        "{}",
        String::from_utf8_lossy(&request[..request.len().min(80)])
    );
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(r.text().starts_with("{\"error\":\""), "{}", r.text());
    assert!(
        is_closed(&mut s, Duration::from_secs(5)),
        "still open after {status}"
    );
}

#[test]
fn framing_and_smuggling_guards() {
    for driver in common::drivers() {
        let driver = driver.as_str();
        let server = Server::start(&["--driver", driver]);
        rejected_and_closed(
            &server,
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
        );
        rejected_and_closed(
            &server,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
            400,
        );
        rejected_and_closed(
            &server,
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        );
        rejected_and_closed(
            &server,
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
            400,
        );
        rejected_and_closed(
            &server,
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
            400,
        );
        rejected_and_closed(&server, b"GET / HTTP/1.1\r\nNo Colon Here\r\n\r\n", 400);
        rejected_and_closed(&server, b"GET / HTTP/1.1\r\n\r\n", 400);
        rejected_and_closed(&server, b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505);
    }
}

#[test]
fn size_limits() {
    let server = Server::start(&[
        "--max-head-size",
        "1024",
        "--max-headers",
        "10",
        "--max-body-size",
        "100",
    ]);
    let long_target = format!(
        "GET /v1/leftpad/?str={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(2000)
    );
    rejected_and_closed(&server, long_target.as_bytes(), 414);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    rejected_and_closed(&server, big_header.as_bytes(), 431);
    let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
    rejected_and_closed(
        &server,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
        431,
    );
    rejected_and_closed(
        &server,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
        413,
    );
    // Just under the limits is fine.
    let (r, _) = exchange(
        &server,
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n",
    );
    assert_eq!(r.status, 405);
}

#[test]
fn header_timeout_closes_slow_heads_with_408() {
    for driver in common::drivers() {
        let driver = driver.as_str();
        let server = Server::start(&["--driver", driver, "--header-timeout", "500ms"]);
        let mut s = server.connect();
        let start = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        // Trickling bytes does not extend the deadline.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(100));
            let _ = s.write_all(b"X: y\r\n");
        }
        let r = read_response(&mut s, false).expect("408 response");
        assert_eq!(r.status, 408);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
        assert!(is_closed(&mut s, Duration::from_secs(2)));
    }
}

#[test]
fn idle_timeout_closes_idle_keep_alive_connections() {
    let server = Server::start(&["--idle-timeout", "500ms"]);
    let (_, mut s) = exchange(&server, &get("/healthz"));
    let start = Instant::now();
    assert!(is_closed(&mut s, Duration::from_secs(3)));
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
}

/// A fresh connection that sends nothing is held for the header timeout, not the idle
/// timeout (nginx's `client_header_timeout`, Go's `ReadHeaderTimeout`), and closed
/// without an answer.
#[test]
fn a_silent_connection_is_closed_after_the_header_timeout() {
    for driver in common::drivers() {
        let server = Server::start(&[
            "--driver",
            &driver,
            "--header-timeout",
            "500ms",
            "--idle-timeout",
            "60s",
        ]);
        let mut silent = server.connect();
        let start = Instant::now();
        let mut byte = [0u8; 1];
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let read = std::io::Read::read(&mut silent, &mut byte);
        let elapsed = start.elapsed();
        assert!(matches!(read, Ok(0)), "closed without an answer: {read:?}");
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
            "{driver}: {elapsed:?}"
        );
        // Once a request was answered, the idle timeout applies between requests.
        let (response, mut kept) = exchange(&server, &get("/healthz"));
        assert_eq!(response.status, 200);
        assert!(
            !is_closed(&mut kept, Duration::from_millis(1500)),
            "{driver}"
        );
    }
}

#[test]
fn a_client_that_does_not_read_is_dropped_and_others_are_served() {
    let server = Server::start(&["--write-timeout", "1s"]);
    let mut hog = server.connect();
    // ~6 KiB per response; far more than the socket buffers hold.
    let request = get("/v1/leftpad/?len=1024&chr=%3C");
    let batch = request.repeat(100);
    hog.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..40 {
        if hog.write_all(&batch).is_err() {
            break;
        }
    }
    // Meanwhile another client is served promptly.
    let start = Instant::now();
    let (r, _) = exchange(&server, &get("/healthz"));
    assert_eq!(r.status, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    // The hog is cut off: reading drains what was sent, then hits the end.
    std::thread::sleep(Duration::from_secs(2));
    assert!(is_closed(&mut hog, Duration::from_secs(10)));
}

#[test]
fn max_connections_refuses_new_and_keeps_old() {
    let server = Server::start(&["--max-connections", "2"]);
    let (_, mut a) = exchange(&server, &get("/healthz"));
    let (_, mut b) = exchange(&server, &get("/healthz"));
    let mut c = server.connect();
    let _ = c.write_all(&get("/healthz"));
    let refused = read_response(&mut c, false);
    assert!(
        refused.as_ref().is_none_or(|r| r.status == 503),
        "{refused:?}"
    );
    assert!(is_closed(&mut c, Duration::from_secs(2)));
    for s in [&mut a, &mut b] {
        s.write_all(&get("/healthz")).unwrap();
        assert_eq!(read_response(s, false).unwrap().status, 200);
    }
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let (r, _) = exchange(&server, &get("/healthz"));
    assert_eq!(r.status, 200);
}

#[test]
fn hostile_input_never_stalls_the_worker() {
    let server = Server::start(&[]);
    let garbage: Vec<Vec<u8>> = vec![
        vec![0u8; 10_000],
        (0..=255u8).cycle().take(20_000).collect(),
        b"GET /".repeat(3000),
        b"\r\n".repeat(5000),
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999999\r\n\r\n".to_vec(),
        b"GET /v1/leftpad/?len=1024&chr=%F0%9F%98%80 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(300),
    ];
    for g in &garbage {
        let mut s = server.connect();
        let _ = s.write_all(g);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        let (r, _) = exchange(&server, &get("/healthz"));
        assert_eq!(r.status, 200);
    }
}

#[test]
fn absolute_form_targets_are_accepted() {
    let server = Server::start(&[]);
    let (r, _) = exchange(
        &server,
        b"GET http://example.com/v1/leftpad/?str=z&len=2 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    assert_eq!(r.text(), "{\"str\":\" z\"}\n");
}
