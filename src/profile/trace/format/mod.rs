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

mod replay;
mod wire;

#[cfg(test)]
mod go_reader;
#[cfg(test)]
mod tests;

use replay::{merge, order_timestamps, replay, validate};
use wire::{truncate, uvarint_len, write};
