//! The connection state machine on arbitrary bytes, split into reads at arbitrary points:
//! it must never panic, consume more than it was given, or answer without bound; and the
//! same stream fed whole must give the same output (framing does not depend on reads).
#![no_main]

use leftpad::app::handler::App;
use leftpad::http::conn::{Conn, Waiting};
use leftpad::http::request::Limits;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_head_size: 1024,
    max_headers: 16,
    max_body_size: 4096,
};
const DATE: &[u8; 29] = b"Tue, 24 Nov 2026 12:00:00 GMT";

fn run(chunks: &[&[u8]]) -> Vec<u8> {
    let (mut conn, mut app) = (Conn::new(), App::new(64));
    let (mut buf, mut out, mut records) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = out.len();
            let p = conn.process(&buf, &mut out, &mut records, &mut app, &LIMITS, DATE);
            assert!(p.consumed <= buf.len());
            assert_eq!(records.len(), p.answered as usize);
            records.clear();
            buf.drain(..p.consumed);
            // The read buffer never holds more than a head's worth unanswered.
            assert!(
                conn.waiting(buf.len()) == Waiting::Done || buf.len() < LIMITS.max_head_size + 4096
            );
            if p.answered == 0 || conn.waiting(buf.len()) == Waiting::Done || out.len() == before {
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how many cut points the next bytes give.
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(cuts % 8).min(rest.len());
    let (points, stream) = rest.split_at(cuts);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = points
        .iter()
        .map(|&p| usize::from(p) * stream.len() / 256)
        .collect();
    points.sort_unstable();
    for p in points {
        chunks.push(&stream[start..p.max(start)]);
        start = p.max(start);
    }
    chunks.push(&stream[start..]);
    assert_eq!(run(&chunks), run(&[stream]));
});
