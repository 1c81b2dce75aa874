//! CPU profiles that see the whole CPU (README.md, "Profiling and live counters"): samples
//! cover the process's user and system time, system calls sit under the Rust code that
//! made them, and the kernel's own frames appear below them where the kernel permits it;
//! the profile names the binary it ran (mappings, build ID) so that `disasm` works. Read
//! by the real `go tool pprof`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::coverage::{cpu_at, days_from_civil, poll_cpu, total_samples, window};
use common::{
    admin_get, assert_mappings, assert_symbols_match, binary_path, go_pprof, load, load_with,
    Server,
};

/// Under emulation (qemu-user in CI's aarch64 run, built with `--cfg leftpad_emulated`)
/// neither per-thread CPU clocks nor perf events behave as on a kernel: the accounting
/// checks inside the tests that still run there are left out, and say so.
fn emulated() -> bool {
    cfg!(leftpad_emulated)
}

/// The stacks of `go tool pprof -traces -lines`, each leaf first, one string per frame
/// (`function file:line`).
fn traces(profile: &[u8]) -> Vec<Vec<String>> {
    let text = go_pprof(profile, &["-traces", "-lines"]);
    text.split("-----------+")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .skip(1)
                .filter(|line| !line.trim().is_empty() && !line.contains("thread:"))
                // The first line of a trace starts with its value ("170ms   tcp_ack ...").
                .map(|line| {
                    let line = line.trim();
                    match line.split_once("   ") {
                        Some((value, frame)) if value.ends_with('s') => frame.trim().to_owned(),
                        _ => line.to_owned(),
                    }
                })
                .collect::<Vec<String>>()
        })
        // A block without frames (a sample whose stack could not be read, or the
        // listing's tail) says nothing about where time went.
        .filter(|trace| !trace.is_empty())
        .collect()
}

fn is_kernel(frame: &str) -> bool {
    frame.contains("[kernel.kallsyms]")
}

/// The server, busy in every thread: pipelined requests whose log lines pass 1 KiB (a
/// long User-Agent), so with a 1 KiB log buffer its writer thread writes about once per
/// request, and StatsD datagrams of at most 64 bytes, about one send per metric line.
fn busy_server(log: &std::path::Path) -> (Server, Vec<u8>) {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let statsd = statsd.local_addr().unwrap().to_string();
    let server = Server::start(&[
        "--access-log",
        log.to_str().unwrap(),
        "--log-buffer",
        "1024",
        "--log-flush-ms",
        "5",
        "--statsd",
        &statsd,
        "--statsd-sample-rate",
        "1",
        "--statsd-max-packet",
        "64",
    ]);
    let user_agent = "a-long-user-agent/1.0 ".repeat(50);
    let request = format!(
        "GET /v1/leftpad/?str=profile&len=64 HTTP/1.1\r\nHost: t\r\nUser-Agent: {user_agent}\r\n\r\n"
    );
    (server, request.into_bytes())
}

/// A 3-second profile under load, and the CPU seconds the server used in the profile's
/// own window (its `Time` and `Duration`), from `/proc/PID/stat` polled meanwhile.
fn profile_under_load(kernel: &str) -> (Vec<u8>, f64) {
    let log = std::env::temp_dir().join(format!("leftpad-cpu-{}-{kernel}.log", std::process::id()));
    let (server, request) = busy_server(&log);
    let (stop, loader) = load_with(&server, request);
    std::thread::sleep(Duration::from_millis(300));
    let (stop_polling, poller) = poll_cpu(server.pid());
    let response = admin_get(
        server.admin.unwrap(),
        &format!("/debug/pprof/profile?seconds=3&kernel={kernel}"),
    );
    stop_polling.store(true, Ordering::Relaxed);
    let polls = poller.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(loader.join().unwrap() > 1000);
    drop(server);
    let _ = std::fs::remove_file(&log);
    assert_eq!(response.status, 200, "{}", response.text());
    let (start, duration) = window(&response.body);
    let used = cpu_at(&polls, start + duration) - cpu_at(&polls, start);
    (response.body, used)
}

