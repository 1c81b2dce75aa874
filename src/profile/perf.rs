//! CPU sampling with `perf_event_open`: the kernel's own frames below each system call.
//!
//! Where the kernel allows it (root, `CAP_PERFMON`, or `perf_event_paranoid` <= 1), each
//! thread gets a software CPU-clock event that samples it every 10 ms of its CPU time,
//! recording the kernel call chain (when the thread was in the kernel), the user-space
//! registers and a copy of the top of the user stack, as `perf record --call-graph dwarf`
//! does. The kernel writes the samples into a ring buffer per thread; the profiling thread
//! drains them (no signal handler is involved) and unwinds the user part from the copied
//! stack with CFI ([`super::unwind`]), so the stack reads: kernel functions, then the libc
//! wrapper that made the system call, then the exact Rust caller.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use perf_event_open_sys as sys;

use super::unwind::Regs;

/// Bytes of user stack copied per sample: deep enough for this server's stacks while a
/// sample stays below the 64 KiB record limit. Measured under load with two workers:
/// the unwinder reads up to 15 KiB above the stack pointer in a release build; in a
/// debug build 16 KiB cut 715 of about 1,300 stacks short (their outer frames lost),
/// 32 KiB cuts about a tenth of that, all in the profiling thread's own deep unwinding
/// (36 KiB).
const STACK_BYTES: u32 = 32 * 1024;
/// Data pages of each thread's ring buffer (a power of two): 1 MiB, about thirty
/// samples, drained every 20 ms, in which a busy thread takes two; the rest absorbs a
/// profiling thread kept off the CPU for up to about 300 ms. A smaller ring is used if
/// the locked-memory limit refuses this one (see [`open`]).
const DATA_PAGES: usize = 256;
/// The smallest ring tried before giving up: 64 KiB, two samples.
const MIN_DATA_PAGES: usize = 16;

#[cfg(target_arch = "x86_64")]
mod regs {
    /// BP, SP, IP in `perf_event_x86_regs` order; sampled registers come in bit order.
    pub const MASK: u64 = 1 << 6 | 1 << 7 | 1 << 8;
    pub fn from_sampled(r: &[u64; 4]) -> super::Regs {
        super::Regs {
            fp: r[0],
            sp: r[1],
            pc: r[2],
            lr: 0,
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod regs {
    /// X29 (frame pointer), LR, SP, PC in `perf_event_arm64_regs` order.
    pub const MASK: u64 = 1 << 29 | 1 << 30 | 1 << 31 | 1 << 32;
    pub fn from_sampled(r: &[u64; 4]) -> super::Regs {
        super::Regs {
            fp: r[0],
            lr: r[1],
            sp: r[2],
            pc: r[3],
        }
    }
}

/// One sample read from a ring buffer; slices borrow the record.
#[derive(Debug, PartialEq, Eq)]
pub struct PerfSample<'a> {
    pub tid: i32,
    /// CPU time this sample stands for, in nanoseconds.
    pub period: u64,
    /// Kernel call chain, innermost first (empty for a sample in user space).
    pub kernel: Vec<u64>,
    /// User registers at the sample (in the kernel: at system-call entry).
    pub user: Option<Regs>,
    /// Copy of the user stack from `user.sp` up.
    pub stack: &'a [u8],
}

struct Event {
    fd: OwnedFd,
    ring: *mut u8,
    ring_len: usize,
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: `ring` is the mapping of `ring_len` bytes made in `open`, unmapped once.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

/// Sampling of a set of threads, running from `start` until dropped.
pub struct PerfSampler {
    events: Vec<Event>,
    dropped: Dropped,
    scratch: Vec<u8>,
}

/// What the kernel reported it did not sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Samples dropped because a ring buffer was full (`PERF_RECORD_LOST`).
    pub lost: u64,
    /// Times an event was throttled for exceeding `perf_event_max_sample_rate`
    /// (`PERF_RECORD_THROTTLE`): its samples stop until the next tick.
    pub throttled: u64,
}

// SAFETY: the ring buffers are owned by the sampler and read only through `&mut self`.
unsafe impl Send for PerfSampler {}

/// Whether this process may sample kernel call chains; `Err` says why not.
pub fn permitted() -> Result<(), String> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    open(tid, 100).map(drop).map_err(|e| {
        let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        format!(
            "perf_event_open refused kernel sampling ({e}): kernel.perf_event_paranoid is \
             {paranoid} and the process (uid {euid}) has neither root nor CAP_PERFMON; \
             run as root, grant CAP_PERFMON, or set perf_event_paranoid to 1 or less"
        )
    })
}

impl PerfSampler {
    /// Starts sampling `tids` (threads of this process) `hz` times per CPU-second. Threads
    /// that exited meanwhile are skipped; any other failure is an error.
    pub fn start(tids: &[i32], hz: u32) -> Result<PerfSampler, String> {
        let mut events = Vec::with_capacity(tids.len());
        for &tid in tids {
            match open(tid, hz) {
                Ok(event) => events.push(event),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(format!("perf_event_open for thread {tid}: {e}")),
            }
        }
        for event in &events {
            // SAFETY: a perf event fd; ENABLE takes no argument.
            unsafe { sys::ioctls::ENABLE(event.fd.as_raw_fd(), 0) };
        }
        Ok(PerfSampler {
            events,
            dropped: Dropped::default(),
            scratch: Vec::new(),
        })
    }

