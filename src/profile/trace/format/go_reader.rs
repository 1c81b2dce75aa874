//! Go 1.19's reading of a trace, redone for the tests: the wire format
//! (`readTrace`, `parseEvents`), the merge of the batches (`order1007`), the state
//! checks (`postProcessTrace`), and the few things `cmd/trace` needs on top.

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
                    t if stops_the_running_goroutine(t) => last_g = 0,
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
        ev::GO_BLOCK | ev::GO_BLOCK_RECV | ev::GO_BLOCK_NET | ev::GO_SLEEP | ev::GO_SYSBLOCK => {
            (e.g, (NOSEQ, RUNNING), (NOSEQ, WAITING))
        }
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
                    return Err("annotations: create in a task's region without stack".into());
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
            t if stops_the_running_goroutine(t) => {
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

/// The events after which the goroutine that ran on the P runs no more, as Go's reader
/// counts them (in `parseEvents`' goroutine tracking and `postProcessTrace`'s checks).
fn stops_the_running_goroutine(typ: u8) -> bool {
    matches!(
        typ,
        ev::GO_END
            | ev::GO_STOP
            | ev::GO_SCHED
            | ev::GO_SLEEP
            | ev::GO_BLOCK
            | ev::GO_BLOCK_RECV
            | ev::GO_BLOCK_NET
            | ev::GO_SYSBLOCK
    )
}
