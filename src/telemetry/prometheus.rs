//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Every figure comes from the workers' single-writer slots ([`crate::telemetry::counters`]) and the log
//! writers' counters, summed here at scrape time: nothing is shared or contended on the
//! request path. Names and units follow Prometheus' conventions (`_total` counters,
//! `_seconds`, `_bytes`); the process metrics are the standard `process_*` set, read
//! from /proc. [`render`] is pure: it turns a [`Scrape`] into text.

use std::fmt::Write;

use crate::app::handler::Route;
use crate::telemetry::counters::{Scalar, WorkerCounters, BUCKETS_MICROS, CODES};

/// What one scrape reads.
pub struct Scrape<'a> {
    pub workers: &'a [&'a WorkerCounters],
    /// The heap counters of the threads without a slot of their own.
    pub other_threads: &'a WorkerCounters,
    /// The I/O driver of each worker (`io_uring`, `epoll`), for `leftpad_build_info`.
    pub drivers: &'a [String],
    pub process: Process,
}

/// The standard process metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    /// This process, from /proc/self (zeros where a file cannot be read).
    pub fn read() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
            )
        };
        let fields = stat_fields(&stat);
        let field = |n: usize| {
            fields
                .get(n)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the rlimit it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        Process {
            // Fields 14 and 15 (utime, stime), 22 (starttime), 23 (vsize), 24 (rss).
            cpu_seconds: (field(14) + field(15)) as f64 / ticks,
            start_time_seconds: boot_time + field(22) as f64 / ticks,
            virtual_bytes: field(23),
            resident_bytes: field(24) * page,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            max_fds: limit.rlim_cur,
        }
    }
}

/// The fields of a `/proc/PID/stat` line, numbered from 1 as in proc(5) (index 0 is
/// unused); the command name may contain spaces, so fields are counted after its `)`.
fn stat_fields(stat: &str) -> Vec<&str> {
    let Some(close) = stat.rfind(')') else {
        return Vec::new();
    };
    let mut fields = vec!["", "", ""]; // 0 unused, 1 pid, 2 comm
    fields.extend(stat[close + 1..].split_whitespace());
    fields
}

/// The sum of one counter over the workers' slots.
fn sum(workers: &[&WorkerCounters], field: impl Fn(&WorkerCounters) -> u64) -> u64 {
    workers.iter().map(|w| field(w)).sum()
}

/// Writes a metric family: its HELP and TYPE lines, then its samples (`labels` without
/// braces, or empty).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn one(value: impl ToString) -> Vec<(String, String)> {
    vec![(String::new(), value.to_string())]
}

/// A float as Prometheus writes one (`0.00001`, `1e-05` and `10` all parse; Rust's `{}`
/// never uses an exponent, which is fine).
fn float(value: f64) -> String {
    format!("{value}")
}

/// The whole exposition.
pub fn render(scrape: &Scrape<'_>) -> String {
    let workers = scrape.workers;
    let mut out = String::with_capacity(8192);
    requests(&mut out, workers);
    duration(&mut out, workers);
    for scalar in Scalar::ALL {
        let Some(f) = scalar.declared().family else {
            continue;
        };
        let value = sum(workers, |w| w[scalar].get()) + scrape.other_threads[scalar].get();
        family(&mut out, f.name, f.kind, f.help, &one(value));
    }
    let driver = scrape
        .drivers
        .first()
        .map_or("none", |d| d.split(' ').next().unwrap_or("none"));
    let labels = format!(
        "version=\"{}\",driver=\"{}\"",
        env!("CARGO_PKG_VERSION"),
        escape(driver)
    );
    family(
        &mut out,
        "leftpad_build_info",
        "gauge",
        "Version and I/O driver; the value is always 1.",
        &[(labels, "1".into())],
    );
    process(&mut out, &scrape.process);
    out
}

