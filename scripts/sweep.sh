#!/usr/bin/env bash
# Connections sweep: 1, 8, 64, 256, 1024 connections, without and with 16-deep
# pipelining, for leftpad and the floor; req/s, p99 and server CPU per request as CSV,
# drawn as an SVG chart (scripts/chart.py).
#
#   scripts/sweep.sh [-d SECONDS] [-o DIR] [-c "1 8 64 256 1024"] [-p "1 16"]
#
# Output: DIR/sweep.csv, DIR/sweep.svg (default DIR: bench-results/runs/<date>-<commit>-sweep).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=5 outdir='' conn_list="1 8 64 256 1024" pipelines="1 16"
while getopts "d:o:c:p:" opt; do
  case $opt in
    d) duration=$OPTARG ;; o) outdir=$OPTARG ;; c) conn_list=$OPTARG ;; p) pipelines=$OPTARG ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
source scripts/lib.sh
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-sweep}
mkdir -p "$outdir"
# wrk needs a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bin leftpad --example floor

csv="$outdir/sweep.csv"
echo "server,pipeline,connections,rps,p99_us,cpu_us_per_req" >"$csv"
for pipeline in $pipelines; do
  for conns in $conn_list; do
    for server in leftpad floor; do
      args=()
      [ "$server" = leftpad ] && args=(-- --access-log off --statsd off)
      line=$(scripts/load.sh -s "$server" -c "$conns" -d "$duration" -p "$pipeline" "${args[@]}")
      echo "$line"
      echo "$line" | awk -v s="$server" -v p="$pipeline" -v c="$conns" '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%s,%s,%s,%s,%s,%s\n", s, p, c, v["rps"], v["p99_us"], v["cpu_us_per_req"] }' >>"$csv"
    done
  done
done
python3 scripts/chart.py "$csv" "$outdir/sweep.svg" \
  "leftpad vs floor, commit $commit, $(nproc) CPUs, server on CPU 0, wrk -t1 on CPU 1, ${duration}s per point"
echo "wrote $csv and $outdir/sweep.svg"
