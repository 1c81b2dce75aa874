//! Writing a response (status line, headers, body) onto the connection's output buffer.
//!
//! The body length is always known before the head is written, so every response carries
//! an exact `Content-Length` and nothing is ever buffered twice.

use crate::http::cursor::{Cursor, NUMBER_MOST};
use crate::http::json::EscapedStr;

use super::Status;

/// What the `Connection` header says, decided by the connection state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// HTTP/1.1 keep-alive: no header needed.
    Default,
    /// HTTP/1.0 keep-alive must be confirmed.
    KeepAlive,
    /// The server closes the connection after this response.
    Close,
}

/// One response being written. The handler chooses status and body; the connection
/// state machine fixed everything else.
pub struct Response<'a> {
    out: &'a mut Vec<u8>,
    date: &'a [u8; 29],
    head_only: bool,
    connection: Connection,
    status: Status,
}

/// The head's bytes besides the status line, the content type and the extra headers.
const HEAD_MOST: usize = b"HTTP/1.1 ".len()
    + b"\r\nServer: leftpad\r\nDate: ".len()
    + 29 // the `Date` value, always 29 bytes
    + b"\r\nContent-Type: ".len()
    + b"\r\nContent-Length: ".len()
    + NUMBER_MOST
    + b"\r\nConnection: keep-alive\r\n".len()
    + b"\r\n".len();

pub const JSON: &str = "application/json; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";

impl<'a> Response<'a> {
    pub fn new(
        out: &'a mut Vec<u8>,
        date: &'a [u8; 29],
        head_only: bool,
        connection: Connection,
    ) -> Response<'a> {
        Response {
            out,
            date,
            head_only,
            connection,
            status: Status::OK,
        }
    }

    /// The status written (for logs and metrics), once a `send` call has run.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Writes the head with `Content-Length: body_len` (plus `extra_headers`, whole
    /// `Name: value\r\n` lines), then the body via `write_body` unless this answers `HEAD`.
    /// `write_body` must append exactly `body_len` bytes.
    pub fn send(
        &mut self,
        status: Status,
        content_type: &str,
        extra_headers: &[u8],
        body_len: usize,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) {
        self.status = status;
        let out = &mut *self.out;
        // One capacity check for the whole response; the head is then written through a
        // cursor (one more check) and the body's appends never reallocate.
        let body = if self.head_only { 0 } else { body_len };
        let head_most = HEAD_MOST + status.line().len() + content_type.len() + extra_headers.len();
        out.reserve(head_most + body);
        Cursor::append(out, head_most, |out| {
            out.put(b"HTTP/1.1 ");
            out.put(status.line());
            out.put(b"\r\nServer: leftpad\r\nDate: ");
            out.put(self.date);
            out.put(b"\r\nContent-Type: ");
            out.put(content_type.as_bytes());
            out.put(b"\r\nContent-Length: ");
            out.number(body_len as u64);
            out.put(match self.connection {
                Connection::Default => b"\r\n",
                Connection::KeepAlive => b"\r\nConnection: keep-alive\r\n",
                Connection::Close => b"\r\nConnection: close\r\n",
            });
            out.put(extra_headers);
            out.put(b"\r\n");
        });
        if !self.head_only {
            let start = out.len();
            write_body(out);
            debug_assert_eq!(out.len() - start, body_len, "Content-Length mismatch");
        }
    }

    /// An error answer: `{"error":"<message>"}\n` as JSON.
    pub fn error(&mut self, status: Status, message: &str, extra_headers: &[u8]) {
        const OPEN: &[u8] = b"{\"error\":\"";
        const CLOSE: &[u8] = b"\"}\n";
        let message = EscapedStr::new(message);
        let body_len = OPEN.len() + message.len() + CLOSE.len();
        self.send(status, JSON, extra_headers, body_len, |out| {
            out.extend_from_slice(OPEN);
            message.write(out);
            out.extend_from_slice(CLOSE);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn written(head_only: bool, connection: Connection, f: impl FnOnce(&mut Response)) -> String {
        let mut out = Vec::new();
        let mut response = Response::new(&mut out, DATE, head_only, connection);
        f(&mut response);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_status_headers_and_body() {
        let text = written(false, Connection::Default, |r| {
            r.send(Status::OK, TEXT, b"", 3, |o| o.extend_from_slice(b"ok\n"))
        });
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: leftpad\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nok\n"
        );
    }

    #[test]
    fn head_only_keeps_length_and_drops_body() {
        let text = written(true, Connection::Close, |r| {
            r.error(Status::NOT_FOUND, "no", b"")
        });
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("\r\nContent-Length: 15\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn error_body_is_escaped_json() {
        let text = written(false, Connection::KeepAlive, |r| {
            r.error(
                Status::METHOD_NOT_ALLOWED,
                "say \"hi\"",
                b"Allow: GET, HEAD\r\n",
            )
        });
        assert!(text.contains("Connection: keep-alive\r\nAllow: GET, HEAD\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"say \\\"hi\\\"\"}\n"));
        assert!(text.contains("Content-Length: 23\r\n"));
    }

    #[test]
    fn the_longest_head_fits_the_room_reserved_for_it() {
        let text = written(true, Connection::KeepAlive, |r| {
            r.send(
                Status::HEADERS_TOO_LARGE,
                TEXT,
                b"Allow: GET, HEAD\r\nRetry-After: 1\r\n",
                usize::MAX,
                |_| unreachable!("a HEAD answer has no body"),
            )
        });
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains(&format!(
            "\r\nContent-Length: {}\r\nConnection: keep-alive\r\n",
            usize::MAX
        )));
        assert!(text.ends_with("Retry-After: 1\r\n\r\n"));
    }
}
