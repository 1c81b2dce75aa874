//! HTTP/1.1, sans I/O: bytes in, response bytes out.
//!
//! [`conn::Conn`] is the per-connection state machine (framing, keep-alive, pipelining,
//! limits); [`request`] parses and checks one head; [`response`] writes one answer;
//! [`date`] caches the `Date` header; [`words`] scans bytes eight at a time; [`cursor`]
//! writes a head or a line into room reserved once. Nothing here touches a socket or
//! reads a clock: the worker owns those and hands this module bytes and the current date.

pub mod conn;
pub mod cursor;
pub mod date;
pub mod json;
pub mod request;
pub mod response;
pub mod words;

/// An HTTP status code with its reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub const OK: Status = Status(200);
    pub const BAD_REQUEST: Status = Status(400);
    pub const NOT_FOUND: Status = Status(404);
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const CONFLICT: Status = Status(409);
    pub const CONTENT_TOO_LARGE: Status = Status(413);
    pub const URI_TOO_LONG: Status = Status(414);
    pub const HEADERS_TOO_LARGE: Status = Status(431);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    /// The status line after `HTTP/1.1 `: code and reason.
    pub fn line(self) -> &'static [u8] {
        match self.0 {
            200 => b"200 OK",
            400 => b"400 Bad Request",
            404 => b"404 Not Found",
            405 => b"405 Method Not Allowed",
            408 => b"408 Request Timeout",
            409 => b"409 Conflict",
            413 => b"413 Content Too Large",
            414 => b"414 URI Too Long",
            431 => b"431 Request Header Fields Too Large",
            501 => b"501 Not Implemented",
            503 => b"503 Service Unavailable",
            505 => b"505 HTTP Version Not Supported",
            _ => b"500 Internal Server Error",
        }
    }
}
