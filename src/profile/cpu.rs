//! CPU profiles of the whole process: `/debug/pprof/profile` and `/debug/pprof/flamegraph`.
//!
//! A profile accounts for all the CPU time the process used in its window, user and
//! system: every thread is sampled every 10 ms of its own CPU time, and every sample is
//! kept, wherever it landed. Two samplers, chosen by `?kernel=auto|on|off`:
//!
//! - [`perf`] (`on`, or `auto` where the kernel permits it): the kernel
//!   samples each thread and records its kernel call chain and a copy of its user stack,
//!   so the profile continues below each system call into the kernel's functions;
//! - [`sampler`](super::sampler) (`off`, or `auto` otherwise): a per-thread CPU-time
//!   timer and a SIGPROF handler; a system call's time lands on the libc wrapper that
//!   made it, and the profile carries a comment saying why kernel frames are missing.
//!
//! Both unwind user stacks with CFI ([`super::unwind`]), so a sample in libc or the vDSO
//! sits under the exact Rust function that called it. A sample's value is not its
//! sampler's nominal period but its share of its thread's CPU time, read from the
//! thread's CPU clock at every drain ([`super::clocks`]): perf's clock and the
//! scheduler's disagree by up to 15% under contention, and a dropped sample's time
//! stays in the profile. Stacks are aggregated while the
//! window runs; names are looked up afterwards ([`super::symbols`], [`super::kernel`]).
//! No sampler runs until a profile is asked for, so profiling costs nothing otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::clocks::{Claim, ThreadClocks};
use super::kernel::KernelSymbols;
use super::perf::{self, PerfSample, PerfSampler};
use super::pprof::{call_address, Builder, Frame};
use super::sampler::{RawSample, SignalSampler};
use super::symbols;
use super::unwind::{StackUnwinder, MAX_FRAMES};

/// Samples per CPU-second of each thread: pprof's and Go's default.
const HZ: u32 = 100;
/// How often the sample buffers are drained while the window runs.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// How a profile is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// pprof protobuf, gzip-compressed, for `go tool pprof`.
    Pprof,
    /// An SVG flame graph, for a browser.
    Flamegraph,
}

/// `?kernel=`: whether the profile continues into the kernel's functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Kernel frames where the kernel permits it; otherwise without, and say why.
    Auto,
    /// Kernel frames, or a 400 saying why they cannot be had.
    On,
    /// No kernel frames: system-call time shows at the libc function that made the call.
    Off,
}

impl Kernel {
    pub fn parse(value: Option<&str>) -> Result<Kernel, String> {
        match value {
            None | Some("auto") => Ok(Kernel::Auto),
            Some("on") => Ok(Kernel::On),
            Some("off") => Ok(Kernel::Off),
            Some(other) => Err(format!("kernel must be auto, on or off, not '{other}'")),
        }
    }
}

/// Why no profile was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Another profile is being taken (one at a time): HTTP 409.
    Busy,
    /// The request cannot be met (`kernel=on` without permission): HTTP 400.
    Refused(String),
    /// Sampling or encoding failed: HTTP 500, with the reason.
    Failed(String),
}

/// Samples the whole process for `seconds` and encodes the result as `format`. `busy`
/// is the process's "a CPU profile is running" flag: one profile at a time.
pub fn profile(
    busy: &AtomicBool,
    seconds: u64,
    kernel: Kernel,
    format: Format,
) -> Result<Vec<u8>, Error> {
    if busy.swap(true, Ordering::AcqRel) {
        return Err(Error::Busy);
    }
    let profile = take(Duration::from_secs(seconds), kernel);
    busy.store(false, Ordering::Release);
    let profile = profile?;
    match format {
        Format::Pprof => profile.pprof(),
        Format::Flamegraph => profile.flamegraph(),
    }
    .map_err(Error::Failed)
}

/// The samples of one window, aggregated by stack and thread.
struct Profile {
    /// (stack innermost first, thread name) -> (samples, nanoseconds).
    stacks: HashMap<(Vec<Frame>, String), (i64, i64)>,
    start: SystemTime,
    duration: Duration,
    comments: Vec<String>,
    /// Nanoseconds the samples stand for, and the process's CPU time in the window.
    sampled_ns: i64,
    cpu_ns: Option<i64>,
    /// The kernel's text, when kernel frames are named: the span of its mapping.
    kernel_text: Option<std::ops::Range<u64>>,
    /// Each thread's latest sampled stack, which carries the thread's CPU time after
    /// its last sample when the window closes.
    last_stacks: HashMap<i32, Vec<Frame>>,
}

