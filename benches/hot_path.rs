//! Hot-path benchmarks: time per operation (criterion) and, like Go's `-benchmem`,
//! allocations and bytes allocated per operation (a counting allocator around mimalloc).
//!
//! `cargo bench` prints criterion's report for each benchmark, then a summary table:
//!
//! ```text
//! benchmark                      ns/op   allocs/op   B/op
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use leftpad::app::handler::{App, Handled, Route};
use leftpad::app::{pad, query};
use leftpad::http::conn::Conn;
use leftpad::http::json;
use leftpad::http::request::{self, Limits};
use leftpad::http::response::{Connection, Response, JSON};
use leftpad::http::Status;
use leftpad::shell::config::DEFAULT_LOG_BUFFER;
use leftpad::telemetry::accesslog::line::write_line;
use leftpad::telemetry::accesslog::{Line, LineTime, Target, Writer};
use leftpad::telemetry::counters::WorkerCounters;
use leftpad::telemetry::recorder::{PacketSender, Recorder};
use leftpad::telemetry::statsd::{Batcher, Settings};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to mimalloc; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Rows of the closing table: (name, ns/op, allocs/op, bytes/op).
static TABLE: Mutex<Vec<(String, f64, f64, f64)>> = Mutex::new(Vec::new());

/// Benchmarks `op` with criterion, then counts its allocations over many calls (after the
/// same warm-up) and its mean time, for the summary table.
fn bench(c: &mut Criterion, name: &str, mut op: impl FnMut()) {
    c.bench_function(name, |b| b.iter(&mut op));
    const CALLS: u64 = 10_000;
    let (allocs, bytes) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    for _ in 0..CALLS {
        op();
    }
    let elapsed = start.elapsed();
    let per_op = |total: u64| total as f64 / CALLS as f64;
    TABLE.lock().unwrap().push((
        name.to_owned(),
        elapsed.as_nanos() as f64 / CALLS as f64,
        per_op(ALLOCS.load(Ordering::Relaxed) - allocs),
        per_op(BYTES.load(Ordering::Relaxed) - bytes),
    ));
}

