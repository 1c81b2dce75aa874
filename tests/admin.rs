//! The admin listener (README.md, "Profiling and live counters"): pprof profiles read by the real `go tool pprof`, flame
//! graphs, one profile at a time, `/debug/vars`, and nothing of it on the public port.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{admin_get, exchange, get, go_pprof, load, read_response, Server};

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

#[test]
fn a_profile_under_load_is_read_by_go_tool_pprof() {
    let server = Server::start(&["--workers", "2", "--access-log", "off", "--statsd", "off"]);
    let admin = server.admin.expect("admin address in the startup line");
    let (stop, loader) = load(&server);
    let profile = admin_get(admin, "/debug/pprof/profile?seconds=3");
    stop.store(true, Ordering::Relaxed);
    assert!(loader.join().unwrap() > 1000);

    assert_eq!(profile.status, 200);
    assert_eq!(
        profile.header("Content-Type"),
        Some("application/octet-stream")
    );
    assert_eq!(&profile.body[..2], &[0x1f, 0x8b], "gzip magic");
    assert!(!gunzip(&profile.body).is_empty(), "a protobuf inside");

    let top = go_pprof(&profile.body, &["-top", "-nodecount=500"]);
    assert!(
        top.contains("leftpad::"),
        "no leftpad function in the profile:\n{top}"
    );
}

#[test]
fn flame_graph_is_svg() {
    let server = Server::start(&["--access-log", "off", "--statsd", "off"]);
    let (stop, loader) = load(&server);
    let svg = admin_get(server.admin.unwrap(), "/debug/pprof/flamegraph?seconds=1");
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("Content-Type"), Some("image/svg+xml"));
    assert_svg(&svg.text());
}

fn assert_svg(text: &str) {
    assert!(
        text.contains("<svg") && text.trim_end().ends_with("</svg>"),
        "not an SVG document: {:?}",
        text.chars().take(300).collect::<String>()
    );
}

#[test]
fn flame_graph_of_an_idle_server_is_still_svg() {
    // No load: no user-space samples, for which the renderer used to draw nothing (an
    // empty 200). It is an SVG saying so.
    let server = Server::start(&["--access-log", "off", "--statsd", "off"]);
    let svg = admin_get(server.admin.unwrap(), "/debug/pprof/flamegraph?seconds=1");
    assert_eq!(svg.status, 200);
    assert_svg(&svg.text());
}

#[test]
fn one_profile_at_a_time_and_bad_seconds() {
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    let first = std::thread::spawn(move || admin_get(admin, "/debug/pprof/profile?seconds=2"));
    std::thread::sleep(Duration::from_millis(500));
    let second = admin_get(admin, "/debug/pprof/flamegraph?seconds=1");
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(second.text().contains("already being taken"));
    assert_eq!(first.join().unwrap().status, 200);
    // Once it is done, the next one may run.
    assert_eq!(
        admin_get(admin, "/debug/pprof/profile?seconds=1").status,
        200
    );

    for bad in ["0", "301", "abc", "-5", ""] {
        let r = admin_get(admin, &format!("/debug/pprof/profile?seconds={bad}"));
        assert_eq!(r.status, 400, "seconds={bad}");
        assert!(r.text().contains("from 1 to 300"));
    }
}

#[test]
fn index_and_unknown_paths() {
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    let index = admin_get(admin, "/debug/pprof/");
    assert_eq!(index.status, 200);
    for page in [
        "profile",
        "flamegraph",
        "heap",
        "allocs",
        "goroutine",
        "block",
        "mutex",
        "cmdline",
        "symbol",
    ] {
        assert!(
            index.text().contains(&format!("/debug/pprof/{page}")),
            "{page}"
        );
    }
    assert!(index.text().contains("/debug/vars"));
    assert_eq!(admin_get(admin, "/nope").status, 404);
}

/// A number in `/debug/vars` JSON: `path` is a list of keys from the top.
fn json_number(json: &str, path: &[&str]) -> u64 {
    let mut rest = json;
    for key in path {
        let at = rest
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} missing in {json}"));
        rest = &rest[at + key.len() + 3..];
    }
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
    rest[..end].parse().unwrap()
}

#[test]
fn vars_count_what_happens() {
    // Per-event StatsD lines, so the line count follows the requests exactly.
    let server = Server::start(&[
        "--workers",
        "2",
        "--statsd-sample-rate",
        "1",
        "--statsd-aggregate",
        "off",
    ]);
    let admin = server.admin.unwrap();
    let before = admin_get(admin, "/debug/vars");
    assert_eq!(
        before.header("Content-Type"),
        Some("application/json; charset=utf-8")
    );
    let before = before.text();
    assert!(before.contains("\"uptime_seconds\":"));
    assert!(before.contains("\"driver\":\"io_uring") || before.contains("\"driver\":\"epoll"));

    let mut s = server.connect();
    for i in 0..40 {
        let target = if i % 4 == 0 {
            "/missing"
        } else {
            "/v1/leftpad/?str=x&len=4"
        };
        s.write_all(&get(target)).unwrap();
        read_response(&mut s, false).unwrap();
    }
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let after = admin_get(admin, "/debug/vars").text();
    let grew = |path: &[&str]| json_number(&after, path) - json_number(&before, path);
    assert_eq!(grew(&["total", "requests", "total"]), 40);
    assert_eq!(grew(&["total", "responses", "2xx"]), 30);
    assert_eq!(grew(&["total", "responses", "4xx"]), 10);
    assert_eq!(grew(&["total", "connections", "accepted"]), 1);
    assert_eq!(json_number(&after, &["total", "connections", "open"]), 0);
    assert!(grew(&["total", "bytes", "in"]) > 40 * 30);
    assert!(grew(&["total", "bytes", "out"]) > 40 * 100);
    assert!(
        grew(&["total", "access_log", "lines"]) <= 40,
        "lines are published when shipped"
    );
    assert_eq!(grew(&["total", "statsd", "lines"]), 30 * 3 + 10);
    assert!(json_number(&after, &["total", "heap", "allocations"]) > 0);
}

#[test]
fn the_public_port_has_no_debug_pages() {
    let server = Server::start(&[]);
    for path in [
        "/debug/pprof/",
        "/debug/pprof/profile?seconds=1",
        "/debug/vars",
    ] {
        assert_eq!(exchange(&server, &get(path)).0.status, 404, "{path}");
    }
}

#[test]
fn admin_off_and_admin_in_use() {
    let server = Server::start(&["--admin", "off"]);
    assert!(server.admin.is_none());
    assert!(server.stderr().contains("admin off"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = common::leftpad_command()
        .args(["--listen", "127.0.0.1:0", "--admin", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("--admin {addr}")) && stderr.contains("already in use"),
        "{stderr}"
    );
}
