use std::process::ExitCode;

use clap::Parser;

/// mimalloc, counting allocations per thread for `/debug/vars`.
#[global_allocator]
static GLOBAL: leftpad::telemetry::allocator::CountingAllocator =
    leftpad::telemetry::allocator::CountingAllocator;

fn main() -> ExitCode {
    leftpad::shell::server::run(leftpad::shell::config::Config::parse())
}
