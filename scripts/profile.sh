#!/usr/bin/env bash
# The article's profiling workflow in one command: start leftpad (one worker on CPU 0,
# access log to a file and StatsD to a listening socket, as in production), load it with
# wrk (CPU 1), take a profile from the admin port while the load runs, and write the
# article's reports.
#
#   scripts/profile.sh [-t KIND] [-s SECONDS] [-p PIPELINE] [-c CONNS] [-k auto|on|off]
#                      [-l REGEX] [-o DIR] [-- EXTRA LEFTPAD ARGS]
#
# KIND (default cpu):
#   cpu        profile + flame graph: top.txt, top-cum.txt, list.txt (-l, default the
#              connection's answer), disasm.txt (App::leftpad), peek-syscalls.txt
#              (who makes each system call),
#              cpu-split.txt (flat time by owner: kernel, libc, vDSO, our code, monoio,
#              std), flamegraph.svg; -k: kernel frames (?kernel=)
#   heap       in-use memory: top.txt (inuse_space), top-alloc.txt (alloc_space)
#   allocs     allocations in a window under load and since start: window-top.txt and
#              total-top.txt (-sample_index=alloc_objects, the article's view)
#   goroutine  connection tasks by state: top.txt, connections.txt (?debug=1)
#   block      waits in a window under load: top.txt, traces.txt; mutex-top.txt
#   trace      an execution trace (-s seconds, default 1): trace.out.gz, summary.txt
#              (scripts/trace-summary.py: requests per wake-up, waits, batches, latency),
#              net-top.txt, sched-top.txt, syscall-top.txt (go tool trace -pprof= read by
#              go tool pprof -top), and timeline.png, the viewer's timeline as headless
#              Chromium draws it (if chromium is installed)
# Output in DIR (default bench-results/profile, or bench-results/profile/KIND), with
# run.txt (machine, commit, load).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
# wrk and the server each need a descriptor per connection (-c 10000: the limit here is 20,000).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

kind=cpu seconds='' pipeline=1 conns=64 kernel=auto list='leftpad::shell::worker::connection::Session::answer' outdir=''
while getopts "t:s:p:c:k:l:o:" opt; do
  case $opt in
    t) kind=$OPTARG ;; s) seconds=$OPTARG ;; p) pipeline=$OPTARG ;; c) conns=$OPTARG ;; k) kernel=$OPTARG ;;
    l) list=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,31p' "$0"; exit 2 ;;
  esac
done
# A trace of a loaded server is large (a few hundred thousand events a second): 1 s, as Go.
if [ "$kind" = trace ]; then seconds=${seconds:-1}; else seconds=${seconds:-10}; fi
case $kind in
  cpu) outdir=${outdir:-bench-results/profile} ;;
  heap | allocs | goroutine | block | trace) outdir=${outdir:-bench-results/profile/$kind} ;;
  *) echo "profile.sh: -t must be cpu, heap, allocs, goroutine, block or trace, not '$kind'" >&2; exit 2 ;;
esac
shift $((OPTIND - 1))
for tool in wrk go curl python3; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done

commit=$(commit_id)
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
statsd_port=$(free_port)
workdir=$(mktemp -d)
# A StatsD stand-in that reads and discards, so datagrams are delivered as in production.
python3 -c "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', int(sys.argv[1])))
while True:
    s.recv(65536)
" "$statsd_port" &
statsd_pid=$!
trap 'stop_server; kill $statsd_pid 2>/dev/null || true; rm -rf "$workdir"' EXIT
start_server leftpad "$addr" "$workdir" --admin "$admin" \
  --access-log "$workdir/access.log" --statsd "127.0.0.1:$statsd_port" "$@"

cat >"$workdir/pipeline.lua" <<LUA
init = function(args) req = string.rep(wrk.format(nil), tonumber(args[1]) or 1) end
request = function() return req end
LUA
# Load for both captures plus a margin; wrk stops by itself.
taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"$((2 * seconds + 4))s" --latency -s "$workdir/pipeline.lua" \
  "http://$addr$bench_path" -- "$pipeline" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 1
