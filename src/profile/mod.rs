//! Profiling: what the admin listener serves under `/debug/pprof/`.
//!
//! Each profile kind has its own module and produces bytes that `go tool pprof` reads;
//! the admin listener only routes requests to them. The shared parts:
//!
//! - [`pprof`]: the profile format (`profile.proto`, gzip), one builder for every kind;
//! - [`symbols`]: addresses to function names, files and lines, after sampling.
//!
//! Profile kinds:
//!
//! - [`cpu`]: CPU profiles and flame graphs of every thread.

pub mod cpu;
pub mod pprof;
pub mod symbols;
