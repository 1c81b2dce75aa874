//! The HTTP core's connection state machine driven by the real application: framing,
//! pipelining, keep-alive, bodies and rejections, byte for byte (no sockets).
use leftpad::app::handler::{App, Handled, Route};
use leftpad::http::conn::{Conn, Waiting, OUT_HIGH_WATER};
use leftpad::http::request::Limits;

const LIMITS: Limits = Limits {
    max_head_size: 1024,
    max_headers: 16,
    max_body_size: 100,
};
const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

/// Feeds `chunks` one by one, as separate reads, into one connection; returns the
/// output, the requests answered and the final wait state.
fn run(chunks: &[&[u8]]) -> (String, u32, Waiting) {
    let mut conn = Conn::new();
    let mut app = App::new(1024);
    let (mut buf, mut out, mut answered) = (Vec::new(), Vec::new(), 0);
    let mut records = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let p = conn.process(&buf, &mut out, &mut records, &mut app, &LIMITS, DATE);
            buf.drain(..p.consumed);
            answered += p.answered;
            if p.answered == 0 || conn.waiting(buf.len()) == Waiting::Done {
                break;
            }
        }
    }
    (
        String::from_utf8(out).unwrap(),
        answered,
        conn.waiting(buf.len()),
    )
}

fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect()
}

const GET: &[u8] = b"GET /v1/leftpad/?str=ab&len=4&chr=* HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn answers_one_request() {
    let (out, n, waiting) = run(&[GET]);
    assert_eq!(n, 1);
    assert!(out.ends_with("\r\n\r\n{\"str\":\"**ab\"}\n"), "{out}");
    assert!(out.contains("Content-Length: 15\r\n"));
    assert_eq!(waiting, Waiting::Idle);
}

#[test]
fn answers_pipelined_requests_in_order() {
    let mut batch = GET.to_vec();
    batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    batch.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    let (out, n, _) = run(&[&batch]);
    assert_eq!(n, 3);
    assert_eq!(statuses(&out), ["200", "200", "404"]);
}

#[test]
fn any_split_gives_the_same_output() {
    let mut stream = GET.to_vec();
    stream
        .extend_from_slice(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    stream.extend_from_slice(GET);
    let (whole, n, _) = run(&[&stream]);
    assert_eq!(n, 3);
    for split in 1..stream.len() {
        let (a, b) = stream.split_at(split);
        assert_eq!(run(&[a, b]).0, whole, "split at {split}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&bytes).0, whole);
}

#[test]
fn body_is_discarded_and_framing_kept() {
    let (out, n, _) = run(&[
        b"POST /v1/leftpad HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nGET / HTTP",
        GET,
    ]);
    assert_eq!(n, 2);
    assert_eq!(statuses(&out), ["405", "200"]);
    assert!(out.contains("Allow: GET, HEAD\r\n"));
}

#[test]
fn records_describe_each_answer() {
    let mut input = GET.to_vec();
    input.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\n\r\n");
    input.extend_from_slice(b"GET /v1/leftpad?len=q HTTP/1.1\r\nHost: x\r\n\r\n");
    input.extend_from_slice(b"BAD\0\r\n\r\n");
    let (mut out, mut records) = (Vec::new(), Vec::new());
    let mut app = App::new(1024);
    Conn::new().process(&input, &mut out, &mut records, &mut app, &LIMITS, DATE);
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.target.get(&input),
                r.user_agent.get(&input),
                r.status.0,
                r.outcome,
            )
        })
        .collect();
    let leftpad = |str_chars| Handled {
        route: Route::Leftpad,
        str_chars,
    };
    assert_eq!(
        summary,
        [
            (
                &b"/v1/leftpad/?str=ab&len=4&chr=*"[..],
                &b""[..],
                200,
                leftpad(Some(2))
            ),
            (
                b"/nope",
                b"curl/8",
                404,
                Handled {
                    route: Route::Other,
                    str_chars: None
                }
            ),
            (b"/v1/leftpad?len=q", b"", 400, leftpad(None)),
            (b"", b"", 400, Handled::default()),
        ]
    );
}