pprof() { go tool pprof "$@" "$outdir/profile.pb.gz" 2>&1; }
get() { curl -fsS -o "$outdir/profile.pb.gz" "http://$admin/debug/pprof/$1"; }
case $kind in
  cpu)
    get "profile?seconds=$seconds&kernel=$kernel"
    curl -fsS -o "$outdir/flamegraph.svg" "http://$admin/debug/pprof/flamegraph?seconds=$seconds&kernel=$kernel"
    pprof -top -nodecount=40 >"$outdir/top.txt"
    pprof -top -cum -nodecount=60 >"$outdir/top-cum.txt"
    pprof -list "$list" >"$outdir/list.txt"
    # The article's `disasm` of the handler: pprof matches the regexp against the
    # profile's names and the binary's mangled symbols (README, "disasm").
    pprof -disasm 'App(::|7)leftpad( |17h)' >"$outdir/disasm.txt"
    # The system-call wrappers (libc, vDSO) and who called them.
    pprof -peek '^(syscall|__libc_send|__GI___libc_write|__libc_recv|clock_gettime|__vdso_clock_gettime)$' \
      >"$outdir/peek-syscalls.txt"
    # Who owns the CPU: flat time by source file, grouped.
    pprof -top -files -nodecount=100000 -nodefraction=0 -edgefraction=0 |
      scripts/cpu-split.py >"$outdir/cpu-split.txt"
    ;;
  heap)
    get heap
    pprof -top -nodecount=30 >"$outdir/top.txt"
    pprof -sample_index=alloc_space -top -nodecount=30 >"$outdir/top-alloc.txt"
    ;;
  allocs)
    get "allocs?seconds=$seconds"
    pprof -sample_index=alloc_objects -top -nodecount=30 >"$outdir/window-top.txt"
    mv "$outdir/profile.pb.gz" "$outdir/window.pb.gz"
    get allocs
    pprof -sample_index=alloc_objects -top -nodecount=30 >"$outdir/total-top.txt"
    ;;
  goroutine)
    get goroutine
    pprof -top >"$outdir/top.txt"
    curl -fsS -o "$outdir/connections.txt" "http://$admin/debug/pprof/goroutine?debug=1"
    ;;
  trace)
    curl -fsS -o "$workdir/trace.out" "http://$admin/debug/pprof/trace?seconds=$seconds"
    for view in net sched syscall; do
      go tool trace -pprof="$view" "$workdir/trace.out" >"$workdir/$view.pb"
      go tool pprof -top -nodecount=20 "$workdir/$view.pb" >"$outdir/$view-top.txt" 2>&1
    done
    go tool trace -d "$workdir/trace.out" 2>/dev/null | scripts/trace-summary.py >"$outdir/summary.txt"
    scripts/trace-screenshot.sh "$workdir/trace.out" "$outdir/timeline.png" ||
      echo "profile.sh: no timeline.png (chromium missing or the viewer failed)" >&2
    gzip -9 -c "$workdir/trace.out" >"$outdir/trace.out.gz"
    ;;
  block)
    curl -fsS -o "$outdir/mutex.pb.gz" "http://$admin/debug/pprof/mutex"
    get "block?seconds=$seconds"
    pprof -top -nodecount=30 >"$outdir/top.txt"
    pprof -traces >"$outdir/traces.txt"
    go tool pprof -top "$outdir/mutex.pb.gz" >"$outdir/mutex-top.txt" 2>&1
    ;;
esac
# SIGINT: wrk stops early (after a quick capture) and still prints its figures.
kill -INT "$wrk_pid" 2>/dev/null || true
wait "$wrk_pid" || true

{
  echo "scripts/profile.sh -t $kind -s $seconds -p $pipeline -k $kernel $*"
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $commit"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "load: wrk -t1 -c$conns, pipeline $pipeline, server on CPU $server_cpu, wrk on CPU $load_cpu"
  echo "server: access log to a file, StatsD (rate 0.5) to a listening socket"
  grep -E "Requests/sec|requests in" "$workdir/wrk.txt"
} >"$outdir/run.txt"
cat "$outdir/run.txt"
if [ "$kind" = trace ]; then cat "$outdir/summary.txt"; exit 0; fi
head -24 "$outdir/top.txt" 2>/dev/null || head -24 "$outdir/window-top.txt"
