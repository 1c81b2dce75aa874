//! The application: what leftpad answers, as the [`crate::http`] core's service.
//!
//! [`handler`] routes a parsed request (`/v1/leftpad`, `/healthz`, 404, 405) and writes
//! its answer; [`query`] decodes the form-urlencoded query and checks `str`, `len` and
//! `chr`; [`pad`] computes the padding. All pure: no sockets, no clocks, no allocation
//! per request once the handler's scratch buffers are warm.

pub mod handler;
pub mod pad;
pub mod query;
