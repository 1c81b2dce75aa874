//! `/debug/pprof/trace`: an execution trace in Go's format, so that `go tool trace` shows
//! the server on one timeline: each worker as a P, each connection task as a goroutine,
//! each request as a user task and region named by its route, each access-log writer as
//! a P of its own whose writes are system calls, notable events as user logs.
//!
//! Recording is the threads' own. Each thread that records (a worker, a log writer) keeps
//! its events in a thread-local buffer, allocated when it first sees a trace requested
//! ([`sync`], called on its tick or wake-up) and handed back when it sees the trace over:
//! one writer per buffer, no lock and no allocation per event, and when no trace is
//! being taken, one thread-local flag tested per recording site ([`on`]). The buffers are
//! bounded ([`EVENTS_PER_THREAD`] events, 40 bytes each); events past it are counted and
//! the trace says how many in a user log at its end. Every timestamp is nanoseconds of
//! the one monotonic clock since the trace began, so the per-thread streams merge in order.
//!
//! What a recording site stands for is registered once by the layer that owns it
//! ([`register_site`]: the address of the function, named by the profiler's symbolizer),
//! so this module knows nothing of the server it traces. [`format`] writes the bytes.

pub mod format;
mod idle;

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use self::format::{Encoded, Event, EventBuf, Existing, Frame, Input, Note, Proc, StackId};
use self::format::{Status, StrId, Symbols, Trailer};
use super::perf::{monotonic_ns, Switch, SwitchRing};
use super::symbols;

/// Events one thread keeps per trace: 80 MiB at 40 bytes each, allocated when the trace
/// starts and touched only as filled; a second of a worker at ~160,000 requests/s
/// (thirteen events per request without pipelining: three waits, a task and a region).
pub const EVENTS_PER_THREAD: usize = 2 * 1024 * 1024;
/// How long the trace waits after its window for every thread to hand its events back
/// (a worker does on its next 50 ms tick, a log writer on its next wake-up).
const HAND_IN_WAIT: Duration = Duration::from_secs(2);

/// Where events are recorded, each named by a function of the layer that records there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Site {
    /// A connection task's entry function: every connection goroutine's start stack.
    ConnectionTask,
    /// A connection waiting for bytes.
    Read,
    /// An idle connection waiting until its socket is readable.
    Readable,
    /// A connection writing its answers.
    Write,
    /// A closing connection reading what its client still sends.
    Linger,
    /// Answering the requests of a read: every request's task and region.
    Answer,
    /// Accepting: the stack of a connection goroutine's creation.
    Accept,
    /// A log writer's entry function: its goroutine's start stack.
    LogWriter,
    /// A log writer waiting for lines.
    LogWait,
    /// A log writer's `write(2)`.
    LogWrite,
    /// A worker's loop, which waits on its ring and wakes the connections whose
    /// operations completed: the stack of their `GoUnblock`.
    Wake,
    /// The trace handler: the start of the goroutine that writes the trace's last notes.
    Trace,
}

const SITES: usize = Site::Trace as usize + 1;

static SITE_ADDRESSES: [AtomicU64; SITES] = [const { AtomicU64::new(0) }; SITES];

/// Names `site` by the code address of `function` (the symbolizer gives its name, file
/// and line). Called once at start-up by the layer that records at the site.
pub fn register_site(site: Site, function: usize) {
    SITE_ADDRESSES[site as usize].store(function as u64, Ordering::Relaxed);
}

/// A notable event, written as a user log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Notice {
    LogReopen,
    DrainBegins,
    LogWriteFailed,
    StatsdSendFailed,
    AcceptBackoff,
}

impl Notice {
    const ALL: [Notice; 5] = [
        Notice::LogReopen,
        Notice::DrainBegins,
        Notice::LogWriteFailed,
        Notice::StatsdSendFailed,
        Notice::AcceptBackoff,
    ];

    fn text(self) -> &'static str {
        match self {
            Notice::LogReopen => "SIGHUP: the access log is reopened",
            Notice::DrainBegins => "drain: accepting stopped, connections finishing",
            Notice::LogWriteFailed => "access-log write failed: lines dropped (counted)",
            Notice::StatsdSendFailed => "StatsD send failed: datagram dropped (counted)",
            Notice::AcceptBackoff => "accept failed (out of fds?): backing off 10 ms",
        }
    }
}

