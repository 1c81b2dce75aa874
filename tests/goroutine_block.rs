//! `/debug/pprof/goroutine` and `/debug/pprof/block`, `/mutex` (README.md, "Profiling and
//! live counters"): connection tasks by what they wait for, and where threads waited,
//! read by the real `go tool pprof`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{admin_get, assert_mappings, get, go_pprof, load, read_response, top_rows, Server};

/// The value of the `-top` row whose name contains `name` (0 if there is none).
fn top_value(top: &str, name: &str) -> i64 {
    top.lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[test]
fn goroutine_profile_counts_connections_by_state() {
    let server = Server::start(&["--workers", "2", "--access-log", "off", "--statsd", "off"]);
    let admin = server.admin.unwrap();
    // 100 keep-alive connections that were answered once and now sit idle.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(&get("/healthz")).unwrap();
            assert_eq!(read_response(&mut s, false).unwrap().status, 200);
            s
        })
        .collect();
    // 3 that sent half a head.
    let partial: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    // The workers note a state when they next wait; give them a moment (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = admin_get(admin, "/debug/pprof/goroutine?debug=1").text();
        if text.starts_with("connection tasks: total 103") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.starts_with("connection tasks: total 103"), "{text}");
    // Idle, with a task or (idle for over a second: opening 100 connections can take
    // that long on a loaded machine) parked without one.
    let idle_count = text.matches("state Idle").count() + text.matches("state Parked").count();
    assert_eq!(idle_count, 100, "{text}");
    assert_eq!(text.matches("state Head").count(), 3, "{text}");
    assert!(text.contains("requests 1  bytes in"), "served once: {text}");

    let profile = admin_get(admin, "/debug/pprof/goroutine");
    assert_eq!(profile.status, 200);
    let top = go_pprof(&profile.body, &["-top"]);
    let idle_tasks = top_value(&top, "idle between requests") + top_value(&top, "idle, parked");
    assert_eq!(idle_tasks, 100, "{top}");
    assert_eq!(top_value(&top, "waiting for a request head"), 3, "{top}");
    let traces = go_pprof(&profile.body, &["-traces"]);
    assert!(
        traces.contains("worker 0") && traces.contains("worker 1"),
        "{traces}"
    );
    // The binary first, as in every profile: the task's entry function is code in it,
    // named by the symbolizer; the frames that are not code (states, workers) are in a
    // mapping of their own that holds their addresses.
    let (mappings, locations) = assert_mappings(&profile.body);
    let synthetic = mappings.iter().find(|m| m.file == "[synthetic]");
    let binary = &mappings[0];
    for location in &locations {
        let in_binary = location.mapping == Some(binary.id);
        let named_entry = location
            .functions
            .iter()
            .any(|f| f.contains("leftpad::shell::worker::connection::connection_task"));
        assert!(
            (in_binary && named_entry) || synthetic.is_some_and(|m| location.mapping == Some(m.id)),
            "{location:?} in {mappings:#?}"
        );
    }
    assert!(
        locations.iter().any(|l| l.mapping == Some(binary.id)),
        "the task's entry function is a location of the binary: {locations:#?}"
    );
    drop((idle, partial));
}

#[test]
fn the_workers_never_wait_on_a_lock_under_load() {
    let log = std::env::temp_dir().join(format!("leftpad-block-{}.log", std::process::id()));
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = Server::start(&[
        "--access-log",
        log.to_str().unwrap(),
        "--log-buffer",
        "4096",
        "--statsd",
        &statsd.local_addr().unwrap().to_string(),
    ]);
    let admin = server.admin.unwrap();
    let (stop, loader) = load(&server);
    let block = admin_get(admin, "/debug/pprof/block?seconds=2");
    let mutex = admin_get(admin, "/debug/pprof/mutex");
    stop.store(true, Ordering::Relaxed);
    assert!(loader.join().unwrap() > 1000);
    drop(server);
    let _ = std::fs::remove_file(&log);
    for profile in [&block, &mutex] {
        assert_eq!(profile.status, 200, "{}", profile.text());
        assert_mappings(&profile.body);
        let raw = go_pprof(&profile.body, &["-raw"]);
        assert!(
            raw.contains("contentions/count") && raw.contains("delay/nanoseconds"),
            "{raw}"
        );
    }
    // The log writer waits in write(2), off the request path: that is what shows.
    let traces = go_pprof(&block.body, &["-traces"]);
    assert!(
        traces.contains("leftpad::telemetry::accesslog"),
        "the writer's writes:\n{traces}"
    );
    // No worker waited on anything: no stack passes through the worker's code.
    assert!(
        !traces.contains("leftpad::shell::worker::"),
        "a worker waited:\n{traces}"
    );
    // Stacks end at the waiting call, the writer's write, not in the profiler's wrapper.
    for profile in [&block, &mutex] {
        let top = go_pprof(&profile.body, &["-top", "-nodecount=100000"]);
        let leaves: Vec<String> = top_rows(&top)
            .into_iter()
            .filter(|(flat, _)| *flat > 0.0)
            .map(|(_, name)| name)
            .collect();
        assert!(
            !leaves
                .iter()
                .any(|name| name.starts_with("leftpad::profile::")),
            "a profiler frame is a leaf:\n{top}"
        );
        if std::ptr::eq(profile, &block) {
            assert!(
                leaves
                    .iter()
                    .any(|name| name == "leftpad::telemetry::accesslog::writer::write_lines"),
                "the writer's write is the leaf:\n{top}"
            );
        }
    }
    let mutex_traces = go_pprof(&mutex.body, &["-traces"]);
    assert!(
        !mutex_traces.contains("leftpad::shell::worker::"),
        "{mutex_traces}"
    );
}