fn take(window: Duration, kernel: Kernel) -> Result<Profile, Error> {
    let use_perf = match (kernel, perf::permitted()) {
        (Kernel::Off, _) => Err("not asked for (kernel=off)".to_owned()),
        (_, Ok(())) => Ok(()),
        (Kernel::On, Err(why)) => return Err(Error::Refused(format!("kernel=on: {why}"))),
        (Kernel::Auto, Err(why)) => Err(why),
    };
    // Everything that takes time is prepared before the window opens, so the window holds
    // sampling only and the profile accounts for the CPU time inside it.
    let threads = threads();
    let tids: Vec<i32> = threads.keys().copied().collect();
    let unwinder = StackUnwinder::new();
    let kernel_symbols = use_perf.is_ok().then(kernel_symbols);
    let mut profile = Profile {
        stacks: HashMap::new(),
        start: SystemTime::now(),
        duration: window,
        comments: Vec::new(),
        sampled_ns: 0,
        cpu_ns: None,
        kernel_text: None,
        last_stacks: HashMap::new(),
    };
    let started = Instant::now();
    let cpu_before = process_cpu_ns();
    let deadline = started + window;
    let mut clocks = ThreadClocks::start(&tids);
    match (use_perf, kernel_symbols) {
        (Ok(()), Some(symbols)) => {
            let sampler = PerfSampler::start(&tids, HZ).map_err(Error::Failed)?;
            profile.sample_with_perf(sampler, &unwinder, symbols, &threads, &mut clocks, deadline);
        }
        (why, _) => {
            let why = why.err().unwrap_or_default();
            profile.comments.push(format!(
                "kernel frames: not available ({why}); time in system calls is shown at the \
                 libc or vDSO function that made each call"
            ));
            let sampler = SignalSampler::start(&tids, HZ).map_err(Error::Failed)?;
            profile.sample_with_signals(sampler, &threads, &mut clocks, deadline);
        }
    }
    profile.credit_tails(&threads, &mut clocks);
    profile.comments.push(weights_comment(&clocks));
    profile.duration = started.elapsed();
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_ns()) {
        profile.cpu_ns = Some(after - before);
    }
    profile.comments.push(profile.coverage_comment());
    Ok(profile)
}

/// The kernel's symbols, read once per process (reading and sorting `/proc/kallsyms`
/// takes tens of milliseconds; the kernel's text does not move while we run).
fn kernel_symbols() -> &'static Result<KernelSymbols, String> {
    static SYMBOLS: std::sync::OnceLock<Result<KernelSymbols, String>> = std::sync::OnceLock::new();
    SYMBOLS.get_or_init(KernelSymbols::load)
}

/// Says how samples are weighted, how far the sampler's own clock was from the threads'
/// CPU time, and what time no sample carries.
fn weights_comment(clocks: &ThreadClocks) -> String {
    let (claimed, given) = clocks.claimed_and_given();
    let unattributed = clocks.unattributed_ns();
    format!(
        "weights: each sample stands for its share of its thread's CPU time (the thread's \
         CPU clock, read at every 20 ms drain); the sampler's own periods added up to \
         {:.2} s for {:.2} s of CPU time; the time after each thread's last sample went to \
         that sample's stack; {:.3} s of CPU time of threads without samples carries no \
         stack",
        claimed as f64 / 1e9,
        given as f64 / 1e9,
        unattributed as f64 / 1e9
    )
}

/// Sleeps until the next drain or `deadline`; false once the deadline has passed.
fn wait_for_drain(deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    std::thread::sleep(DRAIN_EVERY.min(deadline - now));
    true
}

impl Profile {
    /// Counts `samples` samples standing for `nanos` of CPU time on `stack`.
    fn add_weighted(&mut self, stack: Vec<Frame>, thread: &str, samples: i64, nanos: i64) {
        let entry = self
            .stacks
            .entry((stack, thread.to_owned()))
            .or_insert((0, 0));
        entry.0 += samples;
        entry.1 += nanos;
        self.sampled_ns += nanos;
    }

