//! Signal-based CPU sampling: each thread interrupted every 10 ms of its own CPU time.
//!
//! Every thread gets a POSIX timer on its own CPU-time clock, delivering `SIGPROF` to that
//! very thread (`SIGEV_THREAD_ID`), as Go does since 1.18. A process-wide
//! `setitimer(ITIMER_PROF)` would coalesce signals when several threads run at once and
//! lose CPU time. The kernel charges system-call time to the thread's clock too, and
//! delivers the signal on the way back to user space, so a sample taken for time spent in
//! the kernel lands in the libc wrapper or vDSO function that made the call: unwinding
//! through it with CFI ([`super::unwind`]) puts that time under the exact Rust caller.
//!
//! The handler (see `on_sigprof` for the full argument) allocates nothing and takes no
//! lock: it claims a slot of a preallocated buffer with atomics, unwinds into it reading
//! only validated stack addresses, and marks it full. The profiling thread drains the
//! buffer while the window runs.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::unwind::{mapping_of, writable_mappings, Regs, StackUnwinder, MAX_FRAMES};

/// Slots of the sample buffer: at 100 Hz per busy thread and a drain every 20 ms, a few
/// dozen are in use at most; the rest absorb a stalled drain.
const SLOTS: usize = 4096;

const EMPTY: u32 = 0;
const WRITING: u32 = 1;
const FULL: u32 = 2;

/// One sample as the handler records it.
pub struct RawSample {
    pub tid: i32,
    /// Periods of CPU time this sample stands for: 1, plus the timer's overruns (periods
    /// that expired while the previous signal was still pending).
    pub weight: u32,
    pub depth: usize,
    /// Innermost first: the interrupted PC, then return addresses.
    pub frames: [u64; MAX_FRAMES],
}

struct Slot {
    state: AtomicU32,
    sample: UnsafeCell<RawSample>,
}

/// What the handler needs, built before the timers start and freed after the last
/// handler has left it.
struct State {
    unwinder: StackUnwinder,
    /// Writable mappings, sorted: a stack read must stay inside the one holding SP.
    mappings: Vec<Range<u64>>,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    lost: AtomicU64,
}

// SAFETY: slots are handed between threads through their `state` (acquire/release); the
// rest is read-only or atomic.
unsafe impl Sync for State {}

/// The state of the running profile; null when none runs.
static STATE: AtomicPtr<State> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers between their entry and exit: the state is freed only when this is zero.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A running signal-based sampler. Only one exists at a time (the CPU profile's busy flag
/// guarantees it).
pub struct SignalSampler {
    timers: Vec<libc::timer_t>,
    state: *mut State,
}

impl SignalSampler {
    /// Starts sampling the threads `tids` (of this process) `hz` times per CPU-second.
    pub fn start(tids: &[i32], hz: u32) -> Result<SignalSampler, String> {
        install_handler()?;
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU32::new(EMPTY),
                sample: UnsafeCell::new(RawSample {
                    tid: 0,
                    weight: 0,
                    depth: 0,
                    frames: [0; MAX_FRAMES],
                }),
            })
            .collect();
        let state = Box::into_raw(Box::new(State {
            unwinder: StackUnwinder::new(),
            mappings: writable_mappings(),
            slots,
            next: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        }));
        STATE.store(state, Ordering::SeqCst);
        let mut sampler = SignalSampler {
            timers: Vec::with_capacity(tids.len()),
            state,
        };
        let period = Duration::from_secs(1) / hz.max(1);
        for &tid in tids {
            // A thread that exited meanwhile has no clock: skip it.
            if let Ok(timer) = thread_cpu_timer(tid, period) {
                sampler.timers.push(timer);
            }
        }
        Ok(sampler)
    }

    /// Hands every finished sample to `sink` and frees its slot.
    pub fn drain(&self, sink: &mut impl FnMut(&RawSample)) {
        // SAFETY: `self.state` stays valid until `stop` (which consumes self) frees it.
        let state = unsafe { &*self.state };
        for slot in state.slots.iter() {
            if slot.state.load(Ordering::Acquire) == FULL {
                // SAFETY: a FULL slot is not touched by handlers until set EMPTY again.
                sink(unsafe { &*slot.sample.get() });
                slot.state.store(EMPTY, Ordering::Release);
            }
        }
    }

    /// Samples dropped because the buffer was full.
    pub fn lost(&self) -> u64 {
        // SAFETY: as in `drain`.
        unsafe { &*self.state }.lost.load(Ordering::Relaxed)
    }

    /// Stops the timers, hands the last samples to `sink`, and frees the state once no
    /// handler can be using it.
    pub fn stop(self, sink: &mut impl FnMut(&RawSample)) {
        for &timer in &self.timers {
            // SAFETY: each timer was created by `thread_cpu_timer` and is deleted once.
            unsafe { libc::timer_delete(timer) };
        }
        STATE.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A handler that loaded the state before it was cleared is counted in ACTIVE
        // (it increments before loading); wait for those to finish. Bounded: a handler
        // runs for microseconds.
        for _ in 0..10_000 {
            if ACTIVE.load(Ordering::SeqCst) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        self.drain(sink);
        if ACTIVE.load(Ordering::SeqCst) == 0 {
            // SAFETY: created by Box::into_raw in `start`; no handler holds it (above),
            // and new handlers see a null STATE.
            drop(unsafe { Box::from_raw(self.state) });
        }
        // Otherwise a handler is stuck (never seen): leak the state rather than free it
        // under that handler.
    }
}

