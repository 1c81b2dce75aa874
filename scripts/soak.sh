#!/usr/bin/env bash
# Soak: steady wrk load from well-behaved clients while hostile clients (scripts/hostile.py:
# slowloris, vanishing clients, floods that never read, oversized heads, garbage,
# connection churn, held connections) run at the same time; then SIGTERM.
#
#   scripts/soak.sh [-d SECONDS] [-m RSS_LIMIT_MIB] [-i IDLE_CONNECTIONS] [-o DIR]
#
# SIGTERM arrives 5 s before the load ends, with everything still running. Fails (exit 1)
# unless: the server never died before it; it then exited 0 within its shutdown timeout;
# every well-behaved response was correct; peak RSS stayed under the limit; the access
# log has one line per request the server says it answered; and StatsD (rate 1) counted
# every /v1/leftpad request the log shows. Also measures memory per idle keep-alive
# connection. Bounded: SECONDS of load (default 60) plus setup.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

duration=60 rss_limit_mib=256 idle=10000 outdir=''
while getopts "d:m:i:o:" opt; do
  case $opt in
    d) duration=$OPTARG ;; m) rss_limit_mib=$OPTARG ;; i) idle=$OPTARG ;; o) outdir=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "soak.sh: $tool is not installed (see .ci/run)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
commit=$(commit_id)
outdir=${outdir:-bench-results/runs/$(date -u +%Y-%m-%d)-$commit-soak}
mkdir -p "$outdir"
cargo build --release --quiet --bin leftpad

workdir=$(mktemp -d)
pids=()
trap 'stop_server; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$workdir"' EXIT
report() { echo "$*" | tee -a "$outdir/soak.txt"; }
failures=0
check() { # check NAME DETAIL COMMAND...: PASS if the command succeeds
  local name=$1 detail=$2
  shift 2
  if "$@"; then report "PASS $name: $detail"; else report "FAIL $name: $detail"; failures=$((failures + 1)); fi
}
: >"$outdir/soak.txt"
report "soak.sh -d $duration -m $rss_limit_mib -i $idle, commit $commit, $(date -u +%FT%TZ)"
report "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"

# A StatsD stand-in that counts the request-count lines it receives.
statsd_port=$(free_port)
python3 - "$statsd_port" "$workdir/statsd.txt" <<'PY' &
import socket, sys, signal
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:  # as root, beyond net.core.rmem_max: the counter must not be what drops packets
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
s.bind(("127.0.0.1", int(sys.argv[1])))
open(sys.argv[2] + ".ready", "w").close()
count = 0
def dump(*_):
    with open(sys.argv[2], "w") as f:
        f.write(f"leftpad.request.leftpad.count {count}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, dump)
while True:
    # Per-event lines say `count:1|c`, aggregated ones `count:1234|c`: sum the values.
    for line in s.recv(65536).split(b"\n"):
        if line.startswith(b"leftpad.request.leftpad.count:"):
            count += int(line.split(b":")[1].split(b"|")[0])
PY
statsd_pid=$!
pids+=("$statsd_pid")
for _ in $(seq 100); do [ -e "$workdir/statsd.txt.ready" ] && break; sleep 0.05; done

addr="127.0.0.1:$(free_port)"
admin="127.0.0.1:$(free_port)"
log="$workdir/access.log"
start_server leftpad "$addr" "$workdir" --access-log "$log" --statsd "127.0.0.1:$statsd_port" \
  --statsd-sample-rate 1 --admin "$admin" --max-connections 30000 --header-timeout 5 \
  --idle-timeout 30 --write-timeout 5 --shutdown-timeout 10
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }

# 1. Memory per idle keep-alive connection.
rss_before=$(rss_kib)
python3 - "${addr%:*}" "${addr##*:}" "$idle" <<'PY' >"$workdir/idle.txt" &
import socket, sys, time
held = []
for _ in range(int(sys.argv[3])):
    held.append(socket.create_connection((sys.argv[1], int(sys.argv[2]))))
