#!/usr/bin/env bash
# Zero-downtime restart under load: wrk (CPU 1) runs for D seconds against leftpad (one
# worker, CPU 0) while the server is replaced N times, every D/(N+1) seconds: a new
# process starts with --takeover on the same port, its startup line is awaited, then the
# old one gets SIGTERM and must drain and exit 0. Prints wrk's summary, its socket errors
# and non-2xx responses, and a verdict line.
#
#   scripts/restart.sh [-d SECONDS] [-c CONNECTIONS] [-n REPLACEMENTS] [-o DIR] [-k]
#
# As root, net.ipv4.tcp_migrate_req is set to 1 for the run (restored after), so the
# connections queued on a closing listener move to the new one; -k keeps it as found.
# Output: DIR/restart.txt (default DIR: bench-results/runs/<date>-<commit>-restart).
# Exit 1 if wrk saw a socket error or a non-2xx response, or an old process did not
# exit 0. Bounded: wrk stops after D seconds, each old process is killed 15 s after its
# SIGTERM at the latest, a new one that prints no startup line in 10 s fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

duration=30 conns=64 replacements=5 outdir='' keep_sysctl=0
while getopts "d:c:n:o:k" opt; do
  case $opt in
    d) duration=$OPTARG ;; c) conns=$OPTARG ;; n) replacements=$OPTARG ;; o) outdir=$OPTARG ;;
    k) keep_sysctl=1 ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
for value in "$duration" "$conns" "$replacements"; do
  [[ $value =~ ^[0-9]+$ ]] || { echo "restart.sh: -d, -c and -n take whole numbers" >&2; exit 2; }
done
if [ "$duration" -lt 2 ] || [ "$duration" -gt 600 ] || [ "$conns" -lt 1 ] || [ "$conns" -gt 10000 ] ||
  [ "$replacements" -gt 100 ]; then
  echo "restart.sh: -d 2..600 seconds, -c 1..10000 connections, -n 0..100 replacements" >&2
  exit 2
fi
for tool in wrk taskset; do
  command -v "$tool" >/dev/null || { echo "restart.sh: $tool is not installed (apt-get install wrk util-linux)" >&2; exit 1; }
done

commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-restart}
mkdir -p "$outdir"
out="$outdir/restart.txt"
# wrk needs a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bin leftpad

workdir=$(mktemp -d)
migrate=/proc/sys/net/ipv4/tcp_migrate_req
migrate_was=''
current='' started=''
cleanup() {
  # Only servers still running (not yet waited for): the old and the new one.
  for pid in $current $started; do kill -KILL "$pid" 2>/dev/null || true; done
  [ -n "${wrk_pid:-}" ] && kill "$wrk_pid" 2>/dev/null || true
  [ -n "$migrate_was" ] && echo "$migrate_was" >"$migrate" 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT

if [ ! -e "$migrate" ]; then
  migrate_note="absent (a kernel before 5.14): connections queued on a closing listener can be reset"
else
  found=$(cat "$migrate")
  if [ "$keep_sysctl" = 1 ] || [ "$found" = 1 ]; then
    migrate_note="$found (as found)"
  elif [ "$(id -u)" = 0 ] && echo 1 2>/dev/null >"$migrate"; then
    migrate_was=$found
    migrate_note="1 (set for this run; it was $found and is restored after)"
  else
    migrate_note="$found: cannot set it to 1 (needs root: sysctl -w net.ipv4.tcp_migrate_req=1), so connections queued on a closing listener can be reset"
    echo "restart.sh: net.ipv4.tcp_migrate_req is $found and cannot be set to 1 here (needs root)" >&2
  fi
fi

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
while [ "${admin##*:}" = "${addr##*:}" ]; do admin="127.0.0.1:$(free_port)"; done
interval=$(awk -v d="$duration" -v n="$replacements" 'BEGIN {printf "%.3f", d / (n + 1)}')

{
  echo "restart.sh -d $duration -c $conns -n $replacements, commit $commit, $(date -u +%FT%TZ)"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
  echo "server: leftpad --workers 1 on CPU $server_cpu (--access-log off --statsd off, admin on $admin); wrk -t1 -c $conns on CPU $load_cpu, http://$addr$bench_path"
  echo "replacing the server every $interval s: new with --takeover, wait for its startup line, SIGTERM the old, wait for exit 0"
  echo "net.ipv4.tcp_migrate_req: $migrate_note"
} | tee "$out"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }

