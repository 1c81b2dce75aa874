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
//! them. `--direct` opens the file with `O_DIRECT`, past the page cache: each write is
//! then whole 4 KiB blocks from an aligned buffer (its last line cut at the block's end),
//! which whole-line appends from several writers cannot be (ARCHITECTURE.md, "Access-log
//! writes: a writer thread per worker"). `--write-kib` sets the size of each write.
//!
//! Besides this process's CPU time it prints the whole machine's busy time over the run
//! (`/proc/stat`), which also counts the kernel's own threads (write-back, completions);
//! run it on an otherwise idle machine.
//!
//! ```text
//! taskset -c 0 cargo run --release --example log_write_floor -- --dir target --mib 512
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use leftpad::telemetry::accesslog::line::{write_line, Line, LineTime};
use leftpad::telemetry::accesslog::pagecache::Trim;

/// Each write, by default: as many whole lines as fit in 64 KiB, as the writer's buffers
/// hold.
const WRITE_KIB: usize = 64;
/// The block `O_DIRECT` writes are made of: their memory, length and file offset are
/// multiples of it.
const BLOCK: usize = 4096;
/// At most 1 TiB written, so the count of writes fits the arithmetic below.
const MAX_MIB: usize = 1 << 20;

struct Args {
    dir: PathBuf,
    mib: usize,
    uring: bool,
    keep_cache: bool,
    direct: bool,
    write_kib: usize,
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("log_write_floor: {message}");
            eprintln!(
                "usage: log_write_floor [--dir DIR] [--mib MIB] [--write-kib KIB] [--uring] [--keep-cache] [--direct]"
            );
            std::process::exit(2);
        }
    };
    let mut storage = Vec::new();
    let (buffer, lines_per_buffer) = log_buffer(&mut storage, args.write_kib * 1024, args.direct);
    let path = args
        .dir
        .join(format!("log-write-floor-{}.log", std::process::id()));
    let mut options = OpenOptions::new();
    options.create_new(true).append(true);
    if args.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options
        .open(&path)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", path.display())));
    let writes = (args.mib * 1024 / args.write_kib).max(1);
    let (cpu_before, busy_before, wall) = (cpu_time(), machine_busy(), Instant::now());
    // Past the page cache there are no pages to let go.
    let keep_cache = args.keep_cache || args.direct;
    let result = if args.uring {
        write_with_uring(&file, buffer, writes, keep_cache)
    } else {
        write_with_syscalls(&file, buffer, writes, keep_cache)
    };
    let (cpu, wall) = (cpu_time() - cpu_before, wall.elapsed());
    let busy = machine_busy().saturating_sub(busy_before);
    let threads = thread_names();
    drop(file);
    let _ = fs::remove_file(&path);
    if let Err(e) = result {
        fail(&format!("write to {} failed: {e}", path.display()));
    }
    let per_write = cpu / writes as u32;
    // Lines' worth of bytes (an `O_DIRECT` write also holds the start of a cut line).
    let lines = (writes * buffer.len()) as f64 / LINE.len() as f64;
    println!(
        "{}: {writes} writes of {} bytes ({lines_per_buffer} lines of {} bytes each) to {}, {}",
        match (args.uring, args.direct) {
            (true, true) => "io_uring, O_DIRECT",
            (true, false) => "io_uring",
            (false, true) => "write(2), O_DIRECT",
            (false, false) => "write(2)",
        },
        buffer.len(),
        LINE.len(),
        args.dir.display(),
        if args.direct {
            "past the page cache"
        } else if args.keep_cache {
            "pages kept in the cache"
        } else {
            "pages let go every MiB"
        }
    );
    println!(
        "cpu {:.1} us per write, {:.1} ns per line; machine busy {:.1} ns per line; wall {:.1} us per write; threads: {}",
        per_write.as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e9 / lines,
        busy.as_secs_f64() * 1e9 / lines,
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
        direct: false,
        write_kib: WRITE_KIB,
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
            "--write-kib" => {
                let value = argv.next().ok_or("--write-kib needs a number of KiB")?;
                args.write_kib = value
                    .parse()
                    .ok()
                    .filter(|kib| (4..=64 * 1024).contains(kib) && kib % 4 == 0)
                    .ok_or(format!(
                        "--write-kib {value}: use a multiple of 4 KiB, 4 to 65536"
                    ))?;
            }
            "--uring" => args.uring = true,
            "--direct" => args.direct = true,
            "--keep-cache" => args.keep_cache = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// The line the benchmark's requests make, formatted by the server's `write_line`.
static LINE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let line = Line {
        target: b"/v1/leftpad/?str=test&len=50&chr=*",
        peer: b"127.0.0.1:54321",
        user_agent: b"wrk",
        status: 200,
        micros: 3,
    };
    let mut one = Vec::new();
    write_line(&mut one, &mut LineTime::default(), 1_795_961_531_123, &line);
    one
});

/// One write's bytes, in `storage`, and the lines they count for: as many whole lines as
/// fit in `size` bytes, as the writer's buffers hold; for `O_DIRECT`, exactly `size`
/// bytes starting at a block boundary of memory, the last line cut where the write ends.
fn log_buffer(storage: &mut Vec<u8>, size: usize, direct: bool) -> (&[u8], usize) {
    let line = &LINE[..];
    let lines = size / line.len();
    storage.clear();
    storage.resize(size + BLOCK, 0);
    let start = if direct {
        storage.as_ptr().align_offset(BLOCK)
    } else {
        0
    };
    let len = if direct { size } else { lines * line.len() };
    let buffer = &mut storage[start..start + len];
    for (at, byte) in buffer.iter_mut().enumerate() {
        *byte = line[at % line.len()];
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
    let len = u32::try_from(buffer.len()).expect("a write of at most 64 MiB");
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

/// The whole machine's busy time so far (every CPU's user, nice, system, irq and softirq
/// time in `/proc/stat`): with nothing else running, this process and the kernel threads
/// working for it.
fn machine_busy() -> Duration {
    let stat =
        fs::read_to_string("/proc/stat").unwrap_or_else(|e| fail(&format!("/proc/stat: {e}")));
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    // SAFETY: sysconf takes no memory; _SC_CLK_TCK is always valid.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs(busy / per_second)
        + Duration::from_nanos(busy % per_second * 1_000_000_000 / per_second)
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
