//! Test harness: starts the real `leftpad` binary on a free loopback port and talks to it
//! over real sockets.
#![allow(dead_code)]

pub mod coverage;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The I/O drivers to test: both, unless `LEFTPAD_TEST_DRIVERS` names some (CI sets
/// `epoll` under qemu-user, which has no io_uring).
pub fn drivers() -> Vec<String> {
    std::env::var("LEFTPAD_TEST_DRIVERS")
        .unwrap_or_else(|_| "io-uring,epoll".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A command that runs the leftpad binary under test: directly, or through
/// `LEFTPAD_TEST_RUNNER` (e.g. `qemu-aarch64-static -L /usr/aarch64-linux-gnu` when the
/// tests are cross-built).
pub fn leftpad_command() -> Command {
    let binary = env!("CARGO_BIN_EXE_leftpad");
    match std::env::var("LEFTPAD_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap_or_default());
            cmd.args(words).arg(binary);
            cmd
        }
        _ => Command::new(binary),
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The admin listener's address, when it is on.
    pub admin: Option<SocketAddr>,
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts the server with `args` (plus a free loopback port and one worker unless
    /// given) and waits for its startup line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = args.to_vec();
        if !args.contains(&"--workers") {
            args.extend(["--workers", "1"]);
        }
        Server::start_command(leftpad_command(), &args, env)
    }

    /// Starts the server under `wrapper` (a command that runs its arguments, such as
    /// `setpriv --reuid=65534 ...`), with the server's own default worker count unless
    /// `args` set one.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Server {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]);
        // Under emulation the wrapper runs the emulator, which runs the binary.
        if let Ok(runner) = std::env::var("LEFTPAD_TEST_RUNNER") {
            cmd.args(runner.split_whitespace());
        }
        cmd.arg(env!("CARGO_BIN_EXE_leftpad"));
        Server::start_command(cmd, args, &[])
    }

    fn start_command(mut cmd: Command, args: &[&str], env: &[(&str, &str)]) -> Server {
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // Tests run in parallel: each server gets its own free admin port.
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start leftpad");
        let stderr = child.stderr.take().unwrap();
        let mut stdout_pipe = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stdout_sink = stdout.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = stdout_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stdout_sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr = addr.split(',').next().unwrap().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("leftpad did not start: {}", log.lock().unwrap());
            }
        };
        let admin = log
            .lock()
            .unwrap()
            .split("admin http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok());
        Server {
            addr,
            admin,
            child,
            stderr: log,
            stdout,
        }
    }

    /// What the server wrote to standard output so far (the access log with `-`).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// The server's process id (the wrapper's, for a wrapped server that execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("leftpad did not exit within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// Reads one response from `stream` (HEAD responses: pass `head = true`).
pub fn read_response(stream: &mut impl Read, head: bool) -> Option<Response> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
    let text = String::from_utf8(raw).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = response.header("Content-Length").unwrap().parse().unwrap();
    if !head {
        response.body = vec![0; len];
        stream.read_exact(&mut response.body).ok()?;
    }
    Some(response)
}

/// True when the server has closed the connection (EOF or reset) within the timeout.
pub fn is_closed(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends `request` on a new connection and reads one response.
pub fn exchange(server: &Server, request: &[u8]) -> (Response, TcpStream) {
    let mut s = server.connect();
    s.write_all(request).unwrap();
    let r = read_response(&mut s, request.starts_with(b"HEAD")).expect("a response");
    (r, s)
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// One request to the admin port; returns the response with its body.
pub fn admin_get(admin: SocketAddr, target: &str) -> Response {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut s, false).expect("an admin response")
}

/// Keeps `server` busy with pipelined leftpad requests until the returned flag is set;
/// the thread returns how many requests were answered.
pub fn load(server: &Server) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    load_with(server, get("/v1/leftpad/?str=profile&len=64&chr=%E2%98%83"))
}

/// [`load`] with a request of the caller's (answered 200), sent 16 at a time.
pub fn load_with(
    server: &Server,
    request: Vec<u8>,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let addr = server.addr;
    let thread = std::thread::spawn(move || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Buffered: the responses are parsed byte by byte, and unbuffered that left the
        // server idle (and its profile empty) while this thread made read calls.
        let mut s = BufReader::with_capacity(64 * 1024, s);
        let batch = request.repeat(16);
        let mut answered = 0;
        while !flag.load(Ordering::Relaxed) {
            s.get_mut().write_all(&batch).unwrap();
            for _ in 0..16 {
                let response = read_response(&mut s, false).unwrap_or_else(|| {
                    panic!(
                        "load: no response within 10 s (or the server closed) after \
                         {answered} answered"
                    )
                });
                assert_eq!(response.status, 200);
                answered += 1;
            }
        }
        answered
    });
    (stop, thread)
}