    /// Adds one drain's samples: (stack, thread, samples, the nanoseconds the sampler
    /// says they stand for), each given its share of its thread's CPU time.
    fn add_drained(
        &mut self,
        drained: Vec<(Vec<Frame>, i32, i64, i64)>,
        threads: &HashMap<i32, String>,
        clocks: &mut ThreadClocks,
    ) {
        let claims: Vec<Claim> = drained
            .iter()
            .map(|&(_, tid, _, nanos)| Claim { tid, nanos })
            .collect();
        let given = clocks.apportion(&claims);
        for ((stack, tid, samples, _), nanos) in drained.into_iter().zip(given) {
            self.last_stacks.insert(tid, stack.clone());
            self.add_weighted(stack, thread_name(threads, tid), samples, nanos);
        }
    }

    /// When the window closes, each thread's CPU time after its last sample (less than
    /// a sampling period, more for a thread starved of samples by contention) goes to
    /// that sample's stack, where the thread was last seen, rather than to no stack.
    fn credit_tails(&mut self, threads: &HashMap<i32, String>, clocks: &mut ThreadClocks) {
        for (tid, nanos) in clocks.take_owed(|tid| self.last_stacks.contains_key(&tid)) {
            if let Some(stack) = self.last_stacks.get(&tid).cloned() {
                self.add_weighted(stack, thread_name(threads, tid), 0, nanos);
            }
        }
    }

    fn sample_with_signals(
        &mut self,
        sampler: SignalSampler,
        threads: &HashMap<i32, String>,
        clocks: &mut ThreadClocks,
        deadline: Instant,
    ) {
        let period = (1_000_000_000 / HZ) as i64;
        let collect = |raw: &RawSample| {
            let stack = Frame::walked(&raw.frames[..raw.depth.min(MAX_FRAMES)], true);
            let samples = i64::from(raw.weight);
            (stack, raw.tid, samples, samples.saturating_mul(period))
        };
        while wait_for_drain(deadline) {
            // The clocks first: every sample in the buffer was taken before this reading.
            clocks.tick();
            let mut drained = Vec::new();
            sampler.drain(&mut |raw| drained.push(collect(raw)));
            self.add_drained(drained, threads, clocks);
        }
        let lost = sampler.lost();
        let mut drained = Vec::new();
        sampler.stop(&mut |raw| drained.push(collect(raw)));
        clocks.tick();
        self.add_drained(drained, threads, clocks);
        if lost > 0 {
            self.comments.push(format!(
                "{lost} samples lost (sample buffer full): their time is carried by the \
                 same thread's other samples of the same drain interval"
            ));
        }
    }

