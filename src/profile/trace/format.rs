//! Go 1.19 execution traces (the format `go tool trace` reads), encoded from events the
//! server recorded itself.
//!
//! Go's runtime writes a trace as per-P batches of varint-encoded events; `go tool trace`
//! merges the batches back into one stream, replays every goroutine's state machine, and
//! only then draws the timeline or builds its profiles. This module writes that form from
//! leftpad's own events: a worker thread is a P, a connection task a goroutine, a request
//! a user task with a region, the access-log writer a P whose writes are system calls.
//!
//! Recording belongs to the caller: each thread appends fixed-size [`Event`]s to its own
//! preallocated [`EventBuf`] (one writer, no lock, no allocation). Encoding happens after
//! the trace window, off the request path: [`encode`] merges the per-P streams on their
//! common clock, numbers every goroutine's transitions the way Go's merger expects, repairs
//! what Go's parser or viewer would reject (each repair is counted in [`Stats`]), and
//! writes the bytes.
//!
//! What Go 1.19 wants was read from its `internal/trace/parser.go` and `order.go`,
//! `cmd/trace` and `runtime/trace.go`; the constraints that shape this code are noted where
//! they bite.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;

/// The 16 bytes a Go 1.19 trace starts with; Go reads the version from them.
pub const HEADER: &[u8; 16] = b"go 1.19 trace\0\0\0";

/// Strings are cut to 1 KiB, at a character boundary: ample for a function, file, route
/// or log line, and it bounds the trace (Go's parsers refuse strings over 1 MB).
const MAX_STRING: usize = 1024;
/// Go's runtime records at most 128 frames per stack.
const MAX_FRAMES: usize = 128;
/// Go 1.22+'s reader of old traces refuses length-prefixed records over 2 KiB, which caps
/// how many frames one stack can carry.
const MAX_RECORD: usize = 2048;
/// Bytes a stack record spends before its frames, at most: its id and frame count.
const STACK_HEAD: usize = 5 + 2;
/// P ids from 1,000,000 on are Go's pseudo-Ps (timers, network, syscalls, GC).
const MAX_PROC_ID: u32 = 999_999;
/// Goroutine ids above this are left out: Go's are int64, and the encoder's own
/// goroutines (hosting logs) take the ids above the highest in the input.
const MAX_GOROUTINE: u64 = 1 << 62;

/// Go's event type numbers (`runtime/trace.go`), only those written here.
mod ev {
    pub const BATCH: u8 = 1;
    pub const FREQUENCY: u8 = 2;
    pub const STACK: u8 = 3;
    pub const GOMAXPROCS: u8 = 4;
    pub const PROC_START: u8 = 5;
    pub const PROC_STOP: u8 = 6;
    pub const GO_CREATE: u8 = 13;
    pub const GO_START: u8 = 14;
    pub const GO_END: u8 = 15;
    pub const GO_STOP: u8 = 16;
    pub const GO_SCHED: u8 = 17;
    pub const GO_SLEEP: u8 = 19;
    pub const GO_BLOCK: u8 = 20;
    pub const GO_UNBLOCK: u8 = 21;
    pub const GO_BLOCK_RECV: u8 = 23;
    pub const GO_BLOCK_NET: u8 = 27;
    pub const GO_SYSCALL: u8 = 28;
    pub const GO_SYSEXIT: u8 = 29;
    pub const GO_SYSBLOCK: u8 = 30;
    pub const GO_WAITING: u8 = 31;
    pub const GO_IN_SYSCALL: u8 = 32;
    pub const STRING: u8 = 37;
    pub const USER_TASK_CREATE: u8 = 45;
    pub const USER_TASK_END: u8 = 46;
    pub const USER_REGION: u8 = 47;
    pub const USER_LOG: u8 = 48;
}

/// A string interned in [`Symbols`]; [`StrId::EMPTY`] is the empty string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StrId(u32);

impl StrId {
    /// The empty string: Go forbids empty entries in its string table, and id 0 reads as "".
    pub const EMPTY: StrId = StrId(0);
}

/// A stack interned in [`Symbols`]; [`StackId::NONE`] is "no stack".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(u32);

impl StackId {
    /// No stack: allowed on every event, but events without one are left out of
    /// `go tool trace -pprof=...` profiles.
    pub const NONE: StackId = StackId(0);
}

/// One symbolized frame, as the caller's symbolizer resolved it.
///
/// Go keys frames by `pc` (in `-pprof` output and in the viewer's frame tree), so two
/// frames that share a pc but differ in name are shown as one: give inlined frames
/// distinct pcs. A pc of 0 is written as 1 (see [`Symbols::stack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub pc: u64,
    pub function: &'a str,
    pub file: &'a str,
    pub line: u64,
}

/// A frame as stored: its strings replaced by their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FrameIds {
    pc: u64,
    function: u32,
    file: u32,
    line: u64,
}

impl FrameIds {
    /// Bytes this frame takes in a stack record.
    fn encoded_len(&self) -> usize {
        uvarint_len(self.pc)
            + uvarint_len(u64::from(self.function))
            + uvarint_len(u64::from(self.file))
            + uvarint_len(self.line)
    }
}

/// The trace's string and stack tables, filled once (at start-up or when a trace is
/// requested) so that hot-path events carry only small ids.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    strings: Vec<String>,
    string_ids: HashMap<String, u32>,
    stacks: Vec<Vec<FrameIds>>,
    stack_ids: HashMap<Vec<FrameIds>, u32>,
}

impl Symbols {
    pub fn new() -> Self {
        Self::default()
    }

    /// Interns `s` (cut to 1 KiB); the same text always gets the same id.
    pub fn string(&mut self, s: &str) -> StrId {
        let s = truncate(s, MAX_STRING);
        if s.is_empty() {
            return StrId::EMPTY;
        }
        if let Some(&id) = self.string_ids.get(s) {
            return StrId(id);
        }
        let Ok(id) = u32::try_from(self.strings.len() + 1) else {
            return StrId::EMPTY;
        };
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        StrId(id)
    }

    /// Interns a stack, innermost frame first (as pprof orders them). Frames past 128, or
    /// past what fits one 2 KiB record, are dropped from the outer end; an empty stack is
    /// [`StackId::NONE`]; a pc of 0 becomes 1, which Go's goroutine analysis needs.
    pub fn stack(&mut self, frames: &[Frame<'_>]) -> StackId {
        let ids = self.frame_ids(frames);
        if ids.is_empty() {
            return StackId::NONE;
        }
        if let Some(&id) = self.stack_ids.get(&ids) {
            return StackId(id);
        }
        let Ok(id) = u32::try_from(self.stacks.len() + 1) else {
            return StackId::NONE;
        };
        self.stack_ids.insert(ids.clone(), id);
        self.stacks.push(ids);
        StackId(id)
    }

    /// A one-frame stack: what a goroutine's start stack is (its entry function).
    pub fn frame(&mut self, frame: Frame<'_>) -> StackId {
        self.stack(&[frame])
    }

    /// A stack id to record events with now and to name later ([`Symbols::name_stack`]),
    /// so that symbolizing (slow the first time) need not delay the recording.
    pub fn reserve_stack(&mut self) -> StackId {
        let Ok(id) = u32::try_from(self.stacks.len() + 1) else {
            return StackId::NONE;
        };
        self.stacks.push(Vec::new());
        StackId(id)
    }

    /// Names a reserved stack (innermost frame first, as [`Symbols::stack`] takes them);
    /// a stack left unnamed, or named by no frame, is written with a frame "unknown".
    pub fn name_stack(&mut self, id: StackId, frames: &[Frame<'_>]) {
        let mut ids = self.frame_ids(frames);
        if ids.is_empty() {
            ids = self.frame_ids(&[Frame {
                pc: 1,
                function: "unknown",
                file: "",
                line: 0,
            }]);
        }
        let Some(index) = (id.0 as usize).checked_sub(1) else {
            return;
        };
        if let Some(slot) = self.stacks.get_mut(index) {
            self.stack_ids.entry(ids.clone()).or_insert(id.0);
            *slot = ids;
        }
    }

    fn frame_ids(&mut self, frames: &[Frame<'_>]) -> Vec<FrameIds> {
        let mut ids = Vec::with_capacity(frames.len().min(MAX_FRAMES));
        let mut size = STACK_HEAD;
        for f in frames.iter().take(MAX_FRAMES) {
            let frame = FrameIds {
                // Go's goroutine analysis takes a start pc of 0 for "not named yet" and,
                // at the goroutine's second GoStart, reads a stack that is then empty
                // (an index panic in /goroutines, /usertasks and -pprof with an id).
                pc: f.pc.max(1),
                function: self.string(f.function).0,
                file: self.string(f.file).0,
                line: f.line,
            };
            size += frame.encoded_len();
            if size > MAX_RECORD {
                break;
            }
            ids.push(frame);
        }
        ids
    }

    /// The text of a string id as written in the trace ("" for 0 or an unknown id).
    fn text(&self, id: u64) -> &str {
        let index = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        index
            .and_then(|i| self.strings.get(i))
            .map_or("", String::as_str)
    }

    /// The id itself if it names a string, else 0 ("").
    fn string_ref(&self, id: u32) -> u64 {
        let known = usize::try_from(id).is_ok_and(|i| i <= self.strings.len());
        if known {
            u64::from(id)
        } else {
            0
        }
    }

    /// The id itself if it names a stack, else 0 (none).
    fn stack_ref(&self, id: u64) -> u64 {
        let known = usize::try_from(id).is_ok_and(|i| i <= self.stacks.len());
        if known {
            id
        } else {
            0
        }
    }
}

/// What an [`Event`] records; each constructor of [`Event`] documents its Go event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ProcStart,
    ProcStop,
    GoCreate,
    GoStart,
    GoEnd,
    GoStop,
    GoSched,
    GoBlock,
    GoBlockNet,
    GoBlockRecv,
    GoSleep,
    GoUnblock,
    GoSysCall,
    GoSysBlock,
    GoSysExit,
    TaskCreate,
    TaskEnd,
    RegionStart,
    RegionEnd,
    Log,
}

/// One recorded event: fixed-size (40 bytes) so that a thread's buffer is a preallocated
/// array. As in Go's own format, events that a goroutine does (blocking, ending, user
/// annotations) do not name it: it is the goroutine the same P last started.
///
/// `ts` is in ticks of one monotonic clock shared by every thread (nanoseconds of
/// `CLOCK_MONOTONIC`, say); Go merges the Ps by it, so a per-thread clock breaks the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts: u64,
    kind: Kind,
    args: [u64; 3],
}

impl Event {
    const fn new(ts: u64, kind: Kind, args: [u64; 3]) -> Self {
        Event { ts, kind, args }
    }

    pub const fn kind(&self) -> Kind {
        self.kind
    }

    /// The goroutine a `GoCreate`, `GoStart`, `GoUnblock` or `GoSysExit` names (for
    /// other kinds, their first argument).
    pub const fn goroutine(&self) -> u64 {
        self.args[0]
    }

    /// `ProcStart`: a worker's ring wait returned; it runs on OS thread `thread`.
    pub const fn proc_start(ts: u64, thread: u64) -> Self {
        Self::new(ts, Kind::ProcStart, [thread, 0, 0])
    }

    /// `ProcStop`: the worker is about to wait on its ring again (an idle P).
    pub const fn proc_stop(ts: u64) -> Self {
        Self::new(ts, Kind::ProcStop, [0; 3])
    }

