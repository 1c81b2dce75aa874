//! Routing and the application handlers: `/v1/leftpad`, `/healthz`, 404 and 405.
//!
//! A handler sees a parsed [`Request`] and writes one [`Response`]; it owns the reusable
//! scratch buffers, so answering allocates nothing in steady state.

use std::fmt::Write;

use crate::app::{pad, query};
use crate::http::conn::Service;
use crate::http::json::{EscapedChar, EscapedStr};
use crate::http::request::{Method, Request};
use crate::http::response::{Response, JSON, TEXT};
use crate::http::Status;

const ALLOW: &[u8] = b"Allow: GET, HEAD\r\n";
const NOT_FOUND: &str =
    "not found: the API is GET /v1/leftpad/ with query parameters str, len and chr";

/// What the handler did, beyond the status, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Where the request went (whatever its answer).
    pub route: Route,
    /// For a padded answer: the length of `str` in characters.
    pub str_chars: Option<u32>,
}

/// The routes, as metrics label them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Route {
    /// Answered by the HTTP core before routing (a malformed request, a timeout, a
    /// refused connection).
    #[default]
    Unrouted,
    Leftpad,
    Healthz,
    /// Any other path (a 404).
    Other,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Unrouted,
        Route::Leftpad,
        Route::Healthz,
        Route::Other,
    ];

    /// The value of a `route` label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Unrouted => "unrouted",
            Route::Leftpad => "leftpad",
            Route::Healthz => "healthz",
            Route::Other => "other",
        }
    }
}

/// The application: one per worker.
pub struct App {
    max_len: u64,
    /// The server is draining: health checks fail so load balancers stop sending.
    draining: bool,
    scratch: query::Scratch,
    message: String,
}

impl Service for App {
    type Outcome = Handled;

    fn handle(&mut self, request: &Request<'_>, response: &mut Response<'_>) -> Handled {
        self.route(request, response)
    }
}

impl App {
    /// From now on `/healthz` answers 503 (the server is shutting down); every other
    /// request is still answered as usual.
    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    pub fn new(max_len: u64) -> App {
        App {
            max_len,
            draining: false,
            scratch: query::Scratch::default(),
            message: String::new(),
        }
    }

    fn route(&mut self, req: &Request<'_>, res: &mut Response<'_>) -> Handled {
        let route = match req.path {
            b"/v1/leftpad/" | b"/v1/leftpad" => Route::Leftpad,
            b"/healthz" => Route::Healthz,
            _ => {
                res.error(Status::NOT_FOUND, NOT_FOUND, b"");
                return Handled {
                    route: Route::Other,
                    str_chars: None,
                };
            }
        };
        if req.method == Method::Other {
            res.error(
                Status::METHOD_NOT_ALLOWED,
                "method not allowed: use GET or HEAD",
                ALLOW,
            );
            return Handled {
                route,
                str_chars: None,
            };
        }
        let str_chars = match route {
            Route::Leftpad => self.leftpad(req.query, res),
            _ if self.draining => {
                res.send(Status::SERVICE_UNAVAILABLE, TEXT, b"", 9, |out| {
                    out.extend_from_slice(b"draining\n")
                });
                None
            }
            _ => {
                res.send(Status::OK, TEXT, b"", 3, |out| {
                    out.extend_from_slice(b"ok\n")
                });
                None
            }
        };
        Handled { route, str_chars }
    }