/// Runs `go tool pprof ARGS profile` on a profile's bytes and returns its output. No
/// command may say it lacks the main binary: every profile names it in its first mapping.
pub fn go_pprof(profile: &[u8], args: &[&str]) -> String {
    let (out, err) = go_pprof_outputs(profile, args);
    assert!(
        !err.contains("Main binary filename not available"),
        "go tool pprof {args:?}: {err}"
    );
    out
}

/// `go tool pprof ARGS profile`: standard output and standard error.
pub fn go_pprof_outputs(profile: &[u8], args: &[&str]) -> (String, String) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("leftpad-{}-{n}.pb.gz", std::process::id()));
    std::fs::write(&path, profile).unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(&path)
        .output()
        .expect("`go` is needed for this test: run scripts/test.sh, which installs it (apt-get install golang-go)");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A mapping as `go tool pprof -raw` prints it (`1: 0x205000/0x69d000/0x204000 FILE ID [FN]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMapping {
    pub id: u64,
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    pub file: String,
    pub build_id: String,
}

/// A location as `-raw` prints it: `  7: 0x2a1b3c M=1 fn file:line s=0`, and a line per
/// function inlined into it (innermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLocation {
    pub id: u64,
    pub address: u64,
    pub mapping: Option<u64>,
    pub functions: Vec<String>,
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not hex: {text}"))
}

/// The mappings of `go tool pprof -raw` output, in order.
pub fn raw_mappings(raw: &str) -> Vec<RawMapping> {
    raw.lines()
        .skip_while(|line| !line.starts_with("Mappings"))
        .skip(1)
        .take_while(|line| {
            line.split(':')
                .next()
                .is_some_and(|id| id.trim().parse::<u64>().is_ok())
        })
        .map(|line| {
            let (id, rest) = line.split_once(':').unwrap();
            let mut words = rest.split_whitespace();
            let range: Vec<u64> = words.next().unwrap().split('/').map(hex).collect();
            let file = words.next().unwrap_or("").to_owned();
            let build_id = words
                .next()
                .filter(|w| !w.starts_with('['))
                .unwrap_or("")
                .to_owned();
            RawMapping {
                id: id.trim().parse().unwrap(),
                start: range[0],
                limit: range[1],
                offset: range[2],
                file,
                build_id,
            }
        })
        .collect()
}

/// The locations of `go tool pprof -raw` output. pprof prints each function of a
/// location as `NAME FILE:LINE s=START(SYSTEM_NAME)`; names may hold spaces
/// (`<A as B>::f`), file names here do not.
pub fn raw_locations(raw: &str) -> Vec<RawLocation> {
    let function = |text: &str| -> Option<String> {
        let text = &text[..text.rfind(" s=")?];
        Some(text.rsplit_once(' ')?.0.to_owned())
    };
    let mut locations: Vec<RawLocation> = Vec::new();
    let mut lines = raw
        .lines()
        .skip_while(|line| !line.starts_with("Locations"));
    lines.next();
    for line in lines {
        if line.starts_with("Mappings") {
            break;
        }
        let trimmed = line.trim_start();
        let head = trimmed
            .split_once(": 0x")
            .filter(|(id, _)| id.parse::<u64>().is_ok());
        if let Some((id, rest)) = head {
            let (address, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (mapping, rest) = match rest.strip_prefix("M=") {
                Some(m) => {
                    let (id, rest) = m.split_once(' ').unwrap_or((m, ""));
                    (id.parse().ok(), rest)
                }
                None => (None, rest),
            };
            locations.push(RawLocation {
                id: id.parse().unwrap(),
                address: hex(address),
                mapping,
                functions: function(rest).into_iter().collect(),
            });
        } else if let Some(location) = locations.last_mut() {
            location.functions.extend(function(trimmed));
        }
    }
    locations
}

/// The GNU build ID `readelf -n` shows for `binary`.
pub fn readelf_build_id(binary: &str) -> String {
    let out = Command::new("readelf")
        .args(["-n", binary])
        .output()
        .expect("readelf (binutils) is needed for this test");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build ID in readelf -n {binary}"))
        .trim()
        .to_owned()
}

/// The binary under test, as the kernel names it in /proc/PID/maps.
pub fn binary_path() -> String {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_leftpad"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Checks what every profile kind must carry: the first mapping is the binary under test
/// with the build ID `readelf -n` shows, and every location points at a mapping that
/// holds its address. Returns the mappings and locations.
pub fn assert_mappings(profile: &[u8]) -> (Vec<RawMapping>, Vec<RawLocation>) {
    let raw = go_pprof(profile, &["-raw"]);
    let mappings = raw_mappings(&raw);
    let main = mappings
        .first()
        .unwrap_or_else(|| panic!("no mapping in:\n{raw}"));
    let binary = binary_path();
    assert_eq!(main.file, binary, "the first mapping is the binary:\n{raw}");
    assert_eq!(main.build_id, readelf_build_id(&binary), "{raw}");
    assert!(
        main.start < main.limit && main.start % 4096 == main.offset % 4096,
        "{main:?}"
    );
    let locations = raw_locations(&raw);
    for location in &locations {
        let mapping = location
            .mapping
            .and_then(|id| mappings.iter().find(|m| m.id == id))
            .unwrap_or_else(|| panic!("{location:?} has no mapping:\n{raw}"));
        assert!(
            (mapping.start..mapping.limit).contains(&location.address),
            "{location:?} outside {mapping:?}"
        );
    }
    (mappings, locations)
}

/// Allocation machinery, as the tests see it: the `alloc` crate, the allocator API and
/// the global allocator (shims, the counting wrapper, the heap profiler's hook).
pub fn is_allocation_machinery(name: &str) -> bool {
    let name = name.strip_prefix('<').unwrap_or(name);
    [
        "alloc::",
        "core::alloc::",
        "std::alloc::",
        "__rust",
        "__rg_",
        "__rdl_",
        "hashbrown::",
        "std::collections::hash::",
        "leftpad::telemetry::allocator::CountingAllocator",
        "leftpad::profile::heap::",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || name.contains(" as alloc::")
        || name.contains(" as core::alloc::")
}

/// The rows of `go tool pprof -top -unit=B` (or any `-unit`): (flat value, name), with
/// pprof's " (inline)" mark removed. Values are read in the unit asked for.
pub fn top_rows(top: &str) -> Vec<(f64, String)> {
    top.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let value = words.first()?;
            let number = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let name = words.get(5..)?.join(" ");
            let name = name.strip_suffix(" (inline)").unwrap_or(&name).to_owned();
            Some((number.parse().ok()?, name))
        })
        .collect()
}

/// POSTs `addresses` to `/debug/pprof/symbol` and returns the names it gives, by address.
pub fn symbol_lookup(
    admin: SocketAddr,
    addresses: &[u64],
) -> std::collections::HashMap<u64, String> {
    let body = addresses
        .iter()
        .map(|a| format!("{a:#x}"))
        .collect::<Vec<_>>()
        .join("+");
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /debug/pprof/symbol HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let answer = read_response(&mut s, false).expect("a symbol answer");
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("num_symbols: 1"));
    lines
        .filter_map(|line| {
            let (address, name) = line.split_once(' ')?;
            Some((hex(address), name.to_owned()))
        })
        .collect()
}

/// Every location of `locations` in the main binary's mapping (id 1), posted to
/// `/debug/pprof/symbol`, comes back with the name the profile gives it (its innermost
/// function), except where the symbol is one `hidden` accepts: a function the profile
/// left out at the top of its stacks, inlined into the one it shows (memory profiles
/// hide the allocator's). Returns how many were checked.
pub fn assert_symbols_match(
    admin: SocketAddr,
    locations: &[RawLocation],
    hidden: fn(&str) -> bool,
) -> usize {
    let main: Vec<&RawLocation> = locations.iter().filter(|l| l.mapping == Some(1)).collect();
    let addresses: Vec<u64> = main.iter().map(|l| l.address).collect();
    let names = symbol_lookup(admin, &addresses);
    let wrong: Vec<String> = main
        .iter()
        .filter(|l| {
            let symbol = names.get(&l.address);
            symbol != l.functions.first() && !symbol.is_some_and(|name| hidden(name))
        })
        .map(|l| {
            format!(
                "{:#x}: profile {:?}, symbol {:?}",
                l.address,
                l.functions.first(),
                names.get(&l.address)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} named otherwise:\n{}",
        wrong.len(),
        main.len(),
        wrong.join("\n")
    );
    main.len()
}

/// user + system CPU seconds of process `pid` so far (from /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Fails the test unless it runs as root, saying why it needs to: it mounts, makes
/// cgroups or opens perf events for real. A test that cannot check what it is for must
/// not pass.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root ({why}): run the tests as root (sudo scripts/test.sh), as CI does"
    );
}

/// A fresh, empty directory for this test process under the system's temp directory.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leftpad-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
