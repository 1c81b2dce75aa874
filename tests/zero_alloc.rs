//! The steady-state request path allocates nothing (ARCHITECTURE.md, "Invariants"): request bytes in, through
//! parsing, routing and the handler, to response bytes out, an access-log line (shipped
//! to a real writer thread and file) and StatsD lines (sent over a real UDP socket).
//!
//! A counting global allocator counts this thread's allocations while the path runs; the
//! path is warmed up first so reusable buffers have reached their working size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leftpad::app::handler::App;
use leftpad::http::conn::{Conn, Waiting};
use leftpad::http::request::Limits;
use leftpad::telemetry::accesslog::{Target, Writer};
use leftpad::telemetry::counters::WorkerCounters;
use leftpad::telemetry::recorder::Recorder;
use leftpad::telemetry::statsd::{Batcher, Client, Settings};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts the allocations `f` makes on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

const LIMITS: Limits = Limits {
    max_head_size: 8192,
    max_headers: 100,
    max_body_size: 1 << 20,
};
const DATE: &[u8; 29] = b"Tue, 24 Nov 2026 12:00:00 GMT";

/// A pipelined batch covering every kind of answer that keeps the connection open.
fn keep_alive_batch() -> Vec<u8> {
    let requests = [
        "GET /v1/leftpad/?str=test&len=50&chr=* HTTP/1.1\r\nHost: a\r\nUser-Agent: wrk\r\n\r\n",
        "GET /v1/leftpad?str=%C3%A9t%C3%A9&len=10&chr=%E2%98%83 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v1/leftpad/?str=%3Cb%3E+%22q%22&len=1024&chr=%26 HTTP/1.1\r\nHost: a\r\n\r\n",
        "HEAD /v1/leftpad/?str=x&len=5 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v1/leftpad/?str=x&len=abc HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v1/leftpad/?str=x&len=5000 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v1/leftpad/?str=%zz&len=5 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /v1/leftpad/?str=x HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /missing HTTP/1.1\r\nHost: a\r\n\r\n",
        "DELETE /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
        "GET /v1/leftpad/?str=test&len=10&chr=* HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ];
    requests.concat().into_bytes()
}

/// Requests that are answered and then close the connection.
const CLOSING: [&str; 5] = [
    "GET /v1/leftpad/?len=3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "GARBAGE\0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
];

/// One worker's request path, as the worker runs it, minus the socket I/O.
struct RequestPath {
    app: App,
    out: Vec<u8>,
    recorder: Recorder,
}

impl RequestPath {
    /// Answers `input` on `conn`, then logs and counts the answers; returns how many.
    fn answer(&mut self, conn: &mut Conn, input: &[u8]) -> u32 {
        self.out.clear();
        let start = Instant::now();
        let records = &mut self.recorder.records;
        let progress = conn.process(input, &mut self.out, records, &mut self.app, &LIMITS, DATE);
        assert_eq!(progress.consumed, input.len());
        self.recorder
            .record_batch(input, b"127.0.0.1:40000", start.elapsed(), Instant::now());
        progress.answered
    }
}

#[test]
fn steady_state_request_path_does_not_allocate_with_statsd_aggregation() {
    request_path_does_not_allocate(true);
}

#[test]
fn steady_state_request_path_does_not_allocate_with_per_event_statsd() {
    request_path_does_not_allocate(false);
}

fn request_path_does_not_allocate(aggregate: bool) {
    let log_path = std::env::temp_dir().join(format!(
        "leftpad-zero-alloc-{}-{aggregate}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log_path);
    let target = Target::File(log_path.clone());
    // A 16 KiB threshold: each counted chunk below (10 rounds, ~20 KB of lines) ships a
    // buffer, yet fits one buffer's 64 KiB capacity even if the writer thread gets no
    // CPU during the chunk and still holds every other buffer (as on a loaded machine:
    // 25-round chunks allocated once in a while with another process hogging a core).
    let (log, writer) = Writer::start(
        target.clone(),
        target.open().unwrap(),
        16 * 1024,
        None,
        WorkerCounters::leak(),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();

    let statsd = UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let settings = Settings {
        addr: statsd.local_addr().unwrap(),
        prefix: "leftpad".into(),
        sample_rate: 0.5,
        max_packet: 1432,
        aggregate,
    };
    let batcher = Batcher::new(&settings, 42);
    let client = Client::connect(settings.addr).unwrap();
    let received = std::thread::spawn(move || {
        let (mut packets, mut buf) = (0u64, [0u8; 2048]);
        while statsd.recv(&mut buf).is_ok() {
            packets += 1;
        }
        packets
    });

    let mut path = RequestPath {
        app: App::new(1024),
        out: Vec::new(),
        recorder: Recorder::new(
            Some(log),
            Some((batcher, Box::new(move |p: &[u8]| client.send(p)))),
            WorkerCounters::leak(),
        ),
    };
    let batch = keep_alive_batch();
    let per_batch = 13;
    let mut conn = Conn::new();
    let round = |path: &mut RequestPath, conn: &mut Conn| {
        assert_eq!(path.answer(conn, &batch), per_batch);
        assert_eq!(conn.waiting(0), Waiting::Idle);
        for raw in CLOSING {
            let mut closing = Conn::new();
            assert_eq!(path.answer(&mut closing, raw.as_bytes()), 1);
            assert_eq!(closing.waiting(0), Waiting::Done);
        }
    };

    // Warm-up: buffers grow to their working size, log buffers start circulating.
    for _ in 0..50 {
        round(&mut path, &mut conn);
    }

    // Steady state means the log writer keeps up, as a pinned writer does in the server.
    // Here it is an unpinned thread among parallel tests, so the rounds run in chunks and
    // the writer may catch up between them, outside the counted region.
    const ROUNDS: u64 = 1000;
    const CHUNK: u64 = 10;
    let mut allocations = 0;
    for _ in 0..ROUNDS / CHUNK {
        allocations += allocations_in(|| {
            for _ in 0..CHUNK {
                round(&mut path, &mut conn);
            }
            // A StatsD flush interval ends: aggregated counters and lines go out too.
            path.recorder.tick(Instant::now(), false, true);
        });
        let log = path.recorder.log.as_mut().unwrap();
        log.ship_all();
        std::thread::sleep(Duration::from_millis(2));
    }
    let requests = (ROUNDS + 50) * (u64::from(per_batch) + CLOSING.len() as u64);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations over {ROUNDS} rounds"
    );

    // The path really logged and counted: every line reaches the file, packets the socket.
    let (batcher, _) = path.recorder.statsd.take().unwrap();
    assert!(batcher.tally().packets > 100, "{:?}", batcher.tally());
    drop(path.recorder.finish());
    writer.join();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(logged.lines().count() as u64, requests);
    assert!(received.join().unwrap() > 100);

    // The counter does count: a fresh App allocates as it warms up.
    let cold = allocations_in(|| {
        let (mut cold_app, mut cold_out, mut records) = (App::new(1024), Vec::new(), Vec::new());
        Conn::new().process(
            &batch,
            &mut cold_out,
            &mut records,
            &mut cold_app,
            &LIMITS,
            DATE,
        );
    });
    assert!(cold > 0, "the counting allocator saw nothing");
}
