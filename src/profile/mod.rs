//! Profiling: what the admin listener serves under `/debug/pprof/`.
//!
//! Each profile kind has its own module and produces bytes that `go tool pprof` reads;
//! the admin listener only routes requests to them. The shared parts:
//!
//! - [`pprof`]: the profile format (`profile.proto`, gzip), one builder for every kind;
//! - [`mappings`]: the process's code mappings and build IDs, which every profile carries;
//! - [`symbols`]: addresses to function names, files and lines, after sampling (with
//!   [`plt`] for the stubs of calls into shared libraries);
//! - [`stacks`]: a lock-free table of stacks with counters, for the profiles that record
//!   where events happen;
//! - [`unwind`]: stack unwinding with CFI, exact through libc and the vDSO, safe in a
//!   signal handler.
//!
//! Profile kinds:
//!
//! - [`cpu`]: CPU profiles and flame graphs of every thread, sampled by [`sampler`]
//!   (SIGPROF on per-thread CPU timers) or [`perf`] (`perf_event_open`, with the kernel's
//!   frames named by [`kernel`]), each sample weighted by its thread's CPU time
//!   ([`clocks`]);
//! - [`heap`]: the sampling heap profiler in the allocator (`heap` and `allocs`), its
//!   stacks walked by [`frames`];
//! - [`goroutine`]: every connection task by what it waits for;
//! - [`block`]: where threads waited (contended locks, blocking writes), for the block
//!   and mutex profiles;
//! - [`trace`]: the execution trace, recorded by the threads themselves while one is
//!   taken.

pub mod block;
pub mod clocks;
pub mod cpu;
pub mod frames;
pub mod goroutine;
pub mod heap;
pub mod kernel;
pub mod mappings;
pub mod perf;
pub mod plt;
pub mod pprof;
pub mod sampler;
pub mod stacks;
pub mod symbols;
pub mod trace;
pub mod unwind;