# Starts server number $1 (extra flags after it); sets $started to its PID. Waits (10 s
# at most) for its startup line.
start_one() {
  local n=$1 log="$workdir/server$1.log"
  shift
  taskset -c "$server_cpu" target/release/leftpad --listen "$addr" --workers 1 \
    --access-log off --statsd off --admin "$admin" "$@" >/dev/null 2>"$log" &
  started=$!
  for _ in $(seq 200); do
    grep -q 'listening on' "$log" && return 0
    kill -0 "$started" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: server $n (pid $started) printed no startup line:" | tee -a "$out"
  tee -a "$out" <"$log"
  return 1
}

# SIGTERMs $1 and waits for it to exit (15 s at most, then SIGKILL); sets $status to its
# exit status.
stop_one() {
  local pid=$1 state
  kill -TERM "$pid"
  for _ in $(seq 1500); do
    # Exited: a zombie until waited for (the comm field, "(leftpad)", has no space).
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
    [ "$state" = Z ] || [ "$state" = gone ] && break
    sleep 0.01
  done
  [ "$state" = Z ] || [ "$state" = gone ] || kill -KILL "$pid" 2>/dev/null || true
  if wait "$pid"; then status=0; else status=$?; fi
}

start_one 0
current=$started current_n=0 started=''

sed 's/^/  server 0: /' "$workdir/server0.log" | tee -a "$out"

t0=$(now)
taskset -c "$load_cpu" wrk -t1 -c "$conns" -d "${duration}s" --latency \
  "http://$addr$bench_path" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!

bad_exits=0 done_replacements=0 answered_total=0
for i in $(seq "$replacements"); do
  at=$(awk -v i="$i" -v s="$interval" 'BEGIN {printf "%.3f", i * s}')
  wait_for=$(awk -v at="$at" -v e="$(elapsed "$t0")" 'BEGIN {d = at - e; if (d < 0) d = 0; printf "%.3f", d}')
  sleep "$wait_for"
  began=$(now) began_at=$(elapsed "$t0")
  # A new process that does not start ends the replacements (and fails the run).
  start_one "$i" --takeover || break
  ready=$(elapsed "$began")
  term=$(now)
  stop_one "$current"
  drained=$(elapsed "$term")
  answered=$(grep -o 'stopped after answering [0-9]*' "$workdir/server$current_n.log" | awk '{print $NF}')
  answered_total=$((answered_total + ${answered:-0}))
  echo "replacement $i at $began_at s: server $i (pid $started) ready in $ready s; server $current_n (pid $current) exit $status ${drained} s after SIGTERM, answered ${answered:-?} requests" | tee -a "$out"
  # Its startup line (it says takeover) and the warning if tcp_migrate_req is not 1.
  grep -v 'stopped after' "$workdir/server$i.log" | sed "s/^/  server $i: /" | tee -a "$out"
  if [ "$status" -ne 0 ]; then
    bad_exits=$((bad_exits + 1))
    echo "FAIL: server $current_n exited $status:" | tee -a "$out"
    tee -a "$out" <"$workdir/server$current_n.log"
  fi
  current=$started current_n=$i started=''
  done_replacements=$i
done

wait "$wrk_pid" || true
wrk_pid=''
stop_one "$current"
answered=$(grep -o 'stopped after answering [0-9]*' "$workdir/server$current_n.log" | awk '{print $NF}')
answered_total=$((answered_total + ${answered:-0}))
echo "last server $current_n (pid $current) exit $status after wrk ended, answered ${answered:-?} requests" | tee -a "$out"
current=''
[ "$status" -ne 0 ] && bad_exits=$((bad_exits + 1))

echo "wrk:" | tee -a "$out"
tee -a "$out" <"$workdir/wrk.txt"
socket_errors=$(grep 'Socket errors' "$workdir/wrk.txt" | sed 's/^ *//' || true)
errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$workdir/wrk.txt")
errors=${errors:-0}
non2xx=$(awk '/Non-2xx or 3xx responses/ {print $NF}' "$workdir/wrk.txt")
non2xx=${non2xx:-0}
requests=$(awk '/requests in/ {print $1}' "$workdir/wrk.txt")
{
  echo "${socket_errors:-Socket errors: none}"
  echo "non-2xx or 3xx responses: $non2xx"
  # The servers' own counts add up to at least wrk's (wrk leaves the answers in flight
  # at its end unread).
  echo "requests: ${requests:-0} read by wrk, $answered_total answered by the servers; servers that did not exit 0: $bad_exits"
  [ "$done_replacements" -eq "$replacements" ] ||
    echo "FAIL: $done_replacements of $replacements replacements done (a new server did not start)"
  echo "restart: $done_replacements replacements, errors $errors, non-2xx $non2xx"
} | tee -a "$out"
echo "wrote $out"
[ -n "${requests:-}" ] && [ "$errors" -eq 0 ] && [ "$non2xx" -eq 0 ] && [ "$bad_exits" -eq 0 ] &&
  [ "$done_replacements" -eq "$replacements" ]