#[test]
fn waiting_tracks_head_and_body() {
    assert_eq!(run(&[b"GET / HT"]).2, Waiting::Head);
    assert_eq!(
        run(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na"]).2,
        Waiting::Body
    );
}

#[test]
fn connection_close_stops_the_pipeline() {
    let mut batch = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    batch.extend_from_slice(GET);
    let (out, n, waiting) = run(&[&batch]);
    assert_eq!((n, waiting), (1, Waiting::Done));
    assert!(out.contains("Connection: close\r\n"));
}

#[test]
fn without_keep_alive_the_last_buffered_request_closes() {
    let mut conn = Conn::new();
    conn.disable_keep_alive();
    let mut app = App::new(1024);
    let (mut out, mut records) = (Vec::new(), Vec::new());
    // Two pipelined requests and part of a third: the first two are answered with
    // keep-alive (more bytes follow them), and the connection waits for the third.
    let mut batch = [GET, GET].concat();
    batch.extend_from_slice(&GET[..10]);
    let p = conn.process(&batch, &mut out, &mut records, &mut app, &LIMITS, DATE);
    assert_eq!((p.answered, p.consumed), (2, 2 * GET.len()));
    assert!(!String::from_utf8_lossy(&out).contains("Connection: close"));
    assert_eq!(conn.waiting(10), Waiting::Head);
    // The rest of it arrives: nothing follows it, so it is the last and closes.
    out.clear();
    let p = conn.process(GET, &mut out, &mut records, &mut app, &LIMITS, DATE);
    assert_eq!(p.answered, 1);
    assert!(String::from_utf8_lossy(&out).contains("Connection: close\r\n"));
    assert_eq!(conn.waiting(0), Waiting::Done);
}

#[test]
fn http10_keep_alive_is_confirmed_and_default_closes() {
    let (out, _, waiting) = run(&[b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"]);
    assert!(out.contains("Connection: keep-alive\r\n"));
    assert_eq!(waiting, Waiting::Idle);
    let (out, _, waiting) = run(&[b"GET /healthz HTTP/1.0\r\n\r\n"]);
    assert!(out.contains("Connection: close\r\n"));
    assert_eq!(waiting, Waiting::Done);
}

#[test]
fn malformed_gets_400_and_closes() {
    let (out, n, waiting) = run(&[b"GARBAGE\x00\r\n\r\n", GET]);
    assert_eq!((n, waiting), (1, Waiting::Done));
    assert_eq!(statuses(&out), ["400"]);
    assert!(out.contains("Connection: close\r\n"));
    assert!(out.contains("{\"error\":\"malformed"));
}

#[test]
fn protocol_rejections_close() {
    for (raw, status) in [
        (
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "501",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
            "413",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "400",
        ),
    ] {
        let (out, _, waiting) = run(&[raw]);
        assert_eq!(statuses(&out), [status]);
        assert_eq!(waiting, Waiting::Done);
    }
    let long = [b'a'; 2000];
    let (out, _, _) = run(&[b"GET /", &long]);
    assert_eq!(statuses(&out), ["414"]);
}

#[test]
fn application_errors_keep_the_connection() {
    let (out, n, waiting) = run(&[
        b"GET /v1/leftpad/?len=x HTTP/1.1\r\nHost: x\r\n\r\n",
        b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        GET,
    ]);
    assert_eq!(statuses(&out), ["400", "405", "200"]);
    assert_eq!((n, waiting), (3, Waiting::Idle));
}

#[test]
fn expect_continue_with_body_closes() {
    let (out, _, waiting) = run(&[
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    ]);
    assert!(out.contains("Connection: close\r\n"));
    assert_eq!(waiting, Waiting::Done);
}

#[test]
fn output_is_bounded_by_the_high_water_mark() {
    // 200 pipelined requests that each produce a ~6 KiB body.
    let one = b"GET /v1/leftpad/?len=1024&chr=%3C HTTP/1.1\r\nHost: x\r\n\r\n";
    let batch = one.repeat(200);
    let mut conn = Conn::new();
    let mut app = App::new(1024);
    let (mut out, mut records) = (Vec::new(), Vec::new());
    let p = conn.process(&batch, &mut out, &mut records, &mut app, &LIMITS, DATE);
    assert!(p.answered < 200 && p.consumed < batch.len());
    assert_eq!(records.len(), p.answered as usize);
    assert!(out.len() < OUT_HIGH_WATER + 8 * 1024);
}
