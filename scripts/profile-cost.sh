#!/usr/bin/env bash
# What profiling costs: leftpad under wrk load (64 connections) with no admin listener,
# with an idle admin listener, and while a CPU profile is being taken (100 Hz sampling
# over the whole measured window; the report is built after it), with kernel frames
# (perf_event_open) and without (SIGPROF), in alternating rounds; medians of req/s and
# server CPU µs per request.
#
#   scripts/profile-cost.sh [-r ROUNDS] [-d SECONDS] [-o DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

rounds=3 duration=10 outdir=''
while getopts "r:d:o:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; d) duration=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
  esac
done
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-profile-cost}
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad
quiet=(--access-log off --statsd off)

results="$outdir/results.txt"
: >"$results"
for round in $(seq "$rounds"); do
  for mode in admin-off admin-idle profile-kernel profile-signal; do
    admin_port=$(free_port)
    case $mode in
      admin-off) args=("${quiet[@]}" --admin off) ;;
      *) args=("${quiet[@]}" --admin "127.0.0.1:$admin_port") ;;
    esac
    if [ "${mode%%-*}" = profile ]; then
      kernel=on
      [ "$mode" = profile-signal ] && kernel=off
      # Sampling spans the whole measured window: it starts as soon as the server is up,
      # before wrk, and would end after it; the server is stopped first, so the report
      # (whose symbolization costs CPU once) is never built inside the window.
      curl -s --retry 50 --retry-connrefused --retry-delay 0 --retry-max-time 10 -o /dev/null \
        "http://127.0.0.1:$admin_port/debug/pprof/profile?seconds=$((duration + 4))&kernel=$kernel" &
    fi
    line=$(scripts/load.sh -c 64 -d "$duration" -- "${args[@]}")
    wait || true
    echo "mode=$mode round=$round $line" | tee -a "$results"
  done
done
python3 - "$results" <<'PY' | tee "$outdir/summary.txt"
import re, statistics, sys
rows = [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)) for line in open(sys.argv[1])]
print(f"{'mode':<16}{'req/s':>10}{'p99 us':>9}{'CPU us/req':>12}{'vs admin-off':>14}")
base = None
for mode in ["admin-off", "admin-idle", "profile-kernel", "profile-signal"]:
    sel = [r for r in rows if r["mode"] == mode]
    med = lambda k: statistics.median(float(r[k]) for r in sel)
    base = base or med("cpu_us_per_req")
    print(f"{mode:<16}{med('rps'):>10.0f}{med('p99_us'):>9.0f}{med('cpu_us_per_req'):>12.3f}{med('cpu_us_per_req') / base:>14.3f}")
PY
