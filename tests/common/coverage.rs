//! Measuring how much of a process's CPU time a profile's samples cover: the CPU time
//! used in the profile's own window, from the process's threads polled meanwhile, and
//! the sampled total `go tool pprof` reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{cpu_seconds, go_pprof};

/// `Total samples = 2.95s` (or `950ms`, `1.2mins`) from `go tool pprof -top`, in seconds.
pub fn total_samples(top: &str) -> f64 {
    let text = top
        .split("Total samples = ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no total in:\n{top}"));
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let value: f64 = text[..number_end].parse().unwrap();
    match &text[number_end..] {
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "s" => value,
        "mins" => value * 60.0,
        unit => panic!("unknown unit {unit} in {text}"),
    }
}

/// (unix time, CPU seconds of `pid`) now, every 10 ms until the flag is set, and once
/// more after it: the flag is set once the profile is back, so the polls span its window
/// even when the polling thread goes without a CPU for a while (a loaded machine).
pub fn poll_cpu(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<(f64, f64)>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let poll = move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        (now, precise_cpu_seconds(pid))
    };
    // The first poll before this returns, so before the profile is asked for.
    let first = poll();
    let poller = std::thread::spawn(move || {
        let mut polls = vec![first];
        while !flag.load(Ordering::Relaxed) && polls.len() < 100_000 {
            polls.push(poll());
            std::thread::sleep(Duration::from_millis(10));
        }
        polls.push(poll());
        polls
    });
    (stop, poller)
}

/// CPU seconds of `pid` so far, to the nanosecond where the kernel keeps schedstats (the
/// run time of each of its threads in /proc/PID/task/*/schedstat, what the scheduler
/// charged them), else from /proc/PID/stat's 10 ms ticks. Threads that exited are not
/// counted: the windows measured here are between two polls 10 ms apart.
pub fn precise_cpu_seconds(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    let precise: Option<f64> = tasks.ok().and_then(|tasks| {
        tasks
            .map(|task| {
                let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
                stat.split_whitespace().next()?.parse::<f64>().ok()
            })
            .sum::<Option<f64>>()
    });
    precise.map_or_else(|| cpu_seconds(pid), |ns| ns / 1e9)
}

/// CPU seconds at unix time `t`, interpolated between the polls around it.
pub fn cpu_at(polls: &[(f64, f64)], t: f64) -> f64 {
    let after = polls.partition_point(|&(time, _)| time < t);
    assert!(after > 0 && after < polls.len(), "window outside the polls");
    let ((t0, c0), (t1, c1)) = (polls[after - 1], polls[after]);
    c0 + (c1 - c0) * (t - t0) / (t1 - t0).max(1e-9)
}

/// The profile's window: start (unix seconds) and length, from `go tool pprof -raw`
/// (`Time: 2026-11-25 02:53:59.613068808 +0000 UTC`, `Duration: 3.00`).
pub fn window(profile: &[u8]) -> (f64, f64) {
    let raw = go_pprof(profile, &["-raw"]);
    let field = |name: &str| {
        raw.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{raw}"))
            .trim()
            .to_owned()
    };
    let time = field("Time:");
    let mut parts = time.split_whitespace();
    let date: Vec<i64> = numbers(parts.next(), '-');
    let clock: Vec<f64> = numbers(parts.next(), ':');
    assert!(time.contains("+0000"), "UTC expected: {time}");
    let days = days_from_civil(date[0], date[1], date[2]) as f64;
    let start = days * 86400.0 + clock[0] * 3600.0 + clock[1] * 60.0 + clock[2];
    (start, field("Duration:").parse().unwrap())
}

/// The numbers of `part` (such as `2026-12-02` or `10:41:07.5`) split at `separator`.
fn numbers<T: std::str::FromStr>(part: Option<&str>, separator: char) -> Vec<T> {
    let part = part.expect("a date and a time in pprof's Time:");
    part.split(separator)
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("not a number in {part:?}"))
        })
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}
