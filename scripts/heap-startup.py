#!/usr/bin/env python3
"""Start-up time of leftpad with heap sampling off, at Go's default rate and at every
allocation, in alternating rounds: the time from exec to the startup line, with an
allocation-heavy start (two workers, 4 MiB log buffers: each worker allocates its log
buffer pool, rings, timer wheels, StatsD packet). Prints medians and ratios to `off`.

    scripts/heap-startup.py [-n ROUNDS] [-o FILE]
"""
import argparse
import statistics
import subprocess
import tempfile
import time

RATES = {"off": "0", "default": "524288", "every-allocation": "1"}


def start_once(rate, log):
    started = time.perf_counter()
    server = subprocess.Popen(
        ["target/release/leftpad", "--listen", "127.0.0.1:0", "--admin", "off",
         "--workers", "2", "--log-buffer", str(4 << 20), "--access-log", log,
         "--statsd", "off", "--heap-profile-rate", rate],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in server.stderr:
            if "listening on" in line:
                return time.perf_counter() - started
        raise SystemExit(f"leftpad did not start (rate {rate})")
    finally:
        server.kill()
        server.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("-o")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "leftpad"], check=True)
    times = {name: [] for name in RATES}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(min(args.n, 1000)):
            for name, rate in RATES.items():
                times[name].append(start_once(rate, f"{scratch}/access.log"))
    base = statistics.median(times["off"])
    lines = [f"{'heap sampling':<18}{'median ms':>10}{'vs off':>8}   ({args.n} alternating rounds)"]
    for name, samples in times.items():
        median = statistics.median(samples)
        lines.append(f"{name:<18}{1000 * median:>10.2f}{median / base:>8.3f}")
    report = "\n".join(lines)
    print(report)
    if args.o:
        with open(args.o, "w") as out:
            out.write(report + "\n")


main()
