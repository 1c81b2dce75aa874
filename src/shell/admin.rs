//! The admin listener: pprof-compatible CPU profiles, flame graphs and live counters, on
//! a port of its own (loopback by default), served by a plain blocking thread so it
//! never takes a worker's time. Go registers `net/http/pprof` on the public mux; here the
//! public port does not know `/debug/` at all.
//!
//! - `GET /debug/pprof/profile?seconds=N&kernel=auto|on|off`: a CPU profile of the whole
//!   process (every thread, user and kernel time) in pprof's protobuf format,
//!   gzip-compressed as Go serves it, so
//!   `go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=5` works.
//! - `GET /debug/pprof/flamegraph?seconds=N&kernel=...`: the same profile as an SVG.
//! - `GET /debug/pprof/trace?seconds=N`: an execution trace that `go tool trace` reads.
//! - `GET /debug/pprof/heap`, `/allocs`, `/goroutine`, `/block`, `/mutex`, `/cmdline`,
//!   `/symbol`: the rest of Go's `net/http/pprof`.
//! - `GET /debug/pprof/`: an index. `GET /debug/vars`: JSON counters, like Go's expvar.
//!
//! The profiles themselves live in [`crate::profile`]; this module parses requests,
//! routes them and writes the answers.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::http::date::HttpDate;
use crate::http::request::{self, Limits, Method, Parsed, Request};
use crate::http::response::{Connection, Response};
use crate::http::Status;
use crate::profile::goroutine::{self, Mailbox};
use crate::profile::{block, cpu, heap, stacks, symbols, trace};
use crate::telemetry::allocator::OTHER_THREADS;
use crate::telemetry::counters::WorkerCounters;
use crate::telemetry::{prometheus, vars};

const MAX_SECONDS: u64 = 300;
/// Admin connections served at once; more get a 503.
const MAX_CLIENTS: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (a symbol look-up's list of addresses).
const MAX_BODY: u64 = 1 << 20;

/// What the admin pages read: the workers' counters and how the process started.
pub struct AdminState {
    workers: Vec<&'static WorkerCounters>,
    drivers: Vec<String>,
    /// Per worker, where to ask for its connection table.
    connections: Vec<Arc<Mailbox>>,
    started: Instant,
    profiling: AtomicBool,
    clients: AtomicUsize,
}

impl AdminState {
    pub fn new(
        workers: Vec<&'static WorkerCounters>,
        drivers: Vec<String>,
        connections: Vec<Arc<Mailbox>>,
    ) -> AdminState {
        AdminState {
            workers,
            drivers,
            connections,
            started: Instant::now(),
            profiling: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
        }
    }
}

/// Which pages a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// The admin listener: profiles, `/debug/vars`, `/metrics`.
    All,
    /// `--metrics ADDR`: `/metrics` alone, for a scraper on another host.
    MetricsOnly,
}

/// Serves `listener` on a thread of its own, one short-lived thread per client.
pub fn start(listener: TcpListener, state: Arc<AdminState>, pages: Pages) -> io::Result<()> {
    trace::register_site(trace::Site::Trace, trace_page as *const () as usize);
    std::thread::Builder::new()
        .name("leftpad-admin".into())
        .spawn(move || {
            let mut warned = false;
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Out of fds (or memory) with a client waiting: the next accept
                        // fails at once, so back off instead of spinning on the error.
                        if !std::mem::replace(&mut warned, true) {
                            eprintln!("leftpad: admin: accept failed: {e} (retrying; further failures are not reported)");
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if state.clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
                    state.clients.fetch_sub(1, Ordering::Relaxed);
                    let _ = answer(
                        stream,
                        Status::SERVICE_UNAVAILABLE,
                        "too many admin clients",
                    );
                    continue;
                }
                let state = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("leftpad-admin-client".into())
                    .spawn(move || {
                        answer_client(stream, &state, pages);
                        state.clients.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    eprintln!("leftpad: admin: cannot start a client thread");
                }
            }
        })?;
    Ok(())
}

/// A finished answer: status, content type, extra header lines, body.
struct Page {
    status: Status,
    content_type: &'static str,
    extra_headers: &'static [u8],
    body: Vec<u8>,
}

impl Page {
    fn error(status: Status, message: &str) -> Page {
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"error\":\"");
        crate::http::json::write_escaped(&mut body, message);
        body.extend_from_slice(b"\"}\n");
        Page {
            status,
            content_type: crate::http::response::JSON,
            extra_headers: b"",
            body,
        }
    }
}

fn answer(mut stream: TcpStream, status: Status, message: &str) -> io::Result<()> {
    write_page(&mut stream, false, Page::error(status, message))
}

