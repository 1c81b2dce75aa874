#!/usr/bin/env bash
# Back-to-back CPU profiles under load, to find crashes and deadlocks in the samplers:
# leftpad (one worker on CPU 0, access log to a file, StatsD on) under wrk (CPU 1) while
# 5-second profiles are taken one after another for the whole duration, alternating
# kernel=on (perf_event_open), kernel=off (SIGPROF) and the flame graph. Every profile
# must come back 200 and parse with `go tool pprof`; the server must stay up and keep
# answering. Prints a summary; exits 1 on any failure.
#
#   scripts/profile-stress.sh [-d SECONDS] [-s PROFILE_SECONDS] [-o DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

duration=600 seconds=5 outdir=''
while getopts "d:s:o:" opt; do
  case $opt in
    d) duration=$OPTARG ;; s) seconds=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
for tool in wrk go curl; do
  command -v "$tool" >/dev/null || { echo "profile-stress.sh: $tool is not installed" >&2; exit 1; }
done
commit=$(commit_id)
cargo build --release --quiet --bin leftpad

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
workdir=$(mktemp -d)
trap 'stop_server; kill "${wrk_pid:-}" 2>/dev/null || true; rm -rf "$workdir"' EXIT
start_server leftpad "$addr" "$workdir" --admin "$admin" \
  --access-log "$workdir/access.log" --statsd "127.0.0.1:$(free_port)"
taskset -c "$load_cpu" wrk -t1 -c64 -d"$((duration + 10))s" "http://$addr$bench_path" \
  >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 1

ok=0 failed=0 n=0
deadline=$((SECONDS + duration))
while [ "$SECONDS" -lt "$deadline" ] && [ "$n" -lt 10000 ]; do
  case $((n % 3)) in
    0) what="profile?seconds=$seconds&kernel=on" ;;
    1) what="profile?seconds=$seconds&kernel=off" ;;
    2) what="flamegraph?seconds=$seconds" ;;
  esac
  n=$((n + 1))
  out="$workdir/out"
  code=$(curl -s -m $((seconds + 30)) -o "$out" -w '%{http_code}' "http://$admin/debug/pprof/$what" || echo 000)
  good=no
  if [ "$code" = 200 ]; then
    case $what in
      flamegraph*) grep -q '</svg>' "$out" && good=yes ;;
      *) go tool pprof -top -nodecount=1 "$out" 2>/dev/null | grep -q 'Total samples' && good=yes ;;
    esac
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "FAIL: the server died during profile $n ($what)"; cat "$workdir/server.log"; exit 1
  fi
  if [ "$good" = yes ]; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "FAIL: $what -> HTTP $code"; fi
done
answers=$(curl -fsS -o /dev/null -w '%{http_code}' "http://$addr$bench_path" || echo 000)
# SIGINT: wrk stops and still prints its figures.
kill -INT "$wrk_pid" 2>/dev/null || true
wait "$wrk_pid" 2>/dev/null || true
summary="profile-stress: commit $commit, $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r)
duration ${duration}s, ${seconds}s profiles: $n taken, $ok good, $failed failed; server alive, answers $answers after
$(grep -E 'Requests/sec|requests in|errors' "$workdir/wrk.txt" | tr -s ' ' || true)"
echo "$summary"
if [ -n "$outdir" ]; then mkdir -p "$outdir"; echo "$summary" >"$outdir/profile-stress.txt"; fi
[ "$failed" -eq 0 ] && [ "$answers" = 200 ]
