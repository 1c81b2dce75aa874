#!/usr/bin/env bash
# Connections sweep: each server (one worker, CPU 0) under wrk (CPU 1) at each connection
# count, without and with pipelining, ROUNDS times alternating servers (so the VM's slow
# phases hit all alike); req/s, p99 and server CPU per request as CSV (every run, then
# medians), drawn as an SVG chart (scripts/chart.py).
#
#   scripts/sweep.sh [-d SECONDS] [-r ROUNDS] [-c "64 1000 10000"] [-p "1"]
#                    [-s "leftpad nginx go-v2"] [-w SECONDS] [-o DIR]
#
# Servers: those of scripts/lib.sh (leftpad, floor, nginx, go-v2: the article's Go
# service, GOMAXPROCS=1). leftpad runs without its access log and StatsD, as the others
# have none. Prints, and writes to DIR/summary.txt, leftpad's CPU per request at the
# largest connection count over the smallest (aim: at most 1.2). With -w W, leftpad's
# figures are also taken over each run after its first W seconds (scripts/load.sh -w), so
# that the accept burst of the connections is measured apart from the steady state.
# Output: DIR/sweep.csv (medians), DIR/runs.csv, DIR/summary.txt, DIR/sweep.svg
# (default DIR: bench-results/runs/<date>-<commit>-sweep).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10 rounds=3 outdir='' conn_list="64 1000 10000" pipelines="1" servers="leftpad nginx go-v2" warmup=''
while getopts "d:r:o:c:p:s:w:" opt; do
  case $opt in
    d) duration=$OPTARG ;; r) rounds=$OPTARG ;; o) outdir=$OPTARG ;; c) conn_list=$OPTARG ;;
    p) pipelines=$OPTARG ;; s) servers=$OPTARG ;; w) warmup=$OPTARG ;; *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
source scripts/lib.sh
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-sweep}
mkdir -p "$outdir"
# wrk and the server each need a descriptor per connection (the limit here is 20,000).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bin leftpad --example floor

{
  echo "# sweep.sh $(date -u +%FT%TZ), commit $commit"
  echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "# rounds=$rounds duration=${duration}s connections=$conn_list pipelines=$pipelines; server on CPU 0 (one worker), wrk -t1 on CPU 1"
} | tee "$outdir/summary.txt"

runs="$outdir/runs.csv"
echo "round,server,pipeline,connections,rps,p99_us,cpu_us_per_req,steady_cpu_us_per_req,errors" >"$runs"
for round in $(seq "$rounds"); do
  for pipeline in $pipelines; do
    for conns in $conn_list; do
      for server in $servers; do
        args=()
        if [ "$server" = leftpad ]; then
          [ -n "$warmup" ] && args=(-w "$warmup")
          args+=(-- --access-log off --statsd off --max-connections 19000)
        fi
        line=$(scripts/load.sh -s "$server" -c "$conns" -d "$duration" -p "$pipeline" "${args[@]}")
        echo "round $round: $line"
        echo "$line" | awk -v r="$round" -v s="$server" -v p="$pipeline" -v c="$conns" '{
          for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
          e = $0; sub(/.*errors=/, "", e); gsub(/[",]/, "", e)
          printf "%s,%s,%s,%s,%s,%s,%s,%s,%s\n", r, s, p, c, v["rps"], v["p99_us"], v["cpu_us_per_req"], v["steady_cpu_us_per_req"], e }' >>"$runs"
      done
    done
  done
done

python3 - "$runs" "$outdir/sweep.csv" <<'PY' | tee -a "$outdir/summary.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
keys = sorted({(r["server"], int(r["pipeline"]), int(r["connections"])) for r in rows},
              key=lambda k: (k[1], k[2], k[0]))
med = lambda sel, f: statistics.median(float(r[f]) for r in sel)
out = csv.writer(open(sys.argv[2], "w"))
out.writerow(["server", "pipeline", "connections", "rps", "p99_us", "cpu_us_per_req"])
print(f"\n{'server':<10}{'pipeline':>9}{'conns':>8}{'req/s':>10}{'p99 us':>9}{'CPU us/req':>12}  errors")
cpu = {}
for server, pipeline, conns in keys:
    sel = [r for r in rows if (r["server"], int(r["pipeline"]), int(r["connections"])) == (server, pipeline, conns)]
    rps, p99, c = med(sel, "rps"), med(sel, "p99_us"), med(sel, "cpu_us_per_req")
    cpu[server, pipeline, conns] = c
    errors = "; ".join(sorted({r["errors"] for r in sel if r["errors"].strip()})) or "-"
    out.writerow([server, pipeline, conns, f"{rps:.0f}", f"{p99:.0f}", f"{c:.3f}"])
    print(f"{server:<10}{pipeline:>9}{conns:>8}{rps:10.0f}{p99 if pipeline == 1 else float('nan'):9.0f}{c:12.3f}  {errors}")
conn_counts = sorted({k[2] for k in keys})
for pipeline in sorted({k[1] for k in keys}):
    lo, hi = conn_counts[0], conn_counts[-1]
    if ("leftpad", pipeline, lo) in cpu and ("leftpad", pipeline, hi) in cpu and lo != hi:
        ratio = cpu["leftpad", pipeline, hi] / cpu["leftpad", pipeline, lo]
        verdict = "aim met" if ratio <= 1.2 else "aim NOT met"
        print(f"leftpad CPU per request, pipeline {pipeline}: {hi} connections / {lo} = {ratio:.3f} ({verdict}: <= 1.2)")
        steady = lambda n: [float(r["steady_cpu_us_per_req"]) for r in rows if r["server"] == "leftpad"
                            and int(r["pipeline"]) == pipeline and int(r["connections"]) == n and r["steady_cpu_us_per_req"]]
        if steady(lo) and steady(hi):
            s_lo, s_hi = statistics.median(steady(lo)), statistics.median(steady(hi))
            per_round = [h / l for h, l in zip(steady(hi), steady(lo))]
            print(f"  steady state (after the warm-up): {s_hi:.3f} / {s_lo:.3f} us = {s_hi / s_lo:.3f}"
                  f" (per round {' '.join(f'{x:.3f}' for x in per_round)}); the run as a whole {ratio:.3f}")
PY
python3 scripts/chart.py "$outdir/sweep.csv" "$outdir/sweep.svg" \
  "$servers, commit $commit, $(nproc) CPUs, server on CPU 0, wrk -t1 on CPU 1, ${duration}s x $rounds"
echo "wrote $outdir/sweep.csv, $outdir/summary.txt and $outdir/sweep.svg"