/// Who records: a worker, or the access-log writer of a worker (by worker index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Thread {
    Worker(usize),
    LogWriter(usize),
}

/// The names of user tasks (the routes), registered once at start-up by the layer that
/// knows them; a task is recorded by its index.
static TASK_NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

pub fn register_task_names(names: &[&'static str]) {
    *TASK_NAMES.lock().unwrap_or_else(PoisonError::into_inner) = names.to_vec();
}

/// Tracing generation: 0 when off; a trace in progress has its own odd number, so a
/// thread that missed a whole trace still sees the next one as new.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Whether a trace is being taken or handed in (a second request gets 409).
static BUSY: AtomicBool = AtomicBool::new(false);
/// Threads that started recording the current trace, and those that handed back.
static STARTED: AtomicUsize = AtomicUsize::new(0);
/// What the threads record with, for the current trace.
static CURRENT: Mutex<Option<Ids>> = Mutex::new(None);
/// The buffers handed back.
static HANDED_IN: Mutex<Vec<Recording>> = Mutex::new(Vec::new());

/// The ids of one trace's strings and stacks, and its clock's origin.
#[derive(Clone, Copy, Debug)]
struct Ids {
    generation: u64,
    epoch: Instant,
    /// The same instant in CLOCK_MONOTONIC nanoseconds, the kernel's switch records'.
    epoch_mono: u64,
    sites: [StackId; SITES],
    tasks: [StrId; 8],
    notice_key: StrId,
    notices: [StrId; Notice::ALL.len()],
}

/// Context switches one worker keeps per trace (16 bytes each): 4 MiB.
const SWITCHES_PER_THREAD: usize = 256 * 1024;

/// One thread's recording of one trace.
struct Recording {
    thread: Thread,
    os_thread: u64,
    ids: Ids,
    events: EventBuf,
    existing: Vec<Existing>,
    /// A worker's context switches: where its P is idle (None: a log writer, whose P
    /// is idle in its system calls, or the kernel refused the ring).
    switches: Option<Switches>,
}

/// The kernel's record of a worker thread's context switches, drained on its tick.
struct Switches {
    ring: SwitchRing,
    seen: Vec<Switch>,
    /// Switches that did not fit `seen`.
    dropped: u64,
}

impl Switches {
    fn drain(&mut self) {
        let (seen, dropped) = (&mut self.seen, &mut self.dropped);
        self.ring.drain(|switch| {
            if seen.len() < seen.capacity() {
                seen.push(switch);
            } else {
                *dropped += 1;
            }
        });
    }
}

thread_local! {
    /// Whether this thread records: a plain thread-local (no destructor, so no
    /// registration check on access), the one load and branch of a site when off.
    static ON: Cell<bool> = const { Cell::new(false) };
    /// The count behind this thread's goroutine and task numbers.
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    /// This thread's recording of the current trace.
    static RECORDING: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Whether this thread is recording: the one test a recording site makes when no trace
/// is being taken.
#[inline]
pub fn on() -> bool {
    ON.with(Cell::get)
}

/// A new goroutine or task number, unique in the process: `base` (the thread's, see
/// [`id_base`]) plus a count of this thread's. Never reused, below 2^62.
#[inline]
pub fn next_id(base: u64) -> u64 {
    next_ids(base, 1)
}

/// `count` consecutive numbers of [`next_id`]: the first (the others follow it).
#[inline]
pub fn next_ids(base: u64, count: u64) -> u64 {
    NEXT_ID.with(|next| {
        let first = next.get() + 1;
        next.set(first + count.saturating_sub(1));
        base | (first & ((1 << 40) - 1))
    })
}

/// The high bits of the goroutine and task numbers of `thread`.
pub fn id_base(thread: Thread) -> u64 {
    match thread {
        Thread::Worker(i) => ((i as u64) + 1) << 40,
        Thread::LogWriter(i) => ((i as u64) + 1) << 50,
    }
}

/// Starts or ends this thread's recording as the trace in progress says; `existing`
/// lists the goroutines this thread has now, with the site of their entry function,
/// declared at the start as waiting. Called by each recording thread between its events
/// (a worker on its tick, a log writer when it wakes), never while one of its goroutines
/// runs.
pub fn sync(thread: Thread, existing: impl FnOnce() -> Vec<(u64, Site)>) {
    let generation = GENERATION.load(Ordering::Acquire);
    RECORDING.with(|local| {
        let recording = local.borrow().as_ref().map(|r| r.ids.generation);
        match recording {
            Some(current) if current != generation => {
                ON.with(|on| on.set(false));
                hand_in(local);
            }
            Some(_) => drain_switches(local),
            None if generation != 0 => start(local, thread, generation, existing),
            None => {}
        }
    });
}

fn start(
    local: &RefCell<Option<Recording>>,
    thread: Thread,
    generation: u64,
    existing: impl FnOnce() -> Vec<(u64, Site)>,
) {
    let Some(ids) = *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) else {
        return;
    };
    if ids.generation != generation {
        return;
    }
    let existing = existing()
        .into_iter()
        .map(|(g, site)| Existing {
            g,
            start: ids.sites[site as usize],
            status: Status::Waiting,
        })
        .collect();
    // SAFETY: gettid has no preconditions.
    let os_thread = unsafe { libc::gettid() } as u64;
    let switches = match thread {
        Thread::Worker(_) => SwitchRing::open().ok().map(|ring| Switches {
            ring,
            seen: Vec::with_capacity(SWITCHES_PER_THREAD),
            dropped: 0,
        }),
        Thread::LogWriter(_) => None,
    };
    let mut events = EventBuf::with_capacity(EVENTS_PER_THREAD);
    events.push(Event::proc_start(ts(&ids, Instant::now()), os_thread));
    *local.borrow_mut() = Some(Recording {
        thread,
        os_thread,
        ids,
        events,
        existing,
        switches,
    });
    STARTED.fetch_add(1, Ordering::AcqRel);
    ON.with(|on| on.set(true));
}

fn drain_switches(local: &RefCell<Option<Recording>>) {
    if let Some(switches) = local
        .borrow_mut()
        .as_mut()
        .and_then(|r| r.switches.as_mut())
    {
        switches.drain();
    }
}

fn hand_in(local: &RefCell<Option<Recording>>) {
    let Some(mut recording) = local.borrow_mut().take() else {
        return;
    };
    let now = ts(&recording.ids, Instant::now());
    if let Some(mut switches) = recording.switches.take() {
        switches.drain();
        let lost = switches.ring.lost() + switches.dropped;
        let waits = idle::Waits {
            switches: &switches.seen,
            epoch_mono: recording.ids.epoch_mono,
            os_thread: recording.os_thread,
            wake: recording.ids.sites[Site::Wake as usize],
        };
        recording.events = idle::with_waits(&recording.events, &waits);
        recording.events.count_lost(lost);
    }
    if !idle::ends_stopped(&recording.events) {
        recording.events.push(Event::proc_stop(now));
    }
    HANDED_IN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(recording);
}

/// Nanoseconds of `at` since the trace began (at least 1).
fn ts(ids: &Ids, at: Instant) -> u64 {
    at.saturating_duration_since(ids.epoch).as_nanos() as u64 + 1
}

/// Records one event, made from the trace's ids and the timestamp of `at`. Only called
/// when [`on`]: it never allocates (a full buffer counts the event as lost).
#[cold]
fn record(at: Instant, event: impl FnOnce(u64, &Ids) -> Event) {
    RECORDING.with(|local| {
        if let Some(recording) = local.borrow_mut().as_mut() {
            let event = event(ts(&recording.ids, at), &recording.ids);
            recording.events.push(event);
        }
    });
}

/// The goroutine `g` starts running (created earlier, or woken now: `woken`).
pub fn go_start(at: Instant, g: u64, woken: bool) {
    if woken {
        record(at, |ts, ids| {
            Event::go_unblock(ts, g, ids.sites[Site::Wake as usize])
        });
    }
    record(at, |ts, _| Event::go_start(ts, g));
}

/// The running goroutine waits for the network at `site`.
pub fn go_block_net(at: Instant, site: Site) {
    record(at, |ts, ids| {
        Event::go_block_net(ts, ids.sites[site as usize])
    });
}

/// The running goroutine ends.
pub fn go_end(at: Instant) {
    record(at, |ts, _| Event::go_end(ts));
}

/// Goroutine `g` is created (a connection task spawned), from `site`.
pub fn go_create(at: Instant, g: u64, site: Site) {
    record(at, |ts, ids| {
        let start = ids.sites[Site::ConnectionTask as usize];
        Event::go_create(ts, g, start, ids.sites[site as usize])
    });
}

/// User task `task` named by task name `name` (its index), with its region, begins.
pub fn task_begin(at: Instant, task: u64, name: usize) {
    record(at, |ts, ids| {
        let stack = ids.sites[Site::Answer as usize];
        Event::task_create(ts, task, 0, task_name(ids, name), stack)
    });
    record(at, |ts, ids| {
        let stack = ids.sites[Site::Answer as usize];
        Event::region_start(ts, task, task_name(ids, name), stack)
    });
}

/// User task `task` and its region end.
pub fn task_end(at: Instant, task: u64, name: usize) {
    record(at, |ts, ids| {
        let stack = ids.sites[Site::Answer as usize];
        Event::region_end(ts, task, task_name(ids, name), stack)
    });
    record(at, |ts, ids| {
        Event::task_end(ts, task, ids.sites[Site::Answer as usize])
    });
}

fn task_name(ids: &Ids, name: usize) -> StrId {
    ids.tasks.get(name).copied().unwrap_or(StrId::EMPTY)
}

/// A notable event, as a user log, at `site`.
pub fn notice(notice: Notice, site: Site) {
    record(Instant::now(), |ts, ids| {
        let value = ids.notices[notice as usize];
        Event::log(ts, 0, ids.notice_key, value, ids.sites[site as usize])
    });
}

/// The log writer's goroutine `g`: woken, it runs.
pub fn writer_wakes(g: u64) {
    let now = Instant::now();
    record(now, |ts, _| Event::go_unblock(ts, g, StackId::NONE));
    record(now, |ts, _| Event::go_start(ts, g));
}

/// The log writer's goroutine enters `write(2)`, a blocking system call: its P is idle
/// meanwhile.
pub fn writer_syscall_begins() {
    let now = Instant::now();
    record(now, |ts, ids| {
        Event::go_syscall(ts, ids.sites[Site::LogWrite as usize])
    });
    record(now, |ts, _| Event::go_sysblock(ts));
    record(now, |ts, _| Event::proc_stop(ts));
}

/// ... and returns from it.
pub fn writer_syscall_ends(g: u64) {
    let now = Instant::now();
    let os_thread = RECORDING.with(|local| local.borrow().as_ref().map_or(0, |r| r.os_thread));
    record(now, |ts, _| Event::proc_start(ts, os_thread));
    record(now, |ts, _| Event::go_sysexit(ts, g));
    record(now, |ts, _| Event::go_start(ts, g));
}

/// The log writer's goroutine waits for lines.
pub fn writer_waits() {
    record(Instant::now(), |ts, ids| {
        Event::go_block_recv(ts, ids.sites[Site::LogWait as usize])
    });
}

/// Why a trace could not be taken.
#[derive(Debug)]
pub enum Error {
    /// Another trace is being taken.
    Busy,
    Failed(String),
}

/// Takes a trace of `seconds`: the bytes of a Go 1.19 execution trace.
pub fn take(seconds: u64) -> Result<Vec<u8>, Error> {
    if BUSY.swap(true, Ordering::AcqRel) {
        return Err(Error::Busy);
    }
    let result = take_now(Duration::from_secs(seconds));
    BUSY.store(false, Ordering::Release);
    result
}

fn take_now(window: Duration) -> Result<Vec<u8>, Error> {
    let mut symbols = Symbols::new();
    let generation = (GENERATION.load(Ordering::Relaxed) + 2) | 1;
    let ids = names(&mut symbols, generation);
    HANDED_IN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    STARTED.store(0, Ordering::Release);
    *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) = Some(ids);
    let started = Instant::now();
    GENERATION.store(generation, Ordering::Release);
    std::thread::sleep(window);
    GENERATION.store(0, Ordering::Release);
    let ended = Instant::now();
    let recordings = collect(ended, generation);
    *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) = None;
    name_sites(&mut symbols, &ids);
    let encoded = encode(&symbols, &ids, started, ended, &recordings)?;
    Ok(encoded.bytes)
}

