//! The steady-state request path allocates nothing (SPEC §1): request bytes in, through
//! parsing, routing and the handler, to response bytes out.
//!
//! A counting global allocator counts this thread's allocations while the path runs; the
//! path is warmed up first so reusable buffers have reached their working size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use leftpad::handler::App;
use leftpad::http::conn::{Conn, Waiting};
use leftpad::http::request::Limits;

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

#[test]
fn steady_state_request_path_does_not_allocate() {
    let batch = keep_alive_batch();
    let per_batch = 13;
    let mut app = App::new(1024);
    let mut conn = Conn::new();
    let mut out = Vec::new();

    let run_batch = |app: &mut App, conn: &mut Conn, out: &mut Vec<u8>| {
        out.clear();
        let progress = conn.process(&batch, out, app, &LIMITS, DATE);
        assert_eq!(progress.consumed, batch.len());
        assert_eq!(progress.answered, per_batch);
        assert_eq!(conn.waiting(0), Waiting::Idle);
    };
    let run_closing = |app: &mut App, out: &mut Vec<u8>| {
        for raw in CLOSING {
            out.clear();
            let mut conn = Conn::new();
            let progress = conn.process(raw.as_bytes(), out, app, &LIMITS, DATE);
            assert_eq!(progress.answered, 1);
            assert_eq!(conn.waiting(0), Waiting::Done);
        }
    };

    // Warm-up: buffers grow to their working size.
    for _ in 0..3 {
        run_batch(&mut app, &mut conn, &mut out);
        run_closing(&mut app, &mut out);
    }

    const ROUNDS: u64 = 1000;
    let allocations = allocations_in(|| {
        for _ in 0..ROUNDS {
            run_batch(&mut app, &mut conn, &mut out);
            run_closing(&mut app, &mut out);
        }
    });
    let requests = ROUNDS * (u64::from(per_batch) + CLOSING.len() as u64);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations over {requests} requests"
    );

    // The counter does count: a fresh App allocates as it warms up.
    let cold = allocations_in(|| {
        let mut cold_app = App::new(1024);
        let mut cold_out = Vec::new();
        Conn::new().process(&batch, &mut cold_out, &mut cold_app, &LIMITS, DATE);
    });
    assert!(cold > 0, "the counting allocator saw nothing");
}
