//! What writing the access log's bytes costs the kernel, apart from everything else the
//! server does: the floor under the log's share of a request (ARCHITECTURE.md, "Access-log
//! writes: a writer thread per worker").
//!
//! Appends `--mib` MiB of real log lines (formatted by the server's own `write_line`) to a
//! new file in `--dir`, in 64 KiB writes as the log's writer thread makes them, and prints
//! the CPU time this process spent (user + system, every thread) per 64 KiB and per line.
//! As the writer does, it lets the written pages leave the page cache every MiB
//! (`telemetry::accesslog::pagecache`); `--keep-cache` does not. `--uring` submits each
//! write to io_uring instead of calling write(2), and names the kernel worker threads
//! that appeared: io_uring runs a buffered write that cannot complete at once on one of
//! them.
//!
//! ```text
//! taskset -c 0 cargo run --release --example log_write_floor -- --dir target --mib 512
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use leftpad::telemetry::accesslog::line::{write_line, Line, LineTime};
use leftpad::telemetry::accesslog::pagecache::Trim;

/// Each write: as many whole lines as fit in 64 KiB, as the writer's buffers hold.
const BUFFER: usize = 64 * 1024;
/// At most 1 TiB written, so the count of writes fits the arithmetic below.
const MAX_MIB: usize = 1 << 20;

struct Args {
    dir: PathBuf,
    mib: usize,
    uring: bool,
    keep_cache: bool,
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("log_write_floor: {message}");
            eprintln!("usage: log_write_floor [--dir DIR] [--mib MIB] [--uring] [--keep-cache]");
            std::process::exit(2);
        }
    };
    let (buffer, lines_per_buffer) = log_buffer();
    let path = args
        .dir
        .join(format!("log-write-floor-{}.log", std::process::id()));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", path.display())));
    let writes = args.mib * 1024 * 1024 / BUFFER;
    let (cpu_before, wall) = (cpu_time(), Instant::now());
    let result = if args.uring {
        write_with_uring(&file, &buffer, writes, args.keep_cache)
    } else {
        write_with_syscalls(&file, &buffer, writes, args.keep_cache)
    };
    let (cpu, wall) = (cpu_time() - cpu_before, wall.elapsed());
    let threads = thread_names();
    drop(file);
    let _ = fs::remove_file(&path);
    if let Err(e) = result {
        fail(&format!("write to {} failed: {e}", path.display()));
    }
    let per_write = cpu / writes as u32;
    println!(
        "{}: {writes} writes of {} bytes ({lines_per_buffer} lines of {} bytes each) to {}, {}",
        if args.uring { "io_uring" } else { "write(2)" },
        buffer.len(),
        buffer.len() / lines_per_buffer,
        args.dir.display(),
        if args.keep_cache {
            "pages kept in the cache"
        } else {
            "pages let go every MiB"
        }
    );
    println!(
        "cpu {:.1} us per write, {:.1} ns per line; wall {:.1} us per write; threads: {}",
        per_write.as_secs_f64() * 1e6,
        per_write.as_secs_f64() * 1e9 / lines_per_buffer as f64,
        (wall / writes as u32).as_secs_f64() * 1e6,
        threads.join(" ")
    );
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("target"),
        mib: 256,
        uring: false,
        keep_cache: false,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--dir" => args.dir = argv.next().ok_or("--dir needs a directory")?.into(),
            "--mib" => {
                let value = argv.next().ok_or("--mib needs a number of MiB")?;
                args.mib = value
                    .parse()
                    .ok()
                    .filter(|mib| (1..=MAX_MIB).contains(mib))
                    .ok_or(format!(
                        "--mib {value}: use a whole number of MiB, 1 to {MAX_MIB}"
                    ))?;
            }
            "--uring" => args.uring = true,
            "--keep-cache" => args.keep_cache = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// A 64 KiB buffer of whole lines as the benchmark's requests make them, and their count.
fn log_buffer() -> (Vec<u8>, usize) {
    let line = Line {
        target: b"/v1/leftpad/?str=test&len=50&chr=*",
        peer: b"127.0.0.1:54321",
        user_agent: b"wrk",
        status: 200,
        micros: 3,
    };
    let (mut buffer, mut time, mut lines) = (Vec::with_capacity(BUFFER), LineTime::default(), 0);
    let mut one = Vec::new();
    write_line(&mut one, &mut time, 1_795_961_531_123, &line);
    while buffer.len() + one.len() <= BUFFER {
        buffer.extend_from_slice(&one);
        lines += 1;
    }
    (buffer, lines)
}

fn write_with_syscalls(
    mut file: &File,
    buffer: &[u8],
    writes: usize,
    keep_cache: bool,
) -> std::io::Result<()> {
    let mut trim = Trim::default();
    for _ in 0..writes {
        file.write_all(buffer)?;
        if !keep_cache {
            trim.after_write(file, buffer.len());
        }
    }
    Ok(())
}

fn write_with_uring(
    file: &File,
    buffer: &[u8],
    writes: usize,
    keep_cache: bool,
) -> std::io::Result<()> {
    use io_uring::{opcode, types, IoUring};
    let mut ring = IoUring::new(8)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot set up io_uring: {e}")))?;
    let mut trim = Trim::default();
    let len = u32::try_from(buffer.len()).expect("a 64 KiB buffer");
    for _ in 0..writes {
        // Offset -1: at the file's end, as an O_APPEND write(2).
        let write = opcode::Write::new(types::Fd(file.as_raw_fd()), buffer.as_ptr(), len)
            .offset(u64::MAX)
            .build();
        // SAFETY: the kernel only reads `buffer`, which the caller keeps alive until
        // this function returns, and each write is waited for before the next. A write
        // left in flight by an error return may read it after that, which can put wrong
        // bytes in the scratch file but never touches this process's memory.
        unsafe { ring.submission().push(&write) }.map_err(std::io::Error::other)?;
        ring.submit_and_wait(1)?;
        let done = ring
            .completion()
            .next()
            .ok_or_else(|| std::io::Error::other("no completion"))?;
        if done.result() < 0 {
            return Err(std::io::Error::from_raw_os_error(-done.result()));
        }
        if done.result() != len as i32 {
            return Err(std::io::Error::other("a short write"));
        }
        if !keep_cache {
            trim.after_write(file, buffer.len());
        }
    }
    Ok(())
}

/// User + system time of every thread of this process (kernel worker threads included).
fn cpu_time() -> Duration {
    // SAFETY: a rusage is plain integers, for which all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage, and RUSAGE_SELF is always a valid target.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        fail("getrusage failed");
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn thread_names() -> Vec<String> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

fn fail(message: &str) -> ! {
    eprintln!("log_write_floor: {message}");
    std::process::exit(1);
}