/// Samples account for at least 90% of the CPU time the process used in the window
/// (not checked under qemu-user, whose CPU-time accounting is not the kernel's: the
/// profile's other checks still run there).
fn assert_coverage(profile: &[u8], used: f64) {
    if emulated() {
        eprintln!("coverage not checked: CPU-time accounting under emulation is not the kernel's");
        return;
    }
    let top = go_pprof(profile, &["-top", "-nodecount=5"]);
    let sampled = total_samples(&top);
    assert!(
        used > 0.5,
        "the server was busy: {used:.2} CPU seconds in the window"
    );
    assert!(
        sampled >= 0.9 * used,
        "samples {sampled:.2} s cover less than 90% of {used:.2} s CPU:\n{top}"
    );
}

#[test]
fn without_kernel_frames_every_sample_is_kept_and_syscalls_sit_under_their_callers() {
    let (profile, used) = profile_under_load("off");
    assert_coverage(&profile, used);
    let (mappings, _) = assert_mappings(&profile);
    assert!(
        !mappings.iter().any(|m| m.file == "[kernel.kallsyms]"),
        "{mappings:#?}"
    );
    let traces = traces(&profile);
    assert!(
        !traces.iter().flatten().any(|f| is_kernel(f)),
        "kernel=off has no kernel frames"
    );
    let comments = go_pprof(&profile, &["-comments"]);
    assert!(
        comments.contains("kernel frames: not available"),
        "{comments}"
    );
    if emulated() {
        return;
    }
    // The log writer's write(2): libc's wrapper is the leaf, the writer's code above it.
    let writes = traces.iter().find(|t| {
        t[0].contains("libc_write")
            && t.iter()
                .any(|f| f.contains("leftpad::telemetry::accesslog"))
    });
    assert!(
        writes.is_some(),
        "no trace with libc's write under leftpad::telemetry::accesslog:\n{traces:#?}"
    );
    // The StatsD datagram: libc's send, under the metrics code.
    let sends = traces.iter().find(|t| {
        t[0].contains("libc_send") && t.iter().any(|f| f.contains("leftpad::telemetry::statsd"))
    });
    assert!(
        sends.is_some(),
        "no trace with libc's send under leftpad::telemetry::statsd:\n{traces:#?}"
    );
    // The worker's io_uring_enter: libc's syscall(), directly under the io_uring crate.
    let enters = traces
        .iter()
        .find(|t| t.len() > 2 && t[0].starts_with("syscall ") && t[1].contains("io_uring_enter"));
    assert!(
        enters.is_some(),
        "no syscall leaf under io_uring_enter:\n{traces:#?}"
    );
}

#[test]
#[cfg_attr(
    leftpad_emulated,
    ignore = "qemu-user does not emulate perf_event_open"
)]
fn with_kernel_frames_the_profile_continues_below_the_system_call() {
    common::require_root("kernel frames need perf events with the kernel's call chains");
    let (profile, used) = profile_under_load("on");
    assert_coverage(&profile, used);
    // Kernel functions in a mapping of their own, as perf names the kernel.
    let (mappings, locations) = assert_mappings(&profile);
    let kernel = mappings
        .iter()
        .find(|m| m.file == "[kernel.kallsyms]")
        .unwrap_or_else(|| panic!("no kernel mapping: {mappings:#?}"));
    assert!(
        locations.iter().any(|l| l.mapping == Some(kernel.id)),
        "no location in {kernel:?}"
    );
    let traces = traces(&profile);
    // Kernel functions, then the libc function that entered the kernel, then Rust.
    let below_a_syscall = traces.iter().find(|t| {
        let Some(first_user) = t.iter().position(|f| !is_kernel(f)) else {
            return false;
        };
        first_user > 0 && t[first_user..].iter().any(|f| f.contains("leftpad::"))
    });
    assert!(
        below_a_syscall.is_some(),
        "no kernel frames below a system call made by leftpad:\n{traces:#?}"
    );
    let comments = go_pprof(&profile, &["-comments"]);
    assert!(comments.contains("kernel frames: yes"), "{comments}");
}

