#!/usr/bin/env bash
# Side-by-side load comparison, alternating servers (A B C A B C ...) so drift and noise
# hit all of them alike; prints medians and ratios to the first server.
#
#   scripts/compare.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-p "1 16"] [-o DIR] [SERVER ...]
#
# SERVER is leftpad, floor or nginx, optionally with an io_uring setup for the first two
# (leftpad@coop, floor@plain), or LABEL=SERVER ARGS... for any flags, where {log} is a
# log file in a scratch directory and {statsd} a listening UDP socket that never reads:
#   "observed=leftpad --access-log {log} --statsd {statsd}" "quiet=leftpad --access-log off --statsd off"
# Default: leftpad without and with its access log and StatsD, the floor, and nginx
# (skipped if missing).
# Raw wrk outputs and the summary go to DIR (default bench-results/runs/<date>-<commit>).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 duration=10 conns=64 pipelines="1 16" outdir=''
while getopts "r:d:c:p:o:" opt; do
  case $opt in
    r) rounds=$OPTARG ;; d) duration=$OPTARG ;; c) conns=$OPTARG ;; p) pipelines=$OPTARG ;;
    o) outdir=$OPTARG ;; *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
servers=("$@")
if [ ${#servers[@]} -eq 0 ]; then
  servers=("leftpad=leftpad --access-log off --statsd off"
    "leftpad+log+statsd=leftpad --access-log {log} --statsd {statsd}" floor)
  if command -v nginx >/dev/null; then servers+=(nginx); else echo "compare.sh: nginx not installed, skipping it" >&2; fi
fi

source scripts/lib.sh
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit}
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad --example floor

{
  echo "# compare.sh $(date -u +%FT%TZ), commit $commit"
  echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "# rounds=$rounds duration=${duration}s conns=$conns pipelines=$pipelines; server on CPU 0, wrk -t1 on CPU 1"
} | tee "$outdir/summary.txt"

scratch=$(mktemp -d)
trap 'stop_statsd_sink; rm -rf "$scratch"' EXIT
start_statsd_sink

results="$outdir/results.txt"
: >"$results"
for pipeline in $pipelines; do
  for round in $(seq "$rounds"); do
    for spec in "${servers[@]}"; do
      if [[ $spec == *=* ]]; then
        label=${spec%%=*}
        read -r -a words <<<"${spec#*=}"
        name=${words[0]}
        args=(-- "${words[@]:1}")
        args=("${args[@]//\{log\}/$scratch/$label.log}")
        args=("${args[@]//\{statsd\}/127.0.0.1:$sink_port}")
      else
        label=$spec name=${spec%@*} args=()
        [ "$spec" != "$name" ] && args=(-- --uring-setup "${spec#*@}")
      fi
      line=$(scripts/load.sh -s "$name" -c "$conns" -d "$duration" -p "$pipeline" \
        -o "$outdir/wrk-$label-p$pipeline-c$conns-r$round.txt" "${args[@]}")
      echo "spec=$label round=$round $line" | tee -a "$results"
      rm -f "$scratch"/*.log
    done
  done
done

echo | tee -a "$outdir/summary.txt"
labels=()
for spec in "${servers[@]}"; do labels+=("${spec%%=*}"); done
python3 - "$results" "${labels[@]}" <<'PY' | tee -a "$outdir/summary.txt"
import re, statistics, sys
path, servers = sys.argv[1], sys.argv[2:]
rows = [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)) for line in open(path)]
# ratio: of the medians; paired: the median over rounds of each round's own ratio to
# the first server, which a phase change of the VM in mid-run does not skew.
print(f"{'server':<22}{'pipeline':>9}{'req/s':>12}{'p50 us':>9}{'p99 us':>9}{'CPU us/req':>12}{'ratio':>8}{'paired':>8}")
for pipeline in sorted({r['pipeline'] for r in rows}, key=int):
    base = None
    cpu_of = lambda spec, rnd: [float(r['cpu_us_per_req']) for r in rows
                                if r['spec'] == spec and r['pipeline'] == pipeline and r['round'] == rnd]
    for spec in servers:
        sel = [r for r in rows if r['spec'] == spec and r['pipeline'] == pipeline]
        med = lambda k: statistics.median(float(r[k]) for r in sel)
        cpu = med('cpu_us_per_req')
        base = base or cpu
        pairs = [cpu_of(spec, r['round'])[0] / cpu_of(servers[0], r['round'])[0]
                 for r in sel if cpu_of(servers[0], r['round'])]
        paired = statistics.median(pairs) if pairs else float('nan')
        # wrk's latency histogram is not meaningful with pipelining (it times batches).
        lat = lambda k: f"{med(k):9.0f}" if pipeline == '1' else f"{'-':>9}"
        print(f"{spec:<22}{pipeline:>9}{med('rps'):12.0f}{lat('p50_us')}{lat('p99_us')}{cpu:12.3f}{cpu / base:8.2f}{paired:8.3f}")

# One table, a column per pipeline depth: each server's CPU per request beside the
# floor's (the paired median of its ratio to the floor in each round, and the worst
# round's, when there is one: the aims are bounds in every round).
pipelines = sorted({r['pipeline'] for r in rows}, key=int)
def cpu(spec, pipeline, rnd=None):
    return [float(r['cpu_us_per_req']) for r in rows if r['spec'] == spec
            and r['pipeline'] == pipeline and (rnd is None or r['round'] == rnd)]
def paired(spec, other, pipeline):
    ratios = []
    for rnd in sorted({r['round'] for r in rows}, key=int):
        a, b = cpu(spec, pipeline, rnd), cpu(other, pipeline, rnd)
        if a and b:
            ratios.append(a[0] / b[0])
    return ratios
floor = next((s for s in servers if s == 'floor' or s.startswith('floor@')), None)
print()
print("CPU us per request, median" + (f" (x {floor}: paired median, worst round)" if floor else ""))
print(f"{'server':<22}" + "".join(f"{'pipeline ' + p:>28}" for p in pipelines))
for spec in servers:
    cells = []
    for p in pipelines:
        values = cpu(spec, p)
        if not values:
            cells.append(f"{'-':>28}")
            continue
        cell = f"{statistics.median(values):.3f}"
        ratios = paired(spec, floor, p) if floor and spec != floor else []
        if ratios:
            cell += f" ({statistics.median(ratios):.2f}x, {max(ratios):.2f}x)"
        cells.append(f"{cell:>28}")
    print(f"{spec:<22}" + "".join(cells))
# The cost of observability, round by round (the aim is a bound in every round).
quiet, observed = 'leftpad', 'leftpad+log+statsd'
if quiet in servers and observed in servers:
    print()
    print(f"{observed} / {quiet}, each round:")
    for p in pipelines:
        ratios = paired(observed, quiet, p)
        print(f"  pipeline {p}: " + " ".join(f"{x:.3f}" for x in ratios)
              + f"  (median {statistics.median(ratios):.3f}, worst {max(ratios):.3f})")
PY
