//! Property tests of the pure core: for any input, not just the examples in unit tests.

use leftpad::app::handler::App;
use leftpad::app::{pad, query};
use leftpad::http::conn::{Conn, Waiting};
use leftpad::http::request::Limits;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_head_size: 16 * 1024,
    max_headers: 100,
    max_body_size: 1 << 20,
};
const DATE: &[u8; 29] = b"Tue, 24 Nov 2026 12:00:00 GMT";

/// Form-urlencodes `bytes` the way a browser would (unreserved kept, space as `+`).
fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Feeds `chunks` to one connection as separate reads; returns all output.
fn answer(chunks: &[&[u8]]) -> Vec<u8> {
    let (mut conn, mut app) = (Conn::new(), App::new(1024));
    let (mut buf, mut out, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let p = conn.process(&buf, &mut out, &mut records, &mut app, &LIMITS, DATE);
            buf.drain(..p.consumed);
            if p.answered == 0 || conn.waiting(buf.len()) == Waiting::Done {
                break;
            }
        }
    }
    out
}

/// The body of the only response in `out`.
fn body(out: &[u8]) -> &[u8] {
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    &out[at..]
}

proptest! {
    #[test]
    fn decoding_inverts_encoding(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut decoded = Vec::new();
        query::decode_component(encode(&bytes).as_bytes(), &mut decoded).unwrap();
        prop_assert_eq!(decoded, bytes);
    }

    #[test]
    fn the_body_is_json_of_exactly_the_padded_string(
        s in "\\PC{0,40}|[\\u{0}-\\u{7f}]{0,40}",
        len in -5i64..120,
        chr in any::<char>(),
    ) {
        let target = format!(
            "/v1/leftpad/?str={}&len={len}&chr={}",
            encode(s.as_bytes()),
            encode(chr.to_string().as_bytes())
        );
        let request = format!("GET {target} HTTP/1.1\r\nHost: p\r\n\r\n");
        let out = answer(&[request.as_bytes()]);
        prop_assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&out));
        let json: serde_json::Value = serde_json::from_slice(body(&out)).expect("valid JSON");
        let got = json["str"].as_str().expect("a string field");

        let mut want = String::new();
        pad::leftpad_into(&mut want, &s, len, chr);
        prop_assert_eq!(got, want.as_str());
        let chars = s.chars().count() as i64;
        prop_assert_eq!(got.chars().count() as i64, len.max(chars));
    }

    #[test]
    fn any_split_of_a_pipelined_stream_gives_the_same_responses(
        requests in proptest::collection::vec(
            prop_oneof![
                ("[a-z0-9 ]{0,12}", 0i64..30).prop_map(|(s, l)| format!(
                    "GET /v1/leftpad/?str={}&len={l}&chr=%2A HTTP/1.1\r\nHost: p\r\n\r\n", encode(s.as_bytes()))),
                Just("GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n".to_owned()),
                Just("HEAD /v1/leftpad?len=3 HTTP/1.1\r\nHost: p\r\n\r\n".to_owned()),
                Just("GET /v1/leftpad/?len=oops HTTP/1.1\r\nHost: p\r\n\r\n".to_owned()),
                "[a-z]{0,30}".prop_map(|b| format!(
                    "POST /healthz HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\n\r\n{b}", b.len())),
            ],
            1..12,
        ),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let stream = requests.concat().into_bytes();
        let whole = answer(&[&stream]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut chunks = Vec::new();
        let mut start = 0;
        for p in points {
            chunks.push(&stream[start..p]);
            start = p;
        }
        chunks.push(&stream[start..]);
        prop_assert_eq!(answer(&chunks), whole);
    }

    #[test]
    fn no_input_panics_or_grows_the_output_without_bound(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
    ) {
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out = answer(&refs);
        let input: usize = chunks.iter().map(Vec::len).sum();
        // At most one (error) answer per few input bytes, each bounded.
        prop_assert!(out.len() <= 512 * (1 + input / 16));
    }
}