/// What `-disasm` needs of a Rust function with Go 1.19's `go tool pprof`: its regexp
/// is matched against the profile's (demangled) name, followed by the file in `disasm`'s
/// node names, and against the binary's symbol table as it stands (mangled:
/// `_ZN7leftpad3app7handler3App7leftpad17h<hash>E`), so `App::leftpad$` matches neither.
/// This form matches `leftpad::app::handler::App::leftpad` in both and not its closures.
const DISASM_APP_LEFTPAD: &str = "App(::|7)leftpad( |17h)";

/// The article's `disasm`, on the binary the server runs (a position-independent
/// executable): the profile's first mapping is that binary with its build ID, every
/// location lies in its mapping, `-disasm` prints the function's instructions with
/// samples at addresses `objdump` finds in the binary, and `/debug/pprof/symbol` names
/// every location of the binary as the profile does (callers at their call instruction).
#[test]
#[cfg_attr(
    leftpad_emulated,
    ignore = "no CPU samples under qemu-user, and the host's objdump reads x86-64"
)]
fn disasm_finds_the_samples_of_a_function_in_the_binary_the_server_runs() {
    let server = Server::start(&["--access-log", "off", "--statsd", "off"]);
    let admin = server.admin.unwrap();
    let (stop, loader) = load(&server);
    std::thread::sleep(Duration::from_millis(300));
    let response = admin_get(admin, "/debug/pprof/profile?seconds=3");
    stop.store(true, Ordering::Relaxed);
    assert!(loader.join().unwrap() > 1000);
    assert_eq!(response.status, 200, "{}", response.text());
    let profile = response.body;

    let (mappings, locations) = assert_mappings(&profile);
    if cfg!(target_env = "gnu") {
        assert!(
            mappings
                .iter()
                .any(|m| m.file.contains("/libc.so") && !m.build_id.is_empty()),
            "libc's mapping with its build ID: {mappings:#?}"
        );
    }
    let checked = assert_symbols_match(admin, &locations, |_| false);
    assert!(checked > 20, "only {checked} locations in the binary");

    let binary = binary_path();
    let disasm = go_pprof(&profile, &["-disasm", DISASM_APP_LEFTPAD, &binary]);
    assert!(
        disasm.contains("ROUTINE ======================== _ZN7leftpad3app7handler3App7leftpad17h"),
        "{disasm}"
    );
    // Instruction lines: "      10ms      330ms     31067a: CALL 0x3c96b0(IP)  ;...".
    let sampled: Vec<u64> = disasm
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let address = words.get(2)?.strip_suffix(':')?;
            let address = u64::from_str_radix(address, 16).ok()?;
            (words[0] != "." || words[1] != ".").then_some(address)
        })
        .collect();
    assert!(
        !sampled.is_empty(),
        "no instruction with samples:\n{disasm}"
    );
    // Each is an instruction of that function in the binary, by objdump's own reading.
    for &address in sampled.iter().take(5) {
        let out = std::process::Command::new("objdump")
            .args([
                "-d",
                "--no-show-raw-insn",
                &format!("--start-address={address:#x}"),
                &format!("--stop-address={:#x}", address + 1),
                &binary,
            ])
            .output()
            .expect("objdump (binutils) is needed for this test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("App7leftpad17h") && text.contains(&format!("{address:x}:")),
            "objdump at {address:#x}:\n{text}"
        );
    }
}

#[test]
fn kernel_parameter_is_checked() {
    let server = Server::start(&[]);
    let admin = server.admin.unwrap();
    let bad = admin_get(admin, "/debug/pprof/profile?seconds=1&kernel=maybe");
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("kernel must be auto, on or off"),
        "{}",
        bad.text()
    );
    let flame = admin_get(admin, "/debug/pprof/flamegraph?seconds=1&kernel=yes");
    assert_eq!(flame.status, 400);
}

