use std::process::ExitCode;

use clap::Parser;

/// mimalloc, counting allocations per thread for `/debug/vars`.
#[global_allocator]
static GLOBAL: leftpad::telemetry::allocator::CountingAllocator =
    leftpad::telemetry::allocator::CountingAllocator;

/// No transparent huge pages, from before the first allocation: called from `main`,
/// mimalloc's first arena had already faulted in three of them (6 MiB). Constructors run
/// by priority, lowest first, and those without one after all others: this one (98) runs
/// before std's (99) and mimalloc's (101 when clang builds it, none with gcc).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00098"]
static REFUSE_HUGE_PAGES: extern "C" fn() = leftpad::shell::server::refuse_huge_pages;

fn main() -> ExitCode {
    leftpad::shell::server::run(leftpad::shell::config::Config::parse())
}