    fn sample_with_perf(
        &mut self,
        mut sampler: PerfSampler,
        unwinder: &StackUnwinder,
        kernel_symbols: &Result<KernelSymbols, String>,
        threads: &HashMap<i32, String>,
        clocks: &mut ThreadClocks,
        deadline: Instant,
    ) {
        match kernel_symbols {
            Ok(_) => self.comments.push(
                "kernel frames: yes (perf_event_open, software CPU clock); kernel functions \
                 have the file [kernel.kallsyms]"
                    .into(),
            ),
            Err(why) => self.comments.push(format!(
                "kernel frames: yes, but unnamed ({why}): they show as [kernel] addresses"
            )),
        }
        let kernel_symbols = kernel_symbols.as_ref().ok();
        self.kernel_text = kernel_symbols.and_then(KernelSymbols::text);
        let collect = |sample: &PerfSample<'_>| {
            let stack = perf_stack(sample, unwinder, kernel_symbols);
            let nanos = i64::try_from(sample.period).unwrap_or(i64::MAX);
            (stack, sample.tid, 1, nanos)
        };
        let mut stopped = false;
        while !stopped {
            stopped = !wait_for_drain(deadline);
            if stopped {
                sampler.stop();
            }
            // The clocks first: every sample in the rings was taken before this reading.
            clocks.tick();
            let mut drained = Vec::new();
            sampler.drain(&mut |sample| drained.push(collect(sample)));
            self.add_drained(drained, threads, clocks);
        }
        let dropped = sampler.dropped();
        if dropped.lost > 0 {
            self.comments.push(format!(
                "{} samples lost (ring buffer full while the profiling thread waited for a \
                 CPU): their time is carried by the same thread's other samples of the same \
                 drain interval",
                dropped.lost
            ));
        }
        if dropped.throttled > 0 {
            self.comments.push(format!(
                "the kernel throttled sampling {} times (kernel.perf_event_max_sample_rate): \
                 the time it did not sample is carried by the same thread's other samples",
                dropped.throttled
            ));
        }
    }

    fn coverage_comment(&self) -> String {
        let sampled = self.sampled_ns as f64 / 1e9;
        match self.cpu_ns {
            Some(cpu) if cpu > 0 => format!(
                "coverage: samples account for {:.1}% of the process's CPU time in the \
                 window ({sampled:.2} s sampled, {:.2} s user+system in /proc/self/stat)",
                100.0 * self.sampled_ns as f64 / cpu as f64,
                cpu as f64 / 1e9
            ),
            _ => {
                format!("coverage: {sampled:.2} s sampled; the process used no measurable CPU time")
            }
        }
    }

    fn pprof(self) -> Result<Vec<u8>, String> {
        let period = i64::from(1_000_000_000 / HZ);
        let mut builder = Builder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            period,
        );
        builder.time(self.start, self.duration);
        if let Some(text) = &self.kernel_text {
            builder.kernel_text(text.clone());
        }
        for comment in &self.comments {
            builder.comment(comment);
        }
        for ((stack, thread), (count, nanos)) in &self.stacks {
            builder.add_sample(stack, &[*count, *nanos], &[("thread", thread)]);
        }
        builder
            .gzip()
            .map_err(|e| format!("cannot compress the profile: {e}"))
    }

    /// An SVG flame graph: the thread at the root, then the stack; Rust functions yellow,
    /// other user-space code red, kernel functions orange.
    fn flamegraph(self) -> Result<Vec<u8>, String> {
        if self.stacks.is_empty() {
            // inferno draws nothing at all for no samples; say why instead.
            return Ok(no_samples_svg(self.duration.as_secs()).into_bytes());
        }
        let mut names: HashMap<Frame, Vec<String>> = HashMap::new();
        let mut lines = Vec::with_capacity(self.stacks.len());
        for ((stack, thread), (count, _)) in &self.stacks {
            let mut line = thread.replace(';', ":");
            for frame in stack.iter().rev() {
                let frame_names = names
                    .entry(frame.clone())
                    .or_insert_with(|| flame_names(frame));
                for name in frame_names.iter() {
                    line.push(';');
                    line.push_str(name);
                }
            }
            lines.push(format!("{line} {count}"));
        }
        let mut options = inferno::flamegraph::Options::default();
        options.colors = inferno::flamegraph::color::Palette::Multi(
            inferno::flamegraph::color::MultiPalette::Perl,
        );
        options.title = "leftpad CPU profile".into();
        options.subtitle = Some(self.comments.join(" | "));
        options.count_name = "samples".into();
        let mut svg = Vec::new();
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
            .map_err(|e| format!("cannot draw the flame graph: {e}"))?;
        Ok(svg)
    }
}

/// A frame's names for a flame graph, outermost first (inlined functions expanded);
/// kernel functions end in `_[k]`, which the palette colours orange.
fn flame_names(frame: &Frame) -> Vec<String> {
    let clean = |name: &str| name.replace(';', ":");
    match frame {
        Frame::Code { address } => symbols::resolve_at(*address)
            .iter()
            .rev()
            .map(|symbol| clean(&symbol.name))
            .collect(),
        Frame::Kernel { name, .. } => vec![format!("{}_[k]", clean(name))],
        Frame::Named { name, .. } => vec![clean(name)],
    }
}