fn write_page(stream: &mut TcpStream, head_only: bool, page: Page) -> io::Result<()> {
    let mut out = Vec::with_capacity(page.body.len() + 256);
    let date = HttpDate::new(SystemTime::now());
    Response::new(&mut out, date.as_bytes(), head_only, Connection::Close).send(
        page.status,
        page.content_type,
        page.extra_headers,
        page.body.len(),
        |out| out.extend_from_slice(&page.body),
    );
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(&out)
}

fn answer_client(mut stream: TcpStream, state: &AdminState, pages: Pages) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let limits = Limits {
        max_head_size: 8192,
        max_headers: 64,
        max_body_size: MAX_BODY,
    };
    let mut buf = vec![0u8; limits.max_head_size];
    let mut len = 0;
    let page = loop {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        match request::parse(&buf[..len], &limits) {
            Parsed::Partial => continue,
            Parsed::Rejected(reject) => {
                break (false, Page::error(reject.status(), reject.message()))
            }
            // Go's symbol look-up posts its addresses: the one request with a body.
            Parsed::Complete { request, head_len }
                if pages == Pages::All
                    && request.path == b"/debug/pprof/symbol"
                    && buf.starts_with(b"POST ") =>
            {
                let Some(body) = read_body(&mut stream, &buf[head_len..len], request.body_len)
                else {
                    return;
                };
                break (false, symbol_page(&String::from_utf8_lossy(&body)));
            }
            Parsed::Complete { request, .. } => {
                let page = match (pages, request.path) {
                    (Pages::MetricsOnly, b"/metrics") | (Pages::All, _) => route(&request, state),
                    (Pages::MetricsOnly, _) => Page::error(
                        Status::NOT_FOUND,
                        "not found: this listener serves /metrics",
                    ),
                };
                break (request.method == Method::Head, page);
            }
        }
    };
    let (head_only, page) = page;
    let _ = write_page(&mut stream, head_only, page);
}

/// The body of a request: what came with the head, then the rest, up to `len` bytes.
fn read_body(stream: &mut TcpStream, received: &[u8], len: u64) -> Option<Vec<u8>> {
    let len = usize::try_from(len).ok()?;
    let mut body = received[..received.len().min(len)].to_vec();
    let start = body.len();
    body.resize(len, 0);
    stream.read_exact(&mut body[start..]).ok()?;
    Some(body)
}

fn route(request: &Request<'_>, state: &AdminState) -> Page {
    if request.method == Method::Other {
        return Page {
            extra_headers: b"Allow: GET, HEAD\r\n",
            ..Page::error(Status::METHOD_NOT_ALLOWED, "method not allowed: use GET")
        };
    }
    match request.path {
        b"/debug/pprof/" | b"/debug/pprof" => Page {
            status: Status::OK,
            content_type: "text/html; charset=utf-8",
            extra_headers: b"",
            body: INDEX.as_bytes().to_vec(),
        },
        b"/debug/pprof/heap" => heap_page(request.query, heap::Kind::Heap),
        b"/debug/pprof/allocs" => heap_page(request.query, heap::Kind::Allocs),
        b"/debug/pprof/goroutine" => goroutine_page(request.query, state),
        b"/debug/pprof/block" => block_page(request.query, block::Kind::Block),
        b"/debug/pprof/mutex" => block_page(request.query, block::Kind::Mutex),
        b"/debug/pprof/cmdline" => text_page(cmdline()),
        b"/debug/pprof/symbol" => symbol_page(request.query),
        b"/debug/pprof/profile" => cpu_page(request.query, state, cpu::Format::Pprof),
        b"/debug/pprof/flamegraph" => cpu_page(request.query, state, cpu::Format::Flamegraph),
        b"/debug/pprof/trace" => trace_page(request.query),
        b"/metrics" => Page {
            status: Status::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            extra_headers: b"",
            body: prometheus::render(&prometheus::Scrape {
                workers: &state.workers,
                other_threads: &OTHER_THREADS,
                drivers: &state.drivers,
                process: prometheus::Process::read(),
            })
            .into_bytes(),
        },
        b"/debug/vars" => Page {
            status: Status::OK,
            content_type: crate::http::response::JSON,
            extra_headers: b"",
            body: vars::render(&vars::Page {
                workers: &state.workers,
                drivers: &state.drivers,
                other_threads: &OTHER_THREADS,
                uptime_seconds: state.started.elapsed().as_secs_f64(),
                profiling: state.profiling.load(Ordering::Relaxed),
            })
            .into_bytes(),
        },
        _ => Page::error(
            Status::NOT_FOUND,
            "not found: see /debug/pprof/ and /debug/vars",
        ),
    }
}