/// Without permission for kernel sampling, `kernel=on` is a 400 that says why, and the
/// default (`auto`) profile still accounts for the time and says kernel frames are missing.
#[test]
#[cfg_attr(
    leftpad_emulated,
    ignore = "qemu-user does not emulate perf_event_open"
)]
fn unprivileged_kernel_on_is_refused_and_auto_says_why() {
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2);
    common::require_root("it starts the server as nobody");
    assert!(
        paranoid >= 2,
        "this test needs kernel.perf_event_paranoid >= 2 (it is {paranoid}), so that an \
         unprivileged server may not sample the kernel: sysctl -w kernel.perf_event_paranoid=2"
    );
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let server = Server::start_wrapped(&nobody, &["--access-log", "off", "--statsd", "off"]);
    let admin = server.admin.unwrap();
    let refused = admin_get(admin, "/debug/pprof/profile?seconds=1&kernel=on");
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("perf_event_paranoid"),
        "{}",
        refused.text()
    );

    let (stop, loader) = load(&server);
    let auto = admin_get(admin, "/debug/pprof/profile?seconds=2");
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    assert_eq!(auto.status, 200);
    let comments = go_pprof(&auto.body, &["-comments"]);
    assert!(
        comments.contains("kernel frames: not available")
            && comments.contains("perf_event_paranoid"),
        "{comments}"
    );
    assert!(!traces(&auto.body).iter().flatten().any(|f| is_kernel(f)));
}

/// (title, fill) of every frame of an inferno flame graph.
fn flame_frames(svg: &str) -> Vec<(String, (u8, u8, u8))> {
    svg.split("<g>")
        .skip(1)
        .filter_map(|g| {
            let title = g.split("<title>").nth(1)?.split("</title>").next()?;
            let fill = g.split("fill=\"rgb(").nth(1)?.split(')').next()?;
            let rgb: Vec<u8> = fill
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            Some((
                title.to_owned(),
                (*rgb.first()?, *rgb.get(1)?, *rgb.get(2)?),
            ))
        })
        .collect()
}

/// The flame graph draws the same stacks, kernel frames in orange (inferno's palette:
/// blue 0), Rust frames yellow and other user code red (both with blue).
#[test]
#[cfg_attr(
    leftpad_emulated,
    ignore = "qemu-user does not emulate perf_event_open"
)]
fn the_flame_graph_marks_kernel_frames() {
    common::require_root("kernel frames need perf events with the kernel's call chains");
    let server = Server::start(&["--access-log", "off", "--statsd", "off"]);
    let (stop, loader) = load(&server);
    let svg = admin_get(
        server.admin.unwrap(),
        "/debug/pprof/flamegraph?seconds=2&kernel=on",
    );
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    assert_eq!(svg.status, 200);
    let frames = flame_frames(&svg.text());
    let kernel: Vec<_> = frames
        .iter()
        .filter(|(title, _)| {
            ["do_syscall_64", "io_submit_sqes", "tcp_sendmsg"]
                .iter()
                .any(|k| title.starts_with(k))
        })
        .collect();
    assert!(!kernel.is_empty(), "no kernel frame in the flame graph");
    assert!(
        kernel.iter().all(|(_, (_, _, blue))| *blue == 0),
        "kernel frames orange: {kernel:?}"
    );
    let ours: Vec<_> = frames
        .iter()
        .filter(|(title, _)| title.starts_with("leftpad::"))
        .collect();
    assert!(!ours.is_empty());
    assert!(
        ours.iter().all(|(_, (_, _, blue))| *blue >= 40),
        "Rust frames yellow: {ours:?}"
    );
}

#[test]
fn civil_dates() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11017);
    assert_eq!(days_from_civil(2026, 11, 25), 20782);
}

#[test]
fn total_samples_units() {
    assert_eq!(
        total_samples("Duration: 3s, Total samples = 2.95s (98.3%)"),
        2.95
    );
    assert_eq!(total_samples("Total samples = 950ms ( 31.6%)"), 0.95);
    assert_eq!(total_samples("Total samples = 1.5mins (100%)"), 90.0);
}
