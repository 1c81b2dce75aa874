//! A CPU profile under full contention (README.md, "Profiling and live counters"): two
//! workers, their log writers and StatsD, the load and a spinner thread per CPU, all on
//! the same CPUs, none idle, as in production; both ways of sampling must still cover
//! the server's CPU time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::coverage::{cpu_at, poll_cpu, total_samples, window};
use common::{admin_get, go_pprof, load, Server};

/// The CPUs this test process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is that of the set passed.
    let got =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(got, 0, "sched_getaffinity");
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set within its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Idle seconds of `cpus` so far, from their lines of /proc/stat (idle + iowait).
fn idle_seconds(cpus: &[usize]) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    cpus.iter()
        .map(|cpu| {
            let line = stat
                .lines()
                .find(|line| line.starts_with(&format!("cpu{cpu} ")))
                .unwrap_or_else(|| panic!("no cpu{cpu} in /proc/stat"));
            let fields: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap())
                .collect();
            (fields[3] + fields[4]) / per_second
        })
        .sum()
}

/// Pins the calling thread, and the threads it starts from now on, to `cpus`.
fn pin_to(cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`; CPU_SET writes within the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// A thread pinned to `cpu` that keeps it busy until the returned flag is set.
fn spin_on(cpu: usize) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        pin_to(&[cpu]);
        while !flag.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    (stop, thread)
}

/// Under full contention, both ways of sampling account for the process's CPU time: two
/// workers, their log writers and StatsD, this test's load generators and a spinner per
/// CPU all on the same two CPUs, neither of them idle (as in production, where no CPU idles beside the
/// server). The server's CPU time over each profile's own window is measured here,
/// independently, by polling its threads' run time every 10 ms; the profile's samples
/// must cover at least 95% of it and at most 110% (the margin above: the polling's
/// interpolation at both ends of a 3 s window, and /proc/PID/stat's 10 ms ticks where
/// there are no schedstats; measured 99-100%). The profile's own comments say how
/// samples were weighted and what was lost.
#[test]
#[cfg_attr(
    leftpad_emulated,
    ignore = "CPU-time accounting under qemu-user is not the kernel's"
)]
fn under_full_contention_samples_cover_the_cpu_time_in_both_modes() {
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs, to make both busy: it may run on {cpus:?}"
    );
    let both = [cpus[0], cpus[1]];
    let list = format!("{},{}", both[0], both[1]);
    let log = std::env::temp_dir().join(format!("leftpad-contended-{}.log", std::process::id()));
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let statsd = statsd.local_addr().unwrap().to_string();
    let server = Server::start_wrapped(
        &["taskset", "-c", &list],
        &[
            "--workers",
            "2",
            "--access-log",
            log.to_str().unwrap(),
            "--log-buffer",
            "4096",
            "--statsd",
            &statsd,
        ],
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let modes: &[&str] = if root { &["on", "off"] } else { &["off"] };
    let admin = server.admin.unwrap();
    // The load generators run on the same two CPUs, one connection each per worker
    // and more: enough to keep both CPUs busy with the server's threads.
    let main_affinity = allowed_cpus();
    pin_to(&both);
    let loaders: Vec<_> = (0..4).map(|_| load(&server)).collect();
    // The loaders alone leave the CPUs idle about a tenth of the time (each waits for
    // its 16 answers before it writes again; measured 11%); a spinner on each CPU takes
    // whatever else is left, so nothing idles whatever the machine.
    let spinners: Vec<_> = both.iter().map(|&cpu| spin_on(cpu)).collect();
    pin_to(&main_affinity);
    std::thread::sleep(Duration::from_millis(500));
    for kernel in modes {
        let (stop_polling, poller) = poll_cpu(server.pid());
        let idle_before = idle_seconds(&both);
        let asked = std::time::Instant::now();
        let response = admin_get(
            admin,
            &format!("/debug/pprof/profile?seconds=3&kernel={kernel}"),
        );
        let idle = idle_seconds(&both) - idle_before;
        let elapsed = asked.elapsed().as_secs_f64();
        stop_polling.store(true, Ordering::Relaxed);
        let polls = poller.join().unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let (start, duration) = window(&response.body);
        let used = cpu_at(&polls, start + duration) - cpu_at(&polls, start);
        let top = go_pprof(&response.body, &["-top", "-nodecount=5"]);
        let sampled = total_samples(&top);
        let comments = go_pprof(&response.body, &["-comments"]);
        eprintln!(
            "kernel={kernel}: server {used:.2} CPU-s in {duration:.2} s, the two CPUs idle \
             {idle:.2} s of {elapsed:.2} s; sampled {sampled:.2} s ({:.1}%)\n{comments}",
            100.0 * sampled / used
        );
        // Both CPUs busy (idle less than a tenth of the time: the server, its load, the
        // spinners and whatever else runs, such as other test binaries), and the server with
        // enough CPU time for the shares to mean something (30 samples at least).
        assert!(
            idle < 0.1 * 2.0 * elapsed && used > 0.1 * duration,
            "not contended: the CPUs idle {idle:.2} s of 2 x {elapsed:.2} s, the server \
             used {used:.2} CPU-s in {duration:.2} s"
        );
        assert!(
            sampled >= 0.95 * used && sampled <= 1.10 * used,
            "kernel={kernel}: samples {sampled:.2} s for {used:.2} s of CPU time:\n{comments}"
        );
        assert!(
            comments.contains("coverage: samples account for"),
            "{comments}"
        );
        assert!(
            comments.contains("weights: each sample stands for"),
            "{comments}"
        );
    }
    for (stop, spinner) in spinners {
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
    }
    for (stop, loader) in loaders {
        stop.store(true, Ordering::Relaxed);
        assert!(loader.join().unwrap() > 1000);
    }
    drop(server);
    let _ = std::fs::remove_file(&log);
}
