//! Writing a response (status line, headers, body) onto the connection's output buffer.
//!
//! The body length is always known before the head is written, so every response carries
//! an exact `Content-Length` and nothing is ever buffered twice.

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
        // One capacity check for the whole response (the head is under 200 bytes plus
        // the variable parts); the appends below then never reallocate.
        let body = if self.head_only { 0 } else { body_len };
        out.reserve(200 + content_type.len() + extra_headers.len() + body);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.line());
        out.extend_from_slice(b"\r\nServer: leftpad\r\nDate: ");
        out.extend_from_slice(self.date);
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(match self.connection {
            Connection::Default => b"\r\n",
            Connection::KeepAlive => b"\r\nConnection: keep-alive\r\n",
            Connection::Close => b"\r\nConnection: close\r\n",
        });
        out.extend_from_slice(extra_headers);
        out.extend_from_slice(b"\r\n");
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
}
