#!/usr/bin/env python3
"""Reads `go tool trace -d` output (stdin) of a leftpad trace and prints what the timeline
shows in figures: per worker, requests per wake-up, how long each wait in the ring lasts,
how long a wake-up's batch runs, each request's handling time (its task) and scheduling
latency (wake-up to poll), with medians and 99th percentiles.

    go tool trace -d trace.out | scripts/trace-summary.py
"""
import collections
import re
import sys

LINE = re.compile(r"^(\d+) (\w+) p=(\d+) g=(\d+) (.*)$")


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def show(name, values, unit=1000.0, suffix="us"):
    if not values:
        print(f"  {name:<34} -")
        return
    print(f"  {name:<34} median {pct(values, 50) / unit:9.1f} {suffix}   p99 {pct(values, 99) / unit:9.1f} {suffix}   n={len(values)}")


def main():
    events = []
    for line in sys.stdin:
        m = LINE.match(line.strip())
        if m:
            events.append((int(m[1]), m[2], int(m[3]), int(m[4]), m[5]))
    workers = sorted({p for _, kind, p, _, _ in events if kind == "GoBlockNet"})
    running = {}            # p -> start ts of its current run
    stopped = {}            # p -> ts of its last stop
    tasks_in_run = collections.Counter()
    per_wake = collections.defaultdict(list)
    waits = collections.defaultdict(list)
    runs = collections.defaultdict(list)
    created = {}
    handling = []
    unblocked = {}
    sched = []
    for ts, kind, p, g, rest in events:
        if kind == "ProcStart":
            if p in stopped:
                waits[p].append(ts - stopped.pop(p))
            running[p] = ts
            tasks_in_run[p] = 0
        elif kind == "ProcStop" and p in running:
            runs[p].append(ts - running.pop(p))
            per_wake[p].append(tasks_in_run[p])
            stopped[p] = ts
        elif kind == "UserTaskCreate":
            task = re.search(r"taskid=(\d+)", rest)[1]
            created[task] = ts
            tasks_in_run[p] += 1
        elif kind == "UserTaskEnd":
            task = re.search(r"taskid=(\d+)", rest)[1]
            if task in created:
                handling.append(ts - created.pop(task))
        elif kind == "GoUnblock":
            target = re.search(r"g=(\d+)", rest)
            if target:
                unblocked[int(target[1])] = ts
        elif kind == "GoStart" and g in unblocked:
            sched.append(ts - unblocked.pop(g))
    span = (events[-1][0] - events[0][0]) / 1e9 if events else 0
    print(f"trace: {len(events)} events over {span:.3f} s; worker Ps {workers}")
    for p in workers:
        wakes = [n for n in per_wake[p]]
        busy = sum(runs[p])
        print(f"worker P{p}: {len(runs[p])} wake-ups, {sum(wakes)} requests, busy {busy / 1e9:.3f} s")
        show("requests per wake-up", wakes, unit=1, suffix="")
        show("wait in the ring (P idle)", waits[p])
        show("wake-up's batch (P running)", runs[p])
    show("request handling (its task)", handling)
    show("scheduling latency (wake to poll)", sched)


if __name__ == "__main__":
    main()