    /// `GoCreate`: goroutine `g` (a connection task) exists from now on; `start` names it
    /// (one frame, its entry function), `stack` is where it was created (accept).
    /// Goroutine ids are never reused, and lie in 1..=2^62.
    pub const fn go_create(ts: u64, g: u64, start: StackId, stack: StackId) -> Self {
        Self::new(ts, Kind::GoCreate, [g, start.0 as u64, stack.0 as u64])
    }

    /// `GoStart`: this P starts polling goroutine `g`.
    pub const fn go_start(ts: u64, g: u64) -> Self {
        Self::new(ts, Kind::GoStart, [g, 0, 0])
    }

    /// `GoEnd`: the running goroutine finished (its connection closed).
    pub const fn go_end(ts: u64) -> Self {
        Self::new(ts, Kind::GoEnd, [0; 3])
    }

    /// `GoStop`: the running goroutine parks for good (Go's `select {}`); it cannot run again.
    pub const fn go_stop(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoStop, [stack.0 as u64, 0, 0])
    }

    /// `GoSched`: the running goroutine yields but stays runnable (a poll that returned
    /// `Pending` after waking itself).
    pub const fn go_sched(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoSched, [stack.0 as u64, 0, 0])
    }

    /// `GoBlock`: the running goroutine waits for something other than the network.
    pub const fn go_block(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoBlock, [stack.0 as u64, 0, 0])
    }

    /// `GoBlockNet`: the running goroutine waits for its socket (`-pprof=net` counts these).
    pub const fn go_block_net(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoBlockNet, [stack.0 as u64, 0, 0])
    }

    /// `GoBlockRecv`: the running goroutine waits for work on a queue (the log writer
    /// waiting for lines; `-pprof=sync` counts these).
    pub const fn go_block_recv(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoBlockRecv, [stack.0 as u64, 0, 0])
    }

    /// `GoSleep`: the running goroutine sleeps on a timer (an accept back-off).
    pub const fn go_sleep(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoSleep, [stack.0 as u64, 0, 0])
    }

    /// `GoUnblock`: goroutine `g`, which was blocked, is runnable again (its completion
    /// arrived); `stack` is where it was woken (`-pprof=sched` counts from here).
    pub const fn go_unblock(ts: u64, g: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoUnblock, [g, stack.0 as u64, 0])
    }

    /// `GoSysCall`: the running goroutine enters a system call (`-pprof=syscall` counts
    /// those followed by `GoSysBlock` and `GoSysExit`).
    pub const fn go_syscall(ts: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::GoSysCall, [stack.0 as u64, 0, 0])
    }

    /// `GoSysBlock`: the system call blocks; the goroutine leaves the P.
    pub const fn go_sysblock(ts: u64) -> Self {
        Self::new(ts, Kind::GoSysBlock, [0; 3])
    }

    /// `GoSysExit`: goroutine `g`'s blocking system call returned; it is runnable. Record it
    /// on the P that runs `g` next, just before its `GoStart`, as Go does.
    pub const fn go_sysexit(ts: u64, g: u64) -> Self {
        Self::new(ts, Kind::GoSysExit, [g, 0, 0])
    }

    /// `UserTaskCreate`: request `task` (non-zero, unique) begins, named by its route.
    pub const fn task_create(ts: u64, task: u64, parent: u64, name: StrId, stack: StackId) -> Self {
        Self::new(ts, Kind::TaskCreate, [task, parent, pack(name.0, stack.0)])
    }

    /// `UserTaskEnd`: request `task` has been answered.
    pub const fn task_end(ts: u64, task: u64, stack: StackId) -> Self {
        Self::new(ts, Kind::TaskEnd, [task, stack.0 as u64, 0])
    }

    /// `UserRegion` start: the running goroutine works on `task` in a region `name`.
    /// Regions nest per goroutine and need a stack to show in the viewer's region pages.
    pub const fn region_start(ts: u64, task: u64, name: StrId, stack: StackId) -> Self {
        Self::new(ts, Kind::RegionStart, [task, name.0 as u64, stack.0 as u64])
    }

    /// `UserRegion` end: closes the innermost region of that task and name.
    pub const fn region_end(ts: u64, task: u64, name: StrId, stack: StackId) -> Self {
        Self::new(ts, Kind::RegionEnd, [task, name.0 as u64, stack.0 as u64])
    }

    /// `UserLog`: a notable event (`key` is Go's category) on the running goroutine,
    /// attached to `task` (0: none).
    pub const fn log(ts: u64, task: u64, key: StrId, value: StrId, stack: StackId) -> Self {
        Self::new(ts, Kind::Log, [task, pack(key.0, value.0), stack.0 as u64])
    }
}

/// Two 32-bit ids in one argument, so that every event fits three.
const fn pack(low: u32, high: u32) -> u64 {
    (low as u64) | ((high as u64) << 32)
}

const fn low(v: u64) -> u32 {
    v as u32
}

const fn high(v: u64) -> u32 {
    (v >> 32) as u32
}

/// One thread's events while a trace is taken: allocated once, then filled without
/// allocating; when full, further events are counted, not kept, so what is kept is an
/// unbroken prefix the encoder can close.
#[derive(Clone, Debug)]
pub struct EventBuf {
    events: Vec<Event>,
    lost: u64,
}

impl EventBuf {
    pub fn with_capacity(capacity: usize) -> Self {
        EventBuf {
            events: Vec::with_capacity(capacity),
            lost: 0,
        }
    }

    /// Keeps `event` if there is room (never reallocates); reports whether it was kept.
    #[inline]
    pub fn push(&mut self, event: Event) -> bool {
        if self.events.len() < self.events.capacity() {
            self.events.push(event);
            true
        } else {
            self.lost += 1;
            false
        }
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.events.capacity()
    }

    /// Events that did not fit.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Counts `n` more events as lost (events a copy of this buffer did not keep).
    pub fn count_lost(&mut self, n: u64) {
        self.lost += n;
    }

    /// Empties the buffer for the next trace, keeping its memory.
    pub fn clear(&mut self) {
        self.events.clear();
        self.lost = 0;
    }

    /// This buffer as P `id` of a trace.
    pub fn proc(&self, id: u32) -> Proc<'_> {
        Proc {
            id,
            events: &self.events,
            lost: self.lost,
        }
    }
}

/// The state of a goroutine that existed before the trace started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Ready to run, not running (Go: `GoCreate` alone).
    Runnable,
    /// Blocked: a parked connection (Go: `GoCreate` + `GoWaiting`).
    Waiting,
    /// Inside a blocking system call (Go: `GoCreate` + `GoInSyscall`).
    InSyscall,
}

/// A goroutine that existed when the trace started, declared at its beginning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing {
    pub g: u64,
    /// Its entry function, one frame; an unknown id falls back to [`Input::fallback_start`].
    pub start: StackId,
    pub status: Status,
}

/// One P's recorded events, in the order its thread recorded them.
#[derive(Clone, Copy, Debug)]
pub struct Proc<'a> {
    /// Go's P id: small, unique, below 1,000,000.
    pub id: u32,
    pub events: &'a [Event],
    /// Events its buffer could not keep; reported at the end of the trace.
    pub lost: u64,
}

/// A line for the end of the trace (a user log with a category `key`).
#[derive(Clone, Copy, Debug)]
pub struct Note<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// Notes written at the end of the trace by a short goroutine of their own (Go ties user
/// logs to a running goroutine): the caller's notes, then the encoder's own (events lost
/// to full buffers, events left out).
#[derive(Clone, Copy, Debug)]
pub struct Trailer<'a> {
    /// The goroutine's entry function (the trace handler, say).
    pub start: StackId,
    pub notes: &'a [Note<'a>],
}

/// Everything one trace is made of.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub symbols: &'a Symbols,
    /// Ticks of the event clock per second (1,000,000,000 for nanoseconds).
    pub ticks_per_sec: u64,
    /// When tracing started and stopped, in clock ticks; widened to cover every event.
    pub start_ts: u64,
    pub end_ts: u64,
    /// Ps in the process (workers plus the log writer); raised to cover every P id.
    pub gomaxprocs: u64,
    pub existing: &'a [Existing],
    pub procs: &'a [Proc<'a>],
    /// Entry function for goroutines whose start is unknown: those first seen mid-life
    /// (started or woken without having been created or declared), which are declared
    /// at the start as Go would have. [`StackId::NONE`] makes it a frame named "unknown".
    pub fallback_start: StackId,
    pub trailer: Option<Trailer<'a>>,
}

/// What the encoder did to make the recorded events into a trace Go accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events handed in, over all Ps.
    pub recorded: u64,
    /// Events the buffers could not keep (the sum of [`Proc::lost`]).
    pub lost: u64,
    /// Recorded events left out because Go would reject them where they stand: an event
    /// of a goroutine that is not in the state it needs (woken while not blocked, started
    /// while not runnable, created twice, ...), a goroutine event or user annotation on a
    /// P running no goroutine, a region end that does not match, a task created twice.
    pub dropped: u64,
    /// Events added so that Go accepts the rest: `ProcStart` for a P that acted while
    /// stopped, `GoSched` for a goroutine still running when its P started another or
    /// stopped, ends for inner regions an outer region's end closed.
    pub inserted: u64,
    /// Goroutines declared at the start (`GoCreate`, `GoWaiting`, `GoInSyscall`) ...
    pub declared: u64,
    /// ... of which were inferred from their first event rather than listed in
    /// [`Input::existing`].
    pub inferred: u64,
    /// Goroutines still running at the end, closed by `GoSched` so their slices end.
    pub closed: u64,
    /// User logs recorded while no goroutine ran (a worker's own notable events), each
    /// written on a short goroutine of its own named by the log's stack: Go ties user
    /// logs to a running goroutine.
    pub hosted: u64,
    /// Event records written (string and stack records not counted).
    pub written: u64,
}

/// A finished trace.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub stats: Stats,
}

/// Inputs no trace can be made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The tick rate must be positive and fit Go's int64.
    Frequency(u64),
    /// P ids must stay below 1,000,000, where Go's pseudo-Ps begin.
    ProcId(u32),
    /// Each P may appear once.
    DuplicateProc(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Frequency(v) => write!(f, "invalid trace clock frequency {v}"),
            Error::ProcId(id) => write!(f, "P id {id} is not below 1000000"),
            Error::DuplicateProc(id) => write!(f, "P {id} appears twice"),
        }
    }
}

impl std::error::Error for Error {}

/// Encodes one trace. Never fails on the events themselves: what Go would reject is
/// left out or repaired and counted in [`Stats`].
pub fn encode(input: &Input<'_>) -> Result<Encoded, Error> {
    validate(input)?;
    let items = merge(input.procs);
    // Strings and stacks the encoder adds (fallback frame, notes) go to its own copy.
    let mut tables = input.symbols.clone();
    let (mut wires, mut stats) = replay(input, &items, &mut tables);
    stats.recorded = items.len() as u64;
    stats.lost = input.procs.iter().map(|p| p.lost).sum();
    stats.written = wires.len() as u64;
    order_timestamps(&mut wires);
    // Per-P batches, each in global order: a stable sort by P keeps it.
    wires.sort_by_key(|w| w.p);
    let bytes = write(&tables, input.ticks_per_sec, &wires);
    Ok(Encoded { bytes, stats })
}

