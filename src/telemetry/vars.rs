//! `GET /debug/vars`: the counters per worker and in total, as JSON (like Go's expvar).
//!
//! Rendered from the declaration in [`crate::telemetry::counters`]: each [`Scalar`] is
//! written under its group, in declaration order.

use std::fmt::Write;

use crate::http::json;
use crate::telemetry::counters::{sum, Scalar, WorkerCounters};

/// What one `/debug/vars` page reads.
pub struct Page<'a> {
    pub workers: &'a [&'a WorkerCounters],
    /// The I/O driver of each worker.
    pub drivers: &'a [String],
    /// The heap counters of the threads without a slot.
    pub other_threads: &'a WorkerCounters,
    pub uptime_seconds: f64,
    /// Whether a CPU profile is being taken.
    pub profiling: bool,
}

/// The whole page, one line of JSON.
pub fn render(page: &Page<'_>) -> String {
    let mut out = String::with_capacity(2048);
    let _ = write!(
        out,
        "{{\"uptime_seconds\":{:.3},\"profiling\":{},\"total\":{{",
        page.uptime_seconds, page.profiling
    );
    groups(&mut out, |scalar| sum(page.workers.iter().copied(), scalar));
    let other = page.other_threads;
    let _ = write!(
        out,
        ",\"other_threads_heap\":{{\"allocations\":{},\"bytes\":{}}}}},\"workers\":[",
        other[Scalar::HeapAllocations].get(),
        other[Scalar::HeapBytes].get()
    );
    for (id, (worker, driver)) in page.workers.iter().zip(page.drivers).enumerate() {
        if id > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"worker\":{id},\"driver\":{},", string(driver));
        groups(&mut out, |scalar| worker[scalar].get());
        out.push('}');
    }
    out.push_str("]}\n");
    out
}

/// `"requests":{"total":1},"responses":{...},...`: every scalar under its group.
fn groups(out: &mut String, value: impl Fn(Scalar) -> u64) {
    let mut open: Option<&str> = None;
    for scalar in Scalar::ALL {
        let declared = scalar.declared();
        if open != Some(declared.group) {
            if open.is_some() {
                out.push_str("},");
            }
            let _ = write!(out, "\"{}\":{{", declared.group);
            open = Some(declared.group);
        } else {
            out.push(',');
        }
        let _ = write!(out, "\"{}\":{}", declared.name, value(scalar));
    }
    if open.is_some() {
        out.push('}');
    }
}

/// A JSON string literal.
fn string(text: &str) -> String {
    let mut out = b"\"".to_vec();
    json::write_escaped(&mut out, text);
    out.push(b'"');
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::handler::Route;

    #[test]
    fn vars_sum_workers_under_their_groups() {
        let a = WorkerCounters::leak();
        let b = WorkerCounters::leak();
        a[Scalar::Requests].add(2);
        b[Scalar::Requests].add(3);
        b.answered(Route::Other, 404, 1);
        let other = WorkerCounters::new();
        other[Scalar::HeapBytes].add(7);
        let json = render(&Page {
            workers: &[a, b],
            drivers: &["io_uring".into(), "epoll".into()],
            other_threads: &other,
            uptime_seconds: 1.5,
            profiling: false,
        });
        assert!(json.starts_with("{\"uptime_seconds\":1.500,\"profiling\":false,"));
        assert!(json.contains("\"total\":{\"requests\":{\"total\":5},\"responses\":{\"1xx\":0,\"2xx\":0,\"3xx\":0,\"4xx\":1,\"5xx\":0}"), "{json}");
        assert!(
            json.contains("{\"worker\":1,\"driver\":\"epoll\",\"requests\":{\"total\":3}"),
            "{json}"
        );
        assert!(json.contains("\"heap\":{\"allocations\":0,\"bytes\":0},\"other_threads_heap\":{\"allocations\":0,\"bytes\":7}}"), "{json}");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let total = &parsed["total"];
        for scalar in Scalar::ALL {
            let declared = scalar.declared();
            assert!(
                total[declared.group][declared.name].is_u64(),
                "{declared:?}"
            );
        }
    }
}