const LIMITS: Limits = Limits {
    max_head_size: 8192,
    max_headers: 100,
    max_body_size: 1 << 20,
};
const DATE: &[u8; 29] = b"Tue, 24 Nov 2026 12:00:00 GMT";
/// The request wrk sends. Benchmarks read it from [`request_buffer`], not from here.
const REQUEST: &[u8] =
    b"GET /v1/leftpad/?str=test&len=50&chr=* HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
    User-Agent: wrk\r\nAccept: */*\r\n\r\n";

/// `REQUEST` at the start of a heap buffer, as the server has a request at the start of
/// a connection's read buffer. Read from the binary's data instead, it sat at whatever
/// alignment the linker gave it, and the standard library's UTF-8 check of the target
/// (in httparse) took 68 or 177 instructions depending on it: a change anywhere in the
/// binary moved `request/whole` by 109 instructions.
fn request_buffer() -> Vec<u8> {
    REQUEST.to_vec()
}

fn pure_functions(c: &mut Criterion) {
    let request = request_buffer();
    let mut out = String::new();
    for len in [10, 50] {
        bench(c, &format!("leftpad/{len}"), || {
            out.clear();
            pad::leftpad_into(&mut out, black_box("test"), black_box(len), '*');
        });
    }

    bench(c, "http/head", || {
        black_box(matches!(
            request::parse(black_box(&request), &LIMITS),
            request::Parsed::Complete { .. }
        ));
    });
    // httparse alone, as `request::parse` calls it: the floor under `http/head`.
    bench(c, "http/httparse", || {
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        let mut req = httparse::Request::new(&mut []);
        black_box(
            req.parse_with_uninit_headers(black_box(&request), &mut headers)
                .is_ok(),
        );
    });
    let mut out = Vec::with_capacity(4096);
    bench(c, "http/response", || {
        out.clear();
        let mut response = Response::new(&mut out, DATE, false, Connection::Default);
        response.send(Status::OK, JSON, b"", 4, |body| {
            body.extend_from_slice(b"{}\n\n")
        });
        black_box(&out);
    });

    let mut scratch = query::Scratch::default();
    bench(c, "query/article", || {
        black_box(query::parse(black_box("str=test&len=50&chr=*"), 1024, &mut scratch).is_ok());
    });
    bench(c, "query/escaped", || {
        let q = black_box("str=hello+w%C3%B6rld%21&len=50&chr=%E2%98%83&x=1");
        black_box(query::parse(q, 1024, &mut scratch).is_ok());
    });

    let mut buf = Vec::with_capacity(256);
    bench(c, "json/escape_mixed", || {
        buf.clear();
        json::write_escaped(
            &mut buf,
            black_box("say \"<hi>\" & wave\n\tthen\u{2028}smile é"),
        );
    });

    let settings = Settings {
        addr: "127.0.0.1:8125".parse().unwrap(),
        prefix: "leftpad".into(),
        sample_rate: 1.0,
        max_packet: 1432,
        aggregate: true,
    };
    let mut batcher = Batcher::new(&settings, 1);
    let handled = Handled {
        route: Route::Leftpad,
        str_chars: Some(4),
    };
    bench(c, "statsd/request_lines", || {
        batcher.record(
            black_box(Status::OK),
            black_box(handled),
            12,
            &mut |packet| !black_box(packet).is_empty(),
        );
    });

    let mut time = LineTime::default();
    let mut log = Vec::with_capacity(64 * 1024);
    bench(c, "accesslog/line", || {
        if log.len() > 60_000 {
            log.clear();
        }
        let line = Line {
            target: b"/v1/leftpad/?str=test&len=50&chr=*",
            peer: b"127.0.0.1:54321",
            user_agent: b"Mozilla/5.0 (X11; Linux x86_64)",
            status: 200,
            micros: 3,
        };
        write_line(&mut log, &mut time, black_box(1_795_961_531_123), &line);
    });
}

/// A worker's recorder with the access log (to a real writer thread writing to
/// /dev/null, in batches of the server's default `--log-buffer`) and StatsD (sampled at
/// 0.5, aggregated, datagrams dropped) each on or off; the writer is returned so that it
/// lives as long as the recorder.
fn recorder(log: bool, statsd: bool) -> (Recorder, Option<Writer>) {
    let (log, writer) = log
        .then(|| {
            let target = Target::File("/dev/null".into());
            let file = target.open().unwrap();
            let counters = WorkerCounters::leak();
            let warned = Arc::new(AtomicBool::new(false));
            let threshold = DEFAULT_LOG_BUFFER as usize;
            Writer::start(target, file, threshold, None, counters, warned).unwrap()
        })
        .unzip();
    let settings = Settings {
        addr: "127.0.0.1:8125".parse().unwrap(),
        prefix: "leftpad".into(),
        sample_rate: 0.5,
        max_packet: 1432,
        aggregate: true,
    };
    let statsd = statsd.then(|| {
        let dropped: PacketSender = Box::new(|packet| !black_box(packet).is_empty());
        (Batcher::new(&settings, 1), dropped)
    });
    (Recorder::new(log, statsd, WorkerCounters::leak()), writer)
}

/// The whole request path as a worker runs it, minus socket I/O and clock reads: request
/// bytes in; response bytes, an access-log line (shipped in batches to a real writer
/// thread writing to /dev/null) and StatsD lines (sampled at 0.5 and batched into
/// datagrams that are then dropped) out. Datagram sends and the two clock reads per
/// read are in the load-test figures instead. The `request/stages/*` variants turn the
/// log and StatsD off and on, so the differences split a request's user-space time
/// between the core (parse, handler, response, counters), the log line and StatsD.
fn whole_request(c: &mut Criterion) {
    let request = request_buffer();
    let pipelined = REQUEST.repeat(16);
    let variants = [
        ("request/whole", "request/pipelined_16", true, true),
        (
            "request/stages/core",
            "request/stages/core_pipelined_16",
            false,
            false,
        ),
        (
            "request/stages/log",
            "request/stages/log_pipelined_16",
            true,
            false,
        ),
        (
            "request/stages/statsd",
            "request/stages/statsd_pipelined_16",
            false,
            true,
        ),
    ];
    for (one, sixteen, log, statsd) in variants {
        let (mut recorder, _writer) = recorder(log, statsd);
        // Read after the recorder anchored its wall clock, as the server's reads follow
        // the tick's anchor (one taken before would take `Instant`'s backward path).
        let now = Instant::now();
        let mut app = App::new(1024);
        let mut conn = Conn::new();
        let mut out = Vec::with_capacity(64 * 1024);
        let mut run = |input: &[u8]| {
            out.clear();
            let records = &mut recorder.records;
            let progress = conn.process(input, &mut out, records, &mut app, &LIMITS, DATE);
            black_box(progress);
            recorder.record_batch(input, b"127.0.0.1:54321", Duration::from_micros(3), now);
        };
        bench(c, one, || run(black_box(&request)));
        bench(c, sixteen, || run(black_box(&pipelined)));
    }
}

fn print_table(_: &mut Criterion) {
    let table = TABLE.lock().unwrap();
    println!(
        "\n{:<36}{:>12}{:>12}{:>10}",
        "benchmark", "ns/op", "allocs/op", "B/op"
    );
    for (name, ns, allocs, bytes) in table.iter() {
        println!("{name:<36}{ns:>12.1}{allocs:>12.2}{bytes:>10.1}");
    }
    println!("(ns/op here is a plain mean over 10,000 calls; criterion's estimate is above)");
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = pure_functions, whole_request, print_table
}
criterion_main!(benches);
