#!/usr/bin/env python3
"""Who owns the CPU in a profile: flat time by source file, grouped into the kernel, libc,
the vDSO, our code, monoio, the io_uring crate, Rust's std and other crates.

    go tool pprof -top -files -nodecount=100000 -nodefraction=0 profile.pb.gz | scripts/cpu-split.py
"""
import re
import sys

ROW = re.compile(r"\s*([0-9.]+(?:ms|s|mins))\s+[0-9.]+%\s+[0-9.]+%\s+\S+\s+[0-9.]+%\s+(.*)")


def seconds(text):
    value = float(re.match(r"[0-9.]+", text).group())
    if text.endswith("ms"):
        return value / 1000
    if text.endswith("mins"):
        return value * 60
    return value


def group(where):
    if "[kernel.kallsyms]" in where:
        return "kernel"
    if "[vdso]" in where:
        return "vDSO"
    if where.startswith("sysdeps/") or "glibc" in where:
        return "libc"
    if "/monoio-" in where:
        return "monoio"
    if "/io-uring-" in where:
        return "io-uring crate"
    if where.startswith("/rustc/"):
        return "Rust std/core/alloc"
    if "/.cargo/registry/" in where:
        return "other crates"
    if "/src/" in where:
        return "leftpad (our code)"
    return "unknown"


def main():
    totals = {}
    for line in sys.stdin:
        row = ROW.match(line)
        if row:
            name = group(row.group(2))
            totals[name] = totals.get(name, 0.0) + seconds(row.group(1))
    total = sum(totals.values()) or 1.0
    print(f"{'where the CPU went (flat)':<26}{'seconds':>9}{'share':>9}")
    for name, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{name:<26}{value:>9.2f}{100 * value / total:>8.1f}%")


main()