/// The recordings of trace `generation` handed back, waiting (bounded) for every thread
/// that started. A recording of an earlier trace handed back late (a writer busy past
/// that trace's wait) is left out: its clock began elsewhere.
fn collect(ended: Instant, generation: u64) -> Vec<Recording> {
    loop {
        let handed = HANDED_IN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        if handed >= STARTED.load(Ordering::Acquire) || ended.elapsed() > HAND_IN_WAIT {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut recordings =
        std::mem::take(&mut *HANDED_IN.lock().unwrap_or_else(PoisonError::into_inner));
    recordings.retain(|r| r.ids.generation == generation);
    recordings.sort_by_key(|r| r.thread);
    recordings
}

/// Interns the names of this trace (task names, notices) and reserves the sites'
/// stacks, named after the window ([`name_sites`]): the symbolizer's first use reads the
/// binary's debug information, which would delay the trace's start by up to seconds.
fn names(symbols: &mut Symbols, generation: u64) -> Ids {
    let mut sites = [StackId::NONE; SITES];
    for site in &mut sites {
        *site = symbols.reserve_stack();
    }
    let mut tasks = [StrId::EMPTY; 8];
    let names = TASK_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    for (id, name) in tasks.iter_mut().zip(names.iter()) {
        *id = symbols.string(name);
    }
    let mut notices = [StrId::EMPTY; Notice::ALL.len()];
    for (id, notice) in notices.iter_mut().zip(Notice::ALL) {
        *id = symbols.string(notice.text());
    }
    let (epoch, epoch_mono) = (Instant::now(), monotonic_ns());
    Ids {
        generation,
        epoch,
        epoch_mono,
        sites,
        tasks,
        notice_key: symbols.string("leftpad"),
        notices,
    }
}

/// Names each site's stack: its function's frames as the symbolizer names them (inlined
/// ones first), each at a distinct pc as Go keys frames by pc.
fn name_sites(symbols: &mut Symbols, ids: &Ids) {
    for (id, address) in ids.sites.iter().zip(&SITE_ADDRESSES) {
        let address = address.load(Ordering::Relaxed);
        let resolved = if address == 0 {
            Vec::new()
        } else {
            symbols::resolve(address, false)
        };
        let frames: Vec<Frame<'_>> = resolved
            .iter()
            .enumerate()
            .map(|(depth, symbol)| Frame {
                pc: address + depth as u64,
                function: &symbol.name,
                file: &symbol.file,
                line: symbol.line.max(0) as u64,
            })
            .collect();
        symbols.name_stack(*id, &frames);
    }
}

/// The recordings as Ps (workers first, then log writers), encoded.
fn encode(
    symbols: &Symbols,
    ids: &Ids,
    started: Instant,
    ended: Instant,
    recordings: &[Recording],
) -> Result<Encoded, Error> {
    let procs: Vec<Proc<'_>> = recordings
        .iter()
        .enumerate()
        .map(|(p, r)| r.events.proc(p as u32))
        .collect();
    let mut existing: Vec<Existing> = recordings
        .iter()
        .flat_map(|r| r.existing.iter().copied())
        .collect();
    existing.sort_by_key(|e| e.g);
    existing.dedup_by_key(|e| e.g);
    let window = format!(
        "{} thread(s) recorded over {:.3} s; up to {EVENTS_PER_THREAD} events each",
        recordings.len(),
        ended.duration_since(started).as_secs_f64()
    );
    let notes = [Note {
        key: "trace",
        value: &window,
    }];
    let input = Input {
        symbols,
        ticks_per_sec: 1_000_000_000,
        start_ts: ts(ids, started),
        end_ts: ts(ids, ended),
        gomaxprocs: procs.len().max(1) as u64,
        existing: &existing,
        procs: &procs,
        fallback_start: ids.sites[Site::ConnectionTask as usize],
        trailer: Some(Trailer {
            start: ids.sites[Site::Trace as usize],
            notes: &notes,
        }),
    };
    format::encode(&input).map_err(|e| Error::Failed(format!("cannot encode the trace: {e}")))
}