/// A timer on `tid`'s CPU-time clock sending SIGPROF to `tid` every `period`.
fn thread_cpu_timer(tid: i32, period: Duration) -> Result<libc::timer_t, String> {
    let clock = super::clocks::thread_clock(tid);
    // SAFETY: sigevent is plain data; the fields that matter are set below.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = libc::SIGPROF;
    event.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers to a sigevent and a timer_t for the duration of the call.
    if unsafe { libc::timer_create(clock, &mut event, &mut timer) } != 0 {
        return Err(format!(
            "timer_create for thread {tid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let interval = libc::timespec {
        tv_sec: period.as_secs() as _, // time_t: 64-bit here; its alias is deprecated on musl
        tv_nsec: period.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: `timer` was just created; `spec` is valid for the call.
    if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
        let error = std::io::Error::last_os_error();
        // SAFETY: deleting the timer just created.
        unsafe { libc::timer_delete(timer) };
        return Err(format!("timer_settime for thread {tid}: {error}"));
    }
    Ok(timer)
}

/// Installs the SIGPROF handler once for the life of the process: a SIGPROF still pending
/// when a profile ends must find a handler (the default action ends the process), and
/// with no profile running the handler returns at once.
fn install_handler() -> Result<(), String> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        // SAFETY: sigaction is plain data, filled in below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigprof as *const () as libc::sighandler_t;
        // SA_RESTART: an interrupted system call (a blocking write, io_uring_enter)
        // resumes instead of failing with EINTR.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: a valid sigaction; the signal set is initialised by sigemptyset.
        let installed = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            result = Err(format!(
                "cannot install the SIGPROF handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    });
    result
}

/// The SIGPROF handler.
///
/// Signal safety, point by point:
/// - No lock and no allocation: it touches only atomics, the preallocated slots, and
///   `StackUnwinder::unwind`, which claims a preallocated cache with an atomic flag and
///   evaluates CFI without allocating (framehop's `MustNotAllocateDuringUnwind`). So it
///   cannot deadlock on a lock the interrupted code holds (malloc's, the loader's).
/// - Every memory read is validated: registers come from the kernel-written ucontext;
///   stack words are read only inside the writable mapping that contains the interrupted
///   SP (from /proc/self/maps, taken before sampling; the thread's own stack, which
///   cannot be unmapped while the thread runs). A bad frame pointer or CFA ends the walk
///   (`Err` from the read), it never faults. Unwind tables are read-only mapped sections
///   of loaded objects, which stay mapped.
/// - Lifetime: `ACTIVE` is raised before `STATE` is read, and `stop` frees the state only
///   after clearing `STATE` and seeing `ACTIVE` at zero.
/// - errno is saved and restored (nothing here should set it; cheap insurance).
/// - SIGPROF is blocked while its handler runs (no SA_NODEFER), so a thread never
///   re-enters it; handlers on different threads use different slots and caches.
extern "C" fn on_sigprof(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let state = STATE.load(Ordering::SeqCst);
    if !state.is_null() && !context.is_null() {
        // SAFETY: non-null STATE is live until `stop` sees ACTIVE at zero (above); the
        // kernel passes a valid ucontext_t as the third argument of an SA_SIGINFO handler.
        unsafe {
            let weight = 1 + timer_overruns(info);
            record(&*state, &*context.cast::<libc::ucontext_t>(), weight);
        }
    }
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Linux's `si_code` for a POSIX timer's signal.
const SI_TIMER: libc::c_int = -2;

/// The overrun count of a POSIX timer's signal: expirations that happened while the
/// signal was pending, which the kernel folds into one delivery (0 for other signals).
///
/// # Safety
/// `info` is null or the `siginfo_t` the kernel passed to an SA_SIGINFO handler.
unsafe fn timer_overruns(info: *const libc::siginfo_t) -> u32 {
    if info.is_null() {
        return 0;
    }
    // The kernel's 64-bit layout (include/uapi/asm-generic/siginfo.h): si_signo, si_errno,
    // si_code, padding, then the union, whose `_timer` member starts with si_tid and
    // si_overrun (ints 4 and 5). The libc crate exposes no accessor for it.
    let words = info.cast::<libc::c_int>();
    // SAFETY: siginfo_t is 128 bytes; ints 2 and 5 lie inside it.
    let (code, overrun) = unsafe { (*words.add(2), *words.add(5)) };
    if code == SI_TIMER {
        u32::try_from(overrun).unwrap_or(0)
    } else {
        0
    }
}

fn record(state: &State, context: &libc::ucontext_t, weight: u32) {
    let regs = registers(context);
    let index = state.next.fetch_add(1, Ordering::Relaxed) % SLOTS;
    let slot = &state.slots[index];
    if slot
        .state
        .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        state.lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: this handler moved the slot from EMPTY to WRITING: it is the slot's only
    // user until it stores FULL.
    let sample = unsafe { &mut *slot.sample.get() };
    // SAFETY: gettid is a plain system call.
    sample.tid = unsafe { libc::gettid() };
    sample.weight = weight;
    let bounds = mapping_of(&state.mappings, regs.sp).unwrap_or(0..0);
    let mut read_stack = |address: u64| -> Result<u64, ()> {
        let inside = address % 8 == 0
            && address >= bounds.start
            && address.checked_add(8).is_some_and(|end| end <= bounds.end);
        if !inside {
            return Err(());
        }
        // SAFETY: the word lies inside a writable mapping that holds this thread's
        // stack (checked just above) and is 8-aligned.
        Ok(unsafe { std::ptr::read_volatile(address as *const u64) })
    };
    sample.depth = state
        .unwinder
        .unwind(regs, &mut read_stack, &mut sample.frames);
    slot.state.store(FULL, Ordering::Release);
}

#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn registers(context: &libc::ucontext_t) -> Regs {
    let gregs = &context.uc_mcontext.gregs;
    Regs {
        pc: gregs[libc::REG_RIP as usize] as u64,
        sp: gregs[libc::REG_RSP as usize] as u64,
        fp: gregs[libc::REG_RBP as usize] as u64,
        lr: 0,
    }
}

#[cfg(all(target_arch = "x86_64", target_env = "musl"))]
fn registers(context: &libc::ucontext_t) -> Regs {
    // musl's mcontext_t: gregs in the same order as glibc's (REG_RBP 10, REG_RSP 15,
    // REG_RIP 16).
    let gregs = &context.uc_mcontext.gregs;
    Regs {
        pc: gregs[16] as u64,
        sp: gregs[15] as u64,
        fp: gregs[10] as u64,
        lr: 0,
    }
}

#[cfg(target_arch = "aarch64")]
fn registers(context: &libc::ucontext_t) -> Regs {
    let mcontext = &context.uc_mcontext;
    Regs {
        pc: mcontext.pc,
        sp: mcontext.sp,
        fp: mcontext.regs[29],
        lr: mcontext.regs[30],
    }
}