/// A perf sample's frames: kernel functions (innermost first), then the user stack
/// unwound from the copied registers and stack bytes.
fn perf_stack(
    sample: &PerfSample<'_>,
    unwinder: &StackUnwinder,
    kernel_symbols: Option<&KernelSymbols>,
) -> Vec<Frame> {
    let mut stack: Vec<Frame> = sample
        .kernel
        .iter()
        .enumerate()
        .map(|(i, &address)| {
            // Callers' addresses are return addresses: name and keep the call before them.
            let address = if i > 0 {
                call_address(address)
            } else {
                address
            };
            let name = kernel_symbols
                .and_then(|symbols| symbols.name(address))
                .map_or_else(|| format!("[kernel] {address:#x}"), str::to_owned);
            Frame::Kernel { address, name }
        })
        .collect();
    if let Some(regs) = sample.user {
        let base = regs.sp;
        let bytes = sample.stack;
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let offset = usize::try_from(address.checked_sub(base).ok_or(())?).map_err(|_| ())?;
            let word = bytes
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let mut addresses = [0u64; MAX_FRAMES];
        let depth = unwinder.unwind(regs, &mut read_stack, &mut addresses);
        stack.extend(Frame::walked(&addresses[..depth], true));
    }
    stack
}

/// This process's threads: id to name (`/proc/self/task/*/comm`).
fn threads() -> HashMap<i32, String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            Some((tid, name.trim().to_owned()))
        })
        .collect()
}

fn thread_name(threads: &HashMap<i32, String>, tid: i32) -> &str {
    threads.get(&tid).map_or("unknown thread", String::as_str)
}

/// User plus system CPU time of the process so far, in nanoseconds.
fn process_cpu_ns() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| (ticks as i64).saturating_mul(1_000_000_000 / per_second as i64))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The
/// command name (field 2) may hold spaces and parentheses: fields are counted after its
/// closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The flame graph of a profile without samples.
fn no_samples_svg(seconds: u64) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"10\" y=\"35\" font-family=\"Verdana\" font-size=\"16\">\
         No samples in {seconds} s: the process used no CPU time while profiled (idle). \
         Profile again under load.</text></svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_parameter() {
        assert_eq!(Kernel::parse(None), Ok(Kernel::Auto));
        assert_eq!(Kernel::parse(Some("auto")), Ok(Kernel::Auto));
        assert_eq!(Kernel::parse(Some("on")), Ok(Kernel::On));
        assert_eq!(Kernel::parse(Some("off")), Ok(Kernel::Off));
        let error = Kernel::parse(Some("yes")).unwrap_err();
        assert!(
            error.contains("auto, on or off") && error.contains("'yes'"),
            "{error}"
        );
    }

    #[test]
    fn cpu_ticks_of_a_stat_line_with_an_awkward_name() {
        let stat = "1234 (lef) tpad (x)) S 1 2 3 4 5 6 7 8 9 10 250 70 0 0 20 0 9";
        assert_eq!(cpu_ticks(stat), Some(320));
        assert_eq!(cpu_ticks("1234 (x) S 1 2"), None);
    }

    #[test]
    fn kernel_frames_are_marked_for_the_flame_graph() {
        let kernel = Frame::Kernel {
            address: 0xffff_ffff_8100_0010,
            name: "tcp_sendmsg".into(),
        };
        assert_eq!(flame_names(&kernel), ["tcp_sendmsg_[k]"]);
        let state = Frame::Named {
            name: "a;b".into(),
            file: "",
        };
        assert_eq!(flame_names(&state), ["a:b"]);
    }

    /// A busy thread of this test process is sampled through the signal path: samples
    /// arrive and carry whole stacks back to the test.
    #[test]
    #[cfg_attr(
        leftpad_emulated,
        ignore = "qemu-user does not emulate per-thread CPU-time timers"
    )]
    fn the_signal_sampler_records_a_busy_thread() {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let spinner = std::thread::spawn(move || {
            let mut x = 0u64;
            while !spinning.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        });
        let profile = take(Duration::from_millis(500), Kernel::Off).expect("profile");
        stop.store(true, Ordering::Relaxed);
        spinner.join().expect("spinner");
        assert!(
            profile.sampled_ns >= 200_000_000,
            "sampled {} ns",
            profile.sampled_ns
        );
        let deepest = profile
            .stacks
            .keys()
            .map(|(stack, _)| stack.len())
            .max()
            .unwrap_or(0);
        assert!(
            deepest >= 3,
            "stacks are walked, not just leaves: {deepest}"
        );
        assert!(profile
            .comments
            .iter()
            .any(|c| c.contains("kernel frames: not available")));
    }
}
