use std::process::ExitCode;

use clap::Parser;

/// mimalloc, counting allocations per thread for `/debug/vars`.
#[global_allocator]
static GLOBAL: leftpad::telemetry::allocator::CountingAllocator =
    leftpad::telemetry::allocator::CountingAllocator;

/// No transparent huge pages, from before the first allocation: called from `main`,
/// mimalloc's first arena had already faulted in three of them (6 MiB). Constructors of
/// a lower priority run first: this one before mimalloc's (none) and std's (99).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00098"]
static REFUSE_HUGE_PAGES: extern "C" fn() = leftpad::shell::server::refuse_huge_pages;

fn main() -> ExitCode {
    leftpad::shell::server::run(leftpad::shell::config::Config::parse())
}
