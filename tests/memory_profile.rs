//! The rest of Go's `net/http/pprof` (README.md, "Profiling and live counters"): heap and
//! allocation profiles read by the real `go tool pprof`, the zero-allocation claim seen in
//! them, `cmdline` and `symbol`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    admin_get, assert_mappings, assert_symbols_match, go_pprof, is_allocation_machinery, load,
    read_response, top_rows, Server,
};

#[test]
fn heap_and_allocs_have_gos_sample_types_and_defaults() {
    let default = Server::start(&[]);
    let raw = go_pprof(
        &admin_get(default.admin.unwrap(), "/debug/pprof/heap").body,
        &["-raw"],
    );
    assert!(
        raw.contains("Period: 524288"),
        "Go's MemProfileRate by default: {raw}"
    );
    drop(default);

    // Every allocation sampled: start-up's allocations (runtimes, buffers) are all seen.
    let server = Server::start(&["--heap-profile-rate", "1"]);
    let admin = server.admin.unwrap();
    for (path, default) in [("heap", "inuse_space"), ("allocs", "alloc_space")] {
        let response = admin_get(admin, &format!("/debug/pprof/{path}"));
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(&response.body[..2], &[0x1f, 0x8b], "gzip");
        let raw = go_pprof(&response.body, &["-raw"]);
        for sample_type in [
            "alloc_objects/count",
            "alloc_space/bytes",
            "inuse_objects/count",
            "inuse_space/bytes",
        ] {
            assert!(raw.contains(sample_type), "{sample_type} in {raw}");
        }
        assert!(
            raw.contains("PeriodType: space bytes") && raw.contains("Period: 1\n"),
            "{raw}"
        );
        let top = go_pprof(&response.body, &["-top"]);
        assert!(top.contains(&format!("Type: {default}")), "{path}: {top}");
        // The binary and its build ID first; every location in its mapping; every
        // location of the binary named by /debug/pprof/symbol as the profile names it.
        let (_, locations) = assert_mappings(&response.body);
        let checked = assert_symbols_match(admin, &locations, is_allocation_machinery);
        assert!(checked > 10, "{path}: {checked}");
        // Start-up allocates (runtimes, buffers): there is something to see, named. A
        // worker's state (its connection table, its buffers) is allocated in the
        // worker's own functions (which of them holds the sample depends on inlining).
        let objects = go_pprof(&response.body, &["-sample_index=alloc_objects", "-top"]);
        assert!(objects.contains("leftpad::"), "{objects}");
        let listed = go_pprof(&response.body, &["-list", "leftpad::shell::worker::"]);
        assert!(listed.contains("ROUTINE"), "{listed}");
    }
}

/// The article's `-alloc_objects` view over a window under load, with every allocation
/// sampled (`--heap-profile-rate 1`): nothing on the request path allocates.
#[test]
fn under_load_no_allocation_comes_from_the_request_path() {
    let log = std::env::temp_dir().join(format!("leftpad-allocs-{}.log", std::process::id()));
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = Server::start(&[
        "--heap-profile-rate",
        "1",
        "--access-log",
        log.to_str().unwrap(),
        "--statsd",
        &statsd.local_addr().unwrap().to_string(),
    ]);
    let (stop, loader) = load(&server);
    std::thread::sleep(Duration::from_millis(500));
    let allocs = admin_get(server.admin.unwrap(), "/debug/pprof/allocs?seconds=2");
    stop.store(true, Ordering::Relaxed);
    let answered = loader.join().unwrap();
    let all_allocs = admin_get(server.admin.unwrap(), "/debug/pprof/allocs").body;
    drop(server);
    let _ = std::fs::remove_file(&log);
    assert!(
        answered > 1000,
        "the server was under load ({answered} answers)"
    );
    assert_eq!(allocs.status, 200);
    let traces = go_pprof(&allocs.body, &["-sample_index=alloc_objects", "-traces"]);
    for request_path in [
        "connection_loop",
        "Conn::process",
        "handler::App",
        "Telemetry::record_batch",
        "statsd::",
        "accesslog::",
    ] {
        assert!(
            !traces.contains(request_path),
            "an allocation under {request_path} in the window:\n{traces}"
        );
    }
    let comments = go_pprof(&allocs.body, &["-comments"]);
    assert!(comments.contains("window"), "{comments}");
    // The sampler was on all along: the whole-run profile holds start-up's allocations.
    let whole = go_pprof(&all_allocs, &["-sample_index=alloc_objects", "-traces"]);
    assert!(whole.contains("leftpad::"), "{whole}");
}

/// The brief's list of the `alloc` crate's allocation machinery, matched loosely, as a
/// reader of `top` would: none of it may be where the bytes are.
fn looks_like_machinery(name: &str) -> bool {
    is_allocation_machinery(name)
        || [
            "raw_vec",
            "finish_grow",
            "with_capacity",
            "to_vec",
            "Box<T>::new",
            "Box::new",
            "reserve",
            "try_allocate_in",
            "grow_one",
            "grow_amortized",
        ]
        .iter()
        .any(|part| name.contains(part))
}