/// The events Go will read, in global order: the recorded ones through Go's state
/// machine, then the closing of what still runs, then the trailer.
fn replay(input: &Input<'_>, items: &[Item], tables: &mut Symbols) -> (Vec<Wire>, Stats) {
    let first = items.first().map_or(input.start_ts, |i| i.ts);
    let last = items.last().map_or(input.end_ts, |i| i.ts);
    let start = input.start_ts.min(first);
    let end = input.end_ts.max(last).max(start);
    let mut sim = Sim::new(input, items, tables, start);
    sim.declare_existing(input.existing);
    for item in items {
        sim.step(item.pi, item.ts, &item.event);
    }
    sim.finish(end);
    if let Some(trailer) = &input.trailer {
        let notes = own_notes(input.procs, &sim.stats);
        sim.trailer(trailer, &notes, end);
    }
    sim.into_parts(gomaxprocs(input))
}

fn validate(input: &Input<'_>) -> Result<(), Error> {
    let freq = input.ticks_per_sec;
    if freq == 0 || i64::try_from(freq).is_err() {
        return Err(Error::Frequency(freq));
    }
    let mut seen = HashSet::new();
    for proc in input.procs {
        if proc.id > MAX_PROC_ID {
            return Err(Error::ProcId(proc.id));
        }
        if !seen.insert(proc.id) {
            return Err(Error::DuplicateProc(proc.id));
        }
    }
    Ok(())
}

fn gomaxprocs(input: &Input<'_>) -> u64 {
    let needed = input
        .procs
        .iter()
        .map(|p| u64::from(p.id) + 1)
        .max()
        .unwrap_or(1);
    input.gomaxprocs.max(needed)
}

/// The encoder's own end-of-trace notes.
fn own_notes(procs: &[Proc<'_>], stats: &Stats) -> Vec<(String, String)> {
    let mut notes: Vec<(String, String)> = procs
        .iter()
        .filter(|p| p.lost > 0)
        .map(|p| {
            let text = format!("P{} lost {} events: its buffer was full", p.id, p.lost);
            ("trace".to_owned(), text)
        })
        .collect();
    if stats.dropped > 0 {
        let text = format!(
            "{} recorded events left out: Go would reject them",
            stats.dropped
        );
        notes.push(("trace".to_owned(), text));
    }
    notes
}

/// The highest goroutine id the input names.
fn max_goroutine(existing: &[Existing], items: &[Item]) -> u64 {
    let named = items.iter().filter_map(|i| match i.event.kind {
        Kind::GoCreate | Kind::GoStart | Kind::GoUnblock | Kind::GoSysExit => Some(i.event.args[0]),
        _ => None,
    });
    let all = existing.iter().map(|e| e.g).chain(named);
    all.filter(|&g| valid_g(g)).max().unwrap_or(0)
}

fn valid_g(g: u64) -> bool {
    g != 0 && g <= MAX_GOROUTINE
}

/// An event with its P (index into the input) and its timestamp as merged.
struct Item {
    ts: u64,
    pi: usize,
    event: Event,
}

/// All Ps' events in one order: by time, a P's own events in the order recorded. A
/// timestamp below its predecessor's on the same thread is raised to it, because the order
/// a thread recorded in is the order things happened (a `GoStart` before its `GoBlock`).
fn merge(procs: &[Proc<'_>]) -> Vec<Item> {
    let total = procs.iter().map(|p| p.events.len()).sum();
    let mut items = Vec::with_capacity(total);
    for (pi, proc) in procs.iter().enumerate() {
        let mut last = 0;
        for event in proc.events {
            last = event.ts.max(last);
            items.push(Item {
                ts: last,
                pi,
                event: *event,
            });
        }
    }
    // Stable: ties keep P order, and within a P the recorded order.
    items.sort_by_key(|i| (i.ts, i.pi));
    items
}

/// Makes every timestamp strictly greater than the one before it in the global order.
/// Go's merger picks, among the events whose dependencies are met, the one with the
/// smallest timestamp, and its sort is not stable: with ties it may pick an order other
/// than the one the sequence numbers were given in, and reject the trace. A tick or two of
/// shift is invisible.
fn order_timestamps(wires: &mut [Wire]) {
    let mut last: Option<u64> = None;
    for w in wires.iter_mut() {
        if let Some(prev) = last {
            if w.ts <= prev {
                w.ts = prev.saturating_add(1);
            }
        }
        last = Some(w.ts);
    }
}

/// One event as written: Go's type and arguments after the timestamp. A `UserLog` keeps
/// the string id of its value in `args[3]`, written inline after the record.
#[derive(Clone, Copy, Debug)]
struct Wire {
    ts: u64,
    p: u32,
    typ: u8,
    n: u8,
    args: [u64; 4],
}

impl Wire {
    fn new(ts: u64, p: u32, typ: u8, args: &[u64]) -> Self {
        let mut w = Wire {
            ts,
            p,
            typ,
            n: 0,
            args: [0; 4],
        };
        for (slot, arg) in w.args.iter_mut().zip(args) {
            *slot = *arg;
            w.n += 1;
        }
        if typ == ev::USER_LOG {
            w.n = 3;
        }
        w
    }
}

/// Where a goroutine is, as Go's parser tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GState {
    Runnable,
    Running,
    /// Blocked on anything but a system call: `GoUnblock` wakes it.
    Waiting,
    /// In a blocking system call: only `GoSysExit` ends it (the viewer counts threads in
    /// syscalls and rejects an exit it did not see enter).
    Syscall,
    Dead,
}

struct G {
    state: GState,
    /// The sequence number its next `GoStart`, `GoUnblock` or `GoSysExit` carries: Go's
    /// merger orders a goroutine's events across Ps by it.
    seq: u64,
    /// Open regions, innermost last: (task, name).
    regions: Vec<(u64, u64)>,
    /// Its start stack, standing in for a region start's missing stack.
    start: u64,
}

impl G {
    fn new(state: GState, seq: u64, start: u64) -> Self {
        G {
            state,
            seq,
            regions: Vec::new(),
            start,
        }
    }
}

struct PState {
    id: u32,
    running: bool,
    /// The goroutine it runs, 0 for none: implied by Go for goroutine events.
    g: u64,
    thread: u64,
}

/// Replays the events through the state machine of Go's parser, writing the events that
/// fit and the repairs that make the rest fit.
struct Sim<'t> {
    tables: &'t mut Symbols,
    fallback_in: StackId,
    fallback: Option<u64>,
    start: u64,
    /// The P whose batch carries the start-up declarations and the trailer.
    decl_pi: usize,
    decls: Vec<Wire>,
    out: Vec<Wire>,
    gs: HashMap<u64, G>,
    ps: Vec<PState>,
    tasks: HashSet<u64>,
    /// The next id for a goroutine of the encoder's own: above every id in the input.
    next_g: u64,
    stats: Stats,
}