    /// Stops sampling; what was written stays readable by `drain`.
    pub fn stop(&self) {
        for event in &self.events {
            // SAFETY: a perf event fd; DISABLE takes no argument.
            unsafe { sys::ioctls::DISABLE(event.fd.as_raw_fd(), 0) };
        }
    }

    /// Everything the kernel reported it did not sample, so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Hands every sample written so far to `sink`.
    pub fn drain(&mut self, sink: &mut impl FnMut(&PerfSample<'_>)) {
        for event in &self.events {
            drain_ring(event, &mut self.scratch, &mut self.dropped, sink);
        }
    }
}

fn open(tid: i32, hz: u32) -> std::io::Result<Event> {
    let mut attr = sys::bindings::perf_event_attr {
        size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
        type_: sys::bindings::PERF_TYPE_SOFTWARE,
        config: u64::from(sys::bindings::PERF_COUNT_SW_CPU_CLOCK),
        // The bindings type these as u32 on x86_64 and u64 on aarch64.
        #[allow(clippy::useless_conversion)]
        sample_type: u64::from(
            sys::bindings::PERF_SAMPLE_IP
                | sys::bindings::PERF_SAMPLE_TID
                | sys::bindings::PERF_SAMPLE_TIME
                | sys::bindings::PERF_SAMPLE_PERIOD
                | sys::bindings::PERF_SAMPLE_CALLCHAIN
                | sys::bindings::PERF_SAMPLE_REGS_USER
                | sys::bindings::PERF_SAMPLE_STACK_USER,
        ),
        sample_regs_user: regs::MASK,
        sample_stack_user: STACK_BYTES,
        ..Default::default()
    };
    // The CPU clock counts nanoseconds: one sample per 1/hz s of the thread's CPU time.
    attr.__bindgen_anon_1.sample_period = 1_000_000_000 / u64::from(hz.max(1));
    attr.set_disabled(1);
    attr.set_exclude_hv(1);
    // The user part is unwound here from the stack copy (exact through libc); the
    // kernel's own frame-pointer walk of user space would not be.
    attr.set_exclude_callchain_user(1);
    open_ring(&mut attr, tid, DATA_PAGES)
}

/// Opens the event `attr` on thread `tid` with a ring of `data_pages` (a power of two).
fn open_ring(
    attr: &mut sys::bindings::perf_event_attr,
    tid: i32,
    data_pages: usize,
) -> std::io::Result<Event> {
    // SAFETY: a valid attr for the duration of the call.
    let fd = unsafe {
        sys::perf_event_open(attr, tid, -1, -1, sys::bindings::PERF_FLAG_FD_CLOEXEC as _)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: perf_event_open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Ring buffers are locked memory: past `kernel.perf_event_mlock_kb` per CPU they
    // count against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK, so an
    // unprivileged process with many threads may be refused the full size. A smaller
    // ring only drops more samples when the profiling thread is late (their time is
    // still counted, see `super::clocks`).
    let mut pages = data_pages;
    loop {
        let ring_len = (pages + 1) * page_size();
        // SAFETY: mapping a perf event fd as the kernel documents (one header page plus a
        // power of two of data pages), read-write so that data_tail can be written.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring != libc::MAP_FAILED {
            return Ok(Event {
                fd,
                ring: ring.cast(),
                ring_len,
            });
        }
        let error = std::io::Error::last_os_error();
        let refused = matches!(error.raw_os_error(), Some(libc::EPERM | libc::ENOMEM));
        if !refused || pages <= MIN_DATA_PAGES {
            return Err(error);
        }
        pages /= 2;
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Hands the samples between the ring's tail and head to `sink`, counts what the kernel
/// dropped (lost to a full ring, throttled), then moves the tail.
fn drain_ring(
    event: &Event,
    scratch: &mut Vec<u8>,
    dropped: &mut Dropped,
    sink: &mut impl FnMut(&PerfSample<'_>),
) {
    drain_records(event, scratch, |kind, record| match kind {
        sys::bindings::PERF_RECORD_SAMPLE => {
            if let Some(sample) = parse_sample(&record[8..]) {
                sink(&sample);
            }
        }
        sys::bindings::PERF_RECORD_LOST => dropped.lost += lost_count(record),
        sys::bindings::PERF_RECORD_THROTTLE => dropped.throttled += 1,
        _ => {}
    });
}

/// The count of a PERF_RECORD_LOST record (after its header and id).
fn lost_count(record: &[u8]) -> u64 {
    record
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Hands each record between the ring's tail and head (its type, and its bytes from the
/// header on) to `sink`, then moves the tail.
fn drain_records(event: &Event, scratch: &mut Vec<u8>, mut sink: impl FnMut(u32, &[u8])) {
    let header = event.ring.cast::<sys::bindings::perf_event_mmap_page>();
    // SAFETY: the first page of the mapping is the kernel's perf_event_mmap_page; head is
    // read with an acquire fence after it, as perf_event_open(2) prescribes.
    let (head, tail, data_offset, data_size) = unsafe {
        let head = std::ptr::read_volatile(std::ptr::addr_of!((*header).data_head));
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        (
            head,
            std::ptr::read_volatile(std::ptr::addr_of!((*header).data_tail)),
            std::ptr::read_volatile(std::ptr::addr_of!((*header).data_offset)),
            std::ptr::read_volatile(std::ptr::addr_of!((*header).data_size)),
        )
    };
    if data_size == 0 || head < tail || head - tail > data_size {
        return;
    }
    // SAFETY: the data area is data_size bytes at data_offset inside the mapping.
    let data = unsafe {
        std::slice::from_raw_parts(event.ring.add(data_offset as usize), data_size as usize)
    };
    let mut position = tail;
    while position + 8 <= head {
        let record = ring_bytes(data, position, 8, scratch);
        let kind = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
        let size = u64::from(u16::from_le_bytes([record[6], record[7]]));
        if size < 8 || position + size > head {
            break;
        }
        sink(kind, ring_bytes(data, position, size as usize, scratch));
        position += size;
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    // SAFETY: data_tail is the one field of the header page user space writes.
    unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*header).data_tail), position) };
}

/// `len` bytes of the ring at `position`, copied into `scratch` when they wrap around.
fn ring_bytes<'a>(data: &'a [u8], position: u64, len: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let start = (position % data.len() as u64) as usize;
    if start + len <= data.len() {
        return &data[start..start + len];
    }
    scratch.clear();
    scratch.extend_from_slice(&data[start..]);
    scratch.extend_from_slice(&data[..len - (data.len() - start)]);
    scratch
}

/// A PERF_RECORD_SAMPLE body, in the order `sample_type` above asks for: ip, pid/tid,
/// time, period, callchain, user registers, user stack. `None` if it is cut short.
fn parse_sample(body: &[u8]) -> Option<PerfSample<'_>> {
    let mut reader = Reader(body);
    let _ip = reader.u64()?;
    let _pid = reader.u32()?;
    let tid = reader.u32()? as i32;
    let _time = reader.u64()?;
    let period = reader.u64()?;
    let chain_len = reader.u64()?;
    let mut kernel = Vec::with_capacity(chain_len.min(256) as usize);
    for _ in 0..chain_len {
        let address = reader.u64()?;
        // Context markers (PERF_CONTEXT_KERNEL, ...) are the top 4095 values.
        if address < sys::bindings::PERF_CONTEXT_MAX {
            kernel.push(address);
        }
    }
    let abi = reader.u64()?;
    let user = if abi == 0 {
        None
    } else {
        let mut sampled = [0u64; 4];
        for value in sampled.iter_mut().take(regs::MASK.count_ones() as usize) {
            *value = reader.u64()?;
        }
        Some(regs::from_sampled(&sampled))
    };
    let stack_len = reader.u64()? as usize;
    let copied = reader.bytes(stack_len)?;
    let stack = if stack_len == 0 {
        copied
    } else {
        let dynamic = (reader.u64()? as usize).min(stack_len);
        &copied[..dynamic]
    };
    Some(PerfSample {
        tid,
        period,
        kernel,
        user,
        stack,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
}

/// Data pages of a thread's context-switch ring: 256 KiB, about 10,000 switches, drained
/// every 50 ms (a busy worker switches a few thousand times in that time).
const SWITCH_PAGES: usize = 64;

/// One context switch of a thread: when (CLOCK_MONOTONIC nanoseconds), and which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub at: u64,
    pub kind: SwitchKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchKind {
    /// The thread blocked (in a wait of its own: for a worker, its ring's).
    Out,
    /// The thread was preempted while it could run.
    Preempted,
    /// The thread runs again.
    In,
}

/// The context switches of the calling thread, as the kernel records them
/// (`PERF_RECORD_SWITCH`, stamped with CLOCK_MONOTONIC): for the execution trace, where a
/// worker's P is idle while its thread waits. No privilege is needed to watch one's own
/// thread's switches, and nothing of the kernel's is read.
pub struct SwitchRing {
    event: Event,
    scratch: Vec<u8>,
    lost: u64,
}

// SAFETY: the ring is owned by this value and read only through `&mut self`.
unsafe impl Send for SwitchRing {}

impl SwitchRing {
    /// Starts recording the calling thread's switches.
    pub fn open() -> std::io::Result<SwitchRing> {
        let mut attr = sys::bindings::perf_event_attr {
            size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
            type_: sys::bindings::PERF_TYPE_SOFTWARE,
            config: u64::from(sys::bindings::PERF_COUNT_SW_DUMMY),
            #[allow(clippy::useless_conversion)]
            sample_type: u64::from(sys::bindings::PERF_SAMPLE_TIME),
            clockid: libc::CLOCK_MONOTONIC,
            ..Default::default()
        };
        attr.set_context_switch(1);
        attr.set_sample_id_all(1);
        attr.set_use_clockid(1);
        attr.set_exclude_kernel(1);
        attr.set_exclude_hv(1);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let event = open_ring(&mut attr, tid, SWITCH_PAGES)?;
        Ok(SwitchRing {
            event,
            scratch: Vec::new(),
            lost: 0,
        })
    }

    /// Switch records the kernel dropped (the ring was full).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Hands every switch recorded since the last call to `sink`, in order.
    pub fn drain(&mut self, mut sink: impl FnMut(Switch)) {
        let lost = &mut self.lost;
        drain_records(&self.event, &mut self.scratch, |kind, record| match kind {
            sys::bindings::PERF_RECORD_SWITCH => {
                if let Some(switch) = parse_switch(record) {
                    sink(switch);
                }
            }
            sys::bindings::PERF_RECORD_LOST => *lost += lost_count(record),
            _ => {}
        });
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock switch records are stamped with here,
/// and the one `std::time::Instant` reads.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given, which lives here.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A PERF_RECORD_SWITCH: its header's misc bits say which way, and its sample id (only
/// the time, as `sample_type` asks) when.
fn parse_switch(record: &[u8]) -> Option<Switch> {
    let misc = u32::from(u16::from_le_bytes([*record.get(4)?, *record.get(5)?]));
    let at = u64::from_le_bytes(record.get(8..16)?.try_into().ok()?);
    let out = misc & sys::bindings::PERF_RECORD_MISC_SWITCH_OUT != 0;
    let preempted = misc & sys::bindings::PERF_RECORD_MISC_SWITCH_OUT_PREEMPT != 0;
    let kind = match (out, preempted) {
        (false, _) => SwitchKind::In,
        (true, false) => SwitchKind::Out,
        (true, true) => SwitchKind::Preempted,
    };
    Some(Switch { at, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(kernel: &[u64], stack: &[u8], dynamic: u64) -> Vec<u8> {
        let mut body = Vec::new();
        let mut put = |v: u64| body.extend_from_slice(&v.to_le_bytes());
        put(0xffff_ffff_8100_0010); // ip
        put(7 | (9 << 32)); // pid 7, tid 9
        put(123); // time
        put(10_000_000); // period
        put(kernel.len() as u64 + 1);
        put(sys::bindings::PERF_CONTEXT_KERNEL);
        for &k in kernel {
            put(k);
        }
        put(2); // PERF_SAMPLE_REGS_ABI_64
        for r in [0x100u64, 0x200, 0x300, 0x400]
            .iter()
            .take(regs::MASK.count_ones() as usize)
        {
            put(*r);
        }
        put(stack.len() as u64);
        body.extend_from_slice(stack);
        body.extend_from_slice(&dynamic.to_le_bytes());
        body
    }

    #[test]
    fn a_sample_record_parses_with_markers_dropped() {
        let stack = [7u8; 32];
        let body = sample_record(&[0xffff_ffff_8100_0010, 0xffff_ffff_8100_2000], &stack, 16);
        let sample = parse_sample(&body).expect("parses");
        assert_eq!(sample.tid, 9);
        assert_eq!(sample.period, 10_000_000);
        assert_eq!(
            sample.kernel,
            [0xffff_ffff_8100_0010, 0xffff_ffff_8100_2000]
        );
        let user = sample.user.expect("user registers");
        #[cfg(target_arch = "x86_64")]
        assert_eq!((user.fp, user.sp, user.pc), (0x100, 0x200, 0x300));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            (user.fp, user.lr, user.sp, user.pc),
            (0x100, 0x200, 0x300, 0x400)
        );
        assert_eq!(sample.stack, &stack[..16], "only the dynamic size is valid");
    }

    #[test]
    fn a_cut_record_is_refused() {
        let body = sample_record(&[1, 2, 3], &[0; 64], 64);
        for len in [0, 8, 40, body.len() - 1] {
            assert_eq!(parse_sample(&body[..len]), None, "cut at {len}");
        }
    }

    #[test]
    fn ring_reads_wrap_around() {
        let data: Vec<u8> = (0..16).collect();
        let mut scratch = Vec::new();
        assert_eq!(ring_bytes(&data, 4, 4, &mut scratch), [4, 5, 6, 7]);
        assert_eq!(ring_bytes(&data, 14 + 32, 4, &mut scratch), [14, 15, 0, 1]);
    }

    #[test]
    #[cfg_attr(
        leftpad_emulated,
        ignore = "qemu-user does not emulate perf_event_open"
    )]
    fn a_thread_sees_its_own_waits_as_switches_on_the_monotonic_clock() {
        let mut ring = SwitchRing::open().expect("a thread may watch its own switches");
        let before = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let after = monotonic_ns();
        let mut seen = Vec::new();
        ring.drain(|switch| seen.push(switch));
        let out = seen
            .iter()
            .find(|s| s.kind == SwitchKind::Out)
            .expect("a switch-out");
        let back = seen
            .iter()
            .find(|s| s.kind == SwitchKind::In)
            .expect("a switch-in");
        assert!(
            before <= out.at && out.at <= back.at && back.at <= after,
            "{seen:?}"
        );
        assert!(back.at - out.at >= 4_000_000, "slept 5 ms: {seen:?}");
    }
}