/// Go's heap profiles start at the function that asked for memory: `top` names who
/// allocated, not the allocator's plumbing. With every allocation sampled, at least 90%
/// of the bytes of start-up's allocations (runtimes, connection tables, buffers) sit on
/// a leaf outside the `alloc` crate's machinery, and the profile says what it hid.
#[test]
fn memory_profiles_start_at_the_allocating_function() {
    let server = Server::start(&["--heap-profile-rate", "1"]);
    let admin = server.admin.unwrap();
    for path in ["allocs", "heap"] {
        let profile = admin_get(admin, &format!("/debug/pprof/{path}")).body;
        let top = go_pprof(
            &profile,
            &[
                "-sample_index=alloc_space",
                "-unit=B",
                "-top",
                "-nodecount=100000",
            ],
        );
        let rows = top_rows(&top);
        let total: f64 = rows.iter().map(|(bytes, _)| bytes).sum();
        let machinery: f64 = rows
            .iter()
            .filter(|(_, name)| looks_like_machinery(name))
            .map(|(bytes, _)| bytes)
            .sum();
        assert!(total > 100_000.0, "start-up allocates: {total} B\n{top}");
        assert!(
            machinery <= 0.1 * total,
            "{path}: {machinery} of {total} B on allocation machinery:\n{top}"
        );
        // Leaves name code of this program or its libraries, and the comment says what
        // was hidden.
        assert!(
            rows.iter().any(|(b, name)| *b > 0.0 && name.contains("::")),
            "{top}"
        );
        let comments = go_pprof(&profile, &["-comments"]);
        assert!(
            comments.contains("stacks start at the allocating function")
                && comments.contains("the hidden call each allocating function made"),
            "{comments}"
        );
    }
    // The objects view of the article (`-sample_index=alloc_objects -top`) too.
    let allocs = admin_get(admin, "/debug/pprof/allocs").body;
    let top = go_pprof(
        &allocs,
        &["-sample_index=alloc_objects", "-top", "-nodecount=100000"],
    );
    let rows = top_rows(&top);
    let total: f64 = rows.iter().map(|(n, _)| n).sum();
    let machinery: f64 = rows
        .iter()
        .filter(|(_, name)| looks_like_machinery(name))
        .map(|(n, _)| n)
        .sum();
    assert!(
        machinery <= 0.1 * total,
        "{machinery} of {total} objects on allocation machinery:\n{top}"
    );
}

#[test]
fn cmdline_is_the_arguments_separated_by_nul() {
    let server = Server::start(&["--max-len", "77"]);
    let response = admin_get(server.admin.unwrap(), "/debug/pprof/cmdline");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    let args: Vec<String> = response.text().split('\0').map(str::to_owned).collect();
    assert!(args[0].ends_with("leftpad"), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--max-len", "77"]),
        "{args:?}"
    );
}

/// Go's symbol protocol: GET says symbols are there; POST of `+`-separated addresses
/// names them. The addresses come from a profile's own locations.
#[test]
fn symbol_lookup_speaks_gos_protocol() {
    let server = Server::start(&["--heap-profile-rate", "1"]);
    let admin = server.admin.unwrap();
    assert_eq!(
        admin_get(admin, "/debug/pprof/symbol").text(),
        "num_symbols: 1\n"
    );

    let heap = admin_get(admin, "/debug/pprof/heap");
    let raw = go_pprof(&heap.body, &["-raw"]);
    // Locations: "     7: 0x55d0c0f1a2b3 M=1 leftpad::shell::server::run src/server.rs:41 s=0".
    let (address, function) = raw
        .lines()
        .skip_while(|line| !line.starts_with("Locations"))
        .find_map(|line| {
            let mut words = line
                .split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("M="));
            let address = words.next()?.strip_prefix("0x")?.to_owned();
            let function = words.next()?.to_owned();
            function
                .starts_with("leftpad::")
                .then_some((address, function))
        })
        .unwrap_or_else(|| panic!("no leftpad location in:\n{raw}"));

    // 0x7ff000000000 lies in no mapping of the process, at run time or as a link-time
    // address (a low one such as 0x1 can, where the executable's first segment starts at
    // 0, as on aarch64).
    let body = format!("0x{address}+0x7ff000000000+garbage");
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /debug/pprof/symbol HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let answer = read_response(&mut s, false).unwrap();
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("num_symbols: 1"));
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no symbol in {text:?}"));
    assert!(line.starts_with(&format!("0x{address} ")), "{line}");
    // The symbol protocol names the innermost function at the address, as Go's does. The
    // heap profile hides allocation machinery inlined there (`Box::new` in the caller that
    // allocates), so its location can start at the caller: then the lookup names the
    // hidden function (a CI run met `alloc::boxed::Box<T>::new` for `connect_statsd`).
    let named = line.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        named.trim_start_matches('<').starts_with("leftpad::")
            || named == function
            || is_allocation_machinery(named),
        "{line} for {function}"
    );
    assert_eq!(lines.next(), None, "unknown addresses are left out: {text}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn a_bad_window_is_a_400() {
    let server = Server::start(&[]);
    let response = admin_get(server.admin.unwrap(), "/debug/pprof/allocs?seconds=0");
    assert_eq!(response.status, 400);
    assert!(
        response.text().contains("from 1 to 300"),
        "{}",
        response.text()
    );
}
