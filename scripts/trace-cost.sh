#!/usr/bin/env bash
# What the execution trace costs while it records: leftpad (access log to a file, StatsD
# to a listening socket) under wrk load, with the admin listener idle and while a trace
# spans the whole measured window (it is asked for just before wrk starts and would end
# after it; the server is stopped first, so the trace is never encoded in the window), in
# alternating rounds; medians of server CPU us per request and their ratio. The trace's
# buffers hold EVENTS_PER_THREAD events per thread: keep -d short enough that they do not
# fill (the events past them are only counted, which costs less than recording them).
#
#   scripts/trace-cost.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-p "1 16"] [-o DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

rounds=7 duration=1 conns=64 pipelines="1 16" outdir=''
while getopts "r:d:c:p:o:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; d) duration=$OPTARG ;; c) conns=$OPTARG ;; p) pipelines=$OPTARG ;;
    o) outdir=$OPTARG ;; *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-trace-cost}
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad

scratch=$(mktemp -d)
trap 'stop_statsd_sink; rm -rf "$scratch"' EXIT
start_statsd_sink

{
  echo "# trace-cost.sh $(date -u +%FT%TZ), commit $commit"
  echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "# rounds=$rounds duration=${duration}s conns=$conns pipelines=$pipelines; server on CPU 0 (one worker), wrk -t1 on CPU 1"
} | tee "$outdir/summary.txt"
results="$outdir/results.txt"
: >"$results"
for pipeline in $pipelines; do
  for round in $(seq "$rounds"); do
    for mode in idle tracing; do
      admin_port=$(free_port)
      args=(--access-log "$scratch/access.log" --statsd "127.0.0.1:$sink_port" --admin "127.0.0.1:$admin_port")
      curl_pid=''
      if [ "$mode" = tracing ]; then
        curl -s --retry 50 --retry-connrefused --retry-delay 0 --retry-max-time 10 \
          -o "$scratch/trace.out" "http://127.0.0.1:$admin_port/debug/pprof/trace?seconds=$((duration + 4))" &
        curl_pid=$!
      fi
      line=$(scripts/load.sh -c "$conns" -d "$duration" -p "$pipeline" -- "${args[@]}")
      [ -n "$curl_pid" ] && { wait "$curl_pid" || true; }
      echo "mode=$mode round=$round $line" | tee -a "$results"
      rm -f "$scratch"/*.log "$scratch/trace.out"
    done
  done
done
python3 - "$results" <<'PY' | tee -a "$outdir/summary.txt"
import re, statistics, sys
rows = [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)) for line in open(sys.argv[1])]
print(f"{'mode':<10}{'pipeline':>9}{'req/s':>11}{'CPU us/req':>12}{'vs idle':>9}{'paired':>8}")
for pipeline in sorted({r['pipeline'] for r in rows}, key=int):
    cpu = lambda mode, rnd=None: [float(r['cpu_us_per_req']) for r in rows
        if r['mode'] == mode and r['pipeline'] == pipeline and (rnd is None or r['round'] == rnd)]
    base = statistics.median(cpu('idle'))
    for mode in ['idle', 'tracing']:
        sel = [r for r in rows if r['mode'] == mode and r['pipeline'] == pipeline]
        med = statistics.median(cpu(mode))
        pairs = [cpu(mode, r['round'])[0] / cpu('idle', r['round'])[0] for r in sel]
        rps = statistics.median(float(r['rps']) for r in sel)
        print(f"{mode:<10}{pipeline:>9}{rps:>11.0f}{med:>12.3f}{med / base:>9.3f}{statistics.median(pairs):>8.3f}")
PY
