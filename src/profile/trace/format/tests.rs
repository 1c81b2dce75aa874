use super::go_reader as go;
use super::wire::{put_record, put_tables, put_uvarint};
use super::*;

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

/// A P with `events` and nothing lost.
fn proc(id: u32, events: &[Event]) -> Proc<'_> {
    Proc {
        id,
        events,
        lost: 0,
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
    let procs = [proc(0, &[])];
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
    let procs = [proc(0, &w0)];
    let out = encode(&input(&sym, &procs)).unwrap();
    go::parse(&out.bytes).unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let sym = Symbols::new();
    let procs = [proc(1, &[]), proc(1, &[])];
    assert_eq!(
        encode(&input(&sym, &procs)).unwrap_err(),
        Error::DuplicateProc(1)
    );
    let procs = [proc(1_000_000, &[])];
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
    let procs = [proc(0, &w0), proc(1, &w1), proc(2, &lw)];
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
    let procs = [proc(0, &w0), proc(1, &w1), proc(2, &lw)];
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
    let procs = [proc(3, &w0)];
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
    let procs = [proc(0, &w0)];
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
    let procs = [proc(0, &w0), proc(1, &w1)];
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
