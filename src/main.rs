use std::process::ExitCode;

use clap::Parser;

/// mimalloc, counting allocations per thread for `/debug/vars`.
#[global_allocator]
static GLOBAL: leftpad::stats::CountingAllocator = leftpad::stats::CountingAllocator;

fn main() -> ExitCode {
    leftpad::server::run(leftpad::config::Config::parse())
}