impl<'t> Sim<'t> {
    fn new(input: &Input<'_>, items: &[Item], tables: &'t mut Symbols, start: u64) -> Self {
        let mut ps: Vec<PState> = input
            .procs
            .iter()
            .map(|p| PState {
                id: p.id,
                running: false,
                g: 0,
                thread: u64::from(p.id),
            })
            .collect();
        if ps.is_empty() {
            ps.push(PState {
                id: 0,
                running: false,
                g: 0,
                thread: 0,
            });
        }
        let decl_pi = ps
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.id)
            .map_or(0, |(i, _)| i);
        Sim {
            tables,
            fallback_in: input.fallback_start,
            fallback: None,
            start,
            decl_pi,
            decls: Vec::new(),
            out: Vec::new(),
            gs: HashMap::new(),
            ps,
            tasks: HashSet::new(),
            next_g: max_goroutine(input.existing, items).saturating_add(1),
            stats: Stats::default(),
        }
    }

    /// Declarations, then `Gomaxprocs`, then the events: Go 1.23+'s converter of old
    /// traces takes everything before the first `Gomaxprocs` as the start-up declarations.
    fn into_parts(self, gomaxprocs: u64) -> (Vec<Wire>, Stats) {
        let p = self.ps[self.decl_pi].id;
        let mut wires = self.decls;
        wires.push(Wire::new(self.start, p, ev::GOMAXPROCS, &[gomaxprocs, 0]));
        wires.extend(self.out);
        (wires, self.stats)
    }

    fn declare_existing(&mut self, existing: &[Existing]) {
        for e in existing {
            if !valid_g(e.g) || self.gs.contains_key(&e.g) {
                self.stats.dropped += 1;
                continue;
            }
            let start = self.start_stack(u64::from(e.start.0));
            self.declare(e.g, start, e.status);
        }
    }

    /// A goroutine declared at the start, as Go's `StartTrace` declares those it finds.
    fn declare(&mut self, g: u64, start: u64, status: Status) {
        let p = self.ps[self.decl_pi].id;
        let ts = self.start;
        self.decls
            .push(Wire::new(ts, p, ev::GO_CREATE, &[g, start, 0]));
        // Go's merger has GoCreate leave seq 1, GoWaiting/GoInSyscall seq 2.
        let (state, seq) = match status {
            Status::Runnable => (GState::Runnable, 1),
            Status::Waiting => {
                self.decls.push(Wire::new(ts, p, ev::GO_WAITING, &[g]));
                (GState::Waiting, 2)
            }
            Status::InSyscall => {
                self.decls.push(Wire::new(ts, p, ev::GO_IN_SYSCALL, &[g]));
                (GState::Syscall, 2)
            }
        };
        self.gs.insert(g, G::new(state, seq, start));
        self.stats.declared += 1;
    }

    /// Declares a goroutine first seen mid-life, in the state its first event needs.
    fn infer(&mut self, g: u64, status: Status) {
        let start = self.fallback();
        self.declare(g, start, status);
        self.stats.inferred += 1;
    }

    fn step(&mut self, pi: usize, ts: u64, e: &Event) {
        let [a0, a1, a2] = e.args;
        match e.kind {
            Kind::ProcStart => self.proc_start(pi, ts, a0),
            Kind::ProcStop => self.proc_stop(pi, ts),
            Kind::GoCreate => self.go_create(pi, ts, a0, a1, a2),
            Kind::GoStart => self.go_start(pi, ts, a0),
            Kind::GoEnd => self.go_leave(pi, ts, ev::GO_END, None, GState::Dead),
            Kind::GoStop => self.go_leave(pi, ts, ev::GO_STOP, Some(a0), GState::Dead),
            Kind::GoSched => self.go_leave(pi, ts, ev::GO_SCHED, Some(a0), GState::Runnable),
            Kind::GoBlock => self.go_leave(pi, ts, ev::GO_BLOCK, Some(a0), GState::Waiting),
            Kind::GoBlockNet => self.go_leave(pi, ts, ev::GO_BLOCK_NET, Some(a0), GState::Waiting),
            Kind::GoBlockRecv => {
                self.go_leave(pi, ts, ev::GO_BLOCK_RECV, Some(a0), GState::Waiting)
            }
            Kind::GoSleep => self.go_leave(pi, ts, ev::GO_SLEEP, Some(a0), GState::Waiting),
            Kind::GoSysBlock => self.go_leave(pi, ts, ev::GO_SYSBLOCK, None, GState::Syscall),
            Kind::GoSysCall => self.go_syscall(pi, ts, a0),
            Kind::GoUnblock => self.go_wake(pi, ts, a0, Some(a1)),
            Kind::GoSysExit => self.go_wake(pi, ts, a0, None),
            Kind::TaskCreate | Kind::TaskEnd | Kind::RegionStart | Kind::RegionEnd | Kind::Log => {
                self.annotate(pi, ts, e)
            }
        }
    }

    fn proc_start(&mut self, pi: usize, ts: u64, thread: u64) {
        if self.ps[pi].running {
            return self.drop_one();
        }
        self.ps[pi].running = true;
        self.ps[pi].thread = thread;
        self.emit(ts, pi, ev::PROC_START, &[thread]);
    }

    fn proc_stop(&mut self, pi: usize, ts: u64) {
        if !self.ps[pi].running {
            return self.drop_one();
        }
        // Go refuses to stop a P that still runs a goroutine.
        if self.running_on(pi).is_some() {
            self.close(pi, ts);
            self.stats.inserted += 1;
        }
        self.ps[pi].running = false;
        self.emit(ts, pi, ev::PROC_STOP, &[]);
    }

    fn go_create(&mut self, pi: usize, ts: u64, g: u64, start: u64, stack: u64) {
        if !valid_g(g) || self.gs.contains_key(&g) {
            return self.drop_one();
        }
        self.ensure_running(pi, ts);
        // The viewer names a goroutine after its start stack's first frame and fails
        // without one.
        let start = self.start_stack(start);
        let mut stack = self.tables.stack_ref(stack);
        // A goroutine created inside a region inherits its task, and Go's region analysis
        // then reads the create's first frame: created by a goroutine, with no stack of
        // its own, it gets its creator's entry function.
        if stack == 0 {
            let creator = self.running_on(pi).and_then(|c| self.gs.get(&c));
            stack = creator.map_or(0, |c| c.start);
        }
        self.emit(ts, pi, ev::GO_CREATE, &[g, start, stack]);
        self.gs.insert(g, G::new(GState::Runnable, 1, start));
    }

    fn go_start(&mut self, pi: usize, ts: u64, g: u64) {
        if !valid_g(g) {
            return self.drop_one();
        }
        if !self.gs.contains_key(&g) {
            self.infer(g, Status::Runnable);
        }
        if self.state(g) != Some(GState::Runnable) {
            return self.drop_one();
        }
        self.ensure_running(pi, ts);
        if self.running_on(pi).is_some() {
            self.close(pi, ts);
            self.stats.inserted += 1;
        }
        let seq = self.next_seq(g);
        self.emit(ts, pi, ev::GO_START, &[g, seq]);
        self.set_state(g, GState::Running);
        self.ps[pi].g = g;
    }

    /// The running goroutine leaves the P: it ends, yields, blocks or enters a blocking
    /// system call.
    fn go_leave(&mut self, pi: usize, ts: u64, typ: u8, stack: Option<u64>, next: GState) {
        let Some(g) = self.running_on(pi) else {
            return self.drop_one();
        };
        match stack {
            Some(s) => {
                let s = self.tables.stack_ref(s);
                self.emit(ts, pi, typ, &[s]);
            }
            None => self.emit(ts, pi, typ, &[]),
        }
        self.set_state(g, next);
        if next == GState::Dead {
            // Go's parser ends a goroutine's open regions with it.
            if let Some(gd) = self.gs.get_mut(&g) {
                gd.regions.clear();
            }
        }
        self.ps[pi].g = 0;
    }

    fn go_syscall(&mut self, pi: usize, ts: u64, stack: u64) {
        if self.running_on(pi).is_none() {
            return self.drop_one();
        }
        let stack = self.tables.stack_ref(stack);
        self.emit(ts, pi, ev::GO_SYSCALL, &[stack]);
    }

    /// `GoUnblock` (with the waker's stack) or `GoSysExit` (without): goroutine `g`
    /// becomes runnable.
    fn go_wake(&mut self, pi: usize, ts: u64, g: u64, unblock_stack: Option<u64>) {
        let (from, status) = match unblock_stack {
            Some(_) => (GState::Waiting, Status::Waiting),
            None => (GState::Syscall, Status::InSyscall),
        };
        if !valid_g(g) {
            return self.drop_one();
        }
        if !self.gs.contains_key(&g) {
            self.infer(g, status);
        }
        if self.state(g) != Some(from) {
            return self.drop_one();
        }
        self.ensure_running(pi, ts);
        let seq = self.next_seq(g);
        match unblock_stack {
            Some(s) => {
                let s = self.tables.stack_ref(s);
                self.emit(ts, pi, ev::GO_UNBLOCK, &[g, seq, s]);
            }
            // The last argument, a real exit time, is 0: the record's own time is used.
            None => self.emit(ts, pi, ev::GO_SYSEXIT, &[g, seq, 0]),
        }
        self.set_state(g, GState::Runnable);
    }

    /// Tasks, regions and logs: Go ties them to the running goroutine (its region
    /// analysis dereferences that goroutine), so without one tasks and regions are left
    /// out, and a log gets a goroutine of its own.
    fn annotate(&mut self, pi: usize, ts: u64, e: &Event) {
        let Some(g) = self.running_on(pi) else {
            if e.kind == Kind::Log {
                return self.lone_log(pi, ts, e);
            }
            return self.drop_one();
        };
        let [a0, a1, a2] = e.args;
        match e.kind {
            Kind::TaskCreate => self.task_create(pi, ts, a0, a1, a2),
            Kind::TaskEnd => {
                let stack = self.tables.stack_ref(a1);
                self.emit(ts, pi, ev::USER_TASK_END, &[a0, stack]);
            }
            Kind::RegionStart => {
                let name = self.tables.string_ref(low(a1));
                let mut stack = self.tables.stack_ref(a2);
                if let Some(gd) = self.gs.get_mut(&g) {
                    gd.regions.push((a0, name));
                    // The viewer's region pages read a region start's first frame and
                    // fail without one: the goroutine's entry function stands in.
                    if stack == 0 {
                        stack = gd.start;
                    }
                }
                self.emit(ts, pi, ev::USER_REGION, &[a0, 0, name, stack]);
            }
            Kind::RegionEnd => {
                let name = self.tables.string_ref(low(a1));
                let stack = self.tables.stack_ref(a2);
                self.region_end(pi, ts, g, (a0, name), stack);
            }
            _ => {
                let key = self.tables.string_ref(low(a1));
                let value = self.tables.string_ref(high(a1));
                let stack = self.tables.stack_ref(a2);
                self.emit(ts, pi, ev::USER_LOG, &[a0, key, stack, value]);
            }
        }
    }

    fn lone_log(&mut self, pi: usize, ts: u64, e: &Event) {
        let [task, key_value, stack] = e.args;
        let key = self.tables.string_ref(low(key_value));
        let value = self.tables.string_ref(high(key_value));
        let start = self.start_stack(stack);
        self.hosted(pi, ts, start, |sim| {
            sim.emit(ts, pi, ev::USER_LOG, &[task, key, start, value]);
        });
        self.stats.hosted += 1;
    }

    /// Runs `body` (which writes user logs) on a new goroutine of the encoder's own on P
    /// `pi`, which runs no goroutine; the P is left as it was.
    fn hosted(&mut self, pi: usize, ts: u64, start: u64, body: impl FnOnce(&mut Self)) {
        let g = self.next_g;
        self.next_g = g.saturating_add(1);
        let stopped = !self.ps[pi].running;
        if stopped {
            let thread = self.ps[pi].thread;
            self.emit(ts, pi, ev::PROC_START, &[thread]);
        }
        self.emit(ts, pi, ev::GO_CREATE, &[g, start, 0]);
        self.emit(ts, pi, ev::GO_START, &[g, 1]);
        body(self);
        self.emit(ts, pi, ev::GO_END, &[]);
        if stopped {
            self.emit(ts, pi, ev::PROC_STOP, &[]);
        }
    }

    fn task_create(&mut self, pi: usize, ts: u64, task: u64, parent: u64, name_stack: u64) {
        // Task 0 is Go's "no task"; a second create of one id fails Go's parser.
        if task == 0 || !self.tasks.insert(task) {
            return self.drop_one();
        }
        let name = self.tables.string_ref(low(name_stack));
        let stack = self.tables.stack_ref(u64::from(high(name_stack)));
        self.emit(ts, pi, ev::USER_TASK_CREATE, &[task, parent, name, stack]);
    }

    /// Go's parser fails on a region end that is not the innermost open region of its
    /// goroutine; one that matches an outer region closes the inner ones first, one that
    /// matches none is left out (unless none is open: then it began before the trace, which
    /// Go accepts).
    fn region_end(&mut self, pi: usize, ts: u64, g: u64, region: (u64, u64), stack: u64) {
        let Some(gd) = self.gs.get_mut(&g) else {
            return self.drop_one();
        };
        let found = gd.regions.iter().rposition(|r| *r == region);
        let inner = match found {
            Some(i) => gd.regions.split_off(i),
            None if gd.regions.is_empty() => Vec::new(),
            None => return self.drop_one(),
        };
        for &(task, name) in inner.iter().skip(1).rev() {
            self.emit(ts, pi, ev::USER_REGION, &[task, 1, name, stack]);
            self.stats.inserted += 1;
        }
        self.emit(ts, pi, ev::USER_REGION, &[region.0, 1, region.1, stack]);
    }

    /// Closes every goroutine still running, as Go's `StopTrace` does (with `GoSched`):
    /// the viewer draws a running goroutine as a slice from its `GoStart` to what ended it,
    /// and fails on a slice without an end.
    fn finish(&mut self, end: u64) {
        for pi in 0..self.ps.len() {
            if self.running_on(pi).is_some() {
                self.close(pi, end);
                self.stats.closed += 1;
            }
        }
    }

    /// The notes, on a goroutine of their own on the declaring P (after `finish`, no P
    /// runs a goroutine).
    fn trailer(&mut self, trailer: &Trailer<'_>, own: &[(String, String)], end: u64) {
        let pi = self.decl_pi;
        let start = self.start_stack(u64::from(trailer.start.0));
        let notes: Vec<(u64, u64)> = trailer
            .notes
            .iter()
            .map(|n| (n.key, n.value))
            .chain(own.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(k, v)| {
                (
                    u64::from(self.tables.string(k).0),
                    u64::from(self.tables.string(v).0),
                )
            })
            .collect();
        self.hosted(pi, end, start, |sim| {
            for &(key, value) in &notes {
                sim.emit(end, pi, ev::USER_LOG, &[0, key, start, value]);
            }
        });
    }

    fn close(&mut self, pi: usize, ts: u64) {
        if let Some(g) = self.running_on(pi) {
            self.emit(ts, pi, ev::GO_SCHED, &[0]);
            self.set_state(g, GState::Runnable);
            self.ps[pi].g = 0;
        }
    }

    /// Go's own traces never show a P acting while stopped, and Go 1.23+'s converter needs
    /// a P for creating, starting and waking goroutines.
    fn ensure_running(&mut self, pi: usize, ts: u64) {
        if !self.ps[pi].running {
            self.ps[pi].running = true;
            let thread = self.ps[pi].thread;
            self.emit(ts, pi, ev::PROC_START, &[thread]);
            self.stats.inserted += 1;
        }
    }

    fn running_on(&self, pi: usize) -> Option<u64> {
        let g = self.ps.get(pi).map_or(0, |p| p.g);
        (g != 0).then_some(g)
    }

    fn state(&self, g: u64) -> Option<GState> {
        self.gs.get(&g).map(|gd| gd.state)
    }

    fn set_state(&mut self, g: u64, state: GState) {
        if let Some(gd) = self.gs.get_mut(&g) {
            gd.state = state;
        }
    }

    /// The sequence number for `g`'s next ordered event, counting it.
    fn next_seq(&mut self, g: u64) -> u64 {
        self.gs.get_mut(&g).map_or(0, |gd| {
            gd.seq += 1;
            gd.seq - 1
        })
    }

    fn drop_one(&mut self) {
        self.stats.dropped += 1;
    }

    fn emit(&mut self, ts: u64, pi: usize, typ: u8, args: &[u64]) {
        let p = self.ps[pi].id;
        self.out.push(Wire::new(ts, p, typ, args));
    }

    /// A start stack that names the goroutine: the given one if it exists, else the
    /// fallback.
    fn start_stack(&mut self, id: u64) -> u64 {
        match self.tables.stack_ref(id) {
            0 => self.fallback(),
            id => id,
        }
    }

    fn fallback(&mut self) -> u64 {
        if let Some(id) = self.fallback {
            return id;
        }
        let id = match self.tables.stack_ref(u64::from(self.fallback_in.0)) {
            0 => {
                let unknown = Frame {
                    pc: 1,
                    function: "unknown",
                    file: "unknown",
                    line: 0,
                };
                u64::from(self.tables.frame(unknown).0)
            }
            id => id,
        };
        self.fallback = Some(id);
        id
    }
}

