//! Faults survived (README.md, "Limits, timeouts and security"), each made real: the server's file descriptors run out.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{cpu_seconds, exchange, get, read_response, Server};

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Each thread of `pid` with its CPU ticks so far (utime + stime), to see who spun.
fn thread_cpu(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(format!("{name}={ticks}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `pid`'s open-file limit (soft and hard); returns the previous one.
fn set_fd_limit(pid: u32, limit: libc::rlimit) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads `limit` and writes `old`, both valid for the call.
    let done = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &limit, &mut old) };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

#[test]
fn out_of_fds_accept_backs_off_serves_the_open_and_recovers() {
    for driver in common::drivers() {
        out_of_fds(&driver);
    }
}

fn out_of_fds(driver: &str) {
    let server = Server::start(&["--driver", driver, "--access-log", "off", "--statsd", "off"]);
    let pid = server.pid();
    let mut kept = server.connect();
    kept.write_all(&get("/healthz")).unwrap();
    assert_eq!(read_response(&mut kept, false).unwrap().status, 200);

    // No room for another connection: every accept now fails with EMFILE.
    let used = open_fds(pid);
    let old = set_fd_limit(
        pid,
        libc::rlimit {
            rlim_cur: used,
            rlim_max: old_max(pid),
        },
    );
    let waiting: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Backing off, not spinning: a spinning accept loop would burn a whole CPU.
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_seconds(pid) - before;
    assert!(
        spent < 0.3,
        "{driver}: {spent:.2} CPU seconds in 1 s while out of fds; threads: {}",
        thread_cpu(pid)
    );
    assert!(
        server.stderr().contains("accept failed")
            && server.stderr().contains("Too many open files"),
        "reported: {}",
        server.stderr()
    );

    // The open connection is still served.
    kept.write_all(&get("/healthz")).unwrap();
    assert_eq!(read_response(&mut kept, false).unwrap().status, 200);

    // Room again: the connections waiting in the backlog and new ones are served.
    set_fd_limit(pid, old);
    let deadline = Instant::now() + Duration::from_secs(5);
    for mut s in waiting {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        s.write_all(&get("/healthz")).unwrap();
        assert_eq!(
            read_response(&mut s, false)
                .expect("served after fds came back")
                .status,
            200
        );
    }
    assert_eq!(exchange(&server, &get("/healthz")).0.status, 200);
}

/// The current hard limit of `pid`, so lowering the soft one keeps it.
fn old_max(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(libc::RLIM_INFINITY)
}

/// A small tmpfs of the test's own, unmounted (and its directory removed) when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!("leftpad-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?
            .success();
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the disk: writes until there is no space left.
fn fill(path: &std::path::Path) {
    let mut filler = std::fs::File::create(path).unwrap();
    let block = vec![b'x'; 4096];
    for _ in 0..100_000 {
        if filler.write_all(&block).is_err() {
            break;
        }
    }
}

fn vars_number(json: &str, key: &str) -> u64 {
    let at = json.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
    json[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The access log's disk fills up: the server keeps answering, the lost lines are counted
/// as dropped and reported once, and writing resumes by itself when space is freed.
#[test]
fn a_full_log_disk_drops_counted_lines_and_recovers() {
    common::require_root("it mounts a small tmpfs under the access log");
    let disk = SmallDisk::mount("256k").expect("mount a tmpfs");
    let log = disk.0.join("access.log");
    let server = Server::start(&[
        "--access-log",
        log.to_str().unwrap(),
        "--log-buffer",
        "1024",
        "--log-flush-ms",
        "10",
        "--statsd",
        "off",
    ]);
    let admin = server.admin.unwrap();
    fill(&disk.0.join("filler"));

    let mut s = server.connect();
    for i in 0..300 {
        s.write_all(&get(&format!("/v1/leftpad/?str=full{i}&len=3")))
            .unwrap();
        assert_eq!(
            read_response(&mut s, false).unwrap().status,
            200,
            "still answering"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let vars = common::admin_get(admin, "/debug/vars").text();
    let dropped = vars_number(&vars, "dropped");
    assert!(
        dropped > 0 && vars_number(&vars, "write_errors") > 0,
        "{vars}"
    );
    assert_eq!(
        server.stderr().matches("write failed").count(),
        1,
        "reported once: {}",
        server.stderr()
    );

    // Space again: the next lines are written, whole.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    for i in 0..50 {
        s.write_all(&get(&format!("/v1/leftpad/?str=after{i}&len=3")))
            .unwrap();
        assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let written = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("str=after").count() == 50 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let after: Vec<&str> = written
        .lines()
        .filter(|l| l.contains("str=after"))
        .collect();
    assert_eq!(after.len(), 50, "writing resumed by itself");
    assert!(after
        .iter()
        .all(|l| l.contains("\turl /v1/leftpad/?str=after") && l.contains("\tstatus 200\t")));
    // Every answered request is either in the log or counted as dropped.
    let lines = written
        .lines()
        .filter(|l| l.contains("\tstatus 200\t"))
        .count() as u64;
    let vars = common::admin_get(admin, "/debug/vars").text();
    assert!(
        lines + vars_number(&vars, "dropped") >= 350,
        "{lines} lines, {vars}"
    );
    drop(server);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A client pipelines requests and never reads: the server's memory stays bounded (its
/// output stops at a 64 KiB high-water mark, TCP flow control holds the rest in the
/// client's socket) and the connection is dropped after `--write-timeout`.
#[test]
fn a_client_that_never_reads_costs_bounded_memory_and_is_dropped() {
    let server = Server::start(&[
        "--write-timeout",
        "1s",
        "--access-log",
        "off",
        "--statsd",
        "off",
    ]);
    // The same request answered once first, so what follows measures the connection,
    // not the first run of the code (its pages, the allocator's first spans).
    let path = "/v1/leftpad/?len=1024&chr=%3C";
    assert_eq!(exchange(&server, &get(path)).0.status, 200);
    let before = rss_kib(server.pid());
    let mut hog = server.connect();
    // ~6 KiB per response: 4,000 requests ask for ~24 MiB of answers.
    let batch = get(path).repeat(100);
    hog.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut peak = before;
    for _ in 0..40 {
        if hog.write_all(&batch).is_err() {
            break;
        }
        peak = peak.max(rss_kib(server.pid()));
    }
    peak = peak.max(rss_kib(server.pid()));
    eprintln!("RSS grew {} KiB", peak - before);
    assert!(
        peak - before < 4096,
        "RSS grew {} KiB for a client that never reads",
        peak - before
    );
    // Waited for without reading: reading would drain the answers, let the server write
    // again and restart its write timeout (under qemu the server can still be filling the
    // socket buffers when the writes above end).
    assert!(
        hangs_up(&hog, Duration::from_secs(60)),
        "dropped after --write-timeout"
    );
}

/// Whether the peer closes or resets `stream` within `within`, found by `poll` alone, so
/// the data waiting in the socket stays unread. (The server's close comes as a reset,
/// since our unread requests are still in its socket; a plain FIN would wait behind the
/// unread answers and never be seen this way.)
fn hangs_up(stream: &TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd, and the count passed is 1.
        let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis().min(60_000) as i32) };
        if ready == 1 {
            return fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
        }
        // A timeout of one poll (at most 60 s) before the deadline: poll again.
        if ready == 0 && !left.is_zero() {
            continue;
        }
        let interrupted =
            ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted || left.is_zero() {
            return false;
        }
    }
}