    /// Answers a leftpad query; returns the length of `str` in characters when it padded.
    fn leftpad(&mut self, query: &str, res: &mut Response<'_>) -> Option<u32> {
        match query::parse(query, self.max_len, &mut self.scratch) {
            Ok(params) => {
                const OPEN: &[u8] = b"{\"str\":\"";
                const CLOSE: &[u8] = b"\"}\n";
                let pad = EscapedChar::new(params.chr);
                let text = EscapedStr::new(params.str);
                let str_chars = params.str.chars().count();
                let count = pad::pad_count_for(str_chars, params.len);
                let body_len = OPEN.len() + pad.as_bytes().len() * count + text.len() + CLOSE.len();
                res.send(Status::OK, JSON, b"", body_len, |out| {
                    out.extend_from_slice(OPEN);
                    pad.write_repeated(out, count);
                    text.write(out);
                    out.extend_from_slice(CLOSE);
                });
                Some(u32::try_from(str_chars).unwrap_or(u32::MAX))
            }
            Err(e) => {
                self.message.clear();
                // Writing into a String cannot fail.
                let _ = write!(self.message, "{e}");
                res.error(Status::BAD_REQUEST, &self.message, b"");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse, Limits, Parsed};
    use crate::http::response::Connection;

    const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";
    const LIMITS: Limits = Limits {
        max_head_size: 8192,
        max_headers: 32,
        max_body_size: 0,
    };

    /// Answers one raw request with a fresh app; returns (status, body).
    fn answer(raw: &str) -> (u16, String) {
        let Parsed::Complete { request, .. } = parse(raw.as_bytes(), &LIMITS) else {
            panic!("bad test request {raw:?}");
        };
        let mut out = Vec::new();
        let head_only = request.method == Method::Head;
        let mut res = Response::new(&mut out, DATE, head_only, Connection::Default);
        let _ = App::new(1024).handle(&request, &mut res);
        let status = res.status().0;
        let text = String::from_utf8(out).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    fn get(target: &str) -> (u16, String) {
        answer(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"))
    }

    #[test]
    fn the_article_example() {
        assert_eq!(
            get("/v1/leftpad/?str=test&len=50&chr=*"),
            (200, format!("{{\"str\":\"{}test\"}}\n", "*".repeat(46)))
        );
        assert_eq!(
            get("/v1/leftpad?str=test&len=6&chr=*").1,
            "{\"str\":\"**test\"}\n"
        );
    }

    #[test]
    fn escapes_string_and_padding() {
        assert_eq!(
            get("/v1/leftpad/?str=%3Cb%3E%22&len=6&chr=%26").1,
            r#"{"str":"\u0026\u0026\u003cb\u003e\""}"#.to_owned() + "\n"
        );
        assert_eq!(
            get("/v1/leftpad/?str=%0A&len=2&chr=%09").1,
            "{\"str\":\"\\t\\n\"}\n"
        );
    }

    #[test]
    fn unicode_padding_counts_characters() {
        assert_eq!(
            get("/v1/leftpad/?str=%C3%A9t%C3%A9&len=5&chr=%E2%98%83").1,
            "{\"str\":\"☃☃été\"}\n"
        );
    }

    #[test]
    fn defaults_and_unchanged_strings() {
        assert_eq!(get("/v1/leftpad/?str=ab&len=4").1, "{\"str\":\"  ab\"}\n");
        assert_eq!(get("/v1/leftpad/?str=abc&len=-3").1, "{\"str\":\"abc\"}\n");
        assert_eq!(get("/v1/leftpad/?len=0").1, "{\"str\":\"\"}\n");
    }

    #[test]
    fn bad_queries_are_400_with_a_message() {
        assert_eq!(
            get("/v1/leftpad/?str=a&len=x"),
            (400, "{\"error\":\"len must be an integer\"}\n".into())
        );
        assert_eq!(
            get("/v1/leftpad/?len=5000").1,
            "{\"error\":\"len must not exceed 1024\"}\n"
        );
        assert_eq!(get("/v1/leftpad/").0, 400);
    }

    #[test]
    fn routes() {
        assert_eq!(get("/healthz"), (200, "ok\n".into()));
        assert_eq!(get("/").0, 404);
        assert_eq!(get("/v1/leftpad/x").0, 404);
        assert_eq!(get("/debug/pprof/").0, 404);
        let (status, body) = answer("POST /v1/leftpad/ HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 405);
        assert!(body.contains("use GET or HEAD"));
        assert_eq!(answer("PUT /nope HTTP/1.1\r\nHost: x\r\n\r\n").0, 404);
    }

    #[test]
    fn head_has_no_body() {
        assert_eq!(
            answer("HEAD /v1/leftpad/?len=3 HTTP/1.1\r\nHost: x\r\n\r\n"),
            (200, String::new())
        );
    }

    #[test]
    fn health_checks_fail_while_draining_and_the_api_still_answers() {
        let mut app = App::new(1024);
        app.set_draining();
        let limits = crate::http::request::Limits {
            max_head_size: 1024,
            max_headers: 16,
            max_body_size: 0,
        };
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let mut answer = |raw: &[u8]| {
            let crate::http::request::Parsed::Complete { request, .. } =
                crate::http::request::parse(raw, &limits)
            else {
                panic!("a complete head");
            };
            let mut out = Vec::new();
            let mut res = Response::new(
                &mut out,
                date,
                false,
                crate::http::response::Connection::Default,
            );
            app.handle(&request, &mut res);
            String::from_utf8(out).unwrap()
        };
        let health = answer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            health.starts_with("HTTP/1.1 503 ") && health.ends_with("\r\n\r\ndraining\n"),
            "{health}"
        );
        let padded = answer(b"GET /v1/leftpad/?str=a&len=2 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(padded.starts_with("HTTP/1.1 200 "), "{padded}");
    }
}