print(len(held), flush=True)
time.sleep(8)
PY
idle_pid=$!
pids+=("$idle_pid")
for _ in $(seq 100); do [ -s "$workdir/idle.txt" ] && break; sleep 0.1; done
sleep 1
rss_idle=$(rss_kib)
held=$(cat "$workdir/idle.txt" 2>/dev/null || echo 0)
kill "$idle_pid" 2>/dev/null || true
wait "$idle_pid" 2>/dev/null || true
per_conn=$(( (rss_idle - rss_before) * 1024 / (held > 0 ? held : 1) ))
report "idle connections: $held held, RSS ${rss_before} KiB -> ${rss_idle} KiB: ${per_conn} bytes per idle connection"

# 2. Steady well-behaved load and the hostile mix together; RSS sampled twice a second.
( peak=0; while kill -0 "$server_pid" 2>/dev/null; do r=$(rss_kib 2>/dev/null || echo 0); [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$workdir/peak"; sleep 0.5; done ) &
pids+=("$!")
cat >"$workdir/check.lua" <<LUA
bad = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status ~= 200 or body ~= '{"str":"*********************test"}\n' then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("well-behaved: %d requests, %d bad responses\n", summary.requests, total))
end
LUA
taskset -c "$load_cpu" python3 scripts/hostile.py "${addr%:*}" "${addr##*:}" "$duration" --hold 2000 >"$workdir/hostile.txt" 2>&1 &
hostile_pid=$!
pids+=("$hostile_pid")
taskset -c "$load_cpu" wrk -t1 -c32 -d"${duration}s" -s "$workdir/check.lua" \
  "http://$addr/v1/leftpad/?str=test&len=25&chr=*" >"$workdir/wrk.txt" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")

# 3. SIGTERM in the middle of it all, 5 s before the load would end.
sleep $((duration > 10 ? duration - 5 : duration / 2))
check "server alive" "pid $server_pid still running under the soak" kill -0 "$server_pid"
curl -fsS "http://$admin/debug/vars" | python3 -c 'import json, sys
t = json.load(sys.stdin)["total"]
print("before SIGTERM: requests", t["requests"]["total"], "statsd", t["statsd"], "log", t["access_log"])' |
  tee -a "$outdir/soak.txt" || true
start=$SECONDS
kill -TERM "$server_pid"
code=0
wait "$server_pid" || code=$?
server_pid=''
took=$((SECONDS - start))
check "graceful exit under load" "exit code $code after ${took}s (shutdown timeout 10s)" \
  test "$code" -eq 0 -a "$took" -le 12
wait "$wrk_pid" || true
wait "$hostile_pid" || true
cat "$workdir/hostile.txt" | tee -a "$outdir/soak.txt"
grep -E "well-behaved|Requests/sec|Socket errors" "$workdir/wrk.txt" | tee -a "$outdir/soak.txt" || true

bad=$(awk '/well-behaved/ {print $4}' "$workdir/wrk.txt")
good=$(awk '/well-behaved/ {print $2}' "$workdir/wrk.txt")
check "well-behaved responses" "${good:-0} requests, ${bad:-?} wrong" \
  test "${bad:-1}" -eq 0 -a "${good:-0}" -gt 0
peak=$(cat "$workdir/peak" 2>/dev/null || echo 0)
check "peak RSS" "$((peak / 1024)) MiB (limit $rss_limit_mib MiB)" test "$peak" -lt $((rss_limit_mib * 1024))

# Nothing answered may be missing: the server says how many it answered when it stops.
answered=$(sed -n 's/.*stopped after answering \([0-9]*\) requests.*/\1/p' "$workdir/server.log")
lines=$(wc -l <"$log")
check "access log" "$lines lines, ${answered:-?} requests answered" test "$lines" -eq "${answered:--1}"
kill -TERM "$statsd_pid"
wait "$statsd_pid" 2>/dev/null || true
counted=$(awk '$1 == "leftpad.request.leftpad.count" {print $2}' "$workdir/statsd.txt")
logged=$(grep -c $'\turl /v1/leftpad' "$log" || true)
check "statsd" "leftpad.request.leftpad.count=${counted:-0}, log lines for /v1/leftpad=$logged" \
  test "${counted:-0}" -eq "$logged"

report "$failures failed"
[ "$failures" -eq 0 ]