/// The bytes: header; per P one batch (the first also carrying the string and stack
/// tables, since Go 1.22+'s reader wants every record inside a batch); the frequency last,
/// where Go's runtime writes it.
fn write(tables: &Symbols, ticks_per_sec: u64, wires: &[Wire]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER.len() + wires.len() * 8 + tables_size(tables));
    let mut scratch = Vec::new();
    buf.extend_from_slice(HEADER);
    let mut first = true;
    for batch in wires.chunk_by(|a, b| a.p == b.p) {
        let Some(head) = batch.first() else { continue };
        put_record(
            &mut buf,
            &mut scratch,
            ev::BATCH,
            &[u64::from(head.p), head.ts],
        );
        if first {
            put_tables(&mut buf, &mut scratch, tables);
            first = false;
        }
        // Timestamps are deltas from the previous event of the batch (the first from the
        // batch's own).
        let mut last = head.ts;
        for w in batch {
            put_wire(&mut buf, &mut scratch, tables, w, w.ts - last);
            last = w.ts;
        }
    }
    put_record(&mut buf, &mut scratch, ev::FREQUENCY, &[ticks_per_sec]);
    buf
}

fn tables_size(tables: &Symbols) -> usize {
    let strings: usize = tables.strings.iter().map(|s| s.len() + 4).sum();
    strings + tables.stacks.len() * 32
}

fn put_tables(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, tables: &Symbols) {
    for (i, s) in tables.strings.iter().enumerate() {
        put_string(buf, i as u64 + 1, s);
    }
    let mut args = Vec::new();
    for (i, frames) in tables.stacks.iter().enumerate() {
        args.clear();
        args.extend([i as u64 + 1, frames.len() as u64]);
        for f in frames {
            args.extend([f.pc, u64::from(f.function), u64::from(f.file), f.line]);
        }
        put_long_record(buf, scratch, ev::STACK, &args);
    }
}

fn put_wire(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, tables: &Symbols, w: &Wire, delta: u64) {
    let mut args = [0u64; 5];
    args[0] = delta;
    let n = usize::from(w.n).min(w.args.len());
    args[1..=n].copy_from_slice(&w.args[..n]);
    put_record(buf, scratch, w.typ, &args[..=n]);
    if w.typ == ev::USER_LOG {
        // A log's value follows its record inline, not in the string table.
        let value = tables.text(w.args[3]).as_bytes();
        put_uvarint(buf, value.len() as u64);
        buf.extend_from_slice(value);
    }
}

/// One record: the type with the argument count in its top two bits (count - 1; 3 means
/// "four or more, length-prefixed"), then the arguments as varints.
fn put_record(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, typ: u8, args: &[u64]) {
    match args.len() {
        0 => buf.push(typ),
        n @ 1..=3 => {
            buf.push(typ | ((n as u8 - 1) << 6));
            for &a in args {
                put_uvarint(buf, a);
            }
        }
        _ => put_long_record(buf, scratch, typ, args),
    }
}

fn put_long_record(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, typ: u8, args: &[u64]) {
    scratch.clear();
    for &a in args {
        put_uvarint(scratch, a);
    }
    buf.push(typ | (3 << 6));
    put_uvarint(buf, scratch.len() as u64);
    buf.extend_from_slice(scratch);
}

