//! The HTTP API (README.md, "The API") through a real HTTP client, on both I/O drivers.

mod common;

use common::{exchange, Server};
use std::time::{Duration, SystemTime};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// (status, content type, body) of a GET through ureq.
fn get(server: &Server, path: &str) -> (u16, String, String) {
    let mut res = agent().get(server.url(path)).call().expect("request");
    let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
    let body = res.body_mut().read_to_string().unwrap();
    (res.status().as_u16(), ctype, body)
}

#[test]
fn the_article_example_on_both_drivers() {
    for driver in common::drivers() {
        let driver = driver.as_str();
        let server = Server::start(&["--driver", driver]);
        assert!(server.stderr().contains(match driver {
            "epoll" => "driver epoll",
            _ => "driver io_uring",
        }));
        let (status, ctype, body) = get(&server, "/v1/leftpad/?str=test&len=50&chr=*");
        assert_eq!(status, 200, "{driver}");
        assert_eq!(ctype, "application/json; charset=utf-8");
        assert_eq!(body, format!("{{\"str\":\"{}test\"}}\n", "*".repeat(46)));
        let (_, _, body) = get(&server, "/v1/leftpad?str=test&len=6&chr=*");
        assert_eq!(body, "{\"str\":\"**test\"}\n");
    }
}

#[test]
fn parameters_and_escaping() {
    let server = Server::start(&[]);
    let cases = [
        ("/v1/leftpad/?str=a+b&len=5", "{\"str\":\"  a b\"}\n"),
        ("/v1/leftpad/?len=3&chr=%E2%98%83", "{\"str\":\"☃☃☃\"}\n"),
        (
            "/v1/leftpad/?str=%C3%A9&len=3&chr=xyz",
            "{\"str\":\"xxé\"}\n",
        ),
        ("/v1/leftpad/?str=abc&len=-7", "{\"str\":\"abc\"}\n"),
        ("/v1/leftpad/?str=abc&len=2", "{\"str\":\"abc\"}\n"),
        (
            "/v1/leftpad/?str=1&len=2&str=2&len=9&unknown=x",
            "{\"str\":\" 1\"}\n",
        ),
        (
            "/v1/leftpad/?str=%3Cscript%3E%26%22%5C&len=12&chr=%0A",
            "{\"str\":\"\\n\\u003cscript\\u003e\\u0026\\\"\\\\\"}\n",
        ),
        (
            "/v1/leftpad/?str=%01%E2%80%A8&len=2&chr=%1F",
            "{\"str\":\"\\u0001\\u2028\"}\n",
        ),
    ];
    for (path, want) in cases {
        let (status, _, body) = get(&server, path);
        assert_eq!((status, body.as_str()), (200, want), "{path}");
    }
}

#[test]
fn errors_are_json_with_helpful_messages() {
    let server = Server::start(&[]);
    let cases = [
        (
            "/v1/leftpad/?str=a",
            400,
            "len is required: add len=N, the target length in characters",
        ),
        ("/v1/leftpad/?str=a&len=ten", 400, "len must be an integer"),
        (
            "/v1/leftpad/?str=a&len=1025",
            400,
            "len must not exceed 1024",
        ),
        (
            "/v1/leftpad/?str=%zz&len=3",
            400,
            "query parameter \\\"str\\\" has a bad percent-escape: use %XX with two hex digits",
        ),
        (
            "/v1/leftpad/?str=%ff&len=3",
            400,
            "query parameter \\\"str\\\" is not valid UTF-8",
        ),
        (
            "/nope",
            404,
            "not found: the API is GET /v1/leftpad/ with query parameters str, len and chr",
        ),
    ];
    for (path, want_status, message) in cases {
        let (status, ctype, body) = get(&server, path);
        assert_eq!(status, want_status, "{path}");
        assert_eq!(ctype, "application/json; charset=utf-8");
        assert_eq!(body, format!("{{\"error\":\"{message}\"}}\n"), "{path}");
    }
}

#[test]
fn max_len_flag_is_obeyed() {
    let server = Server::start(&["--max-len", "10"]);
    assert_eq!(get(&server, "/v1/leftpad/?len=10").0, 200);
    let (status, _, body) = get(&server, "/v1/leftpad/?len=11");
    assert_eq!(status, 400);
    assert!(body.contains("len must not exceed 10"));
}

#[test]
fn healthz_head_and_405() {
    let server = Server::start(&[]);
    assert_eq!(
        get(&server, "/healthz"),
        (200, "text/plain; charset=utf-8".into(), "ok\n".into())
    );

    let res = agent()
        .head(server.url("/v1/leftpad/?str=ab&len=4"))
        .call()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-length"], "15");

    let mut res = agent().post(server.url("/v1/leftpad/")).send("x").unwrap();
    assert_eq!(res.status().as_u16(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    assert!(res
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("use GET or HEAD"));
    let res = agent().delete(server.url("/healthz")).call().unwrap();
    assert_eq!(res.status().as_u16(), 405);
}

#[test]
fn every_response_has_server_date_and_length() {
    let server = Server::start(&[]);
    for request in [
        &b"GET /v1/leftpad/?len=3 HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /v1/leftpad/?len=x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"BREW /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"garbage\r\n\r\n",
    ] {
        let (res, _) = exchange(&server, request);
        assert_eq!(res.header("Server"), Some("leftpad"));
        assert!(res.header("Content-Length").is_some());
        let date = res.header("Date").expect("Date header");
        let when = httpdate::parse_http_date(date).expect("IMF-fixdate");
        let age = SystemTime::now().duration_since(when).unwrap_or_default();
        assert!(
            age <= Duration::from_millis(1100),
            "Date {date} is {age:?} old"
        );
    }
}

#[test]
fn head_matches_get_headers() {
    let server = Server::start(&[]);
    for path in [
        "/v1/leftpad/?str=x&len=20&chr=%3C",
        "/v1/leftpad/?len=q",
        "/nope",
        "/healthz",
    ] {
        let (get, _) = exchange(
            &server,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        let (head, mut conn) = exchange(
            &server,
            format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        assert_eq!(get.status, head.status, "{path}");
        assert_eq!(get.header("Content-Length"), head.header("Content-Length"));
        assert_eq!(get.header("Content-Type"), head.header("Content-Type"));
        // No body follows a HEAD answer: the next response starts right away.
        use std::io::Write;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let next = common::read_response(&mut conn, false).unwrap();
        assert_eq!((next.status, next.text().as_str()), (200, "ok\n"));
    }
}
