//! Go 1.19's reading of the recorded events, replayed: the merge of the Ps on their
//! clock, each goroutine's and P's state machine, the repairs, the closing of what still
//! runs, and the trailer.

use super::*;

/// The events Go will read, in global order: the recorded ones through Go's state
/// machine, then the closing of what still runs, then the trailer.
pub(super) fn replay(
    input: &Input<'_>,
    items: &[Item],
    tables: &mut Symbols,
) -> (Vec<Wire>, Stats) {
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

pub(super) fn validate(input: &Input<'_>) -> Result<(), Error> {
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

pub(super) fn gomaxprocs(input: &Input<'_>) -> u64 {
    let needed = input
        .procs
        .iter()
        .map(|p| u64::from(p.id) + 1)
        .max()
        .unwrap_or(1);
    input.gomaxprocs.max(needed)
}

/// The encoder's own end-of-trace notes.
pub(super) fn own_notes(procs: &[Proc<'_>], stats: &Stats) -> Vec<(String, String)> {
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
pub(super) fn max_goroutine(existing: &[Existing], items: &[Item]) -> u64 {
    let named = items.iter().filter_map(|i| match i.event.kind {
        Kind::GoCreate | Kind::GoStart | Kind::GoUnblock | Kind::GoSysExit => Some(i.event.args[0]),
        _ => None,
    });
    let all = existing.iter().map(|e| e.g).chain(named);
    all.filter(|&g| valid_g(g)).max().unwrap_or(0)
}

pub(super) fn valid_g(g: u64) -> bool {
    g != 0 && g <= MAX_GOROUTINE
}

/// An event with its P (index into the input) and its timestamp as merged.
pub(super) struct Item {
    pub(super) ts: u64,
    pub(super) pi: usize,
    pub(super) event: Event,
}

/// All Ps' events in one order: by time, a P's own events in the order recorded. A
/// timestamp below its predecessor's on the same thread is raised to it, because the order
/// a thread recorded in is the order things happened (a `GoStart` before its `GoBlock`).
pub(super) fn merge(procs: &[Proc<'_>]) -> Vec<Item> {
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
pub(super) fn order_timestamps(wires: &mut [Wire]) {
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
pub(super) struct Wire {
    pub(super) ts: u64,
    pub(super) p: u32,
    pub(super) typ: u8,
    pub(super) n: u8,
    pub(super) args: [u64; 4],
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
pub(super) enum GState {
    Runnable,
    Running,
    /// Blocked on anything but a system call: `GoUnblock` wakes it.
    Waiting,
    /// In a blocking system call: only `GoSysExit` ends it (the viewer counts threads in
    /// syscalls and rejects an exit it did not see enter).
    Syscall,
    Dead,
}

pub(super) struct G {
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

pub(super) struct PState {
    id: u32,
    running: bool,
    /// The goroutine it runs, 0 for none: implied by Go for goroutine events.
    g: u64,
    thread: u64,
}

/// Replays the events through the state machine of Go's parser, writing the events that
/// fit and the repairs that make the rest fit.
pub(super) struct Sim<'t> {
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