/// A string table entry: id, length, bytes (the type byte carries no count).
fn put_string(buf: &mut Vec<u8>, id: u64, s: &str) {
    buf.push(ev::STRING);
    put_uvarint(buf, id);
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Go's unsigned varint: 7 bits a byte, least significant first, high bit "more follows".
fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn uvarint_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go 1.19's reading of a trace, redone for the tests: the wire format
    /// (`readTrace`, `parseEvents`), the merge of the batches (`order1007`), the state
    /// checks (`postProcessTrace`), and the few things `cmd/trace` needs on top.
    mod go {
        use super::ev;
        use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

        #[derive(Clone, Debug, Default)]
        pub struct Ev {
            pub typ: u8,
            pub ts: i64,
            pub p: u32,
            pub g: u64,
            pub args: [u64; 3],
            pub stk: u64,
            pub text: String,
        }

        pub struct Trace {
            pub events: Vec<Ev>,
            pub strings: HashMap<u64, String>,
            pub stacks: HashMap<u64, Vec<[u64; 4]>>,
            pub freq: u64,
        }

        impl Trace {
            pub fn count(&self, typ: u8) -> usize {
                self.events.iter().filter(|e| e.typ == typ).count()
            }
        }

        /// Arguments after the timestamp, and whether a stack id follows them.
        fn desc(typ: u8) -> Option<(usize, bool)> {
            Some(match typ {
                ev::GOMAXPROCS => (1, true),
                ev::PROC_START => (1, false),
                ev::PROC_STOP | ev::GO_END | ev::GO_SYSBLOCK => (0, false),
                ev::GO_CREATE => (2, true),
                ev::GO_START => (2, false),
                ev::GO_STOP | ev::GO_SCHED | ev::GO_SLEEP | ev::GO_BLOCK => (0, true),
                ev::GO_BLOCK_RECV | ev::GO_BLOCK_NET | ev::GO_SYSCALL => (0, true),
                ev::GO_UNBLOCK => (2, true),
                ev::GO_SYSEXIT => (3, false),
                ev::GO_WAITING | ev::GO_IN_SYSCALL => (1, false),
                ev::USER_TASK_CREATE | ev::USER_REGION => (3, true),
                ev::USER_TASK_END => (1, true),
                ev::USER_LOG => (2, true),
                _ => return None,
            })
        }

        struct Reader<'a> {
            data: &'a [u8],
            off: usize,
        }

        impl Reader<'_> {
            fn byte(&mut self) -> Result<u8, String> {
                let b = *self.data.get(self.off).ok_or("unexpected end")?;
                self.off += 1;
                Ok(b)
            }

            fn uvarint(&mut self) -> Result<u64, String> {
                let mut v = 0u64;
                for i in 0..10 {
                    let b = self.byte()?;
                    v |= u64::from(b & 0x7f) << (i * 7);
                    if b & 0x80 == 0 {
                        return Ok(v);
                    }
                }
                Err(format!("bad varint at {}", self.off))
            }

            fn bytes(&mut self, n: u64) -> Result<String, String> {
                let n = n as usize;
                let s = self
                    .data
                    .get(self.off..self.off + n)
                    .ok_or("short string")?;
                self.off += n;
                String::from_utf8(s.to_vec()).map_err(|e| e.to_string())
            }

            fn args(&mut self, narg: u8) -> Result<Vec<u64>, String> {
                if narg < 4 {
                    return (0..narg).map(|_| self.uvarint()).collect();
                }
                let len = self.uvarint()? as usize;
                if len > 2048 {
                    return Err(format!("record of {len} bytes: Go 1.22+ refuses it"));
                }
                let end = self.off + len;
                let mut args = Vec::new();
                while self.off < end {
                    args.push(self.uvarint()?);
                }
                if self.off != end {
                    return Err("event has wrong length".into());
                }
                Ok(args)
            }
        }

        #[derive(Default)]
        struct Raw {
            strings: HashMap<u64, String>,
            stacks: HashMap<u64, Vec<[u64; 4]>>,
            freq: u64,
            batches: BTreeMap<u32, Vec<Ev>>,
        }

        pub fn parse(data: &[u8]) -> Result<Trace, String> {
            if data.get(..16) != Some(&b"go 1.19 trace\0\0\0"[..]) {
                return Err("not a trace file".into());
            }
            let raw = read(&mut Reader { data, off: 16 })?;
            if raw.batches.is_empty() {
                return Err("trace is empty".into());
            }
            if raw.freq == 0 {
                return Err("no EvFrequency event".into());
            }
            let events = order(raw.batches)?;
            check(&events, &raw.stacks)?;
            Ok(Trace {
                events,
                strings: raw.strings,
                stacks: raw.stacks,
                freq: raw.freq,
            })
        }

        fn read(r: &mut Reader<'_>) -> Result<Raw, String> {
            let mut raw = Raw::default();
            let (mut last_p, mut last_g, mut last_ts) = (0u32, 0u64, 0i64);
            let mut last_gs: HashMap<u32, u64> = HashMap::new();
            let mut in_batch = false;
            while r.off < r.data.len() {
                let b = r.byte()?;
                let (typ, narg) = (b & 0x3f, (b >> 6) + 1);
                if typ != ev::BATCH && !in_batch {
                    return Err(format!("record {typ} before any batch"));
                }
                if typ == ev::STRING {
                    let id = r.uvarint()?;
                    let len = r.uvarint()?;
                    if id == 0 || len == 0 || len > 1_000_000 || raw.strings.contains_key(&id) {
                        return Err(format!("bad string {id} of length {len}"));
                    }
                    let s = r.bytes(len)?;
                    raw.strings.insert(id, s);
                    continue;
                }
                let args = r.args(narg)?;
                match typ {
                    ev::BATCH => {
                        if args.len() != 2 {
                            return Err("batch arguments".into());
                        }
                        last_gs.insert(last_p, last_g);
                        last_p = args[0] as u32;
                        last_g = last_gs.get(&last_p).copied().unwrap_or(0);
                        last_ts = args[1] as i64;
                        in_batch = true;
                    }
                    ev::FREQUENCY => raw.freq = args[0],
                    ev::STACK => {
                        let n = args[1] as usize;
                        if args.len() != 2 + 4 * n || n > 1000 {
                            return Err("stack arguments".into());
                        }
                        let frames = args[2..].chunks(4).map(|c| [c[0], c[1], c[2], c[3]]);
                        raw.stacks.insert(args[0], frames.collect());
                    }
                    _ => {
                        let (n, stack) = desc(typ).ok_or(format!("unknown event type {typ}"))?;
                        if args.len() != 1 + n + usize::from(stack) {
                            return Err(format!("event {typ} has {} arguments", args.len()));
                        }
                        last_ts += args[0] as i64;
                        let mut e = Ev {
                            typ,
                            ts: last_ts,
                            p: last_p,
                            g: last_g,
                            ..Ev::default()
                        };
                        e.args[..n].copy_from_slice(&args[1..=n]);
                        if stack {
                            e.stk = args[n + 1];
                        }
                        if typ == ev::USER_LOG {
                            let len = r.uvarint()?;
                            e.text = r.bytes(len)?;
                        }
                        match typ {
                            ev::GO_START => {
                                last_g = e.args[0];
                                e.g = last_g;
                            }
                            ev::GO_END
                            | ev::GO_STOP
                            | ev::GO_SCHED
                            | ev::GO_SLEEP
                            | ev::GO_BLOCK
                            | ev::GO_BLOCK_RECV
                            | ev::GO_BLOCK_NET
                            | ev::GO_SYSBLOCK => last_g = 0,
                            ev::GO_SYSEXIT | ev::GO_WAITING | ev::GO_IN_SYSCALL => e.g = e.args[0],
                            _ => {}
                        }
                        raw.batches.entry(last_p).or_default().push(e);
                    }
                }
            }
            Ok(raw)
        }

        const NOSEQ: u64 = u64::MAX;
        const DEAD: u8 = 0;
        const RUNNABLE: u8 = 1;
        const RUNNING: u8 = 2;
        const WAITING: u8 = 3;

        type St = (u64, u8);

        /// `stateTransition`: the goroutine an event orders, its state before and after.
        fn transition(e: &Ev) -> Option<(u64, St, St)> {
            let a = e.args;
            Some(match e.typ {
                ev::GO_CREATE => (a[0], (0, DEAD), (1, RUNNABLE)),
                ev::GO_WAITING | ev::GO_IN_SYSCALL => (e.g, (1, RUNNABLE), (2, WAITING)),
                ev::GO_START => (e.g, (a[1], RUNNABLE), (a[1] + 1, RUNNING)),
                ev::GO_BLOCK
                | ev::GO_BLOCK_RECV
                | ev::GO_BLOCK_NET
                | ev::GO_SLEEP
                | ev::GO_SYSBLOCK => (e.g, (NOSEQ, RUNNING), (NOSEQ, WAITING)),
                ev::GO_SCHED => (e.g, (NOSEQ, RUNNING), (NOSEQ, RUNNABLE)),
                ev::GO_UNBLOCK | ev::GO_SYSEXIT => (a[0], (a[1], WAITING), (a[1] + 1, RUNNABLE)),
                _ => return None,
            })
        }

        fn ready(t: &Option<(u64, St, St)>, gs: &HashMap<u64, St>) -> bool {
            let Some((g, init, _)) = t else { return true };
            let cur = gs.get(g).copied().unwrap_or((0, DEAD));
            (init.0 == NOSEQ || init.0 == cur.0) && init.1 == cur.1
        }

        /// `order1007`, frontier for frontier.
        fn order(batches: BTreeMap<u32, Vec<Ev>>) -> Result<Vec<Ev>, String> {
            let mut queues: Vec<VecDeque<Ev>> = batches.into_values().map(Into::into).collect();
            let mut selected = vec![false; queues.len()];
            let mut gs: HashMap<u64, St> = HashMap::new();
            let mut frontier: Vec<(Ev, usize)> = Vec::new();
            let mut pending: usize = queues.iter().map(VecDeque::len).sum();
            let mut out = Vec::with_capacity(pending);
            while pending > 0 {
                for (i, q) in queues.iter_mut().enumerate() {
                    if selected[i] || !q.front().is_some_and(|e| ready(&transition(e), &gs)) {
                        continue;
                    }
                    frontier.push((q.pop_front().unwrap(), i));
                    selected[i] = true;
                }
                if frontier.is_empty() {
                    return Err("no consistent ordering of events possible".into());
                }
                frontier.sort_by_key(|(e, _)| e.ts);
                let (e, i) = frontier.swap_remove(0);
                if let Some((g, init, next)) = transition(&e) {
                    let cur = gs.get(&g).copied().unwrap_or((0, DEAD));
                    let seq = if next.0 == NOSEQ { cur.0 } else { next.0 };
                    let _ = init;
                    gs.insert(g, (seq, next.1));
                }
                selected[i] = false;
                out.push(e);
                pending -= 1;
            }
            if out.windows(2).any(|w| w[0].ts > w[1].ts) {
                return Err("time stamps out of order".into());
            }
            Ok(out)
        }

        #[derive(Clone, Copy, Default)]
        struct Gd {
            state: u8,
            started: bool,
            /// The create's start stack, until the first GoStart takes it (Go attaches it
            /// to that GoStart only).
            create_stack: Option<u64>,
            /// `GoroutineStats`' goroutine pc: 0 means "read it from this GoStart".
            pc: u64,
        }

        #[derive(Clone, Copy, Default)]
        struct Pd {
            running: bool,
            g: u64,
        }

        fn running(p: Pd, g: Gd, e: &Ev, allow_g0: bool) -> Result<(), String> {
            if g.state != RUNNING || p.g != e.g || (!allow_g0 && e.g == 0) {
                return Err(format!(
                    "g {} is not running on p {} for {}",
                    e.g, e.p, e.typ
                ));
            }
            Ok(())
        }

        /// `postProcessTrace`, plus what `cmd/trace` needs: a start stack with a frame for
        /// every created goroutine, an end for every `GoStart` (else the viewer fails), no
        /// syscall exit it did not see enter, regions on a goroutine with a stack.
        fn check(events: &[Ev], stacks: &HashMap<u64, Vec<[u64; 4]>>) -> Result<(), String> {
            let mut gs: HashMap<u64, Gd> = HashMap::new();
            let g0 = Gd {
                state: RUNNING,
                ..Gd::default()
            };
            gs.insert(0, g0);
            let mut ps: HashMap<u32, Pd> = HashMap::new();
            let mut tasks = HashSet::new();
            let mut regions: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
            let mut in_syscall: i64 = 0;
            for e in events {
                let mut g = gs.get(&e.g).copied().unwrap_or_default();
                let mut p = ps.get(&e.p).copied().unwrap_or_default();
                match e.typ {
                    ev::PROC_START if p.running => return Err("p running before start".into()),
                    ev::PROC_START => p.running = true,
                    ev::PROC_STOP if !p.running || p.g != 0 => return Err("bad proc stop".into()),
                    ev::PROC_STOP => p.running = false,
                    ev::GO_WAITING | ev::GO_IN_SYSCALL => {
                        if g.state != RUNNABLE {
                            return Err("declared goroutine not runnable".into());
                        }
                        g.state = WAITING;
                        in_syscall += i64::from(e.typ == ev::GO_IN_SYSCALL);
                    }
                    ev::GO_CREATE => {
                        running(p, g, e, true)?;
                        if gs.contains_key(&e.args[0]) {
                            return Err(format!("g {} already exists", e.args[0]));
                        }
                        if stacks.get(&e.args[1]).is_none_or(Vec::is_empty) {
                            return Err("go create without start stack".into());
                        }
                        // The new goroutine inherits the creator's innermost region's task
                        // and `analyzeAnnotations` reads this event's first frame.
                        let in_task = regions
                            .get(&e.g)
                            .and_then(|r| r.last())
                            .is_some_and(|r| r.0 != 0);
                        if in_task && stacks.get(&e.stk).is_none_or(Vec::is_empty) {
                            return Err(
                                "annotations: create in a task's region without stack".into()
                            );
                        }
                        let created = Gd {
                            state: RUNNABLE,
                            create_stack: Some(e.args[1]),
                            ..Gd::default()
                        };
                        gs.insert(e.args[0], created);
                    }
                    ev::GO_START => {
                        if g.state != RUNNABLE || p.g != 0 {
                            return Err(format!("bad start of g {}", e.g));
                        }
                        if g.pc == 0 {
                            let stack = g.create_stack.take().and_then(|s| stacks.get(&s));
                            let first = stack.and_then(|frames| frames.first());
                            g.pc = first.ok_or("GoroutineStats: GoStart without a stack")?[0];
                        }
                        g.state = RUNNING;
                        g.started = true;
                        p.g = e.g;
                    }
                    ev::GO_END
                    | ev::GO_STOP
                    | ev::GO_SCHED
                    | ev::GO_SLEEP
                    | ev::GO_BLOCK
                    | ev::GO_BLOCK_RECV
                    | ev::GO_BLOCK_NET
                    | ev::GO_SYSBLOCK => {
                        running(p, g, e, false)?;
                        g.started = false;
                        g.state = match e.typ {
                            ev::GO_END | ev::GO_STOP => DEAD,
                            ev::GO_SCHED => RUNNABLE,
                            _ => WAITING,
                        };
                        in_syscall += i64::from(e.typ == ev::GO_SYSBLOCK);
                        if e.typ == ev::GO_END {
                            regions.remove(&e.g);
                        }
                        p.g = 0;
                    }
                    ev::GO_SYSCALL => running(p, g, e, false)?,
                    ev::GO_UNBLOCK => {
                        if g.state != RUNNING || p.g != e.g {
                            return Err("unblock from a goroutine not running".into());
                        }
                        let mut g1 = gs.get(&e.args[0]).copied().unwrap_or_default();
                        if g1.state != WAITING {
                            return Err(format!("g {} is not waiting before unpark", e.args[0]));
                        }
                        g1.state = RUNNABLE;
                        gs.insert(e.args[0], g1);
                    }
                    ev::GO_SYSEXIT => {
                        if g.state != WAITING {
                            return Err("syscall exit while not waiting".into());
                        }
                        in_syscall -= 1;
                        if in_syscall < 0 {
                            return Err("viewer: syscall exit without a syscall".into());
                        }
                        g.state = RUNNABLE;
                    }
                    ev::USER_TASK_CREATE if !tasks.insert(e.args[0]) => {
                        return Err("task id conflicts".into())
                    }
                    ev::USER_REGION => {
                        if e.g == 0 {
                            return Err("region without a goroutine".into());
                        }
                        let open = regions.entry(e.g).or_default();
                        match e.args[1] {
                            0 if stacks.get(&e.stk).is_none_or(Vec::is_empty) => {
                                return Err("region start without stack".into())
                            }
                            0 => open.push((e.args[0], e.args[2])),
                            1 => match open.last() {
                                Some(&top) if top != (e.args[0], e.args[2]) => {
                                    return Err("misuse of region".into())
                                }
                                Some(_) => drop(open.pop()),
                                None => {}
                            },
                            _ => return Err("invalid region mode".into()),
                        }
                    }
                    _ => {}
                }
                gs.insert(e.g, g);
                ps.insert(e.p, p);
            }
            match gs.iter().find(|(id, g)| **id != 0 && g.started) {
                Some((id, _)) => Err(format!("viewer: g {id} still running at the end")),
                None => Ok(()),
            }
        }
    }

    /// A small deterministic generator, so the tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn frame(sym: &mut Symbols, pc: u64, function: &str) -> StackId {
        sym.frame(Frame {
            pc,
            function,
            file: "src/conn.rs",
            line: pc % 97,
        })
    }

    fn input<'a>(sym: &'a Symbols, procs: &'a [Proc<'a>]) -> Input<'a> {
        Input {
            symbols: sym,
            ticks_per_sec: 1_000_000_000,
            start_ts: 0,
            end_ts: 0,
            gomaxprocs: 0,
            existing: &[],
            procs,
            fallback_start: StackId::NONE,
            trailer: None,
        }
    }

    fn uvarint(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_uvarint(&mut b, v);
        b
    }

    #[test]
    fn header_is_go_1_19() {
        assert_eq!(HEADER.len(), 16);
        assert_eq!(&HEADER[..13], b"go 1.19 trace");
    }

    #[test]
    fn varints_are_go_uvarints() {
        assert_eq!(uvarint(0), [0]);
        assert_eq!(uvarint(127), [0x7f]);
        assert_eq!(uvarint(128), [0x80, 0x01]);
        assert_eq!(uvarint(1_000_000_000), [0x80, 0x94, 0xeb, 0xdc, 0x03]);
        assert_eq!(uvarint(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            assert_eq!(uvarint_len(v), uvarint(v).len(), "{v}");
        }
    }

    #[test]
    fn records_inline_up_to_three_arguments_then_length_prefixed() {
        let (mut b, mut s) = (Vec::new(), Vec::new());
        put_record(&mut b, &mut s, ev::GO_START, &[5, 7, 1]);
        assert_eq!(b, [ev::GO_START | 2 << 6, 5, 7, 1]);
        b.clear();
        put_record(&mut b, &mut s, ev::GO_UNBLOCK, &[5, 300, 2, 1]);
        assert_eq!(b, [ev::GO_UNBLOCK | 3 << 6, 5, 5, 0xac, 0x02, 2, 1]);
    }

    #[test]
    fn an_empty_trace_is_header_batch_gomaxprocs_frequency() {
        let sym = Symbols::new();
        let procs = [Proc {
            id: 0,
            events: &[],
            lost: 0,
        }];
        let mut inp = input(&sym, &procs);
        inp.start_ts = 100;
        inp.gomaxprocs = 1;
        let out = encode(&inp).unwrap();
        let mut want = HEADER.to_vec();
        want.extend([ev::BATCH | 1 << 6, 0, 100]);
        want.extend([ev::GOMAXPROCS | 2 << 6, 0, 1, 0]);
        want.extend([ev::FREQUENCY, 0x80, 0x94, 0xeb, 0xdc, 0x03]);
        assert_eq!(out.bytes, want);
        go::parse(&out.bytes).unwrap();
    }

    #[test]
    fn events_are_forty_bytes() {
        assert_eq!(std::mem::size_of::<Event>(), 40);
    }

    #[test]
    fn buffers_keep_a_prefix_and_count_the_rest() {
        let mut buf = EventBuf::with_capacity(2);
        assert!(buf.push(Event::proc_start(1, 0)));
        assert!(buf.push(Event::proc_stop(2)));
        assert!(!buf.push(Event::proc_start(3, 0)));
        assert_eq!((buf.len(), buf.lost(), buf.capacity()), (2, 1, 2));
        buf.clear();
        assert!(buf.is_empty() && buf.lost() == 0);
    }

    #[test]
    fn reserved_stacks_are_named_later_with_their_ids_kept() {
        let mut sym = Symbols::new();
        let early = sym.reserve_stack();
        let unnamed = sym.reserve_stack();
        let frame = Frame {
            pc: 0x42,
            function: "leftpad::site",
            file: "site.rs",
            line: 7,
        };
        sym.name_stack(early, &[frame]);
        sym.name_stack(unnamed, &[]);
        assert_eq!(
            sym.stack(&[frame]),
            early,
            "the same frames get the reserved id"
        );
        assert_ne!(early, unnamed);
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        put_tables(&mut buf, &mut scratch, &sym);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.contains("leftpad::site") && text.contains("unknown"),
            "{text}"
        );
    }

    #[test]
    fn symbols_dedupe_and_bound() {
        let mut sym = Symbols::new();
        assert_eq!(sym.string(""), StrId::EMPTY);
        let a = sym.string("leftpad");
        assert_eq!(sym.string("leftpad"), a);
        let long = "é".repeat(1000);
        let cut = sym.string(&long);
        assert_eq!(sym.text(u64::from(cut.0)).len(), 1024);
        let f = Frame {
            pc: 1,
            function: "f",
            file: "x.rs",
            line: 3,
        };
        assert_eq!(sym.stack(&[f]), sym.frame(f));
        assert_eq!(sym.stack(&[]), StackId::NONE);
        let deep = vec![f; 500];
        let id = sym.stack(&deep);
        let frames = &sym.stacks[id.0 as usize - 1];
        assert!(frames.len() <= MAX_FRAMES);
        let size: usize = frames.iter().map(FrameIds::encoded_len).sum();
        assert!(size + STACK_HEAD <= MAX_RECORD);
    }

    #[test]
    fn start_frames_never_have_pc_zero() {
        let mut sym = Symbols::new();
        let zero = Frame {
            pc: 0,
            function: "leftpad::conn::serve",
            file: "",
            line: 0,
        };
        let zero = sym.frame(zero);
        let w0 = [
            Event::proc_start(1, 0),
            Event::go_create(2, 5, zero, StackId::NONE),
            Event::go_start(3, 5),
            Event::go_block(4, StackId::NONE),
            Event::go_unblock(5, 5, StackId::NONE),
            Event::go_start(6, 5),
            // Never seen before: declared, named by the fallback frame.
            Event::go_start(7, 6),
            Event::go_block(8, StackId::NONE),
            Event::go_unblock(9, 6, StackId::NONE),
            Event::go_start(10, 6),
        ];
        let procs = [Proc {
            id: 0,
            events: &w0,
            lost: 0,
        }];
        let out = encode(&input(&sym, &procs)).unwrap();
        go::parse(&out.bytes).unwrap();
    }

    #[test]
    fn bad_inputs_are_errors() {
        let sym = Symbols::new();
        let procs = [
            Proc {
                id: 1,
                events: &[],
                lost: 0,
            },
            Proc {
                id: 1,
                events: &[],
                lost: 0,
            },
        ];
        assert_eq!(
            encode(&input(&sym, &procs)).unwrap_err(),
            Error::DuplicateProc(1)
        );
        let procs = [Proc {
            id: 1_000_000,
            events: &[],
            lost: 0,
        }];
        assert_eq!(
            encode(&input(&sym, &procs)).unwrap_err(),
            Error::ProcId(1_000_000)
        );
        let mut inp = input(&sym, &[]);
        inp.ticks_per_sec = 0;
        assert_eq!(encode(&inp).unwrap_err(), Error::Frequency(0));
        assert!(Error::Frequency(0).to_string().contains("frequency"));
    }

    /// The stacks a small server uses.
    struct Stacks {
        conn: StackId,
        accept: StackId,
        read: StackId,
        wake: StackId,
        route: StackId,
        writer: StackId,
        write: StackId,
        wait: StackId,
        leftpad: StrId,
        key: StrId,
        value: StrId,
    }

    fn stacks(sym: &mut Symbols) -> Stacks {
        Stacks {
            conn: frame(sym, 0x1000, "leftpad::conn::serve"),
            accept: frame(sym, 0x1100, "leftpad::worker::accept"),
            read: frame(sym, 0x1200, "leftpad::conn::read_request"),
            wake: frame(sym, 0x1300, "leftpad::worker::reap"),
            route: frame(sym, 0x1400, "leftpad::http::route"),
            writer: frame(sym, 0x1500, "leftpad::log::writer"),
            write: frame(sym, 0x1600, "leftpad::log::flush"),
            wait: frame(sym, 0x1700, "leftpad::log::wait"),
            leftpad: sym.string("leftpad"),
            key: sym.string("signal"),
            value: sym.string("SIGHUP: reopen"),
        }
    }

    /// Two workers serving connections and waking the log writer, the writer writing.
    fn server(s: &Stacks) -> (Vec<Event>, Vec<Event>, Vec<Event>) {
        let (mut w0, mut w1, mut lw) = (Vec::new(), Vec::new(), Vec::new());
        let mut t = 1_000;
        let mut task = 1;
        for round in 0..10u64 {
            for (w, base) in [(&mut w0, 100), (&mut w1, 200)] {
                let g = base + round;
                w.push(Event::proc_start(t, base));
                w.push(Event::go_create(t + 1, g, s.conn, s.accept));
                w.push(Event::go_start(t + 2, g));
                w.push(Event::go_block_net(t + 3, s.read));
                w.push(Event::go_unblock(t + 4, g, s.wake));
                w.push(Event::go_start(t + 5, g));
                w.push(Event::task_create(t + 6, task, 0, s.leftpad, s.route));
                w.push(Event::region_start(t + 6, task, s.leftpad, s.route));
                w.push(Event::region_end(t + 7, task, s.leftpad, s.route));
                w.push(Event::task_end(t + 7, task, s.route));
                task += 1;
                if base == 100 && round % 3 == 0 {
                    w.push(Event::go_unblock(t + 8, 7, s.wake));
                    lw.push(Event::proc_start(t + 9, 300));
                    lw.push(Event::go_start(t + 10, 7));
                    lw.push(Event::go_syscall(t + 11, s.write));
                    lw.push(Event::go_sysblock(t + 12));
                    lw.push(Event::proc_stop(t + 12));
                    lw.push(Event::proc_start(t + 15, 300));
                    lw.push(Event::go_sysexit(t + 15, 7));
                    lw.push(Event::go_start(t + 16, 7));
                    lw.push(Event::log(t + 17, 0, s.key, s.value, s.writer));
                    lw.push(Event::go_block_recv(t + 18, s.wait));
                    lw.push(Event::proc_stop(t + 19));
                }
                if round == 9 {
                    continue; // left running: the encoder closes it
                }
                w.push(Event::go_end(t + 20));
                w.push(Event::proc_stop(t + 21));
                t += 7;
            }
            t += 30;
        }
        (w0, w1, lw)
    }

    #[test]
    fn a_well_formed_server_trace_needs_no_repair() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let (w0, w1, lw) = server(&s);
        let procs = [
            Proc {
                id: 0,
                events: &w0,
                lost: 0,
            },
            Proc {
                id: 1,
                events: &w1,
                lost: 0,
            },
            Proc {
                id: 2,
                events: &lw,
                lost: 0,
            },
        ];
        let existing = [Existing {
            g: 7,
            start: s.writer,
            status: Status::Waiting,
        }];
        let mut inp = input(&sym, &procs);
        inp.existing = &existing;
        inp.end_ts = 10_000;
        let out = encode(&inp).unwrap();
        let st = out.stats;
        assert_eq!(
            (st.dropped, st.inserted, st.inferred, st.declared),
            (0, 0, 0, 1)
        );
        assert_eq!(st.closed, 2);
        assert_eq!(st.recorded, (w0.len() + w1.len() + lw.len()) as u64);
        let tr = go::parse(&out.bytes).unwrap();
        assert_eq!(tr.freq, 1_000_000_000);
        assert_eq!(tr.count(ev::USER_TASK_CREATE), 20);
        assert_eq!(tr.count(ev::GO_SYSEXIT), 4);
        assert_eq!(tr.count(ev::GO_WAITING), 1);
        // Sequence numbers: a created goroutine starts with 1, then 2 after its unblock.
        let starts: Vec<u64> = tr
            .events
            .iter()
            .filter(|e| e.typ == ev::GO_START && e.g == 100)
            .map(|e| e.args[1])
            .collect();
        assert_eq!(starts, [1, 3]);
        // The writer, declared waiting (seq 2): unblock 2, start 3, exit 4, start 5, ...
        let writer: Vec<(u8, u64)> = tr
            .events
            .iter()
            .filter(|e| e.g == 7 || (e.typ == ev::GO_UNBLOCK && e.args[0] == 7))
            .filter(|e| matches!(e.typ, ev::GO_START | ev::GO_UNBLOCK | ev::GO_SYSEXIT))
            .map(|e| (e.typ, e.args[1]))
            .take(4)
            .collect();
        let want = [
            (ev::GO_UNBLOCK, 2),
            (ev::GO_START, 3),
            (ev::GO_SYSEXIT, 4),
            (ev::GO_START, 5),
        ];
        assert_eq!(writer, want);
        assert!(
            tr.events.windows(2).all(|w| w[0].ts < w[1].ts),
            "strictly ordered"
        );
        // Declarations, then Gomaxprocs, before anything else.
        let types: Vec<u8> = tr.events.iter().take(3).map(|e| e.typ).collect();
        assert_eq!(types, [ev::GO_CREATE, ev::GO_WAITING, ev::GOMAXPROCS]);
    }

    #[test]
    fn strings_and_stacks_are_written_and_logs_inline() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let (w0, w1, lw) = server(&s);
        let procs = [
            Proc {
                id: 0,
                events: &w0,
                lost: 0,
            },
            Proc {
                id: 1,
                events: &w1,
                lost: 0,
            },
            Proc {
                id: 2,
                events: &lw,
                lost: 0,
            },
        ];
        let out = encode(&input(&sym, &procs)).unwrap();
        let tr = go::parse(&out.bytes).unwrap();
        let log = tr.events.iter().find(|e| e.typ == ev::USER_LOG).unwrap();
        assert_eq!(log.text, "SIGHUP: reopen");
        assert_eq!(tr.strings[&log.args[1]], "signal");
        let create = tr
            .events
            .iter()
            .find(|e| e.typ == ev::GO_CREATE && e.args[0] == 100)
            .unwrap();
        let frame = tr.stacks[&create.args[1]][0];
        assert_eq!(
            (frame[0], tr.strings[&frame[1]].as_str()),
            (0x1000, "leftpad::conn::serve")
        );
        assert_eq!(tr.strings[&frame[2]], "src/conn.rs");
        // The writer was never declared: its first event (a wake-up) declared it waiting.
        assert_eq!(out.stats.inferred, 1);
    }

    #[test]
    fn a_trailer_reports_losses_and_drops() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let handler = frame(&mut sym, 0x2000, "leftpad::profile::trace::finish");
        // A GoEnd with nothing running is left out.
        let w0 = [
            Event::proc_start(10, 1),
            Event::go_end(11),
            Event::proc_stop(12),
        ];
        let procs = [Proc {
            id: 0,
            events: &w0,
            lost: 5,
        }];
        let notes = [Note {
            key: "trace",
            value: "window 1s",
        }];
        let mut inp = input(&sym, &procs);
        inp.trailer = Some(Trailer {
            start: handler,
            notes: &notes,
        });
        let _ = s;
        let out = encode(&inp).unwrap();
        assert_eq!((out.stats.dropped, out.stats.lost), (1, 5));
        let tr = go::parse(&out.bytes).unwrap();
        let logs: Vec<&str> = tr
            .events
            .iter()
            .filter(|e| e.typ == ev::USER_LOG)
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(logs.len(), 3);
        assert_eq!(logs[0], "window 1s");
        assert!(logs[1].contains("P0 lost 5 events"), "{logs:?}");
        assert!(logs[2].contains("1 recorded events left out"), "{logs:?}");
    }

    #[test]
    fn repairs_what_go_would_reject() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let w0 = [
            // Acts before any ProcStart: a ProcStart is inserted.
            Event::go_create(10, 5, s.conn, s.accept),
            Event::go_start(11, 5),
            // Starts another while 5 runs: 5 is descheduled first.
            Event::go_create(12, 6, StackId(9999), StackId::NONE),
            Event::go_start(13, 6),
            Event::region_start(14, 1, s.leftpad, s.route),
            Event::region_start(15, 2, s.leftpad, s.route),
            // Ends the outer region: the inner one is ended first.
            Event::region_end(16, 1, s.leftpad, s.route),
            // Matches nothing open... none is open, so it began before the trace: kept.
            Event::region_end(17, 3, s.leftpad, s.route),
            Event::task_create(18, 1, 0, s.leftpad, s.route),
            Event::task_create(19, 1, 0, s.leftpad, s.route), // twice: dropped
            // Stops the P with 6 running: 6 is descheduled first.
            Event::proc_stop(20),
            Event::proc_stop(21),             // not running: dropped
            Event::go_unblock(22, 5, s.wake), // 5 is runnable, not blocked: dropped
            Event::go_sysexit(23, 42),        // never seen: declared in a syscall
            Event::go_start(24, 42),
            Event::log(25, 0, s.key, s.value, StackId::NONE),
            Event::go_start(26, 5),        // 42 still running: descheduled
            Event::go_start(27, u64::MAX), // not a goroutine id: dropped
        ];
        let procs = [Proc {
            id: 3,
            events: &w0,
            lost: 0,
        }];
        let out = encode(&input(&sym, &procs)).unwrap();
        let st = out.stats;
        assert_eq!(st.dropped, 4, "{st:?}");
        // ProcStart twice, GoSched three times, one region end.
        assert_eq!(st.inserted, 6, "{st:?}");
        assert_eq!((st.inferred, st.closed), (1, 1));
        let tr = go::parse(&out.bytes).unwrap();
        assert_eq!(tr.count(ev::GO_IN_SYSCALL), 1);
        // Goroutine 6's unknown start stack fell back to a frame named "unknown".
        let create = tr
            .events
            .iter()
            .find(|e| e.typ == ev::GO_CREATE && e.args[0] == 6)
            .unwrap();
        assert_eq!(tr.strings[&tr.stacks[&create.args[1]][0][1]], "unknown");
    }

    #[test]
    fn logs_outside_a_goroutine_get_one_of_their_own() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let w0 = [
            Event::proc_start(10, 0),
            Event::log(11, 0, s.key, s.value, s.accept),
            Event::proc_stop(12),
            // On a stopped P: it is started and stopped around the log.
            Event::log(13, 0, s.key, s.value, StackId::NONE),
            Event::proc_start(14, 0),
            Event::proc_stop(15),
        ];
        let procs = [Proc {
            id: 0,
            events: &w0,
            lost: 0,
        }];
        let out = encode(&input(&sym, &procs)).unwrap();
        let st = out.stats;
        assert_eq!((st.hosted, st.dropped, st.inserted), (2, 0, 0), "{st:?}");
        let tr = go::parse(&out.bytes).unwrap();
        assert_eq!(tr.count(ev::USER_LOG), 2);
        assert_eq!(tr.count(ev::PROC_START), 3);
        let log = tr.events.iter().find(|e| e.typ == ev::USER_LOG).unwrap();
        assert!(log.g != 0 && log.stk == u64::from(s.accept.0));
    }

    #[test]
    fn timestamps_going_back_on_a_thread_are_raised() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let w0 = [
            Event::proc_start(100, 0),
            Event::go_create(90, 5, s.conn, s.accept),
            Event::go_start(80, 5),
            Event::go_block_net(120, s.read),
        ];
        let w1 = [
            Event::proc_start(95, 1),
            Event::go_unblock(130, 5, s.wake),
            Event::go_start(125, 5),
        ];
        let procs = [
            Proc {
                id: 0,
                events: &w0,
                lost: 0,
            },
            Proc {
                id: 1,
                events: &w1,
                lost: 0,
            },
        ];
        let out = encode(&input(&sym, &procs)).unwrap();
        assert_eq!(out.stats.dropped, 0);
        go::parse(&out.bytes).unwrap();
    }

    /// Any events at all, in any order, give a trace Go accepts.
    #[test]
    fn random_events_always_give_a_valid_trace() {
        let mut sym = Symbols::new();
        let s = stacks(&mut sym);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = std::collections::BTreeMap::new();
        let mut totals = (0, 0, 0);
        for case in 0..300 {
            let procs_events: Vec<Vec<Event>> = (0..1 + rng.below(4))
                .map(|_| {
                    let n = 1 + rng.below(120) as usize;
                    chaos(&mut rng, &s, n)
                })
                .collect();
            let procs: Vec<Proc<'_>> = procs_events
                .iter()
                .enumerate()
                .map(|(i, evs)| Proc {
                    id: i as u32 * 2,
                    events: evs,
                    lost: rng.below(2),
                })
                .collect();
            let existing = [
                Existing {
                    g: 1,
                    start: s.conn,
                    status: Status::Waiting,
                },
                Existing {
                    g: 2,
                    start: StackId(777),
                    status: Status::InSyscall,
                },
                Existing {
                    g: 3,
                    start: s.conn,
                    status: Status::Runnable,
                },
                Existing {
                    g: 3,
                    start: s.conn,
                    status: Status::Runnable,
                },
            ];
            let notes = [Note {
                key: "k",
                value: "v",
            }];
            let mut inp = input(&sym, &procs);
            inp.existing = &existing[..rng.below(5) as usize];
            inp.start_ts = rng.below(2_000);
            inp.end_ts = rng.below(4_000);
            if rng.below(2) == 0 {
                inp.trailer = Some(Trailer {
                    start: s.conn,
                    notes: &notes,
                });
            }
            let out = encode(&inp).unwrap();
            let tr = go::parse(&out.bytes).unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert!(
                tr.events.windows(2).all(|w| w[0].ts < w[1].ts),
                "case {case}"
            );
            assert_eq!(out.stats.written as usize, tr.events.len(), "case {case}");
            for typ in [
                ev::GO_START,
                ev::GO_UNBLOCK,
                ev::GO_SYSEXIT,
                ev::USER_REGION,
                ev::GO_END,
            ] {
                *seen.entry(typ).or_insert(0) += tr.count(typ);
            }
            totals.0 += out.stats.recorded;
            totals.1 += out.stats.dropped;
            totals.2 += out.stats.inserted;
        }
        // The random events reach every kind of transition, not just drops.
        assert!(seen.values().all(|&n| n > 100), "{totals:?} {seen:?}");
        assert!(totals.1 < totals.0 && totals.2 > 0, "{totals:?}");
    }

    /// Events of random kinds on a few goroutines, with ids and stacks sometimes invalid.
    fn chaos(rng: &mut Rng, s: &Stacks, n: usize) -> Vec<Event> {
        let mut t = rng.below(1_000);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            t = (t + rng.below(50)).saturating_sub(rng.below(8));
            let g = 1 + rng.below(12);
            let task = rng.below(6);
            let stack = [s.read, s.wake, StackId::NONE, StackId(4242)][rng.below(4) as usize];
            let e = match rng.below(20) {
                0 => Event::proc_start(t, rng.below(4)),
                1 => Event::proc_stop(t),
                2 => Event::go_create(t, g + rng.below(3) * 12, s.conn, stack),
                3 | 4 => Event::go_start(t, g),
                5 => Event::go_end(t),
                6 => Event::go_stop(t, stack),
                7 => Event::go_sched(t, stack),
                8 => Event::go_block(t, stack),
                9 => Event::go_block_net(t, stack),
                10 => Event::go_block_recv(t, stack),
                11 => Event::go_sleep(t, stack),
                12 | 13 => Event::go_unblock(t, g, stack),
                14 => Event::go_syscall(t, stack),
                15 => Event::go_sysblock(t),
                16 => Event::go_sysexit(t, g),
                17 => Event::task_create(t, task, 0, s.leftpad, stack),
                18 => match rng.below(3) {
                    0 => Event::region_start(t, task, s.leftpad, stack),
                    1 => Event::region_end(t, task, s.leftpad, stack),
                    _ => Event::task_end(t, task, stack),
                },
                _ => Event::log(t, task, s.key, StrId(999), stack),
            };
            out.push(e);
        }
        out
    }
}