fn requests(out: &mut String, workers: &[&WorkerCounters]) {
    let mut samples = Vec::new();
    for route in Route::ALL {
        for (index, code) in CODES.iter().enumerate() {
            let count = sum(workers, |w| w.answers[route as usize][index].get());
            // Every route has its 200 (and its leftpad 400) listed even at zero, so rates
            // and ratios have series from the start; other pairs appear once they occur.
            if count > 0 || *code == 200 {
                samples.push((
                    format!("route=\"{}\",code=\"{code}\"", route.label()),
                    count.to_string(),
                ));
            }
        }
    }
    family(
        out,
        "leftpad_http_requests_total",
        "counter",
        "Requests answered, by route and status code.",
        &samples,
    );
}

fn duration(out: &mut String, workers: &[&WorkerCounters]) {
    let name = "leftpad_http_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from the read that brought a request to its answer being ready."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (index, bound) in BUCKETS_MICROS.iter().enumerate() {
        cumulative += sum(workers, |w| w.duration.counts[index].get());
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            float(*bound as f64 / 1e6)
        );
    }
    cumulative += sum(workers, |w| w.duration.counts[BUCKETS_MICROS.len()].get());
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let seconds = sum(workers, |w| w.duration.sum_micros.get()) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {}", float(seconds));
    let _ = writeln!(out, "{name}_count {cumulative}");
}

fn process(out: &mut String, p: &Process) {
    family(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        &one(float(p.cpu_seconds)),
    );
    family(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        &one(p.resident_bytes),
    );
    family(
        out,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        &one(p.virtual_bytes),
    );
    family(
        out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        &one(p.open_fds),
    );
    family(
        out,
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        &one(p.max_fds),
    );
    family(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        &one(float(p.start_time_seconds)),
    );
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_sums_workers_and_cumulates_buckets() {
        let a = WorkerCounters::leak();
        let b = WorkerCounters::leak();
        a.answered(Route::Leftpad, 200, 3);
        b.answered(Route::Leftpad, 200, 7);
        b.answered(Route::Other, 404, 2_000_000);
        let text = render(&Scrape {
            workers: &[a, b],
            other_threads: &WorkerCounters::new(),
            drivers: &["io_uring (single_issuer+defer_taskrun)".into()],
            process: Process::default(),
        });
        assert!(
            text.contains("leftpad_http_requests_total{route=\"leftpad\",code=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("leftpad_http_requests_total{route=\"other\",code=\"404\"} 1\n"));
        assert!(text.contains("leftpad_http_requests_total{route=\"healthz\",code=\"200\"} 0\n"));
        assert!(!text.contains("code=\"405\""), "unseen pairs are left out");
        assert!(
            text.contains("leftpad_http_request_duration_seconds_bucket{le=\"0.000005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("leftpad_http_request_duration_seconds_bucket{le=\"0.00001\"} 2\n"));
        assert!(text.contains("leftpad_http_request_duration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("leftpad_http_request_duration_seconds_bucket{le=\"10\"} 3\n"));
        assert!(text.contains("leftpad_http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("leftpad_http_request_duration_seconds_count 3\n"));
        assert!(text.contains("leftpad_http_request_duration_seconds_sum 2.00001\n"));
        assert!(text.contains("leftpad_build_info{version=\"0.1.0\",driver=\"io_uring\"} 1\n"));
        // Every family is announced once, before its samples.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{name}");
        }
    }

    #[test]
    fn process_metrics_are_read() {
        let p = Process::read();
        assert!(p.open_fds > 0 && p.max_fds >= p.open_fds, "{p:?}");
        assert!(p.start_time_seconds > 1.7e9, "{p:?}");
        // qemu-user (CI's aarch64 run) emulates /proc/self/stat with zeros for these.
        if !cfg!(leftpad_emulated) {
            assert!(
                p.resident_bytes > 0 && p.virtual_bytes > p.resident_bytes,
                "{p:?}"
            );
        }
    }

    #[test]
    fn stat_fields_are_numbered_as_in_proc5() {
        let fields = stat_fields("12 (a b) S 1 2 3 4 5 6 7 8 9 10 11 12 13");
        assert_eq!((fields[1], fields[3], fields[14]), ("", "S", "11"));
    }
}