const INDEX: &str = "<!DOCTYPE html>
<html><head><title>leftpad admin</title></head><body>
<h1>leftpad admin</h1>
<p>Use them as with Go's net/http/pprof: <code>go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=5</code>.</p>
<ul>
<li><a href=\"/debug/pprof/profile?seconds=30\">profile</a>?seconds=N&amp;kernel=auto|on|off:
CPU profile of every thread, user and system time, pprof protobuf (gzip).
<code>kernel</code>: the kernel's own functions below each system call
(needs root, CAP_PERFMON or perf_event_paranoid &lt;= 1; <code>auto</code> uses them when allowed)</li>
<li><a href=\"/debug/pprof/flamegraph?seconds=5\">flamegraph</a>?seconds=N:
the same profile as an SVG flame graph (Rust yellow, other user code red, kernel orange)</li>
<li><a href=\"/debug/pprof/heap\">heap</a>: sampled memory profile, in use by default
(<code>-sample_index=alloc_space</code> and friends for the rest); <code>?seconds=N</code> for a window</li>
<li><a href=\"/debug/pprof/allocs\">allocs</a>: the same samples, everything allocated by default
(the article's <code>-alloc_objects</code>)</li>
<li><a href=\"/debug/pprof/goroutine?debug=1\">goroutine</a>: every connection task of every worker by
what it waits for; <code>?debug=1</code> as text, one line per connection</li>
<li><a href=\"/debug/pprof/block\">block</a>: where threads waited (contended locks, the log
writers' writes, refused StatsD sends); <code>?seconds=N</code> for a window</li>
<li><a href=\"/debug/pprof/mutex\">mutex</a>: contended locks only</li>
<li><a href=\"/debug/pprof/trace?seconds=1\">trace</a>?seconds=N: an execution trace for
<code>go tool trace</code>: each worker a P, each connection a goroutine, each request a task
named by its route, the log writers' writes as system calls (default 1 s)</li>
<li><a href=\"/debug/pprof/cmdline\">cmdline</a>: the command line, NUL-separated</li>
<li><a href=\"/debug/pprof/symbol\">symbol</a>: Go's symbol look-up (POST <code>0xADDR+0xADDR</code>)</li>
<li><a href=\"/debug/vars\">/debug/vars</a>: counters per worker and in total (JSON)</li>
<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics (also alone on <code>--metrics ADDR</code>)</li>
</ul>
<p>One CPU profile and one trace at a time (a second request gets 409). <code>seconds</code>: 1 to 300, default 30 (1 for a trace).</p>
</body></html>
";

fn text_page(body: String) -> Page {
    Page {
        status: Status::OK,
        content_type: "text/plain; charset=utf-8",
        extra_headers: b"X-Content-Type-Options: nosniff\r\n",
        body: body.into_bytes(),
    }
}

/// `/debug/pprof/cmdline`: the command line, arguments separated by NUL bytes, as Go's.
fn cmdline() -> String {
    std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("\0")
}

/// `/debug/pprof/symbol`: Go's look-up protocol (the query of a GET, or a POST's body).
fn symbol_page(addresses: &str) -> Page {
    text_page(symbols::go_symbol_lookup(addresses))
}

/// `/debug/pprof/goroutine`: every worker's connection tasks by state (pprof), or with
/// `?debug=1` (or 2) as text with a line per connection.
fn goroutine_page(query: &str, state: &AdminState) -> Page {
    let workers = goroutine::collect(&state.connections);
    match query_param(query, "debug") {
        Some(level) if level != "0" => text_page(goroutine::text(&workers)),
        _ => profile_page(
            b"Content-Disposition: attachment; filename=\"goroutine\"\r\n",
            goroutine::pprof(&workers),
        ),
    }
}

/// The window of `?seconds=N` on a profile of counters, or `None` for all of them.
fn window(query: &str) -> Result<Option<Duration>, String> {
    match query_param(query, "seconds") {
        None => Ok(None),
        Some(_) => seconds(query).map(|n| Some(Duration::from_secs(n))),
    }
}

/// Counters now, or their difference over the window (sleeping through it).
fn counted(
    window: Option<Duration>,
    snapshot: impl Fn() -> Vec<stacks::Counted>,
) -> Vec<stacks::Counted> {
    match window {
        None => snapshot(),
        Some(window) => {
            let before = snapshot();
            std::thread::sleep(window);
            stacks::difference(&before, &snapshot())
        }
    }
}

fn profile_page(name: &'static [u8], encoded: std::io::Result<Vec<u8>>) -> Page {
    match encoded {
        Ok(body) => Page {
            status: Status::OK,
            content_type: "application/octet-stream",
            extra_headers: name,
            body,
        },
        Err(e) => Page::error(Status(500), &format!("cannot encode the profile: {e}")),
    }
}

/// `/debug/pprof/heap` and `/debug/pprof/allocs`: every sample so far, or with
/// `?seconds=N` the difference over a window of N seconds.
fn heap_page(query: &str, kind: heap::Kind) -> Page {
    let window = match window(query) {
        Ok(window) => window,
        Err(message) => return Page::error(Status::BAD_REQUEST, &message),
    };
    let start = SystemTime::now();
    let samples = counted(window, heap::snapshot);
    let name: &'static [u8] = match kind {
        heap::Kind::Heap => b"Content-Disposition: attachment; filename=\"heap\"\r\n",
        heap::Kind::Allocs => b"Content-Disposition: attachment; filename=\"allocs\"\r\n",
    };
    profile_page(name, heap::encode(kind, &samples, start, window))
}

/// `/debug/pprof/block` and `/debug/pprof/mutex`, likewise.
fn block_page(query: &str, kind: block::Kind) -> Page {
    let window = match window(query) {
        Ok(window) => window,
        Err(message) => return Page::error(Status::BAD_REQUEST, &message),
    };
    let start = SystemTime::now();
    let samples = counted(window, || block::snapshot(kind));
    let name: &'static [u8] = match kind {
        block::Kind::Block => b"Content-Disposition: attachment; filename=\"block\"\r\n",
        block::Kind::Mutex => b"Content-Disposition: attachment; filename=\"mutex\"\r\n",
    };
    profile_page(name, block::encode(kind, &samples, start, window))
}

/// The value of query parameter `name`, if present (`name` alone gives "").
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// `seconds=N` from the query: 1 to 300, 30 when absent.
fn seconds(query: &str) -> Result<u64, String> {
    match query_param(query, "seconds") {
        None => Ok(30),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(n),
            _ => Err(format!(
                "seconds must be a whole number from 1 to {MAX_SECONDS}, not '{text}'"
            )),
        },
    }
}

/// `/debug/pprof/trace?seconds=N`: an execution trace (default 1 s, as Go's).
fn trace_page(query: &str) -> Page {
    let seconds = match query_param(query, "seconds") {
        None => Ok(1),
        Some(_) => seconds(query),
    };
    let seconds = match seconds {
        Ok(seconds) => seconds,
        Err(message) => return Page::error(Status::BAD_REQUEST, &message),
    };
    match trace::take(seconds) {
        Ok(body) => Page {
            status: Status::OK,
            content_type: "application/octet-stream",
            extra_headers: b"Content-Disposition: attachment; filename=\"trace\"\r\n",
            body,
        },
        Err(trace::Error::Busy) => Page::error(
            Status::CONFLICT,
            "a trace is already being taken: wait for it to finish and retry",
        ),
        Err(trace::Error::Failed(message)) => Page::error(Status(500), &message),
    }
}

fn cpu_page(query: &str, state: &AdminState, format: cpu::Format) -> Page {
    let parsed =
        seconds(query).and_then(|s| Ok((s, cpu::Kernel::parse(query_param(query, "kernel"))?)));
    let (seconds, kernel) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return Page::error(Status::BAD_REQUEST, &message),
    };
    let (content_type, extra_headers): (_, &'static [u8]) = match format {
        cpu::Format::Pprof => (
            "application/octet-stream",
            b"Content-Disposition: attachment; filename=\"profile\"\r\n",
        ),
        cpu::Format::Flamegraph => ("image/svg+xml", b""),
    };
    match cpu::profile(&state.profiling, seconds, kernel, format) {
        Ok(body) => Page {
            status: Status::OK,
            content_type,
            extra_headers,
            body,
        },
        Err(cpu::Error::Busy) => Page::error(
            Status::CONFLICT,
            "a profile is already being taken: wait for it to finish and retry",
        ),
        Err(cpu::Error::Refused(message)) => Page::error(Status::BAD_REQUEST, &message),
        Err(cpu::Error::Failed(message)) => Page::error(Status(500), &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parameter() {
        assert_eq!(seconds(""), Ok(30));
        assert_eq!(seconds("seconds=5"), Ok(5));
        assert_eq!(seconds("debug=1&seconds=300"), Ok(300));
        for bad in [
            "seconds=0",
            "seconds=301",
            "seconds=abc",
            "seconds=",
            "seconds=-1",
            "seconds",
        ] {
            assert!(seconds(bad).unwrap_err().contains("from 1 to 300"), "{bad}");
        }
    }
}
